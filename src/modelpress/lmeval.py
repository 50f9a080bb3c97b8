"""lm-evaluation-harness tasks (Olive's LMEvaluator) on any model a workflow makes.

Hugging Face folders (plain, with an adapter, or weight-quantized) go through lm-eval's own
`HFLM`. onnxruntime-genai folders go through `GenaiLM`, and GGUF folders, where llama-cpp-python is installed,
through `LlamaCppLM` (both over `RunnerLM` below), which answer both kinds of request lm-eval makes:
- `loglikelihood` (multiple choice, perplexity): one onnxruntime call on the genai model's
  graph gives the logits of the whole context + continuation; llama.cpp computes the continuation after the
  context it keeps in its cache (a task's choices share their context);
- `generate_until` (exact match, ...): greedy answers (onnxruntime-genai's in batches), the text cut at the
  task's stop strings.
Task data comes from the local datasets cache, or from task YAML files in `include_path` that
point at local files; nothing here needs the network.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from pathlib import Path

from modelpress.errors import MissingDependencyError, ModelpressError
from modelpress.models import GGUF_FILE, ModelRef, load_for_inference, load_tokenizer
from modelpress.passes.catalog import GGUF, ONNX, ONNX_GENAI
from modelpress.runtime import tqdm_off

log = logging.getLogger("modelpress")

def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise MissingDependencyError("lm-eval", "lmeval", "An LMEvaluator (lm-evaluation-harness tasks)") from None


def metric_key(task: str, name: str) -> str:
    """lm-eval's "acc,none" -> "task-acc"; a filtered metric ("exact_match,strict-match") keeps its filter."""
    metric, _, flt = name.partition(",")
    suffix = "" if flt in ("", "none") else "_" + re.sub(r"\W+", "_", flt)
    return f"{task}-{metric}{suffix}"


def run_tasks(ref: ModelRef, tasks: list, settings, trust_remote_code: bool = False,
              show_progress: bool = False) -> dict[str, float]:
    """{"task-metric": value} for every numeric metric lm-eval reports for `tasks` (names or task configs)."""
    _require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if log.getEffectiveLevel() > logging.DEBUG:  # lm-eval warns about every default it fills in
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
    lm = make_lm(ref, settings, trust_remote_code)
    if not show_progress:  # lm-eval's evaluator calls these with no way to turn their bars off
        for request in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
            setattr(lm, request, functools.partial(getattr(lm, request), disable_tqdm=True))
    include = str(settings.include_path) if settings.include_path else None
    manager = TaskManager(include_path=include)
    unknown = [t for t in tasks if isinstance(t, str) and t not in manager.all_tasks]
    if unknown:
        where = f" or in {include}" if include else " (set include_path to a folder of task YAML files)"
        raise ModelpressError(f"lm-eval knows no task {', '.join(map(repr, unknown))}{where}")
    import lm_eval.evaluator

    git_hash = getattr(lm_eval.evaluator, "get_git_commit_hash", None)
    # lm-eval records the git commit of the folder it runs in by calling `git`, which prints
    # "fatal: not a git repository" outside one; that commit says nothing about the model
    lm_eval.evaluator.get_git_commit_hash = lambda: None
    try:
        with tqdm_off(not show_progress):  # lm-eval's request-building bars take no switch either
            out = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=settings.limit,
                                  num_fewshot=settings.num_fewshot, bootstrap_iters=settings.bootstrap_iters,
                                  batch_size=settings.batch_size, log_samples=False, verbosity=None)
    finally:
        if git_hash is not None:
            lm_eval.evaluator.get_git_commit_hash = git_hash
    return metric_values(out["results"])


