"""Measure a model on the eval examples: label accuracy, completion loss, latency, size.

Accuracy is measured the way the model will be used: greedy generation from the prompt,
first line of the output compared with the label (case-insensitive). The loss is the mean
negative log-likelihood of the completion tokens given the prompt, the same quantity for a
PyTorch model and an ONNX model, so the two can be compared.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from pathlib import Path

from modelpress.data import Example
from modelpress.fsutil import dir_size
from modelpress.models import ModelRef, load_for_inference
from modelpress.passes.catalog import HF_ADAPTER, ONNX_GENAI

WARMUP = 2  # untimed generations before latency is measured


def normalise_label(text: str) -> str:
    """The comparable form of a label or a generated answer: first line, trimmed, lower case."""
    stripped = text.strip()
    return stripped.splitlines()[0].strip().lower() if stripped else ""


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def accuracy_report(labels: list[str], predictions: list[str]) -> dict:
    """Accuracy, per-class recall and the majority-class baseline."""
    gold = [normalise_label(x) for x in labels]
    pred = [normalise_label(x) for x in predictions]
    hits = [g == p for g, p in zip(gold, pred)]
    counts = Counter(gold)
    recall = {label: sum(h for g, h in zip(gold, hits) if g == label) / n for label, n in sorted(counts.items())}
    return {
        "accuracy": sum(hits) / len(hits) if hits else float("nan"),
        "per_class_recall": recall,
        "majority_baseline": max(counts.values()) / len(gold) if gold else float("nan"),
        "answered_with_a_label": sum(p in counts for p in pred) / len(pred) if pred else float("nan"),
    }


def model_size_bytes(ref: ModelRef) -> int:
    """Bytes needed to deploy the model (an adapter counts with its base)."""
    size = dir_size(ref.path)
    return size + dir_size(ref.base) if ref.kind == HF_ADAPTER and ref.base else size


def evaluate(ref: ModelRef, examples: list[Example], add_bos: bool, max_new_tokens: int,
             with_accuracy: bool, show_progress: bool = True, trust_remote_code: bool = False) -> dict:
    """All metrics for one model on `examples`."""
    from tqdm import tqdm

    runner = GenaiRunner(ref.path) if ref.kind == ONNX_GENAI else TorchRunner(ref, trust_remote_code)
    for ex in examples[:WARMUP]:
        runner.generate(ex.prompt, add_bos, max_new_tokens)
    outputs, latencies, new_tokens = [], [], 0
    for ex in tqdm(examples, desc=f"evaluate {ref.kind}", disable=not show_progress, leave=False):
        started = time.perf_counter()
        text, count = runner.generate(ex.prompt, add_bos, max_new_tokens)
        latencies.append(time.perf_counter() - started)
        outputs.append(text)
        new_tokens += count
    result = {
        "examples": len(examples),
        "completion_loss": runner.completion_loss(examples, add_bos),
        "latency_ms": {"mean": 1000 * statistics.fmean(latencies), "p50": 1000 * percentile(latencies, 50),
                       "p90": 1000 * percentile(latencies, 90)},
        "tokens_per_second": new_tokens / sum(latencies) if sum(latencies) else float("nan"),
        "size_mb": model_size_bytes(ref) / 2**20,
        "samples": [{"prompt": ex.prompt, "label": ex.completion, "output": out}
                    for ex, out in list(zip(examples, outputs))[:5]],
    }
    result["perplexity"] = math.exp(result["completion_loss"]) if result["completion_loss"] < 50 else float("inf")
    if with_accuracy:
        result.update(accuracy_report([ex.completion for ex in examples], outputs))
    return result


class TorchRunner:
    """Greedy generation and completion loss with PyTorch (HF folder, or base + adapter)."""

    def __init__(self, ref: ModelRef, trust_remote_code: bool = False):
        self.model, self.tokenizer = load_for_inference(ref, trust_remote_code)

    def _ids(self, prompt: str, add_bos: bool) -> list[int]:
        bos = [self.tokenizer.bos_token_id] if add_bos and self.tokenizer.bos_token_id is not None else []
        return bos + self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def generate(self, prompt: str, add_bos: bool, max_new_tokens: int) -> tuple[str, int]:
        import torch

        ids = torch.tensor([self._ids(prompt, add_bos)])
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                      do_sample=False, eos_token_id=self.tokenizer.eos_token_id,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = [t for t in out[0, ids.shape[1]:].tolist() if t != self.tokenizer.eos_token_id]
        return self.tokenizer.decode(new, skip_special_tokens=True), out.shape[1] - ids.shape[1]

    def completion_loss(self, examples: list[Example], add_bos: bool) -> float:
        import torch

        total, count = 0.0, 0
        for ex in examples:
            head = self._ids(ex.prompt, add_bos)
            tail = self.tokenizer(ex.completion, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            with torch.inference_mode():
                logits = self.model(input_ids=torch.tensor([head + tail])).logits[0].float()
            total += _nll(logits.numpy(), head, tail)
            count += len(tail)
        return total / count if count else float("nan")


def _nll(logits, head: list[int], tail: list[int]) -> float:
    """Sum of -log p(tail token | everything before it), from full-sequence logits."""
    import numpy as np

    rows = logits[len(head) - 1: len(head) - 1 + len(tail)].astype(np.float64)
    rows = rows - rows.max(axis=-1, keepdims=True)
    log_probs = rows - np.log(np.exp(rows).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(tail)), tail].sum())


class GenaiRunner:
    """Greedy generation with onnxruntime-genai; completion loss with onnxruntime on model.onnx."""

    def __init__(self, folder: Path):
        import onnxruntime_genai as og

        og.disable_telemetry_events()
        self.og = og
        self.folder = Path(folder)
        self.model = og.Model(str(folder))
        self.tokenizer = og.Tokenizer(self.model)
        self.bos = self.tokenizer.bos_token_id
        self.eos = set(self.tokenizer.eos_token_ids)
        self._session = None

    def _ids(self, prompt: str, add_bos: bool) -> list[int]:
        ids = list(self.tokenizer.encode(prompt)) if prompt else []
        return ([self.bos] if add_bos and self.bos is not None and self.bos >= 0 else []) + ids

    def generate(self, prompt: str, add_bos: bool, max_new_tokens: int) -> tuple[str, int]:
        import numpy as np

        ids = self._ids(prompt, add_bos)
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
        generator = self.og.Generator(self.model, params)
        generator.append_tokens(np.array(ids, dtype=np.int32))
        while not generator.is_done():
            generator.generate_next_token()
        new = list(generator.get_sequence(0))[len(ids):]
        text = self.tokenizer.decode(np.array([t for t in new if t not in self.eos], dtype=np.int32))
        return text, len(new)

    def completion_loss(self, examples: list[Example], add_bos: bool) -> float:
        total, count = 0.0, 0
        for ex in examples:
            head = self._ids(ex.prompt, add_bos)
            tail = list(self.tokenizer.encode(ex.completion)) + [min(self.eos)]
            total += _nll(self.logits(head + tail), head, tail)
            count += len(tail)
        return total / count if count else float("nan")

    def logits(self, ids: list[int]):
        """Logits for every position of `ids` from one onnxruntime call with an empty KV cache."""
        import numpy as np

        session = self._load_session()
        feeds = {spec.name: _feed(spec, ids, self._kv_shape) for spec in session.get_inputs()}
        out = session.run(["logits"], feeds)[0]
        return np.asarray(out[0], dtype=np.float32)

    def _load_session(self):
        if self._session is None:
            import json

            import onnxruntime as ort

            decoder = json.loads((self.folder / "genai_config.json").read_text())["model"]["decoder"]
            filename = decoder["filename"]
            self._kv_shape = (decoder["num_key_value_heads"], decoder["head_size"])
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._session = ort.InferenceSession(str(self.folder / filename), options,
                                                 providers=["CPUExecutionProvider"])
        return self._session


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32"}


def _feed(spec, ids: list[int], kv_shape: tuple[int, int]):
    import numpy as np

    n = len(ids)
    dtype = _ORT_TYPES.get(spec.type, "float32")
    if spec.name == "input_ids":
        return np.array([ids], dtype=dtype)
    if spec.name == "attention_mask":
        return np.ones((1, n), dtype=dtype)
    if spec.name == "position_ids":
        return np.arange(n, dtype=dtype)[None, :]
    if spec.name.startswith("past_key_values"):
        return np.zeros((1, kv_shape[0], 0, kv_shape[1]), dtype=dtype)
    raise ValueError(f"unexpected ONNX input {spec.name!r}")
