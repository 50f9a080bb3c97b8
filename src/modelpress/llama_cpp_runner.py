"""GGUF models answered by llama.cpp itself (through llama-cpp-python), as llama.cpp and Ollama deploy them.

A GGUF model (GgufExport's output) is evaluated and `generate`d here when llama-cpp-python is installed: its
accuracy and loss are those of llama.cpp's own kernels on the file's quantized blocks (which multiply K-quant and
Q4 blocks with 8-bit activations), and its latency is llama.cpp's. Without llama-cpp-python, the GGUF model is
read by transformers and answered in PyTorch on its dequantized weights, and the report says so.

Answers are greedy (the argmax of each step's logits) and come one prompt at a time: each prompt reuses the
key/value cache of the text it shares with the prompt before it (a chat template's system prompt), as llama.cpp's
server does. An answer ends at llama.cpp's own end-of-generation tokens (EOS, EOT and the turn ends it recognises),
which may differ from a Hugging Face generation config's list. A latency sample (`generate`) runs its whole prompt,
as the other runners do at batch 1. The llama.cpp context is sized to the longest prompt and answer seen (at most
the model's training context), and opened again, larger, when a longer one comes. The BOS token put before a prompt
is the one training put there (the model card's `bos_token`, which GgufExport records; the file's own BOS id may
come from config.json where the tokenizer has none, as Qwen2's).
"""

from __future__ import annotations

import codecs
import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path

from modelpress.answer_ends import Ends
from modelpress.data import Example
from modelpress.errors import ModelpressError
from modelpress.runner_base import Runner
from modelpress.runtime import compute_threads
from modelpress.scoring import LOSS_BATCH, mean, tail_nll

log = logging.getLogger("modelpress")

CONTEXT_STEP = 512  # the context grows in multiples of this many tokens
FILE_BOS = object()  # the BOS training put first is not recorded: the file's own


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def _trained_context(path: Path) -> int | None:
    """The context length a GGUF file's header gives (None: unreadable, or the gguf package missing), so that a
    model trained on less than CONTEXT_STEP tokens is not opened past it (llama.cpp warns of that on stderr)."""
    try:
        import gguf

        fields = gguf.GGUFReader(str(path)).fields
        arch = fields["general.architecture"].contents()
        return int(fields[f"{arch}.context_length"].contents())
    except Exception:  # noqa: BLE001  (any unreadable header: llama.cpp says what is wrong when it opens the file)
        return None


