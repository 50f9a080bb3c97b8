"""Olive's `evaluators`/`evaluator` sections and modelpress's `evaluation` block."""

from __future__ import annotations

from pathlib import Path

from modelpress.config.collector import Collector, as_mapping, did_you_mean
from modelpress.config.olive_tables import OLIVE_ONLY_SUB_METRICS, SUB_METRIC_ALIASES, lm_eval_higher_is_better
from modelpress.config.evaluator_schema import (AVERAGED_SUB_METRICS, AVERAGES, SUB_METRICS, TASKS, EvaluatorConfig,
                                                Metric, SubMetric)
from modelpress.config.schema import EvaluationConfig
from modelpress.config.paths import SCRIPT_PATHS, local_path, script_paths


def evaluator_section(raw: dict, engine_raw: dict, base_dir: Path, c: Collector) -> EvaluatorConfig | None:
    """Olive's `evaluators` (named) and `evaluator` (which one the engine uses, or an inline one)."""
    named = raw.get("evaluators") or {}
    if as_mapping(named, "evaluators", c) is None:
        return None
    chosen = engine_raw.get("evaluator", raw.get("evaluator"))
    path = "evaluator"
    if chosen is None:
        if not named:
            return None
        if len(named) > 1:
            c.add("evaluator", f"several evaluators are defined ({', '.join(named)}) and none is chosen",
                  "Set evaluator to the name of the one to use.")
            return None
        chosen = next(iter(named))
    if isinstance(chosen, str):
        if chosen not in named:
            hint = did_you_mean(chosen, named) or f"Defined: {', '.join(named) or 'none'}."
            c.add(path, f"no evaluator named {chosen!r}", hint)
            return None
        body, path = named[chosen], f"evaluators.{chosen}"
        name = chosen
    else:
        body, name = chosen, "default"
    if as_mapping(body, path, c) is None:
        return None
    evaluator = c.validate(EvaluatorConfig, {"name": name, **body}, path)
    if evaluator is None:
        return None
    _check_names(evaluator, path, c)  # the metrics the config wrote; those made from `tasks` below are unique
    _one_sub_metric_ranks(evaluator)
    written = {m.name for m in evaluator.metrics}
    if "size_on_disk" in evaluator.task_names():  # Olive's LMEvaluator reads it as the model's size in bytes
        evaluator.tasks = [t for t, name in zip(evaluator.tasks, evaluator.task_names()) if name != "size_on_disk"]
        if "size_on_disk" not in written:
            evaluator.metrics.append(Metric(name="size_on_disk", type="size_on_disk",
                                            sub_types=[SubMetric(name="bytes")]))
    evaluator.metrics += [Metric(name=task, type="lm_eval") for task in dict.fromkeys(evaluator.task_names())
                          if task not in written]
    if evaluator.include_path is not None:
        evaluator.include_path = local_path(str(evaluator.include_path), base_dir, f"{path}.include_path", c)
        if evaluator.include_path is not None and not evaluator.include_path.is_dir():
            c.add(f"{path}.include_path", f"folder not found: {evaluator.include_path}",
                  "Give the folder of lm-eval task YAML files, relative to the config file.")
    if evaluator.model_class or evaluator.provider_options:
        c.note(f"{path}: model_class and provider_options are Olive's; modelpress runs lm-eval with HFLM on "
               "Hugging Face models and with onnxruntime-genai on genai folders, on the CPU.")
    for i, metric in enumerate(evaluator.metrics):
        where = f"{path}.metrics[{i}]"
        _check_metric(metric, where, c)
        if metric.user_config is not None:
            given = {key: value for key, _, _ in SCRIPT_PATHS
                     if (value := getattr(metric.user_config, key, None)) is not None}
            for key, resolved in (script_paths(given, base_dir, f"{where}.user_config", c) or {}).items():
                setattr(metric.user_config, key, resolved)
    _check_priorities(evaluator, path, c)
    return evaluator


