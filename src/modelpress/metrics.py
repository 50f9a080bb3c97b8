"""What a candidate measured: each sub-metric of the evaluator, from the built-in evaluation, lm-eval or a
user's function, each cached like an evaluation."""

from __future__ import annotations

import logging
import time

from modelpress.config.olive_tables import lm_eval_higher_is_better
from modelpress.config.evaluator_schema import (AVERAGED_SUB_METRICS, AVERAGES, SUB_METRICS, EvaluatorConfig, Metric,
                                                SubMetric)
from modelpress.errors import ModelpressError
from modelpress.models import ModelRef
from modelpress.runtime import library_version

log = logging.getLogger("modelpress")


def default_evaluator(with_accuracy: bool) -> EvaluatorConfig:
    """Rank by accuracy, then p50 latency, when the config names no evaluator."""
    metrics = [Metric(name="latency", type="latency", sub_types=[SubMetric(name="p50", priority=2)]),
               Metric(name="size", type="size_on_disk", sub_types=[SubMetric(name="size_on_disk")])]
    if with_accuracy:
        metrics.insert(0, Metric(name="accuracy", type="accuracy", sub_types=[SubMetric(name="accuracy_score",
                                                                                          priority=1)]))
    else:
        metrics.insert(0, Metric(name="perplexity", type="perplexity",
                                 sub_types=[SubMetric(name="perplexity", priority=1)]))
    return EvaluatorConfig(metrics=metrics)


_MEASURED = {  # where each built-in sub-metric lives in the evaluation result
    ("accuracy", "accuracy_score"): ("accuracy",), ("accuracy", "f1_score"): ("f1",),
    ("accuracy", "precision"): ("precision",), ("accuracy", "recall"): ("recall",),
    ("perplexity", "perplexity"): ("perplexity",), ("perplexity", "loss"): ("completion_loss",),
    ("throughput", "avg"): ("throughput",),
    **{("latency", k): ("latency_ms", "mean" if k == "avg" else k) for k in SUB_METRICS["latency"]},
}


# examples/s at batch 1 = 1000 / ms: a high throughput percentile is a low latency one
_THROUGHPUT_FROM_LATENCY = {"min": "max", "max": "min", "p50": "p50", "p75": "p25", "p90": "p10", "p95": "p5",
                            "p99": "p1", "p999": "p01"}


def _measured(result: dict, metric_type: str, sub: str, options: dict | None = None):
    averaged = averaging(metric_type, sub, options or {})
    if averaged is not None:  # f1_score, precision or recall averaged as the sub-metric's metric_config asks
        found = (result.get("averaged") or {}).get(averaged)
        if found is not None:
            return found.get(_MEASURED[(metric_type, sub)][0])
        if averaged == "binary" and result.get("averaged"):
            log.warning("accuracy %s: task binary takes the class 1 of labels 0 and 1, and these labels are "
                        "others: the macro mean is reported", sub)
    if metric_type == "throughput" and sub in _THROUGHPUT_FROM_LATENCY:
        ms = (result.get("latency_ms") or {}).get(_THROUGHPUT_FROM_LATENCY[sub])
        return 1000.0 / ms if ms else None
    value = result
    for part in _MEASURED[(metric_type, sub)]:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def averaging(metric_type: str, sub: str, options: dict) -> str | None:
    """The averaging an accuracy sub-metric's Olive metric_config asks for other than the macro mean: "binary"
    (task binary, where the labels are 0 and 1), "micro" or "weighted"; None for macro."""
    if metric_type != "accuracy" or sub not in AVERAGED_SUB_METRICS:
        return None
    if options.get("task") == "binary":
        return "binary"
    average = options.get("average")
    return average if average in AVERAGES and average != "macro" else None


def higher_is_better(metric: Metric, sub: SubMetric) -> bool:
    if metric.type == "custom":
        return bool(sub.higher_is_better)
    if metric.type == "lm_eval":
        return sub.higher_is_better if sub.higher_is_better is not None else bool(lm_eval_higher_is_better(sub.name))
    return SUB_METRICS[metric.type][sub.name]


def metric_values(session, evaluator: EvaluatorConfig, ref: ModelRef, role: str, history: list[dict]) -> dict:
    """{"metric-sub": value} for every sub-metric of the evaluator, on `ref`."""
    values: dict = {}
    measured_on: dict = {}  # one evaluation per data config, shared by the metrics that use it
    if any(metric.type == "lm_eval" for metric in evaluator.metrics):
        values.update(_lm_eval(session, evaluator, ref, role, history))
    for metric in evaluator.metrics:
        if metric.type == "custom":
            values.update(_custom(session, metric, ref, role, history))
            continue
        if metric.type == "lm_eval":
            continue
        if metric.type == "size_on_disk":  # the files alone: nothing runs, no data needed
            from modelpress.evaluate import model_size_bytes

            size = model_size_bytes(ref)
            values.update({f"{metric.name}-{sub.name}": size if sub.name == "bytes" else size / 2**20
                           for sub in metric.sub_types})
            continue
        if metric.data_config not in measured_on:
            measured_on[metric.data_config] = session.measure(ref, role, history, metric.data_config) or {}
        measured = measured_on[metric.data_config]
        for sub in metric.sub_types:
            values[f"{metric.name}-{sub.name}"] = _measured(measured, metric.type, sub.name, sub.metric_config)
    return values


