"""`modelpress generate`: stream text from an onnxruntime-genai folder modelpress produced, or a GGUF one (llama.cpp).

Uses onnxruntime-genai's current API (`append_tokens` / `generate_next_token`); the
cookbook's app used `compute_logits`, which onnxruntime-genai removed in 0.6.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

from modelpress.errors import ModelpressError
from modelpress.fsutil import read_json
from modelpress.genai_folder import GENAI_GREEDY, open_model, other_pad_id, trained_bos
from modelpress.models import GGUF_FILE, MODEL_CARD
from modelpress.onnx_adapters import adapter_file, genai_adapters

log = logging.getLogger("modelpress")


def prompt_for(card: dict, text: str) -> str:
    """Wrap `text` in the training template's prompt part when the template has one input field."""
    return prompt_and_stop(card, text)[0]


def prompt_and_stop(card: dict, text: str) -> tuple[str, str]:
    """(the prompt for `text`, the text that closes an answer) as training and evaluation build them: a chat
    template's turns with its end-of-turn marker, or the head of a text template whose one input field `text`
    fills (its braces unescaped) with the literal text after the completion field. `text` itself and no stop
    when the card records neither."""
    from modelpress.config.templates import completion_split, template_fields, template_parts

    chat = (card.get("task") or {}).get("chat")
    if chat:
        return chat_prompt_for(chat, text), chat_stop(chat)
    template = (card.get("task") or {}).get("text_template")
    split = completion_split(template)
    inputs = [f for f in template_fields(template or "") if split and f != split[0]]
    if not split or len(set(inputs)) != 1:
        if template and len(set(inputs)) > 1:  # which field would the text fill?
            log.warning("the model was trained on a template with %d input fields (%s); the text is sent as it is, "
                        "not in that template: write the whole prompt (--raw says so)", len(set(inputs)),
                        ", ".join(sorted(set(inputs))))
        return text, ""
    parts = template_parts(template)
    last = max(i for i, part in enumerate(parts) if part[1] == split[0])
    head = "".join(literal + (text if field else "") for literal, field, _, _ in parts[:last]) + parts[last][0]
    return head, split[1].strip()


def chat_prompt_for(chat: dict, text: str) -> str:
    """The chat template's prompt for one user message, as the model was trained: its system prompt and the
    user turn's template (`chat_columns`) with `text` in its fields. Other turns that the columns fill from
    a row (a per-row system persona) have no value here and are left out."""
    from modelpress.chat import ChatFormat
    from modelpress.config.templates import role_template, template_fields

    columns = chat.get("columns") or {}
    spec = role_template(columns["user"]) if "user" in columns else "{text}"
    fields = sorted(set(template_fields(spec)))
    if len(fields) > 1:  # which field would the text fill?
        log.warning("the model's user turns were built from %d columns (%s); the text is sent as the user turn as it "
                    "is, not in that template: write the whole user message", len(fields), ", ".join(fields))
        spec = "{text}"
    user = spec.format_map({f: text for f in template_fields(spec)})
    messages = [{"role": "system", "content": chat["system_prompt"]}] if chat.get("system_prompt") is not None else []
    rendered = ChatFormat.from_card(chat).render([*messages, {"role": "user", "content": user}],
                                                 add_generation_prompt=True)
    return rendered + (chat["lead"] if "lead" in chat else _answer_turn_ends(chat)[0])  # as the rows' prompts ended


def chat_stop(chat: dict) -> str:
    """The text a chat template writes after an assistant turn's content (its end-of-turn marker), as
    `data.Example.stop` reads it from a trained row."""
    return _answer_turn_ends(chat)[1]


def _answer_turn_ends(chat: dict) -> tuple[str, str]:
    """(what the template writes at the start of an answer, after its generation prompt, such as Qwen3's empty
    think block; the end-of-turn marker after the answer), as `data._chat_example` reads them."""
    from modelpress.chat import ChatFormat

    lead, closing = ChatFormat.from_card(chat).turn_ends()
    return lead, closing.strip()


