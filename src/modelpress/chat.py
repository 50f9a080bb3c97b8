"""Rows as conversations, rendered through a chat template: the model's own, or one the config gives.

A row becomes a list of `{"role", "content"}` messages in one of two ways:
- a column of messages (`message_col`, default `messages`), as TRL and Axolotl read it; ShareGPT's
  `{"from": "human"|"gpt", "value": ...}` turns are accepted too;
- `chat_columns`, a mapping from role to a column name or a text template over the columns
  (`{"user": "{phrase}", "assistant": "{tone}"}`), with an optional `system_prompt`.

Rendering uses transformers' own Jinja renderer, so the text is exactly what
`tokenizer.apply_chat_template` gives. To train on the assistant turns only, the rendering is
cut into pieces: the text up to each assistant turn (with the generation prompt) and the turn
itself, found by rendering the conversation one turn at a time.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

from modelpress.config.templates import field_text, role_template, template_fields
from modelpress.errors import DataError

log = logging.getLogger("modelpress")
_LAST_TURN_ONLY: set[str] = set()  # templates already warned of: only their conversations' last turn is trained

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "model": "assistant"}
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")


# A template's `strftime_now` (Llama 3's "Today Date: ..." system header) renders one fixed day, Llama 3's own
# fallback, instead of the day it runs: prompts trained on one day are then the prompts evaluated and generated on
# another, and the cached data's fingerprint holds. A macro of that name, put before the template, shadows the
# renderer's function (transformers passes no callable into a template).
FIXED_DATE = ('{%- macro strftime_now(format) -%}{{ format | replace("%-d", "26") | replace("%d", "26") '
              '| replace("%b", "Jul") | replace("%B", "July") | replace("%Y", "2024") | replace("%y", "24") '
              '| replace("%m", "07") | replace("%A", "Friday") | replace("%a", "Fri") }}{%- endmacro -%}')


@dataclass(frozen=True)
class ChatFormat:
    """A chat template and the special tokens it may name (`bos_token`, `eos_token`, ...)."""

    template: str
    special_tokens: dict = field(default_factory=dict)

    @classmethod
    def from_model(cls, folder: Path, template: str | None = None, trust_remote_code: bool = False) -> "ChatFormat":
        """The model's own chat template (or `template`), with the model tokenizer's special tokens."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        own = tokenizer.chat_template
        if isinstance(own, dict):  # several named templates (Hermes 3, Command R): the one named, or the default
            if template in own:
                template = own[template]
            elif not template and "default" not in own:
                raise DataError(f"{folder}: the tokenizer has several chat templates ({', '.join(sorted(own))}) "
                                "and none is called 'default'. Name one in chat_template.")
            own = own.get("default")
        if template and "{{" not in template and "{%" not in template:  # "chatml", "default": a name, not Jinja
            names = ", ".join(sorted(tokenizer.chat_template)) if isinstance(tokenizer.chat_template, dict) else ""
            raise DataError(f"chat_template {template!r} is neither a Jinja template (it has no {{{{ or {{%) nor "
                            f"one of this tokenizer's named templates ({names or 'it has none'}). Give the template "
                            "itself, or true for the model's own.")
        chosen = template or own
        if not chosen:
            raise DataError(f"{folder}: the tokenizer has no chat template, and the data config asks for the "
                            "model's own (chat_template: true). Give the template as a string in chat_template, "
                            "or use text_template.")
        tokens = {name: getattr(tokenizer, name) for name in SPECIAL_TOKENS if getattr(tokenizer, name, None)}
        return cls(chosen, tokens)

    @classmethod
    def from_card(cls, chat: dict) -> "ChatFormat":
        """The format a model card's `task.chat` records (the inverse of `to_json`, plus the card's extra keys)."""
        return cls(chat["template"], chat.get("special_tokens") or {})

    def to_json(self) -> dict:
        return {"template": self.template, "special_tokens": self.special_tokens}

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        from jinja2.exceptions import TemplateError
        from transformers.utils.chat_template_utils import render_jinja_template

        template = FIXED_DATE + self.template if "strftime_now" in self.template else self.template
        try:
            rendered, _ = render_jinja_template([messages], chat_template=template,
                                                add_generation_prompt=add_generation_prompt, **self.special_tokens)
        except TemplateError as err:  # a syntax error, or the template's own raise_exception (roles, order)
            raise DataError(f"the chat template cannot render this conversation: {err}. Change the rows (or "
                            "chat_columns, system_prompt) to what the template accepts, or give another "
                            "template in chat_template.") from None
        return rendered[0]

    def pieces(self, messages: list[dict], earlier_turns: bool = True) -> list[tuple[str, bool]]:
        """The whole rendering cut into (text, is_assistant_turn) pieces, in order; with `earlier_turns` false
        only the last assistant turn is cut out (loss_on: all needs no other). A template that renders earlier
        assistant turns otherwise than as the last turn (Qwen3 and DeepSeek-R1 drop their think blocks) leaves
        them where they cannot be told apart: only the last turn is trained then, as those models' own recipes
        do, and a warning says so once."""
        try:
            return self._pieces(messages, earlier_turns)
        except DataError:
            if not earlier_turns or sum(m["role"] == "assistant" for m in messages) < 2:
                raise
        pieces = self._pieces(messages, earlier_turns=False)
        if self.template not in _LAST_TURN_ONLY:
            _LAST_TURN_ONLY.add(self.template)
            log.warning("the chat template renders earlier assistant turns otherwise than the last (it rewrites "
                        "them, as Qwen3's drops think blocks): in such conversations only the last assistant turn "
                        "is trained, the earlier ones are read as context")
        return pieces

    def _pieces(self, messages: list[dict], earlier_turns: bool) -> list[tuple[str, bool]]:
        full = self.render(messages)
        out, pos = [], 0
        turns = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
        for i in turns if earlier_turns else turns[-1:]:
            before = self.render(messages[:i], add_generation_prompt=True)
            upto = self._without_closing(self.render(messages[: i + 1]), full)
            start = self._answer_start(messages, i, before, upto) if i == turns[-1] and full.startswith(upto) \
                and not upto.startswith(before) else None
            if start is not None and start >= pos:
                # the generation prompt opens the answer otherwise than the rendered turn (DeepSeek-R1's "<think>\n"
                # after its assistant tag): the prompt as inference writes it, then the answer as the turn has it
                out += [(before[pos:], False), (upto[start:], True)]
                pos = len(upto)
                continue
            if not (full.startswith(upto) and upto.startswith(before) and len(before) >= pos):
                raise DataError("the chat template does not render a conversation as a growing prefix (it rewrites "
                                "earlier turns), so the answer cannot be located for the loss. Give a template "
                                "that renders turns one after another in chat_template.")
            out += [(full[pos:len(before)], False), (upto[len(before):], True)]
            pos = len(upto)
        out.append((full[pos:], False))
        return [(text, trained) for text, trained in out if text]

    def _answer_start(self, messages: list[dict], i: int, before: str, upto: str) -> int | None:
        """Where assistant turn `i`'s content starts in `upto` (the conversation rendered up to it), when only the
        generation prompt differs from the turn's opening: the conversation before the turn is rendered alike,
        and the opening is what the template writes before a probe answer (not the texts' common prefix, which
        runs into an answer that starts as the generation prompt goes on)."""
        prior = self.render(messages[:i])
        if not (before.startswith(prior) and upto.startswith(prior)):
            return None
        probe = self.render([*messages[:i], {**messages[i], "content": PROBE_ANSWER}])
        at = probe.find(PROBE_ANSWER, len(prior))
        if at < 0 or not probe.startswith(prior) or not upto.startswith(probe[:at]):
            return None
        return at

    def turn_ends(self) -> tuple[str, str]:
        """(what the template writes at the start of an answer, after its generation prompt; what it writes after
        the answer), read from a probe conversation."""
        return _turn_ends(self.template, tuple(sorted(self.special_tokens.items())))

    def _without_closing(self, upto: str, full: str) -> str:
        """A conversation cut after an earlier assistant turn, less the EOS token some templates (Phi-3's) write
        at a conversation's end only, when no generation prompt follows."""
        eos = self.special_tokens.get("eos_token")
        if eos and not full.startswith(upto) and upto.endswith(eos) and full.endswith(eos) \
                and full.startswith(upto[:-len(eos)]):
            return upto[:-len(eos)]
        return upto


