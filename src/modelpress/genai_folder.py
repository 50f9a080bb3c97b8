"""What modelpress reads from, and sets on, an onnxruntime-genai model folder when it runs one.

The pad id batches use (`free_pad_id`) and the thread count (`genai_threads`) are overlaid on the
folder's genai_config.json in memory (`open_model`); the folder itself is left as the builder wrote it.
"""

from __future__ import annotations

import json
from pathlib import Path

from modelpress.errors import ModelpressError
from modelpress.runtime import capped_threads, compute_threads

# Plain greedy decoding (as runners.GREEDY for transformers): onnxruntime-genai fills every search option not set
# from genai_config.json's "search" section, which may ask for a repetition penalty, n-gram blocking or beams.
GENAI_GREEDY = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                "min_length": 0}


def open_model(og, folder: Path, model_overlay: dict | None = None):
    """`og.Model` of the folder, on every core this process may use (unless its config names a thread
    count), with `model_overlay` merged into the config's "model" section. A folder whose config loads a native
    library (a session's custom_ops_library) is refused: that is code from the folder, which modelpress never runs
    unasked (and its builder never writes one)."""
    library = _custom_ops_library(json.loads((folder / "genai_config.json").read_text()))
    if library is not None:
        raise ModelpressError(f"{folder / 'genai_config.json'} names a native library to load "
                              f"(custom_ops_library: {library}), code from the model folder that modelpress does "
                              "not run. If you built the library and trust it, run the model with onnxruntime-genai "
                              "directly; to use the folder here, remove the key.")
    config = og.Config(str(folder))
    overlay = {**genai_threads(folder), **(model_overlay or {})}
    if overlay:
        config.overlay(json.dumps({"model": overlay}))
    return og.Model(config)


def _custom_ops_library(node):
    """The first custom_ops_library named anywhere in a genai config (every session_options), or None."""
    if isinstance(node, dict):
        if node.get("custom_ops_library"):
            return node["custom_ops_library"]
        node = list(node.values())
    if isinstance(node, list):
        return next((found for item in node if (found := _custom_ops_library(item)) is not None), None)
    return None


def genai_threads(folder: Path) -> dict:
    """The genai config overlay that runs the model on every core this process may use, or on the thread count
    its genai_config.json names; in a Ray task, within the CPUs the task reserved (`runtime.limit_threads`).
    onnxruntime-genai 0.18 runs a CPU model on one thread by default (measured on 2 cores: a batch of 16
    SmolLM2 prompts took 1.69 s on one thread, 0.89 s on two), where onnxruntime itself uses every physical
    core."""
    own = own_threads(folder)
    threads = compute_threads() if own is None else capped_threads(own)
    return {} if threads == own else {"decoder": {"session_options": {"intra_op_num_threads": threads}}}


def own_threads(folder: Path) -> int | None:
    """The decoder thread count the folder's genai_config.json names, or None."""
    decoder = json.loads((folder / "genai_config.json").read_text())["model"].get("decoder", {})
    return decoder.get("session_options", {}).get("intra_op_num_threads")


def named_token(folder: Path, key: str, files: tuple[str, ...] = ("tokenizer_config.json",)) -> str | None:
    """The text of special token `key` (`bos_token`, `eos_token`) as the first of `files` that names it in the
    folder writes it (a string, or a dict's `content`); None when none does."""
    for name in files:
        path = folder / name
        named = json.loads(path.read_text(encoding="utf-8")).get(key) if path.is_file() else None
        if named is not None:
            return named.get("content") if isinstance(named, dict) else named
    return None


def trained_bos(folder: Path, encode, genai_bos: int) -> int | None:
    """The beginning-of-sequence id a PyTorch runner and training put before a prompt: the token the folder's
    tokenizer config names, None where it names none (Qwen2's `bos_token` is null, yet the genai builder
    copies a `bos_token_id` from config.json into genai_config.json); genai's own where the folder has no
    tokenizer config or the token is not one id."""
    fallback = genai_bos if genai_bos is not None and genai_bos >= 0 else None
    if not (folder / "tokenizer_config.json").is_file():
        return fallback
    # special_tokens_map.json: where transformers 4 kept it
    named = named_token(folder, "bos_token", ("tokenizer_config.json", "special_tokens_map.json"))
    if not named:
        return None
    ids = encode(named)
    return ids[0] if len(ids) == 1 else fallback


def loss_session_options(folder: Path, prepack: bool = True):
    """onnxruntime SessionOptions for scoring with the folder's decoder model outside genai: the thread count its
    genai_config.json names (within a Ray task's reservation), else `quiet_options`'s; without prepacked
    weights where `prepack` is off."""
    from modelpress.onnx_model import quiet_options

    options = quiet_options()
    own = own_threads(folder)
    if own is not None:
        options.intra_op_num_threads = capped_threads(own)
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return options


def free_pad_id(folder: Path) -> int:
    """The id genai pads batches with: the model's own pad id, unless the chat template writes that token.

    onnxruntime-genai 0.18 takes pad ids at the end of a row for padding, even at batch 1 (measured: a pad id
    inside a prompt is read as a token, one that ends it is dropped), so a prompt must not end with the pad
    id. Chat models often pad with their turn-end token (SmolLM2: <|im_end|>), which chat prompts hold; then
    the highest-numbered special token inside the vocabulary that the template does not write (nor bos/eos)
    is used. A prompt that still ends with it runs on a model handle that pads with `other_pad_id`.
    """
    model = json.loads((folder / "genai_config.json").read_text())["model"]
    eos = model.get("eos_token_id", [])
    eos = set(eos if isinstance(eos, list) else [eos])
    pad = model.get("pad_token_id", min(eos) if eos else 0)
    template = _template_text(folder)
    added = {}
    tokenizer_file = folder / "tokenizer.json"
    if tokenizer_file.is_file():
        added = {t["id"]: t["content"] for t in json.loads(tokenizer_file.read_text()).get("added_tokens", [])
                 if t.get("special")}
    if pad not in added or added[pad] not in template:
        return pad
    taken = eos | {model.get("bos_token_id"), pad}
    vocab = model.get("vocab_size") or 0
    spare = [i for i, text in added.items() if i not in taken and text not in template and i < vocab]
    return max(spare) if spare else pad


def _template_text(folder: Path) -> str:
    """Every chat template saved in a model folder, joined (empty when there is none)."""
    texts = []
    if (folder / "chat_template.jinja").is_file():
        texts.append((folder / "chat_template.jinja").read_text())
    for name, key in (("tokenizer_config.json", "chat_template"), ("modelpress_model.json", "task")):
        if (folder / name).is_file():
            value = json.loads((folder / name).read_text()).get(key)
            texts.append(json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value)
    return "\n".join(texts)


def other_pad_id(pad: int) -> int:
    """Another id to pad with, for rows whose last token is `pad` (which genai would take for padding)."""
    return pad - 1 if pad > 0 else pad + 1
