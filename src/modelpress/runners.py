"""What evaluation runs a model with: greedy generation (one prompt or a batch) and completion loss.

One runner per kind of model: PyTorch (HF folder, or base + adapter), onnxruntime-genai, plain
ONNX causal LM, and classifiers (`modelpress.classifier_runners`). A batch gives each prompt the
same greedy tokens as running it alone: PyTorch pads on the left (with an attention mask, so the new tokens follow every prompt
directly); onnxruntime-genai pads on the right, the only padding its GroupQueryAttention reads
correctly (measured: left-padded batches changed 14 of 16 generations of the tiny Phi-3).
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
from pathlib import Path

from modelpress.answer_ends import Ends, eos_ids, generation_config_of, named_eos, until_eos
from modelpress.classifier_runners import OnnxClassifierRunner, TorchClassifierRunner
from modelpress.data import Example
from modelpress.errors import ModelpressError
from modelpress.genai_folder import (GENAI_GREEDY, free_pad_id, loss_session_options, open_model, other_pad_id,
                                     trained_bos)
from modelpress.models import GGUF_FILE, ModelRef, load_for_inference
from modelpress.onnx_adapters import adapter_file, as_onnx_adapter, genai_adapters, read_adapter
from modelpress.passes.catalog import GGUF, ONNX, ONNX_GENAI
from modelpress.passes.losses import native_forward
from modelpress.prompt_cache import (common_prefix, generate_scored, generate_with_prefix, logits_from,
                                     right_mask, right_pad)
from modelpress.runner_base import Runner
from modelpress.scoring import LOSS_BATCH, batched_loss, loss_tokens, mean, nll, tail_nll

log = logging.getLogger("modelpress")


def make_runner(ref: ModelRef, trust_remote_code: bool = False):
    """The runner for this model's kind and task."""
    classify = ref.task.get("task") == "text-classification"
    if ref.kind == GGUF and not classify:
        return gguf_runner(ref, trust_remote_code)
    if ref.kind == ONNX_GENAI:
        return GenaiRunner(ref.path)
    if ref.kind == ONNX:
        return OnnxClassifierRunner(ref) if classify else OnnxCausalRunner(ref)
    return TorchClassifierRunner(ref, trust_remote_code) if classify else TorchRunner(ref, trust_remote_code)


def gguf_runner(ref: ModelRef, trust_remote_code: bool = False):
    """llama.cpp's answers to a GGUF model where llama-cpp-python is installed; otherwise PyTorch's, on the file's
    weights dequantized (said once a process: its latency is not llama.cpp's)."""
    from modelpress.llama_cpp_runner import FILE_BOS, LlamaCppRunner, llama_cpp_installed

    if llama_cpp_installed():
        return LlamaCppRunner(Path(ref.path) / GGUF_FILE, ref.task.get("bos_token", FILE_BOS))
    _say_dequantized()
    runner = TorchRunner(ref, trust_remote_code)
    runner.runtime_detail = ", on the GGUF file's weights dequantized"
    return runner


@functools.cache
def _say_dequantized() -> None:
    """Warn, once a process, that a GGUF model is answered in PyTorch."""
    log.warning("llama-cpp-python is not installed: the GGUF model is answered in PyTorch on its weights "
                "dequantized to float32, so its latency is PyTorch's, not llama.cpp's (pip install "
                "'modelpress[llama-cpp]' to measure it in llama.cpp; it compiles llama.cpp, a few minutes)")


class HfTokenizedRunner(Ends, Runner):
    """A runner that tokenizes with a Hugging Face tokenizer (`self.tokenizer`)."""

    library = "torch"

    def _ids(self, prompt: str, add_bos: bool) -> list[int]:
        bos = [self.tokenizer.bos_token_id] if add_bos and self.tokenizer.bos_token_id is not None else []
        return bos + self._plain_ids(prompt)

    def _plain_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def token_count(self, text: str) -> int:
        return len(self._plain_ids(text))


