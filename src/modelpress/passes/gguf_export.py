"""GgufExport: a model written as a GGUF file that llama.cpp and Ollama load.

It takes a Hugging Face folder (the input model, or what LoRA and merge leave), or a weight-quantized checkpoint
(Gptq, Rtn). Where the workflow's input was a GGUF file, the export is written in that file's own layout:
- the input file's metadata is carried over: architecture keys, and the tokenizer as llama.cpp's converter wrote
  it (token list, merges, special ids and the pre-tokenizer's name); not how the input file was quantized
  (`quantize.*`); the file type is the new one, and the chat template, by default, the one the model was
  fine-tuned with;
- the tensors written are the input file's, name for name and shape for shape, or the pass refuses.
A model that never was a GGUF file is described from its config and tokenizer (`gguf_hf`), as llama.cpp's
converter writes one. Either way each weight goes under its llama.cpp name, from the `gguf` package's
TensorNameMap (which llama.cpp's converter and transformers' GGUF reader also use), Q and K rows permuted per head
for the llama architecture as llama.cpp's converter does (`LlamaModel.permute`; transformers' reader undoes it).
Float weights are quantized with the `gguf` package's reference quantizers (numpy), which write no K-quants
(Q4_K_M and the like): those are made by llama.cpp's own quantizer from an f16 export (`gguf_llama_cpp`). A quantized checkpoint's
codes are written as they are where llama.cpp has their grid (4-bit asymmetric: Q4_1, 4-bit symmetric: Q4_0, 8-bit
symmetric: Q8_0, in blocks of 32): rounding a fine-tuned model to nearest on 4 bits puts most weights back on the
4-bit grid of the file it was trained from, and GPTQ's codes keep what training changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelpress.context import PassContext
from modelpress.errors import MissingDependencyError, ModelpressError
from modelpress.models import GGUF_FILE, ModelRef
from modelpress.passes.gguf_hf import CHAT_TEMPLATE, FileSpec
from modelpress.passes.gguf_spec import (
    ARCHITECTURES,
    LLAMA_CPP_TYPES,
    OUTTYPES,
    GgufExportParams,
    unwritten_architecture,
)
from modelpress.passes.spec_base import GGUF, HF_QUANTIZED

log = logging.getLogger("modelpress")
BLOCK = 32  # values per block of every block type written here (Q8_0, Q5_x, Q4_x)
EDGE_TENSORS = ("token_embd.weight", "output.weight")  # the matrices kept at 8 bits under the 4- and 5-bit types
# tensors llama.cpp's converter computes from a config's rope scaling (Llama 3.1's frequencies, Phi-3's long and short
# factors), which a Hugging Face folder holds as config, not weights: copied from the input file as they are
CARRIED = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
# metadata the writer sets itself, or that describes the new file rather than the model
NOT_CARRIED = ("general.architecture", "general.file_type", "general.quantization_version", "general.alignment")
NOT_CARRIED_PREFIXES = ("GGUF.", "quantize.")  # the header's own fields; how the input file was quantized (imatrix)
# buffers older checkpoints saved with their weights, which llama.cpp's converter leaves out
NOT_WEIGHTS = (".rotary_emb.inv_freq", ".attention.bias", ".attention.masked_bias")


def _permute_qk(name: str, data, meta: dict):
    """llama.cpp's `LlamaModel.permute`: the rotary halves of each head's rows interleaved (Q by the query heads,
    K by the key/value heads). `data` is anything with one row per output (weights, codes, scales)."""
    arch = meta["general.architecture"]
    heads = {"attn_q": meta[f"{arch}.attention.head_count"],
             "attn_k": meta.get(f"{arch}.attention.head_count_kv", meta[f"{arch}.attention.head_count"])}
    part = name.split(".")[-2]
    if part not in heads:
        return data
    n = int(heads[part])
    return data.reshape(n, 2, data.shape[0] // n // 2, *data.shape[1:]).swapaxes(1, 2).reshape(data.shape)


def _shift_norm(name: str, data, meta: dict):
    """Gemma's RMSNorm scales by 1 + its weight, and llama.cpp's by the weight: each norm's weight is written plus
    one, as llama.cpp's Gemma2Model and Gemma3Model converters do (transformers' GGUF reader takes it off again)."""
    return data + 1.0 if name.endswith("norm.weight") else data


# The architectures written, and how a weight's Hugging Face layout becomes llama.cpp's (None: as it is, as
# llama.cpp's Qwen2Model, Qwen3Model and Phi3MiniModel write them, Phi-3's fused qkv and gate_up included). Each
# is checked by a round trip through transformers' GGUF reader and llama.cpp (tests/test_gguf_export.py).
LAYOUTS = {"llama": _permute_qk, "qwen2": None, "qwen3": None, "phi3": None, "gemma2": _shift_norm,
           "gemma3": _shift_norm}
assert set(LAYOUTS) == set(ARCHITECTURES)
# A quantized grid llama.cpp stores as it is: (bits, symmetric) -> block type and the zero point it implies
# (None: any, stored per block as Q4_1's minimum).
CODE_TYPES = {(4, False): ("Q4_1", None), (4, True): ("Q4_0", 8), (8, True): ("Q8_0", 128)}


@dataclass
class Stored:
    """One weight of the model to write: its shape, its float values, and for a quantized module its codes."""

    shape: tuple[int, ...]
    values: Callable  # () -> float32 numpy array
    codes: Callable | None = None  # () -> (codes, scales, zeros) float32 numpy arrays, grid


def run_gguf_export(ctx: PassContext, params: GgufExportParams) -> ModelRef:
    try:
        import gguf
    except ImportError:
        raise MissingDependencyError("gguf", "gguf", "GgufExport") from None
    from modelpress.inputs import gguf_source

    source = gguf_source(ctx.input_model)
    folder = Path(ctx.model.path)
    if source is None:  # a model that never was a GGUF file: its config and tokenizer say what to write
        from modelpress.passes.gguf_hf import describe_folder

        file = describe_folder(folder, ctx.input_model, gguf)
        origin = "the model's config.json and tokenizer.json"
    else:
        file = _describe_source(source, gguf)
        origin = source.name
    weights = _quantized_weights(folder) if ctx.model.kind == HF_QUANTIZED else _float_weights(folder)
    plan = _plan(file, weights, gguf, _own_head(folder))
    template = _chat_template(ctx, params, file.meta)
    out = Path(ctx.out) / GGUF_FILE
    by_llama_cpp = params.outtype in LLAMA_CPP_TYPES  # K-quants: an f16 file first, quantized by llama.cpp
    written = out.with_suffix(".f16.gguf") if by_llama_cpp else out
    counts, notes = _write(written, file, plan, weights, "f16" if by_llama_cpp else params.outtype, template, gguf)
    if by_llama_cpp:
        from modelpress.passes.gguf_llama_cpp import quantize_with_llama_cpp
        from modelpress.runtime import compute_threads

        said = quantize_with_llama_cpp(written, out, params.outtype, compute_threads())
        written.unlink()
        counts = {}
        for tensor in gguf.GGUFReader(str(out)).tensors:
            counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
        notes.append(f"quantized to {LLAMA_CPP_TYPES[params.outtype]} by llama.cpp's quantizer from an f16 export"
                     + "".join(f"; llama.cpp: {line}" for line in said if "fallback" in line))
    ctx.notes.extend(file.notes + notes)
    ctx.notes.append(f"wrote {GGUF_FILE} ({out.stat().st_size / 2**20:.1f} MiB): "
                     + ", ".join(f"{n} tensors {t}" for t, n in sorted(counts.items()))
                     + f"; tokenizer and metadata from {origin}")
    return ModelRef(GGUF, ctx.out, id="", task={**ctx.model.task, **_trained_bos(folder)})


def _trained_bos(folder: Path) -> dict:
    """The BOS token training put before a prompt, for the runner that answers the file: the tokenizer config's
    `bos_token`, None where it names none (the file's BOS id may come from config.json, as Qwen2's does); nothing
    where the folder has no tokenizer config."""
    from modelpress.genai_folder import named_token

    if not (folder / "tokenizer_config.json").is_file():
        return {}
    return {"bos_token": named_token(folder, "bos_token", ("tokenizer_config.json", "special_tokens_map.json"))}


def _describe_source(source: Path, gguf) -> FileSpec:
    """What the input GGUF file says the export is: its metadata (less what describes that file, not the model),
    its tensors' names and shapes, and the tensors copied from it as they are."""
    reader = gguf.GGUFReader(str(source))
    meta = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    arch = meta.get("general.architecture")
    why = unwritten_architecture(arch)
    if why:  # the config check says it first where the file is local
        raise ModelpressError(f"{source.name}: {why}.")
    entries, notes = [], []
    for key, field in reader.fields.items():
        if key.startswith(NOT_CARRIED_PREFIXES) or key in NOT_CARRIED:
            continue
        array = field.types[0] == gguf.GGUFValueType.ARRAY
        sub = field.types[1] if array and len(field.types) > 1 else None  # an empty array records no item type
        if array and sub is None:
            notes.append(f"the input file's metadata key {key} is an empty array, which the gguf package cannot "
                         "write: left out")
            log.warning("GgufExport: %s", notes[-1])
            continue
        if sub == gguf.GGUFValueType.ARRAY:
            raise ModelpressError(f"the input file's metadata key {key} is an array of arrays, which the gguf "
                                  "package cannot write: GgufExport cannot carry this file's metadata over")
        entries.append((key, meta[key], field.types[0], sub))  # decoded once, here
    tensors = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}
    carried = {t.name: _copied(t, gguf) for t in reader.tensors if t.name in CARRIED}
    return FileSpec(arch, meta, entries, tensors, carried, notes)


