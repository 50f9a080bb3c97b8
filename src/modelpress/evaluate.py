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
from modelpress.passes.catalog import HF_ADAPTER, ONNX, ONNX_GENAI

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
    """Accuracy, macro precision/recall/F1 over the gold classes, per-class recall, majority baseline."""
    gold = [normalise_label(x) for x in labels]
    pred = [normalise_label(x) for x in predictions]
    hits = [g == p for g, p in zip(gold, pred)]
    counts = Counter(gold)
    predicted = Counter(pred)
    recall = {label: sum(h for g, h in zip(gold, hits) if g == label) / n for label, n in sorted(counts.items())}
    precision = {label: sum(h for p, h in zip(pred, hits) if p == label) / predicted[label] if predicted[label] else 0.0
                 for label in sorted(counts)}
    f1 = {label: 2 * precision[label] * recall[label] / (precision[label] + recall[label])
          if precision[label] + recall[label] else 0.0 for label in sorted(counts)}
    nan = float("nan")
    return {
        "accuracy": sum(hits) / len(hits) if hits else nan,
        "precision": statistics.fmean(precision.values()) if precision else nan,
        "recall": statistics.fmean(recall.values()) if recall else nan,
        "f1": statistics.fmean(f1.values()) if f1 else nan,
        "per_class_recall": recall,
        "majority_baseline": max(counts.values()) / len(gold) if gold else nan,
        "answered_with_a_label": sum(p in counts for p in pred) / len(pred) if pred else nan,
    }


def latency_report(seconds: list[float]) -> dict:
    """Latency statistics in milliseconds."""
    ms = [1000 * s for s in seconds]
    return {"mean": statistics.fmean(ms), "p50": percentile(ms, 50), "p90": percentile(ms, 90),
            "p95": percentile(ms, 95), "p99": percentile(ms, 99), "min": min(ms), "max": max(ms)}


def model_size_bytes(ref: ModelRef) -> int:
    """Bytes needed to deploy the model (an adapter counts with its base)."""
    size = dir_size(ref.path)
    return size + dir_size(ref.base) if ref.kind == HF_ADAPTER and ref.base else size


def evaluate(ref: ModelRef, examples: list[Example], add_bos: bool, max_new_tokens: int,
             with_accuracy: bool, show_progress: bool = True, trust_remote_code: bool = False) -> dict:
    """All metrics for one model on `examples`."""
    from tqdm import tqdm

    runner = make_runner(ref, trust_remote_code)
    for ex in examples[:WARMUP]:
        runner.generate(ex.prompt, add_bos, max_new_tokens)
    outputs, latencies, new_tokens = [], [], 0
    for ex in tqdm(examples, desc=f"evaluate {ref.kind}", disable=not show_progress, leave=False):
        started = time.perf_counter()
        text, count = runner.generate(ex.prompt, add_bos, max_new_tokens)
        latencies.append(time.perf_counter() - started)
        outputs.append(text)
        new_tokens += count
    total = sum(latencies)
    result = {
        "examples": len(examples),
        "completion_loss": runner.completion_loss(examples, add_bos),
        "latency_ms": latency_report(latencies),
        "throughput": len(examples) / total if total else float("nan"),  # examples per second, batch 1
        "tokens_per_second": new_tokens / total if total and new_tokens else None,
        "size_mb": model_size_bytes(ref) / 2**20,
        "samples": [{"prompt": ex.prompt, "label": ex.completion, "output": out}
                    for ex, out in list(zip(examples, outputs))[:5]],
    }
    result["perplexity"] = math.exp(result["completion_loss"]) if result["completion_loss"] < 50 else float("inf")
    if with_accuracy:
        result.update(accuracy_report([ex.completion for ex in examples], outputs))
    return result


def make_runner(ref: ModelRef, trust_remote_code: bool = False):
    """The runner for this model's kind and task."""
    classify = ref.task.get("task") == "text-classification"
    if ref.kind == ONNX_GENAI:
        return GenaiRunner(ref.path)
    if ref.kind == ONNX:
        return OnnxClassifierRunner(ref) if classify else OnnxCausalRunner(ref)
    return TorchClassifierRunner(ref, trust_remote_code) if classify else TorchRunner(ref, trust_remote_code)


