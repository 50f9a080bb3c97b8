"""Where a generated answer ends, and which token closes a completion when its loss is scored.

A batch's finished rows are cut where generating them alone would have stopped (`until_eos`). A
model ends an answer at its tokenizer's end-of-sequence token, at those its generation config names
(Phi-3 and Llama 3 end a chat turn with a token that is not the tokenizer's `eos_token`), and at an
example's stop text when that is one token; the completion loss scores the token training taught
after the answer (that stop), or else the end of sequence.
"""

from __future__ import annotations

from pathlib import Path

from modelpress.data import Example, answer_after
from modelpress.genai_folder import named_token
from modelpress.scoring import scored_split


def until_eos(tokens: list[int], eos: set[int]) -> tuple[list[int], int]:
    """The generated tokens before the first end of sequence, and how many were generated up to and with it.

    In a batch, a row that ended early is filled with padding until the longest one ends; this
    cuts it where generating it alone would have stopped.
    """
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[:i], i + 1
    return tokens, len(tokens)


class Ends:
    """Where a generated answer ends, and the token that closes a completion in its loss.

    Generation ends at the end-of-sequence ids (the tokenizer's and those of the model's generation
    config: Phi-3 and Llama 3 end a turn with a token that is not the tokenizer's `eos_token`) and at an
    example's stop text when that is one token. The loss scores the completion and its closing token:
    the first token training put after the answer (the closing text as written), else the end of sequence.
    """

    end_ids: set[int]
    eos_id: int | None

    def _ids(self, prompt: str, add_bos: bool) -> list[int]:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """`text`'s tokens, no BOS (special tokens written in it read as those tokens)."""
        return self._plain_ids(text)

    def _plain_ids(self, text: str) -> list[int]:
        raise NotImplementedError

    def _stop_tokens(self, stop: str) -> set[int]:
        """The ids that end an answer at `stop`: the stop encoded alone when that is one token, and the one token it
        becomes after a word (a SentencePiece tokenizer encodes "." alone as "▁.", and "a." as "▁a" + ".")."""
        memo = self.__dict__.setdefault("_stop_memo", {})
        if stop not in memo:
            alone = self._plain_ids(stop) if stop else []
            word, after = self._plain_ids("a"), self._plain_ids("a" + stop) if stop else []
            memo[stop] = ({alone[0]} if len(alone) == 1 else set()) | (
                {after[-1]} if len(after) == len(word) + 1 and after[:len(word)] == word else set())
        return memo[stop]

    def add_stops(self, texts: set[str]) -> None:
        for text in texts:
            self.end_ids |= self._stop_tokens(text)

    def _pair(self, ex: Example, add_bos: bool) -> tuple[list[int], list[int]]:
        """(prompt ids, completion ids and the token that closes it): what the completion loss scores. The closing
        token is the first one training put after the answer (a template's `\n###` begins with the newline), or,
        when nothing closes the answer, the end of sequence that training appends with special tokens (`add_bos`
        is the data config's add_special_tokens); without them, the answer alone."""
        alone = self._plain_ids(ex.completion)
        memo = self.__dict__.setdefault("_closing_memo", {})
        if (ex.completion, ex.closing) not in memo:
            memo[ex.completion, ex.closing] = self._closing(ex, alone)
        closing = memo[ex.completion, ex.closing] or ([self.eos_id] if add_bos and self.eos_id is not None else [])
        prompt = self._ids(ex.prompt, add_bos)
        answer = answer_after(prompt, self._ids(ex.prompt + ex.completion, add_bos), alone)  # as training takes it
        return scored_split(prompt, answer + closing)

    def _closing(self, ex: Example, answer: list[int]) -> list[int]:
        """The first token after the answer as training tokenizes the two (answer and closing text in one string): a
        SentencePiece tokenizer encodes a text alone with a leading word marker that the joined string lacks."""
        if not ex.closing:
            return []
        joined = self._plain_ids(ex.completion + ex.closing)
        if joined[:len(answer)] == answer and len(joined) > len(answer):
            return joined[len(answer):len(answer) + 1]
        return self._plain_ids(ex.closing)[:1]  # the answer's own tokens merge into the closing text


def eos_ids(tokenizer, generation_config) -> set[int]:
    """The tokenizer's end-of-sequence id and those its model's generation config names."""
    named = getattr(generation_config, "eos_token_id", None)
    return {i for i in [tokenizer.eos_token_id, *(named if isinstance(named, list) else [named])] if i is not None}


def generation_config_of(folder: Path):
    """A folder's generation config, or None."""
    if not (folder / "generation_config.json").is_file():
        return None
    from transformers import GenerationConfig

    return GenerationConfig.from_pretrained(str(folder))


def named_eos(folder: Path, encode, eos_ids: set[int]) -> int:
    """The id of the end-of-sequence token a genai folder's tokenizer config names (what a PyTorch runner
    scores), else the smallest of genai's end ids."""
    named = named_token(folder, "eos_token")
    ids = encode(named) if isinstance(named, str) and named else []
    return ids[0] if len(ids) == 1 else min(eos_ids)
