"""Measure a model on the eval examples: label accuracy, completion loss, latency, size.

Accuracy is measured the way the model will be used: greedy generation from the prompt, the
output cut at the text that closes an answer, its first line compared with the label
(case-insensitive). Generation runs in batches, which give the same answers as one prompt at
a time (see `modelpress.runners`); latency is timed one prompt at a time, on a sample. The
loss is the mean negative log-likelihood of the completion tokens given the prompt, the same
quantity for a PyTorch model and an ONNX model, so the two can be compared. A PyTorch model
gets its answers and its loss from one pass over each batch's prompts (`predict_scored`); an
onnxruntime-genai model scores the rows it answered as expected from its generation's logits
and runs only the others a second time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import statistics
import time
from collections import Counter

from modelpress.config.schema import EvaluationConfig
from modelpress.data import Example
from modelpress.fsutil import dir_size
from modelpress.models import ModelRef
from modelpress.passes.catalog import HF_ADAPTER
# The runners lived here before runners.py; their old import path keeps working.
from modelpress.runners import GenaiRunner, OnnxCausalRunner, TorchRunner, make_runner  # noqa: F401
from modelpress.scoring import mean

log = logging.getLogger("modelpress")
WARMUP = 2  # untimed generations before latency is measured
SAMPLES = 5  # answers shown in the result beside their prompts and labels
MISSES_KEPT = 200  # wrong answers kept in a result, in the order of the eval set
MISS_PROMPT_CHARS = 1000  # of each kept wrong answer's prompt, its end (a long chat's last turns)
# The config's defaults, so that `modelpress evaluate` measures as a run does.
BATCH_SIZE = EvaluationConfig.model_fields["batch_size"].default
LATENCY_SAMPLES = EvaluationConfig.model_fields["latency_samples"].default


def normalise_label(text: str, lines: int = 1) -> str:
    """The comparable form of a label or a generated answer: its first `lines` lines, each trimmed, lower case
    (a model goes on after its answer, often with the template's next row)."""
    kept = [line.strip().lower() for line in text.strip().splitlines()[:lines]]
    return "\n".join(kept)


def comparable(labels: list[str], answers: list[str]) -> tuple[list[str], list[str]]:
    """Labels and answers as accuracy compares them: an answer is cut to as many lines as its label has, so a
    two-line label is not matched by its first line alone."""
    counts = [max(1, len(label.strip().splitlines())) for label in labels]
    return ([normalise_label(x, n) for x, n in zip(labels, counts)],
            [normalise_label(x, n) for x, n in zip(answers, counts)])


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


OTHER_ANSWER = "(other answer)"  # the confusion counts' column for answers that are no expected label


def accuracy_report(labels: list[str], predictions: list[str], classes: list[str] | None = None) -> dict:
    """Accuracy, macro precision/recall/F1, per-class recall, the confusion counts (expected label -> answer ->
    rows), majority baseline. The macro means run over the gold classes and, for a classifier (its `classes`),
    over the classes it predicted that the rows lack, as scikit-learn averages over the labels of both sides: a
    false positive into such a class lowers precision. A generative model's answer that is no expected label
    counts as OTHER_ANSWER (its free text is no class)."""
    gold, pred = comparable(labels, predictions)
    hits = [g == p for g, p in zip(gold, pred)]
    counts = Counter(gold)
    predicted = Counter(pred)
    known = {normalise_label(c) for c in classes or ()}
    averaged = sorted(set(counts) | {p for p in predicted if p in known})
    recall = {label: sum(h for g, h in zip(gold, hits) if g == label) / counts[label] if counts[label] else 0.0
              for label in averaged}
    precision = {label: sum(h for p, h in zip(pred, hits) if p == label) / predicted[label] if predicted[label] else 0.0
                 for label in averaged}
    f1 = {label: 2 * precision[label] * recall[label] / (precision[label] + recall[label])
          if precision[label] + recall[label] else 0.0 for label in averaged}
    nan = float("nan")
    accuracy = sum(hits) / len(hits) if hits else nan
    weights = [counts[label] for label in averaged]

    def weighted(scores: dict) -> float:
        return sum(w * scores[label] for w, label in zip(weights, averaged)) / len(gold) if gold else nan

    def of(label: str) -> dict:
        return {"precision": precision.get(label, 0.0), "recall": recall.get(label, 0.0), "f1": f1.get(label, 0.0)}

    return {
        "accuracy": accuracy,
        "precision": statistics.fmean(precision.values()) if precision else nan,
        "recall": statistics.fmean(recall.values()) if recall else nan,
        "f1": statistics.fmean(f1.values()) if f1 else nan,
        # Olive's metric_config `average` and `task: binary` (torchmetrics' meanings): micro is the share of rows
        # answered right, for each of the three; weighted weighs each class by its rows; binary is the class "1"
        # of 0/1 labels
        "averaged": {"micro": {"precision": accuracy, "recall": accuracy, "f1": accuracy},
                     "weighted": {"precision": weighted(precision), "recall": weighted(recall), "f1": weighted(f1)},
                     **({"binary": of("1")} if set(counts) <= {"0", "1"} else {})},
        "per_class_recall": {label: recall[label] for label in sorted(counts)},
        "confusion": {label: dict(sorted(Counter(p if p in averaged else OTHER_ANSWER for g, p in zip(gold, pred)
                                                 if g == label).items())) for label in sorted(counts)},
        "majority_baseline": max(counts.values()) / len(gold) if gold else nan,
        "answered_with_a_label": sum(p in counts or p in known for p in pred) / len(pred) if pred else nan,
    }


# the percentiles kept: Olive's latency sub-types, and the low ones modelpress's throughput percentiles come from
# (examples/s at batch 1 is 1000 / ms, so throughput's p90 is 1000 / latency's p10; Olive 0.13 takes 1000 / latency's
# p90 and calls it p90, which the config check says where a goal or priority reads one)
LATENCY_PERCENTILES = {"p50": 50, "p75": 75, "p90": 90, "p95": 95, "p99": 99, "p999": 99.9,
                       "p25": 25, "p10": 10, "p5": 5, "p1": 1, "p01": 0.1}


def latency_report(seconds: list[float]) -> dict:
    """Latency statistics in milliseconds."""
    ms = [1000 * s for s in seconds]
    return {"mean": statistics.fmean(ms), **{k: percentile(ms, q) for k, q in LATENCY_PERCENTILES.items()},
            "min": min(ms), "max": max(ms)}


def model_size_bytes(ref: ModelRef) -> int:
    """Bytes needed to deploy the model (an adapter counts with its base)."""
    size = dir_size(ref.path)
    return size + dir_size(ref.base) if ref.kind == HF_ADAPTER and ref.base else size


def evaluate(ref: ModelRef, examples: list[Example], add_bos: bool, max_new_tokens: int,
             with_accuracy: bool, show_progress: bool = True, trust_remote_code: bool = False,
             batch_size: int = BATCH_SIZE, latency_samples: int = LATENCY_SAMPLES) -> dict:
    """All metrics for one model on `examples`.

    Accuracy comes from batched greedy generation (`batch_size` prompts at a time, the same answers
    as one at a time); latency, throughput and tokens/s from `latency_samples` of the examples,
    each generated alone, as a deployed model answers one request (none timed where it is 0).
    """
    runner = make_runner(ref, trust_remote_code)
    runner.add_stops(generation_stops(examples))  # a chat turn's end marker ends the answer
    # plain text (no template, so no prompt): the model continues the text itself
    prompted = [ex if ex.prompt else dataclasses.replace(ex, prompt=ex.completion, completion="") for ex in examples]
    answered = prompted if with_accuracy else prompted[:SAMPLES]  # without labels, answers are only shown
    if with_accuracy and hasattr(runner, "generate_scored") and all(ex.prompt for ex in examples):
        outputs, loss = predict_scored(runner, examples, add_bos, max_new_tokens, batch_size, show_progress, ref.kind)
    else:
        outputs = predict(runner, answered, add_bos, max_new_tokens, batch_size, show_progress, ref.kind)
        loss = runner.completion_loss(examples, add_bos)
    outputs = [cut_at_stop(text, ex.stop, ex.completion) for ex, text in zip(examples, outputs)]
    picks = latency_picks(len(prompted), latency_samples)  # none where latency_samples is 0
    timed = [prompted[i] for i in picks]
    seconds, new_tokens, alone = time_one_at_a_time(runner, timed, add_bos, max_new_tokens) if timed else ([], 0, [])
    total = sum(seconds)
    result = {
        "examples": len(examples),
        "latency_examples": len(timed),
        "latency_warmup": min(WARMUP, len(timed)),  # untimed answers before the timed ones
        "max_new_tokens": max_new_tokens,
        "mean_new_tokens": new_tokens / len(timed) if timed else None,  # latency counts until the answer ends
        "batch_size": min(batch_size, runner.max_batch or batch_size),  # what the runtime computed together
        "runtime": runner.runtime(),
        "completion_loss": loss,
        "latency_ms": latency_report(seconds) if timed else None,
        "throughput": (len(timed) / total if total else float("nan")) if timed else None,  # examples/s, batch 1
        "tokens_per_second": new_tokens / total if total and new_tokens else None,
        "size_mb": model_size_bytes(ref) / 2**20,
        "samples": [{"prompt": ex.prompt, "label": ex.completion, "output": out}
                    for ex, out in list(zip(prompted, outputs))[:SAMPLES]],
    }
    result["perplexity"] = perplexity(result["completion_loss"])
    if with_accuracy:
        result.update(accuracy_report([ex.completion for ex in examples], outputs, getattr(runner, "labels", None)))
        result.update(missed(examples, outputs))
        result["labels_over_max_new_tokens"] = labels_over_budget(runner, examples, max_new_tokens)
        if picks:
            result["batch1_agreement"] = batch1_agreement(examples, outputs, picks, alone)
    return result


def labels_over_budget(runner, examples: list[Example], max_new_tokens: int) -> int:
    """How many rows' labels take more tokens than an answer may have: they can never be answered right, so
    they are counted and warned about (raise evaluation.max_new_tokens)."""
    sizes = {label: runner.token_count(label) for label in {ex.completion for ex in examples}}
    over = {label: n for label, n in sizes.items() if n is not None and n > max_new_tokens}
    rows = sum(ex.completion in over for ex in examples)
    if over:
        longest = max(over, key=over.get)
        log.warning("%d of %d rows have a label longer than max_new_tokens (%d), such as %r (%d tokens): they "
                    "cannot be answered in full, so accuracy counts them wrong. Raise evaluation.max_new_tokens "
                    "(`--max-new-tokens` for `modelpress evaluate`).", rows, len(examples), max_new_tokens,
                    _tail(longest, 60), over[longest])
    return rows


def perplexity(loss: float) -> float:
    """exp(loss); infinite past exp(50); NaN when the loss is (no token was scored), not an infinite perplexity."""
    return loss if math.isnan(loss) else math.exp(loss) if loss < 50 else float("inf")


def missed(examples: list[Example], outputs: list[str]) -> dict:
    """The rows answered wrongly, as accuracy counts them: how many, and the first MISSES_KEPT with where
    each came from, its prompt's own text (the last MISS_PROMPT_CHARS characters), its label and the answer, so
    that a user can read what the model gets wrong. The text every prompt of the eval set starts and ends
    with (a chat template's system prompt and turn markers) is kept once, as `misses_prompt`."""
    head, tail = shared_ends([ex.prompt for ex in examples])
    gold, pred = comparable([ex.completion for ex in examples], outputs)
    wrong = [{"source": ex.source, "prompt": _tail(ex.prompt[len(head):len(ex.prompt) - len(tail)], MISS_PROMPT_CHARS),
              "label": ex.completion, "output": out}
             for ex, out, g, p in zip(examples, outputs, gold, pred) if g != p]
    return {"misses_total": len(wrong), "misses_prompt": {"head": head, "tail": tail}, "misses": wrong[:MISSES_KEPT]}


def shared_ends(prompts: list[str]) -> tuple[str, str]:
    """(the text every prompt starts with, the text every prompt ends with), cut next to a character that is
    no letter or digit, so that a word is not cut in two unless it holds a hyphen or an apostrophe; ("", "")
    with fewer than two distinct prompts."""
    if len(set(prompts)) < 2:
        return "", ""
    head = os.path.commonprefix(prompts)
    while head and head[-1].isalnum():
        head = head[:-1]
    tail = os.path.commonprefix([p[len(head):][::-1] for p in prompts])[::-1]
    while tail and tail[0].isalnum():
        tail = tail[1:]
    return head, tail


def measure(config, ref: ModelRef, eval_set, task: dict, show_progress: bool, timed: bool = True) -> dict:
    """The evaluation of `ref` on `eval_set` as the run's `evaluation` settings ask, labelled with what was measured.
    Untimed (`timed` false: an extra data config, evaluation.extra_data_configs) it measures answers and loss only:
    a model's latency is timed once, on the eval set."""
    settings = config.evaluation
    result = evaluate(ref, eval_set.examples, task.get("add_bos", False), settings.max_new_tokens,
                      with_accuracy=eval_set.label_column is not None, show_progress=show_progress,
                      trust_remote_code=config.input_model.trust_remote_code,
                      batch_size=settings.batch_size, latency_samples=settings.latency_samples if timed else 0)
    result.update({"model_kind": ref.kind, "model_id": ref.id, "eval_data": eval_set.description,
                   "label_column": eval_set.label_column})
    return result


def _tail(text: str, chars: int) -> str:
    return text if len(text) <= chars else "..." + text[-chars:]


def generation_stops(examples: list[Example]) -> set[str]:
    """The stop texts that may end generation: not one that a label holds (a template's closing "." and a label
    "3.5"), where the answer would end inside the label."""
    stops = {ex.stop for ex in examples if ex.stop}
    inside = {ex.stop for ex in examples if ex.stop and ex.stop in ex.completion}
    if inside:
        log.info("labels hold their closing text %s: answers are generated past it, and read up to it after the "
                 "label", ", ".join(map(repr, sorted(inside))))
    return stops - inside


def cut_at_stop(text: str, stop: str, label: str | None = None) -> str:
    """The answer up to the text that closes it (a chat turn's end marker); all of it when `stop` is empty. A label
    that holds the stop itself ("3.5" closed by ".") is the answer when the text is that label, whole or closed:
    what the first stop decides for any other label."""
    if not stop:
        return text
    if label and stop in label and (text == label or text.startswith(label + stop)):
        return label
    return text.split(stop, 1)[0]


def batches(examples: list[Example], size: int) -> list[list[int]]:
    """Indexes of `examples` in batches of `size`, similar prompt lengths together so that little is padding."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt))
    return [order[i:i + size] for i in range(0, len(order), size)]


def predict(runner, examples: list[Example], add_bos: bool, max_new_tokens: int, batch_size: int,
            show_progress: bool = False, label: str = "") -> list[str]:
    """Each example's generated answer, in the order of `examples`, generated `batch_size` at a time."""
    outputs, _ = _in_batches(examples, batch_size, show_progress, label, lambda batch: (
        runner.generate_batch([ex.prompt for ex in batch], add_bos, max_new_tokens), 0.0, 0))
    return outputs


def predict_scored(runner, examples: list[Example], add_bos: bool, max_new_tokens: int, batch_size: int,
                   show_progress: bool = False, label: str = "") -> tuple[list[str], float]:
    """`predict`, and the mean completion loss, from one pass over each batch's prompts (`generate_scored`)."""
    return _in_batches(examples, batch_size, show_progress, label,
                       lambda batch: runner.generate_scored(batch, add_bos, max_new_tokens))


def _in_batches(examples: list[Example], batch_size: int, show_progress: bool, label: str, run
                ) -> tuple[list[str], float]:
    """Answers in the order of `examples` and the mean loss, from `run(batch)` -> (answers, summed loss, tokens
    scored) over `batch_size` examples at a time."""
    from tqdm import tqdm

    outputs, total, count = [""] * len(examples), 0.0, 0
    with tqdm(total=len(examples), desc=f"evaluate {label}", disable=not show_progress, leave=False) as bar:
        for batch in batches(examples, batch_size):
            answers, nll, scored = run([examples[i] for i in batch])
            for i, (text, _) in zip(batch, answers):
                outputs[i] = text
            total, count = total + nll, count + scored
            bar.update(len(batch))
    return outputs, mean(total, count)


def latency_picks(total: int, n: int) -> list[int]:
    """The indices of `n` examples spread evenly over `total` (all of them when there are no more), so that
    the timed prompts have the lengths of the whole set."""
    return list(range(total)) if total <= n else [i * total // n for i in range(n)]


def time_one_at_a_time(runner, examples: list[Example], add_bos: bool,
                       max_new_tokens: int) -> tuple[list[float], int, list[str]]:
    """Seconds to answer each example alone (batch 1), after WARMUP untimed answers; the tokens generated; and
    the answers."""
    runner.prepare([ex.prompt for ex in examples], add_bos, max_new_tokens)
    for ex in examples[:WARMUP]:
        runner.generate(ex.prompt, add_bos, max_new_tokens)
    seconds, new_tokens, answers = [], 0, []
    for ex in examples:
        started = time.perf_counter()
        text, count = runner.generate(ex.prompt, add_bos, max_new_tokens)
        seconds.append(time.perf_counter() - started)
        new_tokens += count
        answers.append(text)
    return seconds, new_tokens, answers


def batch1_agreement(examples: list[Example], batched: list[str], picks: list[int], alone: list[str]) -> dict:
    """How many of the timed answers (batch 1) equal the batched answers accuracy scored for the same rows. Kernels
    may round otherwise at another batch shape (onnxruntime's int4 ones do, without AVX-512), so the batched
    answers can differ from what a deployed model answers alone: said, not assumed."""
    same = sum(cut_at_stop(text, examples[i].stop, examples[i].completion) == batched[i]
               for i, text in zip(picks, alone))
    if same < len(picks):
        log.warning("%d of the %d answers timed at batch 1 differ from the batched answers accuracy counts (the "
                    "kernels round otherwise at other batch shapes); set evaluation.batch_size 1 to score answers "
                    "as a model gives them alone", len(picks) - same, len(picks))
    return {"compared": len(picks), "same": same}