class LlamaCppRunner(Ends, Runner):
    """Greedy answers, completion loss and token counts of one GGUF file, from llama.cpp."""

    library = "llama_cpp"
    max_batch = 1  # one prompt at a time; a shared prompt prefix is not computed again

    def __init__(self, path: Path, trained_bos: str | None | object = FILE_BOS):
        """`trained_bos`: the text of the BOS token training put before a prompt (None: none), as the model card
        records it; FILE_BOS where it does not (the file's own BOS id)."""
        try:
            import llama_cpp
        except (ImportError, OSError, RuntimeError) as err:  # installed, but its library does not load here
            raise ModelpressError(f"llama-cpp-python is installed but cannot be loaded ({err}): reinstall it for "
                                  "this machine (pip install --force-reinstall --no-cache-dir llama-cpp-python), "
                                  "or uninstall it to evaluate GGUF models in PyTorch") from None

        self._lib = llama_cpp
        self.path = Path(path)
        self.threads = compute_threads()
        self.runtime_detail = f", {self.threads} threads"
        self._llm = None
        self._open(min(CONTEXT_STEP, _trained_context(self.path) or CONTEXT_STEP))
        model = self._llm.model
        vocab = llama_cpp.llama_model_get_vocab(model)
        self._vocab_size = llama_cpp.llama_vocab_n_tokens(vocab)
        self.trained_context = llama_cpp.llama_model_n_ctx_train(model)  # 0: unknown
        # what ends an answer in llama.cpp: every end-of-generation token of the vocabulary (EOS, EOT, EOM and the
        # turn ends llama.cpp recognises by their text)
        self.end_ids = {t for t in range(self._vocab_size) if llama_cpp.llama_vocab_is_eog(vocab, t)}
        eos, bos = self._llm.token_eos(), self._llm.token_bos()
        self.eos_id = eos if eos >= 0 else None
        self.bos = bos if bos >= 0 else None
        if trained_bos is not FILE_BOS:
            ids = self._plain_ids(trained_bos) if isinstance(trained_bos, str) else []
            self.bos = ids[0] if len(ids) == 1 else None if trained_bos is None else self.bos
        self.shared_prefix_tokens = 0  # prompt tokens not computed again, from the cache of the prompt before

    def _open(self, context: int) -> None:
        """(Re)open the file with a context of `context` tokens (the weights are memory-mapped: cheap)."""
        from llama_cpp import Llama

        self._llm = None  # free the old context first
        try:
            self._llm = Llama(model_path=str(self.path), n_ctx=context, n_batch=min(context, 512),
                              n_threads=self.threads, n_threads_batch=self.threads, n_gpu_layers=0, verbose=False)
        except (ValueError, RuntimeError) as err:
            raise ModelpressError(f"{self.path}: llama.cpp cannot load it ({err}). Check that the file is whole "
                                  "(GgufExport writes it atomically) and that llama-cpp-python is recent enough "
                                  "for its architecture.") from None
        self._context = context

    def _room(self, ids: list[int], max_new_tokens: int) -> int:
        """The new tokens a prompt of `ids` may have: max_new_tokens, or what the model's training context leaves
        (as a chat app bounds an answer); a prompt longer than that context is refused."""
        if not self.trained_context:
            return max_new_tokens
        if len(ids) > self.trained_context:
            raise ModelpressError(f"a prompt of {len(ids)} tokens does not fit {self.path.name}'s training context "
                                  f"of {self.trained_context} tokens: shorten the longest eval rows")
        return min(max_new_tokens, self.trained_context - len(ids))

    def _fit(self, tokens: int) -> None:
        """A context of at least `tokens` tokens (at most the model's training context, `_room`)."""
        if tokens <= self._context:
            return
        size = -(-max(tokens, 2 * self._context) // CONTEXT_STEP) * CONTEXT_STEP
        self._open(min(size, self.trained_context) if self.trained_context else size)

    def prompt_ids(self, prompt: str, add_bos: bool) -> list[int]:
        """The tokens of `prompt`, after a BOS token when `add_bos` and the model has one."""
        return self._ids(prompt, add_bos)

    def _ids(self, prompt: str, add_bos: bool) -> list[int]:
        return ([self.bos] if add_bos and self.bos is not None else []) + self._plain_ids(prompt)

    def _plain_ids(self, text: str) -> list[int]:
        """`text`'s tokens, special tokens written in it (a chat template's turn markers) read as those tokens, as
        a Hugging Face tokenizer reads them; no BOS."""
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) if text else []

    def token_count(self, text: str) -> int:
        return len(self._plain_ids(text))

    def _piece(self, token: int, special: bool = False) -> bytes:
        """A token's bytes (llama-cpp-python's own detokenize drops a piece longer than its 32-byte buffer, such as
        SmolLM2's runs of spaces)."""
        import ctypes

        vocab = self._lib.llama_model_get_vocab(self._llm.model)
        size = 32  # most pieces fit; a longer one says its length, and is read again
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = self._lib.llama_token_to_piece(vocab, token, buffer, size, 0, special)
            if n >= 0:
                return buffer.raw[:n]
            size = -n

    def decode(self, tokens: list[int]) -> str:
        """The text of `tokens`, special tokens left out."""
        return b"".join(self._piece(t) for t in tokens).decode("utf-8", errors="replace")

    def pieces(self, tokens) -> Iterator[str]:
        """The text of `tokens` as they come, a character whose bytes several tokens carry given once it is whole."""
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for token in tokens:
            piece = text.decode(self._piece(token))
            if piece:
                yield piece
        rest = text.decode(b"", final=True)
        if rest:
            yield rest

    def prepare(self, prompts: list[str], add_bos: bool, max_new_tokens: int) -> None:
        """A context for the longest of `prompts` and its answer, opened before they are timed."""
        longest = max((self._ids(p, add_bos) for p in prompts), key=len, default=[])
        if longest:
            self._fit(len(longest) + self._room(longest, max_new_tokens))

    def _logits(self):
        """The logits after the last token evaluated (a copy: the next evaluation overwrites llama.cpp's)."""
        import numpy as np

        row = self._lib.llama_get_logits_ith(self._llm.ctx, -1)
        return np.ctypeslib.as_array(row, shape=(self._vocab_size,)).copy()

    def _prompt(self, ids: list[int], room: int, reuse: bool):
        """Evaluate `ids` (leaving `room` tokens of context after them) and return the logits after the last one.
        With `reuse`, the tokens it shares with what the cache holds are not computed again (at least the last
        one is, for its logits)."""
        if not ids:
            raise ModelpressError("an empty prompt (no tokens) cannot be answered: give every row a prompt")
        self._fit(len(ids) + room)
        keep = self._keep_cached(ids, len(ids) - 1 if reuse else 0)
        self._llm.eval(ids[keep:])  # eval drops the cache past n_tokens
        return self._logits()

    def _keep_cached(self, ids: list[int], most: int) -> int:
        """Keep the tokens the cache holds alike with `ids`, at most `most` of them, and drop the rest of it (the
        next evaluation starts after them); returns how many were kept."""
        llm = self._llm
        held = llm.input_ids[:llm.n_tokens].tolist()
        keep = 0
        while keep < min(len(held), most) and held[keep] == ids[keep]:
            keep += 1
        self.shared_prefix_tokens += keep
        llm.n_tokens = keep
        return keep

    def _eval_rows(self, tokens: list[int], first: int = 0):
        """Evaluate `tokens` after what the cache holds (`n_tokens` of it) and return the logits after each one from
        `tokens[first]` on, a row each: llama.cpp's batch with those tokens' logits asked for (llama-cpp-python's
        `eval` keeps the last only)."""
        import numpy as np

        lib, llm = self._lib, self._llm
        lib.llama_memory_seq_rm(lib.llama_get_memory(llm.ctx), -1, llm.n_tokens, -1)
        step = int(lib.llama_n_batch(llm.ctx))
        rows = []
        batch = lib.llama_batch_init(step, 0, 1)
        try:
            for start in range(0, len(tokens), step):
                chunk = tokens[start:start + step]
                batch.n_tokens = len(chunk)
                for i, token in enumerate(chunk):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, llm.n_tokens + i, 1
                    batch.seq_id[i][0], batch.logits[i] = 0, start + i >= first
                if lib.llama_decode(llm.ctx, batch) != 0:
                    raise ModelpressError(f"{self.path}: llama.cpp failed to evaluate {len(chunk)} tokens")
                for i in range(max(0, first - start), len(chunk)):
                    row = lib.llama_get_logits_ith(llm.ctx, i)
                    rows.append(np.ctypeslib.as_array(row, shape=(self._vocab_size,)).copy())
                llm.input_ids[llm.n_tokens:llm.n_tokens + len(chunk)] = chunk
                llm.n_tokens += len(chunk)
        finally:
            lib.llama_batch_free(batch)
        return np.stack(rows) if rows else np.zeros((0, self._vocab_size), dtype=np.float32)

    def tail_logits(self, ids: list[int], n: int):
        """The logits that predict the last `n` tokens of `ids` (a row each), reusing the cache of a shared prefix
        (an lm-eval task's choices share their context)."""
        self._room(ids[:-1], 0)  # the last token is scored, never evaluated
        self._fit(len(ids) - 1)
        keep = self._keep_cached(ids, len(ids) - n - 1)  # the rows needed start at the token before the first scored
        evaluated = ids[keep:-1]
        return self._eval_rows(evaluated, first=len(evaluated) - n)

    def generate_ids(self, rows: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """The greedy new tokens of each row, up to its end (an lm-eval `generate_until` request)."""
        return [self._greedy(row, max_new_tokens, reuse=True)[0] for row in rows]

    def _greedy(self, ids: list[int], max_new_tokens: int, reuse: bool, reserve: int = 0
                ) -> tuple[list[int], int, list]:
        """(the answer's tokens before its end, the tokens generated with the end, the logits of each step), in a
        context that leaves room for `reserve` tokens after the prompt as well (a completion scored after it)."""
        import numpy as np

        max_new_tokens = self._room(ids, max_new_tokens)
        logits = [self._prompt(ids, max(max_new_tokens, reserve), reuse)]
        new: list[int] = []
        while len(new) < max_new_tokens:
            token = int(np.argmax(logits[-1]))
            if token in self.end_ids:
                return new, len(new) + 1, logits
            new.append(token)
            if len(new) < max_new_tokens:
                self._llm.eval([token])
                logits.append(self._logits())
        return new, len(new), logits

    def generate_batch(self, prompts: list[str], add_bos: bool, max_new_tokens: int) -> list[tuple[str, int]]:
        answers = []
        for prompt in prompts:
            new, count, _ = self._greedy(self._ids(prompt, add_bos), max_new_tokens, reuse=True)
            answers.append((self.decode(new), count))
        return answers

    def generate(self, prompt: str, add_bos: bool, max_new_tokens: int) -> tuple[str, int]:
        """One answer from its whole prompt (no cache reused): what a latency sample times."""
        new, count, _ = self._greedy(self._ids(prompt, add_bos), max_new_tokens, reuse=False)
        return self.decode(new), count

    def generate_scored(self, examples: list[Example], add_bos: bool, max_new_tokens: int
                        ) -> tuple[list[tuple[str, int]], float, int]:
        """`generate_batch` of the examples' prompts, plus the summed -log p of their completions (and closing
        token) and the count of scored tokens. The logits an answer's steps chose from score the completion as
        far as the answer follows it; the rest of the completion is evaluated after the prompt."""
        answers, total, scored = [], 0.0, 0
        for ex in examples:
            head, tail = self._pair(ex, add_bos)
            self._room(head + tail, 0)  # the scored sequence must fit the context
            new, count, logits = self._greedy(head, max_new_tokens, reuse=True, reserve=len(tail))
            answers.append((self.decode(new), count))
            total += self._tail_nll(head, tail, new, logits)
            scored += len(tail)
        return answers, total, scored

    def _tail_nll(self, head: list[int], tail: list[int], new: list[int], logits: list) -> float:
        """-log p of `tail` after `head`, from the generation's logits while the answer `new` follows the tail."""
        import numpy as np

        rows = []
        for j in range(len(tail)):
            if j < len(logits) and new[:j] == tail[:j]:
                rows.append(logits[j])
                continue
            self._llm.n_tokens = len(head) + j - 1  # head and tail[:j - 1] stay in the cache
            rows.extend(self._eval_rows(tail[j - 1:-1]))  # the rest of the tail in one batch
            break
        return tail_nll(np.stack(rows), tail) if rows else 0.0

    def completion_loss(self, examples: list[Example], add_bos: bool, batch_size: int = LOSS_BATCH) -> float:
        """Mean -log p of each completion's tokens (and its closing token) after its prompt."""
        total, count = 0.0, 0
        for ex in examples:
            head, tail = self._pair(ex, add_bos)
            if tail:
                self._room(head + tail, 0)  # the whole sequence must fit the context
                total += self._tail_nll(head, tail, [], [self._prompt(head, len(tail), reuse=True)])
                count += len(tail)
        return mean(total, count)

    def stream(self, ids: list[int], max_new_tokens: int) -> Iterator[str]:
        """The greedy continuation of `ids` as text pieces (`pieces`), until an end token (or a one-token stop,
        `add_stops`) or `max_new_tokens` (bounded by the model's training context)."""
        yield from self.pieces(self._tokens(ids, max_new_tokens))

    def _tokens(self, ids: list[int], max_new_tokens: int) -> Iterator[int]:
        import numpy as np

        max_new_tokens = self._room(ids, max_new_tokens)
        logits = self._prompt(ids, max_new_tokens, reuse=False)
        for step in range(max_new_tokens):
            token = int(np.argmax(logits))
            if token in self.end_ids:
                return
            yield token
            if step + 1 < max_new_tokens:
                self._llm.eval([token])
                logits = self._logits()

    def chat_format(self) -> dict | None:
        """The chat template the file carries (`tokenizer.chat_template`) with its special tokens, as a model
        card's `task.chat` records one; None without one."""
        meta = self._llm.metadata
        template = meta.get("tokenizer.chat_template")
        if not template:
            return None
        tokens = {}
        for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                          ("pad_token", "padding")):
            value = meta.get(f"tokenizer.ggml.{key}_token_id")
            if value is not None and int(value) >= 0:
                piece = self._piece(int(value), special=True).decode("utf-8", errors="replace")
                if piece:
                    tokens[name] = piece
        return {"template": template, "special_tokens": tokens}