PROBE_ANSWER = "modelpress"  # an answer no template writes itself


@functools.lru_cache(maxsize=16)
def _turn_ends(template: str, special_tokens: tuple) -> tuple[str, str]:
    chat = ChatFormat(template, dict(special_tokens))
    try:
        pieces = chat.pieces([{"role": "user", "content": "x"}, {"role": "assistant", "content": PROBE_ANSWER}])
    except DataError:  # a template that refuses this conversation: nothing written around an answer is known
        return "", ""
    turn = next((text for text, trained in pieces if trained), "")
    at = turn.find(PROBE_ANSWER)
    return ("", "") if at < 0 else (turn[:at], turn[at + len(PROBE_ANSWER):])


def split_turn(turn: str, content: str, lead: str = "") -> tuple[str, str, str] | None:
    """(lead, answer, closing) of an assistant turn as a template rendered it: what it writes before the content
    (Qwen3's empty think block, which its generation prompt leaves out; `lead`, read from a probe conversation
    by `ChatFormat.turn_ends`, so that a short answer is not found inside it), the content as written (Llama 3's
    and Gemma's templates trim it) and what closes the turn; None when the content is not where it should be."""
    answer = content.strip()
    rest = turn[len(lead):]
    if not answer or not turn.startswith(lead) or not rest.lstrip().startswith(answer):
        return None
    lead += rest[:len(rest) - len(rest.lstrip())]  # what the template kept of the content's leading blanks
    return lead, answer, turn[len(lead) + len(answer):]