def _one_sub_metric_ranks(evaluator) -> None:
    """One metric with one sub-metric and no priority ranks first, as in Olive (where a task list adds none)."""
    if len(evaluator.metrics) == 1 and not evaluator.tasks and len(evaluator.metrics[0].sub_types) == 1:
        only = evaluator.metrics[0].sub_types[0]
        if only.priority <= 0:
            only.priority = 1


def _check_names(evaluator, path: str, c: Collector) -> None:
    """Each metric's results are stored by its name: two metrics of one name would overwrite each other."""
    seen: set[str] = set()
    for i, metric in enumerate(evaluator.metrics):
        if metric.name in seen:
            c.add(f"{path}.metrics[{i}].name", f"a second metric named {metric.name!r}",
                  "Give each metric its own name (two latencies on two data configs: latency_a, latency_b).")
        seen.add(metric.name)


def _check_priorities(evaluator, path: str, c: Collector) -> None:
    """Two ranked sub-metrics with one priority are ordered by name, which the config did not ask for; a goal on
    an unranked one is checked here and ignored by Olive."""
    seen: dict[int, str] = {}
    for i, metric in enumerate(evaluator.metrics):
        for j, sub in enumerate(metric.sub_types):
            key = f"{metric.name}-{sub.name}"
            if sub.goal is not None and sub.priority <= 0:
                c.warn(f"{path}.metrics[{i}].sub_types[{j}].goal: {key} has no priority, and Olive ignores the goal "
                       "of such a sub-metric; modelpress checks it. Give it a priority (1, 2, ...) to rank it too, or "
                       "remove the goal to choose as Olive would.")
            if sub.priority > 0 and sub.priority in seen:
                c.warn(f"{path}: {seen[sub.priority]} and {key} both have priority {sub.priority}; the search ranks "
                       "them by name. Give each ranked sub-metric its own priority (1 first, 2 second, ...).")
            seen.setdefault(sub.priority, key)


def _check_metric(metric: Metric, where: str, c: Collector) -> None:
    if metric.type == "lm_eval":
        for j, sub in enumerate(metric.sub_types):
            if (sub.priority > 0 or sub.goal) and sub.higher_is_better is None and \
                    lm_eval_higher_is_better(sub.name) is None:
                c.add(f"{where}.sub_types[{j}].higher_is_better", f"modelpress does not know whether a higher "
                      f"{sub.name!r} is better, and this sub-metric is ranked or has a goal", "Set it to true or false.")
        return
    if not metric.sub_types:
        c.add(f"{where}.sub_types", "a metric needs at least one sub-metric",
              f"e.g. [{{\"name\": \"{next(iter(SUB_METRICS.get(metric.type, {'value': 0})))}\"}}].")
        return
    if metric.type == "custom":
        user = metric.user_config
        if user is None or user.user_script is None or not user.evaluate_func:
            c.add(f"{where}.user_config", "a custom metric needs user_config with user_script and evaluate_func",
                  "Name the script and the function that computes the metric.")
        for j, sub in enumerate(metric.sub_types):
            if sub.higher_is_better is None:
                c.add(f"{where}.sub_types[{j}].higher_is_better", "required for a custom metric",
                      "Set it to true or false.")
        _warn_inert_inference_keys(metric, where, c)
        return
    known = SUB_METRICS[metric.type]
    aliases = SUB_METRIC_ALIASES.get(metric.type, {})
    for j, sub in enumerate(metric.sub_types):
        if sub.name in aliases:
            c.note(f"{where}.sub_types[{j}].name: Olive's {sub.name!r} is modelpress's {aliases[sub.name]!r}.")
            sub.name = aliases[sub.name]
        if sub.name not in known:
            instead = OLIVE_ONLY_SUB_METRICS.get(metric.type, {}).get(sub.name)
            hint = (f"An Olive sub-type: {instead}." if instead else did_you_mean(sub.name, known)) or \
                f"Allowed for {metric.type}: {', '.join(known)}."
            c.add(f"{where}.sub_types[{j}].name", f"{metric.type} has no sub-metric {sub.name!r}", hint)
        elif sub.goal is not None and sub.goal.type == "percent-min-improvement" and sub.goal.value >= 100 \
                and not known[sub.name]:
            c.add(f"{where}.sub_types[{j}].goal.value", f"{metric.type} {sub.name} cannot improve by "
                  f"{sub.goal.value:g}%: it would have to fall to 0 or below", "Give a percent below 100.")
        elif sub.higher_is_better is not None and sub.higher_is_better != known[sub.name]:
            c.warn(f"{where}.sub_types[{j}].higher_is_better: {metric.type} {sub.name} is ranked with "
                   f"{'higher' if known[sub.name] else 'lower'} as better whatever this says")
        if metric.type == "throughput" and sub.name in known and sub.name.startswith("p") and sub.name != "p50" \
                and (sub.goal is not None or sub.priority > 0):
            q = 99.9 if sub.name == "p999" else float(sub.name[1:])
            c.warn(f"{where}.sub_types[{j}]: throughput {sub.name} here is the {q:g}th percentile of examples/s (1000 "
                   f"/ latency's {100 - q:.3g}th); Olive 0.13 reports 1000 / latency's {sub.name} under this name (its "
                   f"{100 - q:.3g}th), so a goal set from Olive's numbers is compared with another one. For the same "
                   f"number, set the goal on latency {sub.name} (ms).")
        unused = sorted(set(sub.metric_config) - _honoured(metric.type, sub.name, sub.metric_config))
        if unused:
            c.warn(f"{where}.sub_types[{j}].metric_config: {', '.join(unused)} accepted and not used: "
                   f"{METRIC_CONFIG_NOTES.get(metric.type, 'modelpress computes this sub-metric one way')}")
    _warn_inert_inference_keys(metric, where, c)


