"""`modelpress generate`: stream text from an onnxruntime-genai folder modelpress produced.

Uses onnxruntime-genai's current API (`append_tokens` / `generate_next_token`); the
cookbook's app used `compute_logits`, which onnxruntime-genai removed in 0.6.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

from modelpress.errors import ModelpressError
from modelpress.fsutil import read_json
from modelpress.genai_folder import open_model
from modelpress.models import MODEL_CARD
from modelpress.onnx_adapters import adapter_file, genai_adapters


def prompt_for(card: dict, text: str) -> str:
    """Wrap `text` in the training template's prompt part when the template has one input field."""
    from modelpress.config.templates import completion_field, template_fields

    chat = (card.get("task") or {}).get("chat")
    if chat:
        return chat_prompt_for(chat, text)
    template = (card.get("task") or {}).get("text_template")
    target = completion_field(template)
    inputs = [f for f in template_fields(template or "") if f != target]
    if not target or len(inputs) != 1:
        return text
    head = template[: template.rindex("{" + target + "}")]
    return head.replace("{" + inputs[0] + "}", text)


def chat_prompt_for(chat: dict, text: str) -> str:
    """The chat template's prompt for one user message, as the model was trained: its system prompt and the
    user turn's template (`chat_columns`) with `text` in its fields. Other turns that the columns fill from
    a row (a per-row system persona) have no value here and are left out."""
    from modelpress.chat import ChatFormat, role_template
    from modelpress.config.templates import template_fields

    columns = chat.get("columns") or {}
    spec = role_template(columns["user"]) if "user" in columns else "{text}"
    user = spec.format_map({f: text for f in template_fields(spec)})
    messages = [{"role": "system", "content": chat["system_prompt"]}] if chat.get("system_prompt") is not None else []
    return ChatFormat.from_card(chat).render([*messages, {"role": "user", "content": user}], add_generation_prompt=True)


def generate(model_dir: Path, text: str, max_new_tokens: int = 32, raw: bool = False,
             adapter: Path | None = None, use_adapter: bool = True) -> Iterator[str]:
    """Yield decoded pieces of the model's greedy continuation of `text`.

    A folder with an adapter file (ExtractAdapters) generates with it active; `adapter` names another
    adapter file for the same model, and `use_adapter=False` runs the base model.
    """
    if not (model_dir / "genai_config.json").is_file():
        raise ModelpressError(f"{model_dir} is not an onnxruntime-genai folder (no genai_config.json). "
                              "Point generate at the 'model' folder of a run that ends with ModelBuilder.")
    import numpy as np
    import onnxruntime_genai as og

    og.disable_telemetry_events()
    card = read_json(model_dir / MODEL_CARD) if (model_dir / MODEL_CARD).is_file() else {}
    prompt = text if raw else prompt_for(card, text)
    model = open_model(og, model_dir)
    tokenizer = og.Tokenizer(model)
    ids = list(tokenizer.encode(prompt))
    if (card.get("task") or {}).get("add_bos") and tokenizer.bos_token_id >= 0:
        ids = [tokenizer.bos_token_id] + ids
    params = og.GeneratorParams(model)
    # A fixed random_seed: greedy decoding ignores it, but without one onnxruntime-genai seeds
    # from std::random_device on every Generator, which costs 12-15 ms on hosts where RDSEED traps.
    params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False, random_seed=0)
    generator = og.Generator(model, params)
    scratch = tempfile.TemporaryDirectory(prefix="modelpress-adapter-")
    adapters = genai_adapters(og, model, (adapter or adapter_file(model_dir)) if use_adapter else None,
                              Path(scratch.name))
    if adapters is not None:
        generator.set_active_adapter(adapters, "active")
    generator.append_tokens(np.array(ids, dtype=np.int32))
    stream = tokenizer.create_stream()
    eos = set(tokenizer.eos_token_ids)
    while not generator.is_done():
        generator.generate_next_token()
        token = generator.get_next_tokens()[0]
        if token not in eos:
            yield stream.decode(token)
