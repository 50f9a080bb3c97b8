"""The interface every runner (`modelpress.runners`, `modelpress.classifier_runners`) offers evaluation."""

from __future__ import annotations


# how a runtime is named in a result, by the import name of its library
RUNTIME_NAMES = {"torch": "PyTorch", "onnxruntime": "onnxruntime", "onnxruntime_genai": "onnxruntime-genai",
                 "llama_cpp": "llama.cpp"}


class Runner:
    """Greedy generation: `generate_batch` for accuracy, `generate` (batch 1) for latency."""

    library = ""  # the import name of the library that computes the answers
    runtime_detail = ""  # what else a result says of how it ran (threads, dequantized weights)
    max_batch: int | None = None  # the most prompts computed together (None: any batch)

    def runtime(self) -> str:
        """The runtime that answered, as a result records it: "PyTorch 2.13.0", "llama.cpp (llama_cpp_python
        0.3.36), 2 threads"."""
        from modelpress.runtime import library_version

        found = library_version(self.library)  # "2.13.0", or the distribution that installs it and its version
        found = f"({found})" if " " in found else found
        return f"{RUNTIME_NAMES.get(self.library, self.library)} {found}{self.runtime_detail}"

    def token_count(self, text: str) -> int | None:
        """Tokens `text` takes in this model's vocabulary (None: the runner does not generate text)."""
        return None

    def prepare(self, prompts: list[str], add_bos: bool, max_new_tokens: int) -> None:
        """Called before `prompts` are timed: whatever a first answer would set up (llama.cpp's larger context)."""

    def add_stops(self, texts: set[str]) -> None:
        """Texts that close an answer (a chat turn's end marker): generation ends at those that are one token."""

    def generate_batch(self, prompts: list[str], add_bos: bool, max_new_tokens: int) -> list[tuple[str, int]]:
        """(answer text, tokens generated) for each prompt."""
        raise NotImplementedError

    def generate(self, prompt: str, add_bos: bool, max_new_tokens: int) -> tuple[str, int]:
        return self.generate_batch([prompt], add_bos, max_new_tokens)[0]