RECIPE_KEYS = ("chat", "text_template", "text_cols", "data_config")  # a card's keys that say how prompts were built


def _has_recipe(card: dict) -> bool:
    """Whether the card records how the model's prompts were built (a template, a chat format, text columns read as
    they are, the data config); its task's name, labels and answer length say nothing of it."""
    task = card.get("task") or {}
    return any(task.get(key) for key in RECIPE_KEYS)


def _own_chat_card(model_dir: Path, card: dict) -> dict:
    """A card that records no prompt recipe (`export` evaluates nothing): the prompt goes through the tokenizer's own
    chat template, as an instruct model expects, and says so; without one the text is sent as it is."""
    from modelpress.chat import ChatFormat
    from modelpress.errors import DataError

    try:
        chat = ChatFormat.from_model(model_dir).to_json()
    except (DataError, OSError, ValueError):
        log.info("the model records no prompt recipe and its tokenizer no chat template: the prompt is sent as it is")
        return card
    log.info("the model records no prompt recipe: the prompt goes through its tokenizer's chat template as a user "
             "turn (--raw sends it as it is)")
    return {**card, "task": {**(card.get("task") or {}), "chat": chat}}


def generate(model_dir: Path, text: str, max_new_tokens: int = 32, raw: bool = False,
             adapter: Path | None = None, use_adapter: bool = True) -> Iterator[str]:
    """Yield decoded pieces of the model's greedy continuation of `text`.

    A folder with an adapter file (ExtractAdapters) generates with it active; `adapter` names another
    adapter file for the same model, and `use_adapter=False` runs the base model.
    """
    if not model_dir.is_dir():
        raise ModelpressError(f"{model_dir}: no such folder. Point generate at the 'model' folder of a run that "
                              "ends with ModelBuilder.")
    if (model_dir / GGUF_FILE).is_file():
        if adapter is not None or not use_adapter:
            raise ModelpressError(f"{model_dir / GGUF_FILE} is a GGUF model, which takes no adapter here: drop "
                                  "--adapter (llama.cpp itself loads a GGUF LoRA adapter with --lora)")
        yield from _generate_gguf(model_dir, text, max_new_tokens, raw)
        return
    if not (model_dir / "genai_config.json").is_file():
        raise ModelpressError(f"{model_dir} is not an onnxruntime-genai folder (no genai_config.json). "
                              "Point generate at the 'model' folder of a run that ends with ModelBuilder.")
    import numpy as np
    import onnxruntime_genai as og

    og.disable_telemetry_events()
    card = read_json(model_dir / MODEL_CARD) if (model_dir / MODEL_CARD).is_file() else {}
    if not raw and not _has_recipe(card):
        card = _own_chat_card(model_dir, card)
    prompt, stop = (text, "") if raw else prompt_and_stop(card, text)
    model = open_model(og, model_dir)
    tokenizer = og.Tokenizer(model)
    ids = [int(t) for t in tokenizer.encode(prompt)]
    bos = trained_bos(model_dir, lambda piece: list(tokenizer.encode(piece)), tokenizer.bos_token_id)
    if (card.get("task") or {}).get("add_bos") and bos is not None:
        ids = [bos] + ids
    if not ids:
        raise ModelpressError("the prompt is empty (no tokens): give --prompt text to answer")
    genai_model = read_json(model_dir / "genai_config.json").get("model") or {}
    pad = genai_model.get("pad_token_id")
    if ids and isinstance(pad, int) and ids[-1] == pad:  # genai would drop it as padding: pad with another id
        model = open_model(og, model_dir, {"pad_token_id": other_pad_id(pad)})
    context = genai_model.get("context_length")
    if context and len(ids) >= context:
        raise ModelpressError(f"the prompt is {len(ids)} tokens and the model reads at most {context}: shorten it.")
    if context and len(ids) + max_new_tokens > context:
        max_new_tokens = context - len(ids)  # the model's context bounds the answer, as a chat app would
    params = og.GeneratorParams(model)
    # A fixed random_seed: greedy decoding ignores it, but without one onnxruntime-genai seeds
    # from std::random_device on every Generator, which costs 12-15 ms on hosts where RDSEED traps.
    params.set_search_options(max_length=len(ids) + max_new_tokens, random_seed=0, **GENAI_GREEDY)
    generator = og.Generator(model, params)
    scratch = tempfile.TemporaryDirectory(prefix="modelpress-adapter-")
    adapters = genai_adapters(og, model, (adapter or adapter_file(model_dir)) if use_adapter else None,
                              Path(scratch.name))
    if adapters is not None:
        generator.set_active_adapter(adapters, "active")
    generator.append_tokens(np.array(ids, dtype=np.int32))
    stream = tokenizer.create_stream()
    eos = set(tokenizer.eos_token_ids)
    stop_ids = list(tokenizer.encode(stop)) if stop else []
    if len(stop_ids) == 1:  # a one-token stop ends generation, as in evaluation
        eos.add(int(stop_ids[0]))

    def pieces() -> Iterator[str]:
        while not generator.is_done():
            generator.generate_next_token()
            token = generator.get_next_tokens()[0]
            if token in eos:
                return
            yield stream.decode(token)

    yield from until_stop(pieces(), stop)