class OnnxCausalRunner(HfTokenizedRunner):
    """Greedy generation from a plain ONNX causal LM with no KV cache (the whole sequence each step).

    It generates one prompt at a time: without a cache, each step recomputes the whole sequence,
    so a batch saves little, and the graph has no position ids to keep a padded row exact.
    """

    library = "onnxruntime"
    max_batch = 1

    def __init__(self, ref: ModelRef):
        from modelpress.models import load_tokenizer
        from modelpress.onnx_model import OnnxModel

        self.model = OnnxModel(ref.path)
        self.tokenizer = load_tokenizer(ref.path)
        self.eos_id = self.tokenizer.eos_token_id
        self.end_ids = eos_ids(self.tokenizer, generation_config_of(Path(ref.path)))

    def _logits(self, ids: list[int]):
        import numpy as np

        return self.model.logits(np.array([ids], dtype=np.int64), np.ones((1, len(ids)), dtype=np.int64))[0]

    def generate_batch(self, prompts: list[str], add_bos: bool, max_new_tokens: int) -> list[tuple[str, int]]:
        return [self._generate_one(p, add_bos, max_new_tokens) for p in prompts]

    def _generate_one(self, prompt: str, add_bos: bool, max_new_tokens: int) -> tuple[str, int]:
        ids = self._ids(prompt, add_bos)
        new: list[int] = []
        for _ in range(max_new_tokens):
            token = int(self._logits(ids + new)[-1].argmax())
            new.append(token)
            if token in self.end_ids:
                break
        text = until_eos(new, self.end_ids)[0]
        return self.tokenizer.decode(text, skip_special_tokens=True), len(new)

    def completion_loss(self, examples: list[Example], add_bos: bool) -> float:
        total, count = 0.0, 0
        for ex in examples:
            head, tail = self._pair(ex, add_bos)
            total += nll(self._logits(head + tail), head, tail)
            count += len(tail)
        return mean(total, count)


class TorchRunner(HfTokenizedRunner):
    """Greedy generation and completion loss with PyTorch (HF folder, or base + adapter)."""

    def __init__(self, ref: ModelRef, trust_remote_code: bool = False):
        self.model, self.tokenizer = load_for_inference(ref, trust_remote_code)
        self.eos_id = eos = self.tokenizer.eos_token_id
        self.end_ids = eos_ids(self.tokenizer, getattr(self.model, "generation_config", None))
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        self.shared_prefix_tokens = 0  # prompt tokens not recomputed thanks to a batch's common prefix
        self.prefix_ok = native_forward(self.model)  # a remote-code forward may not take the prompt cache

    def generate_batch(self, prompts: list[str], add_bos: bool, max_new_tokens: int) -> list[tuple[str, int]]:
        """Greedy answers; a common prompt prefix (a chat template's system prompt) runs once (prompt_cache)."""
        return self._generate_rows([self._ids(p, add_bos) for p in prompts], max_new_tokens)

    def _generate_rows(self, rows: list[list[int]], max_new_tokens: int) -> list[tuple[str, int]]:
        import torch

        shared = common_prefix(rows) if self.prefix_ok else 0
        self.shared_prefix_tokens += shared * (len(rows) - 1)
        with torch.inference_mode():
            out, width = generate_with_prefix(self.model, rows, shared, self.pad, max_new_tokens=max_new_tokens,
                                              eos_token_id=sorted(self.end_ids), **GREEDY)
        return self._answers(out, width)

    def _answers(self, out, width: int) -> list[tuple[str, int]]:
        answers = [until_eos(row[width:], self.end_ids) for row in out.tolist()]
        return [(self.tokenizer.decode(new, skip_special_tokens=True), count) for new, count in answers]

    def generate_scored(self, examples: list[Example], add_bos: bool, max_new_tokens: int
                        ) -> tuple[list[tuple[str, int]], float, int]:
        """`generate_batch` of the examples' prompts, plus the summed -log p of their completions (and end of
        sequence) and the count of scored tokens, from one pass over the prompts (prompt_cache.generate_scored).
        Prompts of one token, completions whose logits would pass the loss budget, or a model whose forward is
        not transformers' own (trust_remote_code) take the two passes."""
        import torch

        pairs = [self._pair(ex, add_bos) for ex in examples]
        rows, tails = [head for head, _ in pairs], [tail for _, tail in pairs]
        if (not self.prefix_ok or min(len(r) for r in rows) < 2
                or len(rows) * (1 + max(len(t) for t in tails)) > self._loss_tokens()):
            return (self._generate_rows(rows, max_new_tokens), *self._loss_sums(pairs, LOSS_BATCH))
        shared = common_prefix([r[:-1] for r in rows])
        self.shared_prefix_tokens += shared * (len(rows) - 1)
        with torch.inference_mode():
            out, width, logits = generate_scored(self.model, rows, tails, shared, self.pad, max_new_tokens=max_new_tokens,
                                                 eos_token_id=sorted(self.end_ids), **GREEDY)
        logits = logits.float().numpy()
        total = sum(nll(row, head, tail, offset=len(head) - 1) for row, (head, tail) in zip(logits, pairs))
        return self._answers(out, width), total, sum(len(t) for t in tails)

    def completion_loss(self, examples: list[Example], add_bos: bool, batch_size: int = LOSS_BATCH) -> float:
        """Mean -log p of each completion's tokens (and the end of sequence) after its prompt.

        Sequences of similar length go through the model together, right-padded with the padding
        masked: a causal model's logits at a real position do not depend on what follows it, so
        each sequence scores as it would alone (`tests/test_batched_eval.py`)."""
        return mean(*self._loss_sums([self._pair(ex, add_bos) for ex in examples], batch_size))

    def _loss_tokens(self) -> int:
        return loss_tokens(getattr(getattr(self.model, "config", None), "vocab_size", None))

    def _loss_sums(self, pairs: list[tuple[list[int], list[int]]], batch_size: int) -> tuple[float, int]:
        import torch

        def logits_of(rows: list[list[int]], most: int):
            shared = common_prefix(rows, most) if self.prefix_ok else 0
            self.shared_prefix_tokens += shared * (len(rows) - 1)
            with torch.inference_mode():
                return logits_from(self.model, rows, shared, most, self.pad).float().numpy(), most

        return batched_loss(pairs, batch_size, self._loss_tokens(), logits_of)