def _lm_eval(session, evaluator: EvaluatorConfig, ref: ModelRef, role: str, history: list[dict]) -> dict:
    """Every lm_eval metric's task run once through lm-evaluation-harness; cached like an evaluation."""
    from modelpress.engine import evaluation_key, record_step
    from modelpress.cache import content_id
    from modelpress.lmeval import run_tasks, torch_device

    named = evaluator.task_names()
    tasks = list(evaluator.tasks) + [m.name for m in evaluator.metrics if m.type == "lm_eval" and m.name not in named]
    settings = evaluator.model_dump(mode="json", exclude={"name", "type", "metrics", "baseline", "tasks"})
    settings["device"] = torch_device(evaluator.device)  # where it ran: Olive's "gpu" is the CPU without CUDA
    local = content_id(evaluator.include_path) if evaluator.include_path else None  # the local tasks' YAML and data
    # lm-eval reads its own tasks' data, not the workflow's: a training-data edit does not re-run it, an lm-eval
    # upgrade (its tasks' YAML) does
    key = evaluation_key(session, "lm-eval", ref, tasks, settings, local, library_version("lm_eval"),
                         with_data=False)
    started = time.perf_counter()
    values = session.cache.read_eval(key)
    hit = values is not None
    if not hit:
        log.info("lm-eval: %s on the %s model (%s)", ", ".join(map(_task_name, tasks)), role, ref.kind)
        with session.local_lock:  # this machine measures one model at a time (parallel search candidates)
            values = run_tasks(ref, tasks, evaluator, session.config.input_model.trust_remote_code,
                               session.show_progress)
        session.cache.write_eval(key, values)
    history.append(record_step(f"lm-eval {', '.join(map(_task_name, tasks))} ({role})", key, hit,
                               time.perf_counter() - started,
                               None))
    wanted = {f"{m.name}-{s.name}" for m in evaluator.metrics if m.type == "lm_eval" for s in m.sub_types}
    missing = wanted - set(values)
    if missing:
        raise ModelpressError(f"lm-eval reported no {', '.join(sorted(missing))}; it reported "
                              f"{', '.join(sorted(values)) or 'nothing'}")
    return values


def _custom_values(metric: Metric, result, where: str) -> dict[str, float]:
    """{"metric-sub": value} from what a custom function returned: a number (one sub-metric) or a mapping."""
    names = [sub.name for sub in metric.sub_types]
    if not isinstance(result, dict):
        if len(names) != 1:
            raise ModelpressError(f"{where} returned one value, and the metric has {len(names)} sub_types "
                                  f"({', '.join(names)}). Return a mapping of each sub_type's name to its value.")
        result = {names[0]: result}
    missing = [n for n in names if n not in result]
    if missing:
        raise ModelpressError(f"{where} returned {', '.join(map(repr, result)) or 'no keys'}, not "
                              f"{', '.join(map(repr, missing))}. Return a value for every sub_type.")
    try:
        return {f"{metric.name}-{n}": float(result[n]) for n in names}
    except (TypeError, ValueError) as err:
        raise ModelpressError(f"{where} returned a value that is not a number ({err}). Return numbers.") from None


def _task_name(task) -> str:
    return task if isinstance(task, str) else str(task.get("task"))


def _custom(session, metric: Metric, ref: ModelRef, role: str, history: list[dict]) -> dict:
    """Run the user's function (named by the config) on the model folder and the eval examples.

    The result is cached like a built-in evaluation, under the model, the data, the script's
    content, the function's name and its keyword arguments.
    """
    from modelpress.engine import evaluation_key, record_step
    from modelpress.passes.plugins import load_user_module

    user = metric.user_config
    module, digest = load_user_module(user.user_script, "modelpress_metric", user.script_dir)
    chosen = session.config.evaluation.model_dump(include={"data_config", "max_examples", "label_column"})  # eval_set's
    # the metric's name too: the values are saved under it ("tone-score"), so a renamed metric must not read them
    key = evaluation_key(session, "custom-metric", ref, digest, user.evaluate_func, user.evaluate_func_kwargs,
                         metric.data_config, [sub.name for sub in metric.sub_types], chosen, metric.name,
                         reads_default=metric.data_config is None)
    started = time.perf_counter()
    values = session.cache.read_eval(key)
    hit = values is not None
    if not hit:
        where = f"metric {metric.name!r} ({user.user_script}, {user.evaluate_func})"
        function = getattr(module, user.evaluate_func, None)
        if function is None:
            raise ModelpressError(f"{where}: the script has no function {user.evaluate_func!r}. Set "
                                  "user_config.evaluate_func to one of its functions.")
        eval_set = session.plan.eval_set(metric.data_config)
        with session.local_lock:  # this machine measures one model at a time (parallel search candidates)
            result = function(str(ref.path), ref.kind, eval_set.examples if eval_set else [],
                              **user.evaluate_func_kwargs)
        values = _custom_values(metric, result, where)
        session.cache.write_eval(key, values)
    history.append(record_step(f"metric {metric.name} ({role})", key, hit, time.perf_counter() - started, None))
    return values