def _copied(tensor, gguf) -> Callable:
    """A tensor of the input file as it is stored: () -> (array, raw GGML type or None for a float one)."""
    import numpy as np

    def read():
        float_kind = tensor.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
        return np.array(tensor.data), None if float_kind else tensor.tensor_type
    return read


def _float_weights(folder: Path) -> dict[str, Stored]:
    """The tensors of a Hugging Face folder's safetensors files, read one at a time."""
    from safetensors import safe_open

    def reader(path: Path, name: str):
        def read():
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor(name).float().numpy()
        return read

    found: dict[str, Stored] = {}
    for path in sorted(folder.glob("model*.safetensors")):  # not a repository's other copies (consolidated.*)
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                found[name] = Stored(tuple(f.get_slice(name).get_shape()), reader(path, name))
    if not found:
        raise ModelpressError(f"{folder} holds no model*.safetensors weights for GgufExport to write: save the model "
                              "with save_pretrained (safetensors is its default), or put a pass (LoRA and merge, "
                              "Rtn) before GgufExport, whose output is safetensors")
    return found


def _quantized_weights(folder: Path) -> dict[str, Stored]:
    """A weight-quantized checkpoint's tensors: each quantized module as `<module>.weight`, with its codes."""
    from modelpress.quantized import PARTS, dequantize, grid_of, load_state, module_codes, quant_config, \
        quantized_modules

    state, config = load_state(folder), quant_config(folder)  # packed: a quarter of the float model at 8 bits
    modules = quantized_modules(state)
    parts = {f"{m}.{p}" for m in modules for p in PARTS}
    found = {name: Stored(tuple(t.shape), lambda t=t: t.float().numpy()) for name, t in state.items()
             if name not in parts}

    def codes(module: str):  # unpacked when written, one module at a time
        c, s, z, grid = module_codes(state, config, module)
        return (c.numpy(), s.numpy(), z.numpy()), grid

    def values(module: str):
        return dequantize(*module_codes(state, config, module)).numpy()

    for module in modules:
        packed = state[f"{module}.qweight"]
        shape = (packed.shape[0], packed.shape[1] * 8 // grid_of(config, module).bits)
        found[f"{module}.weight"] = Stored(shape, lambda m=module: values(m), lambda m=module: codes(m))
    return found


def _own_head(folder: Path) -> bool:
    """Whether the model's output head is a weight of its own, not the embedding: an untied config (a model
    trained so, or a checkpoint whose head or embedding Rtn/Gptq quantized apart, which unties them)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(folder)).tie_word_embeddings is False  # the model type's default if unset


def _plan(file: FileSpec, weights: dict[str, Stored], gguf, own_head: bool) -> list[tuple[str, str | None]]:
    """[(llama.cpp name, Hugging Face name, or None for a tensor of `file.carried`)]. Against an input GGUF file:
    every tensor of that file, in its order, and `output.weight` after them where the file ties its head to the
    embedding and this model has a head of its own (llama.cpp reads the embedding only when `output` is absent).
    For a model that never was a GGUF file: each of its weights, as llama.cpp's converter writes them."""
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == file.arch)
    names = gguf.get_tensor_name_map(arch_id, int(file.meta[f"{file.arch}.block_count"]))
    weights = {hf: w for hf, w in weights.items() if not hf.endswith(NOT_WEIGHTS)}
    by_gguf: dict[str, str] = {}
    for hf in weights:
        mapped = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if mapped:
            by_gguf.setdefault(mapped, hf)
    reference = file.tensors if file.tensors is not None else {
        **{name: weights[hf].shape for name, hf in by_gguf.items() if name != "output.weight"},
        **{name: None for name in file.carried}}
    has_output = "output.weight" in reference
    plan, missing, wrong = [], [], []
    for name, shape in reference.items():
        hf = by_gguf.get(name)
        if hf is None and name == "output.weight":  # a tied head the folder stores once, as the embedding
            hf = by_gguf.get("token_embd.weight")
        if hf is None and name in file.carried:
            plan.append((name, None))
            continue
        if hf is None:
            missing.append(name)
            continue
        plan.append((name, hf))
        if weights[hf].shape != shape:
            wrong.append(f"{hf} is {weights[hf].shape}, {name} {shape}")
    head = by_gguf.get("output.weight")
    tied = set()
    if head and not has_output and own_head:
        plan.append(("output.weight", head))
        expected = weights[by_gguf["token_embd.weight"]].shape if "token_embd.weight" in by_gguf else None
        if weights[head].shape != expected:
            wrong.append(f"{head} is {weights[head].shape}, output.weight {expected}")
    elif head and not has_output:  # a copy of the embedding, which llama.cpp reads for the head
        tied.add(head)
    unwritten = sorted(set(weights) - {hf for _, hf in plan if hf} - tied)
    if missing or unwritten or wrong:
        found = [f"the model has no weight for {', '.join(missing[:5])}" if missing else "",
                 f"the file has no place for {', '.join(unwritten[:5])}" if unwritten else "",
                 f"shapes differ: {'; '.join(wrong[:5])}" if wrong else ""]
        if file.tensors is None:
            raise ModelpressError(f"GgufExport writes each weight under its llama.cpp name for the {file.arch} "
                                  f"architecture, and {'; '.join(part for part in found if part)}. Convert the "
                                  "output folder with llama.cpp's convert_hf_to_gguf.py instead.")
        raise ModelpressError("GgufExport writes the tensors of the input GGUF file, and this model's differ: "
                              + "; ".join(part for part in found if part)
                              + ". A pass that changes which weights the model has (not LoRA, merge or weight "
                              "quantization) cannot be written back.")
    return plan