def _generate_gguf(model_dir: Path, text: str, max_new_tokens: int, raw: bool) -> Iterator[str]:
    """`generate` for a GGUF folder (GgufExport), through llama.cpp: the prompt as the model card records it, else
    through the chat template the file carries."""
    from modelpress.llama_cpp_runner import FILE_BOS, LlamaCppRunner, llama_cpp_installed

    path = model_dir / GGUF_FILE
    if not llama_cpp_installed():
        raise ModelpressError(f"{path} is a GGUF file (GgufExport): generating from it here needs llama-cpp-python "
                              "(pip install 'modelpress[llama-cpp]'; it compiles llama.cpp, a few minutes), or use "
                              f"llama.cpp itself (llama-cli -m {path} -cnv) or Ollama (a Modelfile whose FROM "
                              "names it)")
    card = read_json(model_dir / MODEL_CARD) if (model_dir / MODEL_CARD).is_file() else {}
    runner = LlamaCppRunner(path, (card.get("task") or {}).get("bos_token", FILE_BOS))
    if not raw and not _has_recipe(card):
        chat = runner.chat_format()
        if chat:
            log.info("the model records no prompt recipe: the prompt goes through the chat template its file "
                     "carries, as a user turn (--raw sends it as it is)")
            card = {**card, "task": {**(card.get("task") or {}), "chat": chat}}
    prompt, stop = (text, "") if raw else prompt_and_stop(card, text)
    ids = runner.prompt_ids(prompt, bool((card.get("task") or {}).get("add_bos")))
    if not ids:
        raise ModelpressError("the prompt is empty (no tokens): give --prompt text to answer")
    runner.add_stops({stop} if stop else set())  # a one-token stop ends generation, as in evaluation
    yield from until_stop(runner.stream(ids, max_new_tokens), stop)


def until_stop(pieces: Iterator[str], stop: str) -> Iterator[str]:
    """The streamed text up to `stop` (all of it when `stop` is empty), as evaluation cuts an answer; text that
    may be the start of `stop` is held back until the next piece tells."""
    pending = ""
    for piece in pieces:
        pending += piece
        if not stop:
            yield pending
            pending = ""
            continue
        if stop in pending:
            head = pending.split(stop, 1)[0]
            if head:
                yield head
            return
        keep = next((n for n in range(min(len(stop) - 1, len(pending)), 0, -1) if stop.startswith(pending[-n:])), 0)
        if len(pending) > keep:
            yield pending[:len(pending) - keep]
            pending = pending[len(pending) - keep:]
    if pending:
        yield pending