def metric_values(results: dict) -> dict[str, float]:
    """lm-eval's results as {"task-metric": value}. A filtered metric keeps its filter ("gsm8k-exact_match_strict_
    match"), and its bare name ("gsm8k-exact_match") holds what Olive reports under it: the last filter's value in
    sorted order, so a goal written for Olive finds its metric."""
    values = {}
    for task, metrics in sorted(results.items()):
        for name, value in sorted(metrics.items()):
            if name in ("alias", "sample_len") or "_stderr" in name or not isinstance(value, (int, float)):
                continue
            values[metric_key(task, name)] = float(value)
            bare = metric_key(task, name.partition(",")[0])
            if bare not in values or "," in name and f"{name.partition(',')[0]},none" not in metrics:
                values[bare] = float(value)
    return values


def make_lm(ref: ModelRef, settings, trust_remote_code: bool = False):
    """The lm-eval model for this kind of model folder."""
    if ref.kind == ONNX_GENAI:
        return genai_lm_class()(ref.path, batch_size=settings.batch_size, max_length=settings.max_length)
    if ref.kind == GGUF:
        from modelpress.llama_cpp_runner import llama_cpp_installed

        if llama_cpp_installed():  # llama.cpp's own answers; else, as any evaluation, PyTorch's on dequantized weights
            return llama_cpp_lm_class()(ref, batch_size=settings.batch_size, max_length=settings.max_length)
    if ref.kind == ONNX:
        raise ModelpressError("an LMEvaluator runs Hugging Face and onnxruntime-genai models; this step gives a "
                              "plain ONNX model: evaluate the model before OnnxConversion, or build it with "
                              "ModelBuilder")
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = load_for_inference(ref, trust_remote_code)
    device = torch_device(settings.device)
    try:  # HFLM runs a model object where it is, whatever its `device` says
        model = model.to(device)
    except (RuntimeError, AssertionError, ValueError) as err:
        raise ModelpressError(f"the LMEvaluator's device {device!r} cannot run the model here: {err}. Set the "
                              "evaluator's device to one this machine has (cpu, or cuda with a GPU).") from None
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size,
                max_length=settings.max_length, device=device)


def torch_device(device: str | None) -> str:
    """The torch device an LMEvaluator's `device` names: Olive's "gpu" is CUDA where torch has it and, as in Olive,
    the CPU (with a warning) where it does not; none is the CPU; anything else as written."""
    if device in (None, "cpu"):
        return "cpu"
    if device == "gpu":
        import torch

        if torch.cuda.is_available():
            return "cuda"
        _warn_once("LMEvaluator: device 'gpu', and torch sees no CUDA GPU here: lm-eval runs on the CPU")
        return "cpu"
    return device


@functools.cache
def _warn_once(message: str) -> None:  # the device is read for the cache key and again for the run
    log.warning(message)