def messages_of(row: dict, where: str, message_col: str, chat_columns: dict[str, str] | None,
                system_prompt: str | None) -> list[dict]:
    """The conversation a row holds, as role/content messages."""
    if chat_columns:
        messages = [{"role": role, "content": _fill(spec, row, where)} for role, spec in chat_columns.items()]
    else:
        messages = _message_column(row.get(message_col), where, message_col)
    if system_prompt is not None and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    if not messages or messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the conversation must end with an assistant turn (the answer to learn and "
                        "to measure). Fix the row or the chat_columns mapping.")
    return messages


def _fill(spec: str, row: dict, where: str) -> str:
    """A role's content: a column's value, or a template over the columns."""
    template = role_template(spec)
    missing = [f for f in template_fields(template) if f not in row]
    if missing:
        raise DataError(f"{where}: chat_columns names column {missing[0]!r}, which the row lacks "
                        f"(columns: {sorted(row)})")
    return template.format_map({f: field_text(row, f, where) for f in template_fields(template)})


def _message_column(value, where: str, column: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: column {column!r} must hold a non-empty list of messages "
                        "({'role': ..., 'content': ...}), found " + repr(value)[:80])
    messages = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: {column}[{i}] must be a mapping with role and content")
        # a file that mixes role/content turns with ShareGPT's from/value ones reads as both keys, one null
        role = turn.get("role") or SHAREGPT_ROLES.get(str(turn.get("from") or "").lower())
        content = turn["content"] if turn.get("content") is not None else turn.get("value")
        if role not in ("system", "user", "assistant", "tool") or not isinstance(content, str):
            raise DataError(f"{where}: {column}[{i}] needs a role (system, user, assistant or tool) and text "
                            f"content, found {turn!r}"[:300])
        if turn.get("weight", 1) == 0 or turn.get("train", True) is False:  # Axolotl's per-turn switch
            asked = "weight: 0" if turn.get("weight", 1) == 0 else "train: false"
            raise DataError(f"{where}: {column}[{i}] asks not to be trained on ({asked}), "
                            "which modelpress does not read: it trains every assistant turn (loss_on: completion) "
                            "or every token (loss_on: all). Remove the key, or the turn.")
        messages.append({"role": role, "content": content})
    return messages


def system_prompt_of(histories: list[tuple], system_prompt: str | None) -> tuple[str | None, int]:
    """The system prompt a new user message is sent with, as the rows were trained (`system_prompt`, or the system
    message every row opens with), and how many rows opened with another one (which a single prompt cannot
    reproduce). `histories` are the rows' messages before the answer, as (role, content) pairs."""
    opened = [h[0][1] if h and h[0][0] == "system" else None for h in histories]
    if system_prompt is None and opened and len(set(opened)) == 1:
        return opened[0], 0
    return system_prompt, sum(1 for said in opened if said != system_prompt)
