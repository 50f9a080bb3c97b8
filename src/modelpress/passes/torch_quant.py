"""Rtn, Gptq and SelectiveMixedPrecision: weight-only quantization of a Hugging Face causal LM.

The output of Rtn and Gptq is a checkpoint in the format of `modelpress.quantized`, which
ModelBuilder turns into an onnxruntime-genai folder and every evaluator reads dequantized.
SelectiveMixedPrecision writes no weights: it copies its input and adds `mixed_precision.json`
(which modules get which bits), which the quantizer after it follows.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from modelpress.context import PassContext
from modelpress.errors import ModelpressError
from modelpress.models import ModelRef, load_causal_lm, load_tokenizer
from modelpress.passes.catalog import HF_QUANTIZED
from modelpress.passes.quant_specs import GptqParams, QuantizerParams, RtnParams
from modelpress.quantized import PARTS, QUANT_METHOD, Grid, load_state, pack, quant_config, quantized_modules, rtn

log = logging.getLogger("modelpress")
MIXED_PRECISION_FILE = "mixed_precision.json"
WIKITEXT = ("Salesforce/wikitext", "wikitext-2-raw-v1", "train[:1000]")  # Olive's default calibration data


# --- model anatomy ----------------------------------------------------------------------------

def decoder_layers(model) -> tuple[str, list]:
    """(prefix, layers) of the decoder: the ModuleList with one entry per hidden layer."""
    import torch

    count = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return name, list(module)
    raise ModelpressError(f"{type(model).__name__}: no list of {count} decoder layers found to quantize")


def module_name(model, target) -> str:
    return next(name for name, module in model.named_modules() if module is target)


def decoder_linears(model) -> dict[str, object]:
    """{name: nn.Linear} of the decoder layers (`uncovered` checks the weights held otherwise)."""
    import torch

    prefix, layers = decoder_layers(model)
    return {f"{prefix}.{i}.{name}": m for i, layer in enumerate(layers)
            for name, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}


def uncovered(model) -> None:
    """Matrices in the decoder layers outside any nn.Linear stay float: transformers 5 keeps a mixture of experts'
    weights as fused 3-D parameters (Mixtral, Qwen3-MoE), GPT-2 its projections in Conv1D. Refused when they are
    most of the layers' weights (the checkpoint would be called quantized and be mostly float), said otherwise."""
    import torch

    prefix, layers = decoder_layers(model)
    covered, other = 0, {}
    for i, layer in enumerate(layers):
        for name, module in layer.named_modules():
            for key, weight in module.named_parameters(recurse=False):
                if weight.dim() < 2:
                    continue
                if isinstance(module, torch.nn.Linear):
                    covered += weight.numel()
                else:
                    other[".".join(part for part in (prefix, str(i), name, key) if part)] = weight.numel()
    if not other:
        return
    share = sum(other.values()) / (covered + sum(other.values()))
    names = ", ".join(list(other)[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
    what = (f"{type(model).__name__}: {f'{share:.0%}' if share >= 0.01 else 'under 1%'} of its decoder layers' "
            "weights are not in nn.Linear layers "
            f"({names}), which this pass quantizes only")
    if share >= 0.5:
        raise ModelpressError(f"{what}: they would stay float in a checkpoint called quantized. Quantize this model "
                              "in ONNX instead: OnnxConversion, then OnnxBlockWiseRtnQuantization (or ModelBuilder "
                              "int4 where the builder knows the architecture).")
    log.warning("%s: they stay float", what)


# --- which grid each module gets ------------------------------------------------------------------

def quant_plan(model, params: QuantizerParams, folder: Path) -> tuple[dict[str, Grid], dict]:
    """{module: grid} to quantize, and the checkpoint's quantization_config.

    Precedence, as in Olive: SelectiveMixedPrecision's default over the pass's settings, then its
    per-module choices, then the pass's own `overrides`.
    """
    from modelpress.fsutil import read_json

    default = {"bits": params.bits, "group_size": params.group_size, "symmetric": params.sym}
    overrides: dict[str, dict] = {}
    mixed_file = Path(folder) / MIXED_PRECISION_FILE
    if mixed_file.is_file():
        mixed = read_json(mixed_file)
        default.update({k: v for k, v in mixed.get("default", {}).items() if v is not None})
        overrides = {name: dict(value) for name, value in mixed.get("overrides", {}).items()}
    for name, override in (params.overrides or {}).items():
        overrides.setdefault(name, {}).update(override.model_dump(exclude_none=True))
    uncovered(model)
    targets = list(decoder_linears(model))
    lm_head = module_name(model, model.get_output_embeddings())
    embeds = module_name(model, model.get_input_embeddings())
    if params.lm_head:
        targets.append(lm_head)
    if getattr(params, "embeds", False):
        targets.append(embeds)
    unknown = [name for name in params.overrides or {} if name not in targets]
    if unknown:  # a typo, or a module this pass leaves alone: the setting would do nothing
        hint = (" Set lm_head: true to quantize the head." if lm_head in unknown and not params.lm_head else
                f" Name modules by their full names, such as {targets[0]!r}." if targets else "")
        raise ModelpressError(f"overrides: {', '.join(repr(n) for n in unknown[:3])}"
                              f"{f' and {len(unknown) - 3} more' if len(unknown) > 3 else ''} "
                              f"{'is' if len(unknown) == 1 else 'are'} not among the {len(targets)} modules this pass "
                              f"quantizes.{hint}")
    config = {"quant_method": QUANT_METHOD, **default, "lm_head": params.lm_head,
              "embeds": bool(getattr(params, "embeds", False)), "overrides": {}}
    plan = _shared_qkv({name: Grid(**{**default, **overrides.get(name, {})}) for name in targets})
    for name, grid in plan.items():
        if grid != Grid(**default):
            config["overrides"][name] = {k: v for k, v in vars(grid).items() if v != default[k]}
    return plan, config


QKV = ("q_proj", "k_proj", "v_proj")  # a layer's attention inputs, which onnxruntime-genai packs into one MatMul


def _shared_qkv(plan: dict[str, Grid]) -> dict[str, Grid]:
    """Each layer's q/k/v projections on one grid, the most precise among theirs (more bits, then smaller groups),
    as Olive's normalize_qkv_quant_config promotes them: the genai builder packs them into one MatMul and refuses
    members of different bits."""
    groups: dict[str, list[str]] = {}
    for name in plan:
        parent, _, leaf = name.rpartition(".")
        if leaf in QKV:
            groups.setdefault(parent, []).append(name)
    for parent, names in groups.items():
        if len(names) > 1 and len({plan[n] for n in names}) > 1:  # ties go to the first of q, k, v, as in Olive
            shared = max((plan[n] for n in names), key=lambda g: (g.bits, 2 if g.group_size > 0 else 1, -g.group_size))
            log.info("%s: q/k/v quantized alike, as %d-bit groups of %d (onnxruntime-genai packs them into one "
                     "MatMul)", parent, shared.bits, shared.group_size)
            plan.update({n: shared for n in names})
    return plan


# --- calibration data ---------------------------------------------------------------------------------

def calibration_rows(ctx: PassContext, data_config: str | None, samples: int, max_len: int, tokenizer) -> list:
    """Token id rows (1, L) to calibrate on: the named data config's rows, or wikitext-2 as Olive does."""
    import torch

    if data_config:
        texts = [ex.prompt + (ex.target or ex.completion) for ex in ctx.data.calibration_examples(data_config)[:samples]]
        rows = tokenizer(texts, truncation=True, max_length=max_len, add_special_tokens=False)["input_ids"]
        return [torch.tensor([ids]) for ids in rows if ids]
    text = "\n\n".join(_wikitext())
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [torch.tensor([ids[i:i + max_len]]) for i in range(0, len(ids) - max_len + 1, max_len)][:samples]


def uses_default_calibration(p) -> bool:
    """Whether pass config `p` calibrates on wikitext-2, Olive's default (it names no data_config)."""
    if p.type == "Gptq":
        return not p.params.data_config
    if p.type == "SelectiveMixedPrecision":
        return p.params.algorithm == "kld_gradient" and not p.params.data_config
    return False


def fetch_default_calibration() -> None:
    """Read wikitext-2 while the run may still reach the Hub (before `hub.go_offline`), so that the pass finds
    it in the datasets cache; a first run on a machine with network would otherwise fail. Not when datasets'
    cache holds its prepared copy already (what an offline load reads): datasets would ask the Hub for the
    repo's files on every run."""
    import datasets.config

    name, subset, _ = WIKITEXT
    prepared = Path(datasets.config.HF_DATASETS_CACHE) / name.replace("/", "___") / subset
    if any(prepared.rglob("dataset_info.json")):
        return
    _wikitext()


def _wikitext() -> list[str]:
    import datasets

    name, subset, split = WIKITEXT
    try:
        rows = datasets.load_dataset(name, subset, split=split)
    except Exception as err:  # datasets raises several types for a dataset it cannot reach or find
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        raise ModelpressError(
            f"no data_config is named, so calibration uses {name} ({subset}), Olive's default, and it could not be "
            f"read{' offline' if offline else ''}: {type(err).__name__}: {err}. Name one of the workflow's data "
            "configs in data_config, or fetch the dataset into the Hugging Face cache on a machine with network."
        ) from None
    return [t for t in rows["text"] if t.strip()]


# --- writing the checkpoint -------------------------------------------------------------------------

def stored_dtype(folder: Path):
    """torch.float16 or torch.bfloat16 when the folder's config.json says its weights are stored so; else None.
    The passes quantize a float32 copy, whose config then says float32."""
    import torch

    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = str(config.get("dtype") or config.get("torch_dtype") or "")
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(name.removeprefix("torch."))


def save_quantized(model, tokenizer, packed: dict[str, dict], config: dict, out: Path, keep: dict | None = None,
                   dtype=None):
    """Write the model with each module in `packed` stored as qweight/scales/qzeros (see modelpress.quantized);
    its other float tensors in `dtype` (the input's: float16 or bfloat16), else as they are."""
    from safetensors.torch import save_file

    state = {}
    stored = {**(keep or {}), **packed}  # modules written as qweight/scales/qzeros, without their float weight
    for name, tensor in model.state_dict().items():
        module = name.rsplit(".", 1)[0]
        if module in stored and name.endswith(".weight"):
            continue
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[name] = tensor.clone().contiguous()
    for module, parts in stored.items():
        state.update({f"{module}.{part}": parts[part].contiguous() for part in PARTS})
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    model_config = model.config
    if (config.get("lm_head") or config.get("embeds")) and getattr(model_config, "tie_word_embeddings", False):
        model_config.tie_word_embeddings = False  # one of the two is stored quantized, the other not (as Olive)
    model_config.quantization_config = config
    if dtype is not None:
        model_config.dtype = dtype  # what its float tensors are stored in
    model_config.save_pretrained(str(out))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


# Modules that hold several projections, which onnxruntime-genai's builder splits by rows.
FUSED = ("qkv_proj", "gate_up_proj", "query_key_value", "dense_h_to_4h")


def packed_parts(codes, scales, zeros, grid: Grid, name: str = "") -> dict:
    import torch

    qzeros = stored_zeros(pack(zeros, grid.bits), name, grid.bits)
    return {"qweight": pack(codes, grid.bits), "scales": scales.to(torch.float32), "qzeros": qzeros}


def stored_zeros(qzeros, name: str, bits: int):
    """Packed zero points (rows, ...) in the shape they are stored in. onnxruntime-genai 0.18's builder splits a
    fused module's Olive-format zero points at rows // (8 // bits) instead of rows (loaders/base.py), then
    flattens each part: storing them as (rows / (8 // bits), groups * (8 // bits)) gives each part exactly its
    own bytes; modelpress.quantized reads either shape."""
    if name.rsplit(".", 1)[-1] in FUSED and bits < 8:
        return qzeros.reshape(qzeros.shape[0] // (8 // bits), -1)
    return qzeros


def _load(ctx: PassContext):
    """The input model in float32 (a quantized input is read dequantized) and its tokenizer."""
    model = load_causal_lm(ctx.model.path, "float32", ctx.input_model.trust_remote_code)
    return model.eval(), load_tokenizer(ctx.model.path, ctx.input_model.trust_remote_code)


def _already_quantized(folder: Path) -> tuple[dict, dict]:
    """The packed tensors and config of an input that is already quantized (Rtn after Gptq)."""
    config = quant_config(folder)
    if config is None:
        return {}, {}
    from modelpress.quantized import grid_of, midpoint_zeros

    state = load_state(folder)
    for m in quantized_modules(state):  # an Olive checkpoint's symmetric modules have no zero points
        if f"{m}.qzeros" not in state:
            bits = grid_of(config, m).bits
            state[f"{m}.qzeros"] = stored_zeros(midpoint_zeros(state[f"{m}.scales"], bits), m, bits)
    return {m: {part: state[f"{m}.{part}"] for part in PARTS} for m in quantized_modules(state)}, config


def _merged_config(done_config: dict, config: dict) -> dict:
    if not done_config:
        return config
    merged = dict(done_config)
    merged["overrides"] = dict(done_config.get("overrides") or {})
    defaults = {k: done_config[k] for k in ("bits", "group_size", "symmetric")}
    for name, grid in config.get("_grids", {}).items():
        diff = {k: v for k, v in vars(grid).items() if v != defaults[k]}
        if diff:
            merged["overrides"][name] = diff
    merged["lm_head"] = done_config.get("lm_head", False) or config["lm_head"]
    merged["embeds"] = done_config.get("embeds", False) or config["embeds"]
    return merged


def _finish(ctx: PassContext, model, tokenizer, packed: dict, config: dict, done: dict, done_config: dict,
            plan: dict, what: str) -> ModelRef:
    import torch

    config = _merged_config(done_config, {**config, "_grids": {n: plan[n] for n in packed}})
    config.pop("_grids", None)
    with torch.no_grad():
        save_quantized(model, tokenizer, packed, config, ctx.out, keep=done, dtype=stored_dtype(ctx.model.path))
    mixed = Path(ctx.model.path) / MIXED_PRECISION_FILE
    if mixed.is_file():  # the choice travels down the chain, as Olive's model attribute does: a Rtn after Gptq
        shutil.copy2(mixed, ctx.out / MIXED_PRECISION_FILE)
    bits = sorted({plan[n].bits for n in packed})
    ctx.notes.append(f"{what}: {len(packed)} modules at {'/'.join(map(str, bits))} bits"
                     + (f", {len(done)} already quantized kept" if done else ""))
    return ModelRef(HF_QUANTIZED, ctx.out, id="", task=dict(ctx.model.task))


def run_rtn(ctx: PassContext, params: RtnParams) -> ModelRef:
    """Round-to-nearest; modules an earlier pass quantized (Gptq) are kept as they are."""
    import torch

    model, tokenizer = _load(ctx)
    done, done_config = _already_quantized(ctx.model.path)
    plan, config = quant_plan(model, params, ctx.model.path)
    modules = dict(model.named_modules())
    packed = {}
    with torch.no_grad():
        for name, grid in plan.items():
            if name in done:
                continue
            weight = modules[name].weight.float()
            grid.check(name, weight.shape[1])
            packed[name] = packed_parts(*rtn(weight, grid), grid, name)
    return _finish(ctx, model, tokenizer, packed, config, done, done_config, plan, "round-to-nearest")


def run_gptq(ctx: PassContext, params: GptqParams) -> ModelRef:
    """GPTQ, layer by layer: each layer is calibrated on the outputs of the layers already quantized."""
    from modelpress.passes.gptq_layers import quantize_layers

    model, tokenizer = _load(ctx)
    plan, config = quant_plan(model, params, ctx.model.path)
    for name, grid in plan.items():
        grid.check(name, dict(model.named_modules())[name].weight.shape[1])
    grouped = [name for name, grid in plan.items() if grid.group_size != -1]
    if params.desc_act and grouped:  # act order with groups would need g_idx, which the builder does not read
        ctx.notes.append(f"desc_act applies to modules quantized in one group per row: {len(grouped)} of "
                         f"{len(plan)} are grouped (overrides or SelectiveMixedPrecision), such as {grouped[0]}, "
                         "and are quantized in column order")
        log.warning("Gptq: %s", ctx.notes[-1])
    rows = calibration_rows(ctx, params.data_config, params.calibration_samples, params.max_seq_len, tokenizer)
    if not rows:
        raise ModelpressError("Gptq: the calibration data gave no token rows; name a data config with text.")
    packed = quantize_layers(model, rows, plan, params, show_progress=ctx.show_progress)
    return _finish(ctx, model, tokenizer, packed, config, {}, {}, plan,
                   f"GPTQ on {len(rows)} calibration rows")


def run_mixed_precision(ctx: PassContext, params) -> ModelRef:
    from modelpress.passes.mixed_precision import choose

    import shutil

    from modelpress.fsutil import atomic_write_json
    from modelpress.models import MODEL_CARD

    model, tokenizer = _load(ctx)
    default, overrides = choose(ctx, model, tokenizer, params)
    shutil.copytree(ctx.model.path, ctx.out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MODEL_CARD))
    atomic_write_json(ctx.out / MIXED_PRECISION_FILE, {"algorithm": params.algorithm, "default": default,
                                                        "overrides": overrides})
    ctx.notes.append(f"{params.algorithm}: {len(overrides)} modules at {params.high_bits} bits, the rest at "
                     f"{params.bits}")
    return ModelRef(ctx.model.kind, ctx.out, id="", task=dict(ctx.model.task))