# onnxruntime-genai 0.18 refuses larger batches: "batch_size (64) must be in [1, 32]".
GENAI_MAX_BATCH = 32

# Plain greedy decoding, as the ONNX runners do it: transformers fills every setting not passed from the model's
# generation_config.json, which may ask for a repetition penalty (Qwen2.5), n-gram blocking or beams. A minimum
# length is cleared as min_length 0 with no min_new_tokens: passing both warns on every call. A cache_implementation
# ("static", "offloaded") is cleared too: the shared-prefix paths pass their own cache, which transformers refuses
# beside one.
GREEDY = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
          "min_new_tokens": None, "min_length": 0, "cache_implementation": None}


class GenaiRunner(Ends, Runner):
    """Greedy generation with onnxruntime-genai; completion loss with onnxruntime on model.onnx.

    A folder with an adapter file (ExtractAdapters) runs with that adapter active, unless
    `use_adapter` is false; `adapter` names another adapter file for the same model. `prepack`
    false makes `logits` reproducible bit for bit across graphs whose float weights are constants
    in one and inputs in the other (prepacked kernels sum in another order, which int8 activation
    quantization then amplifies).
    """

    library = "onnxruntime_genai"
    max_batch = GENAI_MAX_BATCH

    def __init__(self, folder: Path, use_adapter: bool = True, adapter: Path | None = None, prepack: bool = True):
        import onnxruntime_genai as og

        og.disable_telemetry_events()
        self.og = og
        self.folder = Path(folder)
        self.pad = free_pad_id(self.folder)
        genai_model = json.loads((self.folder / "genai_config.json").read_text())["model"]
        self._vocab = genai_model.get("vocab_size")
        self.context = genai_model.get("context_length")
        self.model = open_model(og, self.folder, {"pad_token_id": self.pad})
        self.prepack = prepack
        self._scratch = tempfile.TemporaryDirectory(prefix="modelpress-adapter-")
        self.adapter = adapter or adapter_file(self.folder) if use_adapter else None
        if self.adapter is not None:
            self.adapter = as_onnx_adapter(Path(self.adapter), Path(self._scratch.name))
        self._adapters = genai_adapters(og, self.model, self.adapter, Path(self._scratch.name))
        self._other_pad = None  # `_handle`'s second model, for rows that end with the pad id
        self.tokenizer = og.Tokenizer(self.model)
        self.bos = trained_bos(self.folder, self._plain_ids, self.tokenizer.bos_token_id)
        self.end_ids = set(self.tokenizer.eos_token_ids)
        self.eos_id = named_eos(self.folder, self._plain_ids, self.end_ids)
        self._session = None
        self.rescored_rows = 0  # generate_scored's rows whose completion loss took a second pass

    def _ids(self, prompt: str, add_bos: bool) -> list[int]:
        return ([self.bos] if add_bos and self.bos is not None else []) + self._plain_ids(prompt)

    def _plain_ids(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)] if text else []

    def token_count(self, text: str) -> int:
        return len(self._plain_ids(text))

    def _fits(self, rows: list[list[int]], what: str, room: int) -> None:
        """Every row leaves `room` tokens in the context (a longer one fails inside genai, with its batch)."""
        longest = max((len(row) for row in rows), default=0)
        if self.context and longest + room > self.context:
            raise ModelpressError(f"a {what} of {longest} tokens does not fit the model's context of {self.context} "
                                  f"tokens (context_length in {self.folder / 'genai_config.json'}), with {room} more"
                                  f" to generate: shorten the longest eval rows, or build a model of a longer context")

    def _chunks(self, rows: list[list[int]], max_new_tokens: int = 0) -> list[list[int]]:
        """Row indices genai takes as one batch (up to GENAI_MAX_BATCH); rows ending with the pad id, which genai
        would take for padding, in batches of their own (`_handle`). A pad id inside a prompt is a token. A row
        whose answer would run past the context runs alone: the context cuts its answer, not its batch's."""
        ending = [bool(row) and row[-1] == self.pad for row in rows]
        long = [bool(self.context) and len(row) + max_new_tokens > self.context for row in rows]
        plain = [i for i in range(len(rows)) if not ending[i] and not long[i]]
        ends = [i for i in range(len(rows)) if ending[i] and not long[i]]
        return [group[start:start + GENAI_MAX_BATCH] for group in (plain, ends)
                for start in range(0, len(group), GENAI_MAX_BATCH)] + [[i] for i in range(len(rows)) if long[i]]

    def _room(self, rows: list[list[int]], max_new_tokens: int) -> int:
        """The new tokens a batch of `rows` may generate: max_new_tokens, or what the context leaves."""
        width = max((len(row) for row in rows), default=0)
        return max_new_tokens if not self.context else min(max_new_tokens, self.context - width)

    def _handle(self, rows: list[list[int]]) -> tuple:
        """(og.Model, adapters, pad id) for `rows`: for rows ending with the pad id, a handle padding otherwise
        (`_chunks` puts them together, after the rest), opened the first time such rows come and kept, so that
        an answer timed at batch 1 does not time a model load."""
        if not any(row and row[-1] == self.pad for row in rows):
            return self.model, self._adapters, self.pad
        if self._other_pad is None:
            pad = other_pad_id(self.pad)
            model = open_model(self.og, self.folder, {"pad_token_id": pad})
            self._other_pad = model, genai_adapters(self.og, model, self.adapter, Path(self._scratch.name)), pad
        return self._other_pad

    def generate_batch(self, prompts: list[str], add_bos: bool, max_new_tokens: int) -> list[tuple[str, int]]:
        rows = [self._ids(p, add_bos) for p in prompts]
        answers: list = [None] * len(rows)
        for chunk in self._chunks(rows, max_new_tokens):
            for i, answer in zip(chunk, self._generate_rows([rows[i] for i in chunk], max_new_tokens)):
                answers[i] = answer
        return answers

    def _generate_rows(self, rows: list[list[int]], max_new_tokens: int) -> list[tuple[str, int]]:
        room = self._room(rows, max_new_tokens)
        return [self._answer(new, room) for new in self._generate(rows, max_new_tokens)[0]]

    def _answer(self, new: list[int], max_new_tokens: int) -> tuple[str, int]:
        """The answer's text, and the tokens generated for it counted as the other runners count them: with the
        end token. genai leaves the end-of-sequence token that stopped a sequence out of it."""
        import numpy as np

        tokens, count = until_eos(new, self.end_ids)
        if len(tokens) == len(new) and len(new) < max_new_tokens:
            count = len(new) + 1
        return self.tokenizer.decode(np.array(tokens, dtype=np.int32)), count

    def generate_ids(self, rows: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """The greedy new tokens of each row (up to its end of sequence), in the batches genai takes (`_chunks`)."""
        # A sequence generated alone ends without its end-of-sequence token, so it is not counted in a batch either.
        out: list = [None] * len(rows)
        for chunk in self._chunks(rows, max_new_tokens):
            for i, new in zip(chunk, self._generate([rows[i] for i in chunk], max_new_tokens)[0]):
                out[i] = until_eos(new, self.end_ids)[0]
        return out

    def _generate(self, rows: list[list[int]], max_new_tokens: int, keep_logits: int = 0):
        """Each row's greedy new tokens as generated (past its end of sequence, while other rows go on), and the
        logits the first `keep_logits` steps chose from: an array (steps, rows, vocabulary). Only the steps a
        completion is scored over are kept (rows x vocabulary floats a step: 16 MB for Llama 3 at 32 rows)."""
        import numpy as np

        model, adapters, pad = self._handle(rows)
        ids = np.array(right_pad(rows, pad), dtype=np.int32)
        width = ids.shape[1]
        self._fits(rows, "prompt", 1)
        params = self.og.GeneratorParams(model)
        # A fixed random_seed: greedy decoding ignores it, but without one onnxruntime-genai seeds
        # from std::random_device on every Generator, which costs 12-15 ms on hosts where RDSEED traps.
        params.set_search_options(max_length=width + self._room(rows, max_new_tokens), random_seed=0,
                                  batch_size=len(rows), **GENAI_GREEDY)
        generator = self.og.Generator(model, params)
        if adapters is not None:
            generator.set_active_adapter(adapters, "active")
        generator.append_tokens(ids)
        steps = []
        ends, ended = np.array(sorted(self.end_ids)), np.zeros(len(rows), dtype=bool)
        while not generator.is_done() and not ended.all():
            # only before a step: asked for once generation is done, genai 0.18 runs the model again and
            # generates on past max_length
            if len(steps) < keep_logits:
                steps.append(np.array(generator.get_logits(), dtype=np.float32).reshape(len(rows), -1))
            generator.generate_next_token()
            # genai stops a row at its own end-of-sequence ids; an answer's stop token (a chat turn's end) also
            # ends it, as it ends a PyTorch model's, so no time is spent (and timed) past it
            ended |= np.isin(np.asarray(generator.get_next_tokens()), ends)
        # Each row's new tokens start after the padded width, whatever its own prompt length.
        new = [[int(t) for t in generator.get_sequence(i)][width:] for i in range(len(rows))]
        return new, np.stack(steps) if steps else None

    def generate_scored(self, examples: list[Example], add_bos: bool, max_new_tokens: int
                        ) -> tuple[list[tuple[str, int]], float, int]:
        """`generate_batch` of the examples' prompts, plus the summed -log p of their completions (and end of
        sequence) and the count of scored tokens (prompts not empty). A row whose greedy answer began as its
        expected completion is scored from the logits its generation chose from (onnxruntime-genai gives them
        step by step, not for a given completion); the others go through onnxruntime on model.onnx, as in
        `completion_loss`, and `rescored_rows` counts them."""
        pairs = [self._pair(ex, add_bos) for ex in examples]
        rows = [head for head, _ in pairs]
        answers, total, rest = [None] * len(rows), 0.0, []
        for chunk in self._chunks(rows, max_new_tokens):
            news, steps = self._generate([rows[i] for i in chunk], max_new_tokens,
                                         keep_logits=max(len(pairs[i][1]) for i in chunk))
            room = self._room([rows[i] for i in chunk], max_new_tokens)
            for j, (i, new) in enumerate(zip(chunk, news)):
                answers[i] = self._answer(new, room)
                tail = pairs[i][1]
                # the logits at step k saw the prompt and new[:k], so the tail scores from them when the answer
                # began with the tail's tokens before its last (which need not have been generated)
                if steps is not None and len(steps) >= len(tail) and new[:len(tail) - 1] == tail[:-1]:
                    total += tail_nll(steps[:len(tail), j], tail)
                else:
                    rest.append(pairs[i])
        self.rescored_rows += len(rest)
        rest_total, _ = self._loss_sums(rest)
        return answers, total + rest_total, sum(len(tail) for _, tail in pairs)

    def completion_loss(self, examples: list[Example], add_bos: bool, batch_size: int = LOSS_BATCH) -> float:
        """As TorchRunner's: similar-length sequences in one right-padded onnxruntime call."""
        return mean(*self._loss_sums([self._pair(ex, add_bos) for ex in examples], batch_size))

    def _loss_sums(self, pairs: list[tuple[list[int], list[int]]], batch_size: int = LOSS_BATCH) -> tuple[float, int]:
        if not pairs:
            return 0.0, 0
        return batched_loss(pairs, batch_size, loss_tokens(self._vocab),
                            lambda rows, _most: (self.logits_batch(rows), 0))

    def logits(self, ids: list[int]):
        """Logits for every position of `ids` from one onnxruntime call with an empty KV cache."""
        return self.logits_batch([ids])[0]

    def logits_batch(self, rows: list[list[int]]):
        """Logits for every position of each row, the rows right-padded into one call (padding masked;
        a row's logits past its own length are meaningless)."""
        import numpy as np

        self._fits(rows, "prompt and completion", 0)
        session = self._load_session()
        feeds = {spec.name: _feed(spec, self._roles(spec.name), right_pad(rows, self.pad), right_mask(rows),
                                  self._kv_shape)
                 for spec in session.get_inputs() if spec.name not in self._adapter_feeds}
        feeds.update(self._adapter_feeds)
        out = session.run([self._logits_name], feeds)[0]
        return np.asarray(out, dtype=np.float32)

    def _load_session(self):
        if self._session is None:
            import onnxruntime as ort

            decoder = json.loads((self.folder / "genai_config.json").read_text())["model"]["decoder"]
            filename = decoder["filename"]
            self._kv_shape = (decoder["num_key_value_heads"], decoder["head_size"])
            self._roles = graph_roles(decoder.get("inputs") or {})  # the graph's names, as GraphSurgeries renamed them
            self._logits_name = (decoder.get("outputs") or {}).get("logits", "logits")
            options = loss_session_options(self.folder, self.prepack)
            self._session = ort.InferenceSession(str(self.folder / filename), options,
                                                 providers=["CPUExecutionProvider"])
            # the adapter's weights are fed as the inputs they are (ExtractAdapters)
            self._adapter_feeds = read_adapter(self.adapter) if self.adapter is not None else {}
        return self._session


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32"}


def graph_roles(inputs: dict):
    """genai_config.json's decoder `inputs` (role -> graph name, `%d` for a layer) as graph name -> role."""
    import re

    plain = {name: role for role, name in inputs.items() if isinstance(name, str) and "%d" not in name}
    layered = [re.compile(re.escape(name).replace("%d", r"\d+") + "$") for name in inputs.values()
               if isinstance(name, str) and "%d" in name]

    def role(name: str) -> str:
        if name in plain:
            return plain[name]
        return "past_key_values" if any(p.match(name) for p in layered) else name
    return role


def _feed(spec, role: str, rows: list[list[int]], mask: list[list[int]], kv_shape: tuple[int, int]):
    import numpy as np

    batch, width = len(rows), len(rows[0])
    dtype = _ORT_TYPES.get(spec.type, "float32")
    if role == "input_ids":
        return np.array(rows, dtype=dtype)
    if role == "attention_mask":
        return np.array(mask, dtype=dtype)
    if role == "position_ids":
        return np.broadcast_to(np.arange(width, dtype=dtype), (batch, width)).copy()
    if role.startswith("past_key_values"):
        return np.zeros((batch, kv_shape[0], 0, kv_shape[1]), dtype=dtype)
    if ".lora_" in spec.name:
        raise ModelpressError(f"the model needs an adapter for its input {spec.name!r} (ExtractAdapters with "
                              "optional_inputs false): give it one")
    raise ValueError(f"unexpected ONNX input {spec.name!r}")