@functools.cache
def runner_lm_class():
    """RunnerLM, lm-eval's model interface over a modelpress runner, defined on first use so that importing this
    module does not import lm-eval. A subclass gives the runner, the decoding of new tokens and the logits that
    predict a sequence's last tokens (`_tail_logits`)."""
    _require_lm_eval()
    from lm_eval.api.model import TemplateLM

    class RunnerLM(TemplateLM):
        runner = None
        batch = 1
        max_length = 2048

        def _tail_logits(self, ids: list[int], n: int):
            raise NotImplementedError

        def _decode(self, tokens: list[int]) -> str:
            raise NotImplementedError

        @property
        def eot_token_id(self) -> int:
            return self.runner.eos_id

        @property
        def prefix_token_id(self) -> int:
            bos = self.runner.bos
            return bos if bos is not None and bos >= 0 else self.eot_token_id

        def tok_encode(self, string: str, **kwargs) -> list[int]:
            return [int(t) for t in self.runner.encode(string)] if string else []

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
            import numpy as np

            results = []
            for key, context, continuation in requests:
                ids = (list(context) + list(continuation))[-(self.max_length + 1):]
                n = len(continuation)
                if n == 0:  # nothing to score
                    results.append((0.0, True))
                    continue
                logits = np.asarray(self._tail_logits(ids, n), dtype=np.float64)
                logits -= logits.max(axis=-1, keepdims=True)
                logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
                target = np.array(ids[-n:])
                results.append((float(logp[np.arange(n), target].sum()),
                                bool((logp.argmax(axis=-1) == target).all())))
                if self.cache_hook is not None:
                    self.cache_hook.add_partial("loglikelihood", key, results[-1])
            return results

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

            totals = []
            for request in requests:
                (text,) = request.args
                windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)]
                scored = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows])
                totals.append(sum(logp for logp, _ in scored))
            return totals

        def generate_until(self, requests, disable_tqdm: bool = False):
            outputs = []
            for start in range(0, len(requests), self.batch):
                chunk = requests[start:start + self.batch]
                groups: dict = {}
                for i, request in enumerate(chunk):
                    context, kwargs = request.args
                    until = kwargs.get("until") or []
                    until = [until] if isinstance(until, str) else list(until)
                    steps = int(kwargs.get("max_gen_toks", 256))
                    groups.setdefault(steps, []).append((i, context, until))
                answers = [""] * len(chunk)
                for steps, items in groups.items():
                    room = self.max_length - steps  # the context's most recent tokens that leave room for the answer
                    if room <= 0:  # as lm-eval's own HFLM refuses it: the prompt would be cut to nothing
                        raise ModelpressError(f"lm-eval task asks for up to {steps} new tokens, which leaves no "
                                              f"room for its prompt in the evaluator's max_length {self.max_length}; "
                                              "raise max_length (or the task's max_gen_toks below it)")
                    rows = [self.tok_encode(context)[-room:] or [self.prefix_token_id] for _, context, _ in items]
                    for (i, _, until), new in zip(items, self.runner.generate_ids(rows, steps)):
                        text = self._decode(new)
                        for stop in until:
                            text = text.split(stop, 1)[0] if stop else text
                        answers[i] = text
                outputs.extend(answers)
            return outputs

    return RunnerLM


@functools.cache
def genai_lm_class():
    """GenaiLM: RunnerLM over an onnxruntime-genai folder."""
    from modelpress.runners import GenaiRunner

    class GenaiLM(runner_lm_class()):
        """lm-eval's model interface over an onnxruntime-genai folder."""

        def __init__(self, folder: Path, batch_size: int = 1, max_length: int | None = None):
            super().__init__()
            self.runner = GenaiRunner(Path(folder))
            # onnxruntime-genai's decode stops at a byte-fallback token that is half a character;
            # the folder's Hugging Face tokenizer decodes such text as transformers does
            self.hf_tokenizer = load_tokenizer(Path(folder))
            self.batch = max(1, int(batch_size))
            config = json.loads((Path(folder) / "genai_config.json").read_text())["model"]
            self.max_length = max_length or config.get("context_length") or 2048

        def _tail_logits(self, ids: list[int], n: int):
            return self.runner.logits(ids[:-1])[-n:]  # one onnxruntime call over the whole sequence

        def _decode(self, tokens: list[int]) -> str:
            return self.hf_tokenizer.decode(tokens, skip_special_tokens=True)

    return GenaiLM


@functools.cache
def llama_cpp_lm_class():
    """LlamaCppLM: RunnerLM over a GGUF file, answered by llama.cpp (a shared context computed once)."""
    from modelpress.llama_cpp_runner import FILE_BOS, LlamaCppRunner

    class LlamaCppLM(runner_lm_class()):
        """lm-eval's model interface over a GGUF model folder (GgufExport's), through llama.cpp."""

        def __init__(self, ref: ModelRef, batch_size: int = 1, max_length: int | None = None):
            super().__init__()
            self.runner = LlamaCppRunner(Path(ref.path) / GGUF_FILE, ref.task.get("bos_token", FILE_BOS))
            self.batch = max(1, int(batch_size))
            trained = self.runner.trained_context
            self.max_length = min(max_length or trained, trained) if trained else max_length or 2048

        def _tail_logits(self, ids: list[int], n: int):
            return self.runner.tail_logits(ids, n)

        def _decode(self, tokens: list[int]) -> str:
            return self.runner.decode(tokens)

    return LlamaCppLM