def _chat_template(ctx: PassContext, params: GgufExportParams, meta: dict) -> str | None:
    """The chat template to write (None: the input file's, or none)."""
    recipe = ctx.model.task or {}
    trained = (recipe.get("chat") or {}).get("template")
    differs = bool(trained) and trained != meta.get(CHAT_TEMPLATE)
    if differs and params.chat_template == "trained":
        ctx.notes.append("the file's chat template is the one the model was fine-tuned with, not the input model's")
    elif differs:
        ctx.notes.append("the file keeps the input model's chat template (chat_template: input), and the model was "
                         "fine-tuned and evaluated with another: llama.cpp's chat mode prompts it otherwise")
    system = (recipe.get("chat") or {}).get("system_prompt")
    if system:
        ctx.notes.append(f"the model was trained with the system prompt {system!r}: llama.cpp's chat mode sends "
                         "the template's own unless it is given (llama-cli -sys, a system message to llama-server)")
    if recipe.get("text_template"):
        ctx.notes.append("the model was fine-tuned on a text template, not a chat template: send llama.cpp prompts "
                         "written in it as plain completions (llama-cli without conversation mode, llama-server's "
                         "/completion); its chat mode would wrap them in the input model's chat template")
    return trained if differs and params.chat_template == "trained" else None