class ClassifierRunner:
    """A classifier 'generates' its predicted label; its loss is the cross-entropy of the true label."""

    labels: list[str]

    def class_logits(self, text: str):
        raise NotImplementedError

    def generate(self, prompt: str, add_bos: bool, max_new_tokens: int) -> tuple[str, int]:
        return self.labels[int(self.class_logits(prompt).argmax())], 0

    def completion_loss(self, examples: list[Example], add_bos: bool) -> float:
        import numpy as np

        index = {label: i for i, label in enumerate(self.labels)}
        total, count = 0.0, 0
        for ex in examples:
            if ex.completion not in index:
                continue
            row = self.class_logits(ex.prompt).astype(np.float64)
            row = row - row.max()
            total += float(np.log(np.exp(row).sum()) - row[index[ex.completion]])
            count += 1
        return total / count if count else float("nan")

    def _encode(self, text: str) -> dict:
        limit = min(getattr(self.tokenizer, "model_max_length", 512) or 512, 512)
        return self.tokenizer(text, truncation=True, max_length=limit)


class TorchClassifierRunner(ClassifierRunner):
    def __init__(self, ref: ModelRef, trust_remote_code: bool = False):
        self.model, self.tokenizer = load_for_inference(ref, trust_remote_code)
        self.labels = _labels(ref, self.model.config)

    def class_logits(self, text: str):
        import torch

        encoded = self._encode(text)
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([encoded["input_ids"]]),
                             attention_mask=torch.tensor([encoded["attention_mask"]]))
        return out.logits[0].float().numpy()


class OnnxClassifierRunner(ClassifierRunner):
    def __init__(self, ref: ModelRef):
        from modelpress.models import load_tokenizer
        from modelpress.onnx_model import OnnxModel

        self.model = OnnxModel(ref.path)
        self.tokenizer = load_tokenizer(ref.path)
        self.labels = _labels(ref, None)

    def class_logits(self, text: str):
        import numpy as np

        encoded = self._encode(text)
        return self.model.logits(np.array([encoded["input_ids"]], dtype=np.int64),
                                 np.array([encoded["attention_mask"]], dtype=np.int64))[0]


def _labels(ref: ModelRef, config) -> list[str]:
    labels = ref.task.get("labels")
    if labels:
        return list(labels)
    if config is not None and getattr(config, "id2label", None):
        return [config.id2label[i] for i in sorted(config.id2label)]
    raise ValueError(f"{ref.path}: a classifier without label names (no 'labels' in its model card)")


class OnnxCausalRunner:
    """Greedy generation from a plain ONNX causal LM with no KV cache (the whole sequence each step)."""

    def __init__(self, ref: ModelRef):
        from modelpress.models import load_tokenizer
        from modelpress.onnx_model import OnnxModel

        self.model = OnnxModel(ref.path)
        self.tokenizer = load_tokenizer(ref.path)

    def _ids(self, prompt: str, add_bos: bool) -> list[int]:
        bos = [self.tokenizer.bos_token_id] if add_bos and self.tokenizer.bos_token_id is not None else []
        return bos + self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def _logits(self, ids: list[int]):
        import numpy as np

        return self.model.logits(np.array([ids], dtype=np.int64), np.ones((1, len(ids)), dtype=np.int64))[0]

    def generate(self, prompt: str, add_bos: bool, max_new_tokens: int) -> tuple[str, int]:
        ids = self._ids(prompt, add_bos)
        new: list[int] = []
        for _ in range(max_new_tokens):
            token = int(self._logits(ids + new)[-1].argmax())
            new.append(token)
            if token == self.tokenizer.eos_token_id:
                break
        text = [t for t in new if t != self.tokenizer.eos_token_id]
        return self.tokenizer.decode(text, skip_special_tokens=True), len(new)

    def completion_loss(self, examples: list[Example], add_bos: bool) -> float:
        total, count = 0.0, 0
        for ex in examples:
            head = self._ids(ex.prompt, add_bos)
            tail = self.tokenizer(ex.completion, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            total += _nll(self._logits(head + tail), head, tail)
            count += len(tail)
        return total / count if count else float("nan")


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
        # A fixed random_seed: greedy decoding ignores it, but without one onnxruntime-genai seeds
        # from std::random_device on every Generator, which costs 12-15 ms on hosts where RDSEED traps.
        params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False, random_seed=0)
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