def _honoured(metric_type: str, sub: str, options: dict) -> set[str]:
    """The metric_config keys modelpress computes with: an accuracy f1_score/precision/recall's `average` (micro,
    macro, weighted) and `task` (binary: the class 1 of 0/1 labels; multiclass)."""
    if metric_type != "accuracy" or sub not in AVERAGED_SUB_METRICS:
        return set()
    return {key for key, allowed in (("average", AVERAGES), ("task", TASKS)) if options.get(key) in allowed}


# What modelpress computes, for a sub-metric's Olive torchmetrics options it does not take.
METRIC_CONFIG_NOTES = {
    "accuracy": "accuracy is over whole answers; f1_score, precision and recall take average micro, macro (the "
                "default) or weighted and task binary (the class 1 of 0/1 labels) or multiclass, and no other "
                "torchmetrics option",
    "latency": "latency is timed one example at a time, on evaluation.latency_samples examples",
    "throughput": "throughput is examples per second at batch 1, from the latency timings",
}


def _warn_inert_inference_keys(metric: Metric, where: str, c: Collector) -> None:
    """Olive's per-metric inference settings: modelpress runs every model its own way, so they are named."""
    if metric.backend is not None:
        c.warn(f"{where}.backend: accepted and not used: modelpress computes its metrics itself")
    user = metric.user_config
    used = [k for k in ("batch_size", "io_bind", "inference_settings", "run_kwargs")
            if user and getattr(user, k) is not None]
    if used:
        c.warn(f"{where}.user_config: {', '.join(used)} accepted and not used: modelpress batches answers by "
               "evaluation.batch_size, times latency at batch 1, and runs each model with its own runtime's "
               "settings")


def evaluation_section(raw: dict, engine_raw: dict, c: Collector) -> EvaluationConfig:
    data = raw.get("evaluation", {})
    if as_mapping(data, "evaluation", c) is None:
        return EvaluationConfig()
    if "evaluate_input_model" in engine_raw:
        data = {**data, "evaluate_input_model": engine_raw["evaluate_input_model"]}
    return c.validate(EvaluationConfig, data, "evaluation") or EvaluationConfig()