def _float_type(name: str, shape: tuple, outtype: str, gguf):
    """The GGML type a float tensor is written in, and why it is not the outtype's (or None)."""
    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32, None
    block_type, edge_type = OUTTYPES[outtype]
    wanted = getattr(gguf.GGMLQuantizationType, edge_type if name in EDGE_TENSORS else block_type)
    if wanted.name.startswith("Q") and shape[-1] % BLOCK:
        return gguf.GGMLQuantizationType.F16, f"{name}: rows of {shape[-1]} values, not a multiple of {BLOCK}"
    return wanted, None


def code_blocks(codes, scales, zeros, grid, gguf):
    """A quantized module's codes as llama.cpp blocks, (GGML type, uint8 blocks), or None where llama.cpp has no
    type for its grid. codes (out, in), scales and zeros (out, groups): float32 numpy arrays; weight = (q - zero) *
    scale, as modelpress.quantized stores it."""
    import numpy as np

    kind, zero = CODE_TYPES.get((grid.bits, grid.symmetric), (None, None))
    size = codes.shape[1] if grid.group_size == -1 else grid.group_size
    if kind is None or size % BLOCK or (zero is not None and not (zeros == zero).all()):
        return None
    per = size // BLOCK
    d = np.repeat(scales, per, axis=1).reshape(-1, 1)  # one scale and zero per block of 32
    z = np.repeat(zeros, per, axis=1).reshape(-1, 1)
    q = codes.reshape(-1, BLOCK).astype(np.int16)
    head = [d.astype(np.float16).view(np.uint8)]
    if kind == "Q8_0":
        body = (q - zero).astype(np.int8).view(np.uint8)
    else:
        if kind == "Q4_1":  # value = d * q + m
            head.append((-d * z).astype(np.float16).view(np.uint8))
        halves = q.astype(np.uint8).reshape(-1, 2, BLOCK // 2)  # element j in the low nibble, j + 16 in the high
        body = halves[:, 0, :] | (halves[:, 1, :] << np.uint8(4))
    rows = np.concatenate([*head, body], axis=1).reshape(codes.shape[0], -1)  # gguf's byte shape: a row a row
    return getattr(gguf.GGMLQuantizationType, kind), rows


def _write(out: Path, file: FileSpec, plan: list, weights: dict[str, Stored], outtype: str, template: str | None,
           gguf) -> tuple[dict[str, int], list[str]]:
    """Write the file: its metadata (with this file's type and template), then each tensor; returns {GGML type:
    tensor count} and notes for the run history."""
    import numpy as np

    writer = gguf.GGUFWriter(str(out), file.arch, use_temp_file=True)  # a tensor at a time
    notes: list[str] = []
    layout, meta = LAYOUTS[file.arch], file.meta
    for key, value, kind, sub in file.entries:
        if not (template and key == CHAT_TEMPLATE):
            writer.add_key_value(key, value, kind, sub_type=sub)
    if template:
        writer.add_chat_template(template)
    counts: dict[str, int] = {}
    fallbacks, requantized = [], []
    for gguf_name, hf in plan:
        if hf is None:  # as the input file holds it, or as computed from the config
            data, raw = file.carried[gguf_name]()
            writer.add_tensor(gguf_name, data, raw_dtype=raw)
            kind_name = raw.name if raw is not None else "F32" if data.dtype == np.float32 else "F16"
            counts[kind_name] = counts.get(kind_name, 0) + 1
            continue
        stored = weights[hf]
        blocks = None
        if stored.codes is not None:
            (codes, scales, zeros), grid = stored.codes()
            if layout:
                codes, scales, zeros = (layout(gguf_name, a, meta) for a in (codes, scales, zeros))
            blocks = code_blocks(codes, scales, zeros, grid, gguf)
            if blocks is None:
                requantized.append(f"{hf} ({grid.bits}-bit, {'' if grid.symmetric else 'a'}symmetric, groups of "
                                   f"{grid.group_size})")
        if blocks is not None:
            kind, data = blocks
            writer.add_tensor(gguf_name, data, raw_dtype=kind)
        else:
            data = stored.values()
            data = layout(gguf_name, data, meta) if layout else data
            kind, why = _float_type(gguf_name, data.shape, outtype, gguf)
            if why:
                fallbacks.append(why)
            if kind == gguf.GGMLQuantizationType.F32:
                writer.add_tensor(gguf_name, np.ascontiguousarray(data, dtype=np.float32))
            elif kind == gguf.GGMLQuantizationType.F16:
                writer.add_tensor(gguf_name, data.astype(np.float16))
            else:
                writer.add_tensor(gguf_name, gguf.quants.quantize(data, kind), raw_dtype=kind)
        counts[kind.name] = counts.get(kind.name, 0) + 1
    writer.add_file_type(_file_type(counts, gguf))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if fallbacks:
        notes.append(f"{len(fallbacks)} weights written f16 (llama.cpp's blocks take rows of a multiple of {BLOCK} "
                     f"values): {'; '.join(fallbacks[:3])}")
    if requantized:
        notes.append(f"{len(requantized)} quantized weights have a grid llama.cpp does not store (it has 4-bit and "
                     f"8-bit symmetric blocks of 32, and 4-bit asymmetric ones): dequantized and written as outtype "
                     f"{outtype} writes float weights: " + "; ".join(requantized[:3]))
    for note in notes:
        log.warning("GgufExport: %s", note)
    return counts, notes


def _file_type(counts: dict[str, int], gguf) -> int:
    """general.file_type: that of the type most weights other than float32 ones (norms) have; all float32: ALL_F32."""
    matrices = {k: n for k, n in counts.items() if k != "F32"}
    if not matrices:
        return gguf.LlamaFileType.ALL_F32
    main = max(matrices, key=matrices.get)
    return getattr(gguf.LlamaFileType, f"MOSTLY_{main}")
