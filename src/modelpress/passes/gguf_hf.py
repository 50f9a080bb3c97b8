"""What GgufExport writes for a model: the metadata, the tensors expected and the tensors copied or computed.

For a workflow whose input was a GGUF file, `gguf_export` reads them from that file. A model that never was one
(a Hugging Face folder or Hub id) is described here from its config and tokenizer, with the keys llama.cpp's
converter (`convert_hf_to_gguf.py`) writes for its architecture:
- shape keys from the config (context, embedding and feed-forward lengths, blocks, heads, norm epsilon, RoPE base
  and dimensions); RoPE scaling where llama.cpp has it as metadata (linear) or as tensors (Llama 3.1's
  frequencies, computed with transformers' own llama3 RoPE function; Phi-3's longrope factors);
- the tokenizer from its tokenizer.json: a byte-level BPE one (llama.cpp's "gpt2" model) as its tokens, token
  types, merges and special ids, read by the `gguf` package's `SpecialVocab`, with the name of llama.cpp's
  pre-tokenizer found by matching the tokenizer's own pre-tokenizer to the ones in `PRE_TOKENIZERS` (llama.cpp's
  converter hashes the ids of a test text instead, against a table of known models); a SentencePiece-style BPE
  with byte fallback (its "llama" model) with scores from the merges' ranks.
What it does not know (another tokenizer, RoPE scaling or pre-tokenizer) it refuses by name, pointing at llama.cpp's
converter; `unwritten_folder` says so from a folder's two JSON files, for the config check.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelpress.errors import ModelpressError
from modelpress.fsutil import read_json
from modelpress.passes.gguf_gemma import GEMMA, gemma_keys, gemma_unwritten

log = logging.getLogger("modelpress")

CONVERTER = "convert the model folder (the output of the pass before GgufExport) with llama.cpp's convert_hf_to_gguf.py"
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # a SentencePiece byte-fallback token
# added tokens llama.cpp's converter makes CONTROL though not marked special (<|...|>, DeepSeek's <｜...｜>, Gemma's)
LOOKS_SPECIAL = re.compile(r"<\|.*\|>|<｜.*｜>|<unused.*>|<pad>|<mask>|<2mass>|\[@BOS@\]", re.DOTALL)
SPACE = "\u2581"  # SentencePiece's space
NO_MERGE = -1e9  # the SentencePiece score of a token no merge makes
CHAT_TEMPLATE = "tokenizer.chat_template"
PHI3_ROPE_NAMES = {"su": "longrope", "yarn": "longrope"}  # Phi-3 configs' older names, as transformers reads them
RESAVE_TOKENIZER = ("Save the tokenizer again with transformers, which writes tokenizer.json: "
                    "AutoTokenizer.from_pretrained(folder).save_pretrained(folder).")
# transformers model_type -> llama.cpp architecture
MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3",
               "gemma2": "gemma2", "gemma3_text": "gemma3"}

# The pre-tokenizers llama.cpp names, as a tokenizer.json's `pre_tokenizer` writes them: the steps in order, each
# (type, its settings that change the split), and whether BPE takes a word found whole in the vocabulary without
# its merges (`ignore_merges`). Each row is checked against llama.cpp's own tokenization (tests/test_gguf_hf.py).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
PRE_TOKENIZERS: dict[str, tuple[tuple, bool]] = {
    "gpt-2": ((("ByteLevel", True),), False),                                  # GPT-2, the tiny test models
    "smollm": ((("Digits", True), ("ByteLevel", True)), False),                # SmolLM, SmolLM2
    "llama-bpe": ((("Split", LLAMA3_SPLIT), ("ByteLevel", False)), True),      # Llama 3, 3.1, 3.2
    "qwen2": ((("Split", QWEN2_SPLIT), ("ByteLevel", False)), False),          # Qwen2, Qwen2.5, Qwen3
}


@dataclass
class FileSpec:
    """The GGUF file to write: its architecture, metadata {key: value} (general.architecture included), the
    entries the writer adds [(key, value, GGUFValueType, item type or None)], the tensors expected {llama.cpp
    name: shape} (None: whatever the model's weights map to), and tensors not from the model's weights {llama.cpp
    name: () -> (array, raw GGML type or None for float)}."""

    arch: str
    meta: dict
    entries: list = field(default_factory=list)
    tensors: dict | None = None
    carried: dict[str, Callable] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def unwritten_model_type(model_type: str | None) -> str | None:
    """Why GgufExport cannot write a Hugging Face model of this model_type (None: it can)."""
    if model_type in MODEL_TYPES:
        return None
    return (f"GgufExport writes Hugging Face models of model_type {', '.join(MODEL_TYPES)}, and this one is "
            f"{model_type!r}: {CONVERTER}")


def unwritten_folder(folder: Path, first: bool = False) -> tuple[str, str] | None:
    """Why GgufExport cannot write the Hugging Face model in `folder`, and the fix (None: it can, as far as its
    config.json and tokenizer.json say: the model type, the RoPE scaling, the tokenizer's kind, pre-tokenizer and
    size, and, where GgufExport reads the folder itself (`first`), that it is not a quantized checkpoint), from the
    two files alone, so that the config check says it before any training."""
    remove = "Remove GgufExport from this workflow."
    config_path, tokenizer_path = folder / "config.json", folder / "tokenizer.json"
    config = _json_file(config_path)
    if isinstance(config, str):
        return config, "Fix the file, or save the model again with save_pretrained."
    try:
        why = unwritten_model_type(config.get("model_type"))
        if why:
            return f"{config_path}: {why}", remove
        if first and config.get("quantization_config"):
            return (f"{config_path} has a quantization_config: GgufExport writes a quantized checkpoint that a Gptq "
                    "or Rtn step of the workflow made, not one read as the input model",
                    "Start from the float model and put Gptq or Rtn before GgufExport.")
        arch = MODEL_TYPES[config["model_type"]]
        if arch in GEMMA:
            why = gemma_unwritten(config, arch)
            if why:
                raise ModelpressError(f"{config_path}: {why}: {CONVERTER}")
        else:
            rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
            kind = rope.get("rope_type") or rope.get("type") or "default"
            _check_rope(PHI3_ROPE_NAMES.get(kind, kind) if arch == "phi3" else kind, arch, config_path)
        if not tokenizer_path.is_file():
            return (f"{folder} has no tokenizer.json, from which GgufExport writes the tokenizer",
                    RESAVE_TOKENIZER)
        spec = _json_file(tokenizer_path)
        if isinstance(spec, str):
            return spec, RESAVE_TOKENIZER
        _tokenizer_kind(spec, tokenizer_path)
        _check_size(spec, tokenizer_path, config.get("vocab_size"))
    except ModelpressError as e:
        return str(e).rstrip("."), remove
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # a value of another shape than transformers
        return f"{config_path} or {tokenizer_path} has a value of an unexpected shape ({e!r})", \
            "Save the model and tokenizer again with save_pretrained."
    return None


def _json_file(path: Path) -> dict | str:
    """The JSON object in `path` (fsutil.read_json), or why it is not one."""
    try:
        value = read_json(path)
    except OSError as e:
        return f"{path} is not readable ({e})"
    except ModelpressError as e:  # DamagedFileError: not readable JSON
        return str(e)
    return value if isinstance(value, dict) else f"{path} holds a {type(value).__name__}, not a JSON object"


def _check_size(spec: dict, path: Path, vocab_size) -> None:
    """Refuse a tokenizer with ids the embedding has no row for (llama.cpp would not load the file)."""
    ids = list((spec.get("model") or {}).get("vocab", {}).values()) + [t["id"] for t in spec.get("added_tokens") or []]
    if isinstance(vocab_size, int) and ids and max(ids) >= vocab_size:
        raise ModelpressError(f"{path} has token ids up to {max(ids)}, and the model's config.json vocab_size is "
                              f"{vocab_size}: the embedding has no row for ids from {vocab_size} on. Resize the "
                              "embedding to the tokenizer (model.resize_token_embeddings(len(tokenizer))) before "
                              "training, or remove the added tokens.")


def describe_folder(folder: Path, input_model, gguf) -> FileSpec:
    """The file for a Hugging Face folder (a pass's output, or the input model), named after the input model."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder))
    why = unwritten_model_type(config.model_type)
    if why:
        raise ModelpressError(f"{folder / 'config.json'}: {why}.")
    arch = MODEL_TYPES[config.model_type]
    name = input_model.hub_id or Path(input_model.model_path).name
    values: dict[str, object] = {"general.architecture": arch, "general.name": name}
    carried = {}
    if arch in GEMMA:  # llama.cpp's fixed choices for it are checked, its keys written (gguf_gemma)
        why = gemma_unwritten(config.to_dict(), arch)
        if why:
            raise ModelpressError(f"{folder / 'config.json'}: {why}: {CONVERTER}.")
        values.update(gemma_keys(config.to_dict(), arch))
    else:
        values.update(_shape_keys(config, arch))
        values.update(_rope_scaling(config, arch, carried, folder / "config.json"))
    tokenizer, notes = _tokenizer(folder, config.vocab_size, gguf)
    window = getattr(config, "sliding_window", None)
    if arch not in ("phi3", *GEMMA) and window and (arch == "llama" or getattr(config, "use_sliding_window", False)):
        notes.append(f"the config's sliding window of {window} tokens is not written: llama.cpp's {arch} "
                     "architecture attends to the whole context, as its converter writes it, so answers past the "
                     "window differ from transformers'")
        log.warning("GgufExport: %s", notes[-1])
    meta = {**values, **tokenizer}
    entries = [(k, v, *_value_type(k, v, gguf)) for k, v in meta.items() if k != "general.architecture"]
    return FileSpec(arch, meta, entries, None, carried, notes)


def _shape_keys(config, arch: str) -> dict:
    """The config as llama.cpp's converter writes it for `arch` (Phi3MiniModel has its own list)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = dict(getattr(config, "rope_parameters", None) or {})
    keys = {"context_length": config.max_position_embeddings, "embedding_length": config.hidden_size,
            "feed_forward_length": config.intermediate_size, "block_count": config.num_hidden_layers,
            "attention.head_count": heads,
            "attention.head_count_kv": getattr(config, "num_key_value_heads", None) or heads,
            "rope.freq_base": float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
            "attention.layer_norm_rms_epsilon": float(config.rms_norm_eps)}
    if arch == "phi3":
        partial = float(rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)))
        keys["rope.dimension_count"] = int(partial * config.hidden_size) // heads
        keys["rope.scaling.original_context_length"] = getattr(config, "original_max_position_embeddings", None) \
            or config.max_position_embeddings
        keys["attention.sliding_window"] = getattr(config, "sliding_window", None) or 0
    else:
        keys["attention.key_length"] = keys["attention.value_length"] = head_dim
        if arch == "llama":
            keys["vocab_size"] = config.vocab_size
            keys["rope.dimension_count"] = head_dim
    return {f"{arch}.{k}": v for k, v in keys.items()}


# RoPE scalings written (rope_type: the architectures that have it in llama.cpp, None for all)
ROPE_TYPES = {"default": None, "linear": None, "llama3": ("llama",), "longrope": ("phi3",)}


def _check_rope(kind: str, arch: str, where: Path) -> None:
    """Refuse a RoPE scaling llama.cpp has no keys or tensors for (in this architecture)."""
    if kind in ROPE_TYPES and (ROPE_TYPES[kind] is None or arch in ROPE_TYPES[kind]):
        return
    raise ModelpressError(f"{where}: GgufExport writes RoPE scaling 'linear', and 'llama3' for Llama and 'longrope' "
                          f"for Phi-3; this model's rope_type is {kind!r}: {CONVERTER}.")


def _rope_scaling(config, arch: str, carried: dict, where: Path) -> dict:
    """RoPE scaling as llama.cpp reads it: linear as metadata; Llama 3.1's as a tensor of frequency factors (the
    default RoPE's inverse frequencies over llama3's, from transformers' own functions); Phi-3's longrope (Phi-3
    128k, Phi-3.5) as its long and short factor tensors and the attention factor transformers computes for it;
    others refused."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    kind = rope.get("rope_type", "default")
    _check_rope(kind, arch, where)
    if kind == "linear":
        return {f"{arch}.rope.scaling.type": "linear", f"{arch}.rope.scaling.factor": float(rope["factor"])}
    if kind == "llama3":
        import numpy as np
        import torch
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        plain = 1.0 / (float(rope["rope_theta"]) ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        factors = (plain / scaled).numpy().astype(np.float32)  # 1 for high frequencies, `factor` for low ones
        carried["rope_freqs.weight"] = lambda: (factors, None)
    if kind == "longrope":  # llama.cpp takes the long factors past the original context, as transformers does
        import numpy as np
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        _, attention = ROPE_INIT_FUNCTIONS["longrope"](config, "cpu")
        for which in ("long", "short"):
            factors = np.asarray(rope[f"{which}_factor"], dtype=np.float32)
            carried[f"rope_factors_{which}.weight"] = lambda f=factors: (f, None)
        return {f"{arch}.rope.scaling.attn_factor": float(attention)}
    return {}


def _tokenizer_kind(spec: dict, path: Path) -> tuple[str, str]:
    """llama.cpp's tokenizer model and pre-tokenizer for a tokenizer.json, or a refusal that names it: a byte-level
    BPE ('gpt2', with one of PRE_TOKENIZERS, and no normalizer but NFC, which llama.cpp's converter ignores too), or
    a SentencePiece-style BPE with byte fallback ('llama', whose normalizer may only put SentencePiece's spaces)."""
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    normalizers = _steps(spec.get("normalizer"), "normalizers")
    if model.get("type") == "BPE" and not model.get("byte_fallback") and decoder.get("type") == "ByteLevel":
        if any(n.get("type") != "NFC" for n in normalizers):
            raise ModelpressError(f"{path}: its normalizer {[n.get('type') for n in normalizers]} changes the text "
                                  f"before it is split, which llama.cpp does not do: {CONVERTER}.")
        return "gpt2", pre_tokenizer_name(spec, path)
    if model.get("type") == "BPE" and model.get("byte_fallback") and decoder.get("type") == "Sequence":
        spaces = [n for n in normalizers if not _sentencepiece_space(n)]
        if spaces:
            raise ModelpressError(f"{path}: its normalizer {[n.get('type') for n in spaces]} changes the text beyond "
                                  f"SentencePiece's spaces, which llama.cpp does not do: {CONVERTER}.")
        replaced = any(n.get("type") == "Replace" for n in normalizers)  # spaces are "▁" before any split
        splits = [p for p in _steps(spec.get("pre_tokenizer"), "pretokenizers")
                  if not (p.get("type") == "Metaspace" and p.get("replacement", SPACE) == SPACE)
                  and not (replaced and _splits_at_spaces(p))]
        if splits:
            raise ModelpressError(f"{path}: its pre-tokenizer {[p.get('type') for p in splits]} splits the text "
                                  "before BPE, which llama.cpp's SentencePiece tokenizer does not do: "
                                  f"{CONVERTER}.")
        return "llama", "default"
    raise ModelpressError(f"{path}: GgufExport writes byte-level BPE tokenizers (llama.cpp's 'gpt2' model: Llama 3, "
                          "Qwen, SmolLM2, GPT-2) and SentencePiece-style BPE ones with byte fallback (its 'llama' "
                          "model: Llama 2, Mistral, Phi-3), and this one is "
                          f"{model.get('type')} with a {decoder.get('type')} decoder: {CONVERTER}.")


def _splits_at_spaces(step: dict) -> bool:
    """A pre-tokenizer step that splits at " " (Gemma's), which splits nothing once the normalizer has put "▁" in
    place of every space."""
    return (step.get("type") == "Split" and (step.get("pattern") or {}).get("String") == " "
            and not step.get("invert"))


def _sentencepiece_space(step: dict) -> bool:
    """A normalizer step that puts SentencePiece's spaces: "▁" before the text, or in place of each space."""
    if step.get("type") == "Prepend":
        return step.get("prepend") == SPACE
    return step.get("type") == "Replace" and step.get("content") == SPACE and (step.get("pattern") or {}).get(
        "String") == " "


def _steps(part: dict | None, key: str) -> list[dict]:
    """The steps of a tokenizer.json normalizer or pre-tokenizer (one, or a Sequence's)."""
    if not part:
        return []
    return list(part.get(key) or []) if part.get("type") == "Sequence" else [part]


def _tokenizer(folder: Path, vocab_size: int, gguf) -> tuple[dict, list[str]]:
    """The tokenizer.* keys, as llama.cpp's converter writes them: every id up to the config's vocab_size (ids the
    tokenizer lacks as unused [PAD<id>] tokens); CONTROL for special added tokens, USER_DEFINED for the others;
    merges (byte-level BPE), special ids and the chat template from the gguf package's SpecialVocab; whether BOS
    and EOS are added, from the tokenizer's own encoding."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ModelpressError(f"GgufExport writes a model's tokenizer from its tokenizer.json, and {folder} has "
                              f"none. {RESAVE_TOKENIZER}")
    spec = json.loads(path.read_text(encoding="utf-8"))
    kind, pre = _tokenizer_kind(spec, path)
    byte_level, model = kind == "gpt2", spec["model"]
    keys = {"tokenizer.ggml.model": kind, "tokenizer.ggml.pre": pre}
    if not byte_level:
        keys["tokenizer.ggml.add_space_prefix"] = _sentencepiece_prefix(spec)
    added = {t["id"]: t for t in spec.get("added_tokens") or []}
    by_id = {i: text for text, i in model["vocab"].items()}
    by_id.update({i: t["content"] for i, t in added.items()})
    _check_size(spec, path, vocab_size)
    special = gguf.SpecialVocab(folder, load_merges=byte_level, n_vocab=vocab_size)
    control = set(special.special_token_ids.values()) if not byte_level else set()  # <s>, </s> in a base vocab
    types = gguf.TokenType
    tokens, kinds = [], []
    for i in range(vocab_size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            kinds.append(types.UNUSED)
        elif i in added:
            look = added[i].get("special") or LOOKS_SPECIAL.fullmatch(text)
            tokens.append(text if look else text.replace(SPACE, " "))  # as the converter writes user tokens
            kinds.append(types.CONTROL if look else types.USER_DEFINED)
        else:
            tokens.append(text)
            kinds.append(types.UNKNOWN if text == model.get("unk_token") else types.CONTROL if i in control else
                         types.BYTE if not byte_level and BYTE_TOKEN.fullmatch(text) else types.NORMAL)
    keys.update({"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": [int(k) for k in kinds]})
    if byte_level:
        if not special.merges:
            raise ModelpressError(f"{path} has no merges, which llama.cpp's BPE needs: {CONVERTER}.")
        keys["tokenizer.ggml.merges"] = list(special.merges)
    else:
        keys["tokenizer.ggml.scores"] = _merge_scores(model, tokens)
    ids = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "sep": "seperator_token_id",
           "pad": "padding_token_id", "mask": "mask_token_id", "eot": "eot_token_id",
           "eom": "eom_token_id"}  # gguf's Keys.Tokenizer spellings
    for role, token_id in special.special_token_ids.items():
        if role in ids:
            keys[f"tokenizer.ggml.{ids[role]}"] = token_id
    keys.update(_added_ends(path, keys))
    keys.update(_chat_templates(special.chat_template))
    notes = [f"tokenizer: {len(tokens)} tokens, llama.cpp's {keys['tokenizer.ggml.model']!r} model with the "
             f"{keys['tokenizer.ggml.pre']!r} pre-tokenizer"]
    if vocab_size > len(by_id):
        notes.append(f"{vocab_size - len(by_id)} ids under the config's vocab_size {vocab_size} have no token: written "
                     "as unused [PAD<id>] tokens, as llama.cpp's converter does")
    return keys, notes


def _merge_scores(model: dict, tokens: list[str]) -> list[float]:
    """SentencePiece scores for llama.cpp's 'llama' tokenizer, which merges the adjacent pair whose joined text is
    the token of highest score: minus the rank of the first merge that makes each token, as the BPE merges rank
    them; a token no merge makes (a single character, a byte, an unused id) the lowest, as no merge gives it."""
    rank: dict[str, int] = {}
    for i, merge in enumerate(model.get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, i)
    return [-float(rank[t]) if t in rank else NO_MERGE for t in tokens]


def _sentencepiece_prefix(spec: dict) -> bool:
    """Whether the tokenizer puts a space (SentencePiece's "▁") before the text, as llama.cpp's add_space_prefix:
    a Metaspace pre-tokenizer that prepends (its prepend_scheme; add_prefix_space in older files), or a normalizer
    that prepends "▁"."""
    metaspace = [p for p in _steps(spec.get("pre_tokenizer"), "pretokenizers") if p.get("type") == "Metaspace"]
    if metaspace:
        scheme = metaspace[0].get("prepend_scheme")
        return scheme != "never" if scheme else metaspace[0].get("add_prefix_space", True) is not False
    return any(n.get("type") == "Prepend" and n.get("prepend") == SPACE
               for n in _steps(spec.get("normalizer"), "normalizers"))


def _chat_templates(template) -> dict:
    """The chat template keys: one template, or a list of named ones (the default as tokenizer.chat_template, each
    other as tokenizer.chat_template.<name>, as the gguf package's writer names them)."""
    if isinstance(template, str):
        return {CHAT_TEMPLATE: template}
    named = {re.sub(r"[^a-zA-Z0-9_]", "_", t["name"]) if isinstance(t.get("name"), str) else None: t.get("template")
             for t in template or [] if isinstance(t, dict)}  # names as the gguf package's writer cleans them
    keys = {CHAT_TEMPLATE if name == "default" else f"{CHAT_TEMPLATE}.{name}": text
            for name, text in named.items() if name and isinstance(text, str)}
    others = [name for name in named if name != "default" and f"{CHAT_TEMPLATE}.{name}" in keys]
    return {**keys, **({"tokenizer.chat_templates": others} if others else {})}


def _added_ends(path: Path, keys: dict) -> dict:
    """Whether encoding a text adds the BOS and EOS tokens, as the tokenizer itself does it (its post-processor),
    written in both cases: llama.cpp's default for a file without the keys depends on the pre-tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    plain, full = tokenizer.encode("a", add_special_tokens=False).ids, tokenizer.encode("a").ids
    bos, eos = keys.get("tokenizer.ggml.bos_token_id"), keys.get("tokenizer.ggml.eos_token_id")
    return {"tokenizer.ggml.add_bos_token": bos is not None and full[:1] == [bos] and plain[:1] != [bos],
            "tokenizer.ggml.add_eos_token": eos is not None and full[-1:] == [eos] and plain[-1:] != [eos]}


def pre_tokenizer_name(spec: dict, path: Path | str = "tokenizer.json") -> str:
    """llama.cpp's name for the pre-tokenizer of a tokenizer.json (`spec`, read from `path`), or a clear refusal."""
    found = []
    for step in _steps(spec.get("pre_tokenizer"), "pretokenizers"):
        kind = step.get("type")
        if kind == "ByteLevel":
            if step.get("add_prefix_space"):
                found.append(("ByteLevel add_prefix_space",))
            found.append(("ByteLevel", bool(step.get("use_regex", True))))
        elif kind == "Digits":
            found.append(("Digits", bool(step.get("individual_digits"))))
        elif kind == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
            found.append(("Split", (step.get("pattern") or {}).get("Regex")))
        else:
            found.append((kind, json.dumps(step, sort_keys=True)))
    signature = (tuple(found), bool((spec.get("model") or {}).get("ignore_merges")))
    for name, known in PRE_TOKENIZERS.items():
        if known == signature:
            return name
    raise ModelpressError(f"{path}: GgufExport names llama.cpp's pre-tokenizer by matching the tokenizer's own, and "
                          f"knows {', '.join(PRE_TOKENIZERS)}; this tokenizer splits text with {list(found)}"
                          f"{' and ignore_merges' if signature[1] else ''}: {CONVERTER}.")


def _value_type(key: str, value, gguf) -> tuple:
    """The GGUF value type of a metadata entry (and its items' type for an array)."""
    t = gguf.GGUFValueType
    if isinstance(value, list):  # tokens and merges, token types, scores, a sliding-window pattern
        first = value[0] if value else ""
        if isinstance(first, bool):
            return t.ARRAY, t.BOOL
        return t.ARRAY, t.STRING if isinstance(first, str) else t.FLOAT32 if isinstance(first, float) else t.INT32
    if isinstance(value, bool):
        return t.BOOL, None
    if isinstance(value, int):
        return t.UINT32, None
    if isinstance(value, float):
        return t.FLOAT32, None
    return t.STRING, None
