"""The interface every runner (`modelpress.runners`, `modelpress.classifier_runners`) offers evaluation."""

from __future__ import annotations


class Runner:
    """Greedy generation: `generate_batch` for accuracy, `generate` (batch 1) for latency."""

    def token_count(self, text: str) -> int | None:
        """Tokens `text` takes in this model's vocabulary (None: the runner does not generate text)."""
        return None

    def add_stops(self, texts: set[str]) -> None:
        """Texts that close an answer (a chat turn's end marker): generation ends at those that are one token."""

    def generate_batch(self, prompts: list[str], add_bos: bool, max_new_tokens: int) -> list[tuple[str, int]]:
        """(answer text, tokens generated) for each prompt."""
        raise NotImplementedError

    def generate(self, prompt: str, add_bos: bool, max_new_tokens: int) -> tuple[str, int]:
        return self.generate_batch([prompt], add_bos, max_new_tokens)[0]
