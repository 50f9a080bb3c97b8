"""The evaluator's config models: the metrics that rank search candidates, their sub-metrics and goals, and a custom
metric's script (Olive's `evaluators` section)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from modelpress.passes.spec_base import Strict


GoalType = Literal["threshold", "min-improvement", "max-degradation",
                   "percent-min-improvement", "percent-max-degradation"]
MetricType = Literal["accuracy", "perplexity", "latency", "throughput", "size_on_disk", "custom", "lm_eval"]

# Sub-metrics each metric type measures, and whether a higher value is better.
SUB_METRICS: dict[str, dict[str, bool]] = {
    "accuracy": {"accuracy_score": True, "f1_score": True, "precision": True, "recall": True},
    "perplexity": {"perplexity": False, "loss": False},
    "latency": {"avg": False, "p50": False, "p75": False, "p90": False, "p95": False, "p99": False, "p999": False,
                "min": False, "max": False},
    "throughput": {"avg": True, "min": True, "max": True, "p50": True, "p75": True, "p90": True, "p95": True,
                   "p99": True, "p999": True},
    "size_on_disk": {"size_on_disk": False, "bytes": False},  # MiB; Olive's sub-type "bytes" in bytes
}
# The accuracy sub-metrics whose Olive metric_config options modelpress computes, and the values it takes:
# `average` (macro, the default, or micro or weighted) and `task` (multiclass, the default, or binary: the class 1
# of 0/1 labels)
AVERAGED_SUB_METRICS = ("f1_score", "precision", "recall")
AVERAGES = ("macro", "micro", "weighted")
TASKS = ("multiclass", "binary")


class Goal(Strict):
    """What a candidate must reach on one sub-metric, absolute or against the baseline model."""

    type: GoalType = Field(description="threshold (absolute), or a change relative to the baseline model.")
    value: float = Field(description="The threshold (any number), or the allowed change, 0 or more (points, or "
                                     "percent for percent-*).")

    @model_validator(mode="after")
    def _change_not_negative(self) -> "Goal":
        if self.type != "threshold" and self.value < 0:
            raise ValueError(f"a {self.type} goal's value is a change and must be 0 or more, not {self.value:g}")
        return self


class SubMetric(Strict):
    """One number a metric reports, with its rank and goal."""

    name: str = Field(description="e.g. accuracy_score, f1_score, p50, avg, perplexity, size_on_disk.")
    priority: int = Field(-1, description="Rank in the search objective: 1 first, 2 second; -1 reports only.")
    goal: Goal | None = Field(None, description="Constraint a candidate must meet.")
    higher_is_better: bool | None = Field(
        None, description="For custom metrics, and lm_eval metrics modelpress does not know; built-ins know it.")
    metric_config: dict = Field(default_factory=dict, description="Olive's torchmetrics options: an accuracy "
                                "f1_score, precision or recall takes average (micro, macro, weighted) and task "
                                "(binary, multiclass); others are not used.")


class CustomMetricConfig(Strict):
    """A metric's `user_config`: for a custom metric, the script and function that compute it (user code
    runs only when named here); Olive's inference settings are accepted and not used."""

    user_script: Path | None = Field(None, description="custom metrics: Python file that defines the function.")
    evaluate_func: str | None = Field(
        None, description="custom metrics: `f(model_dir, model_kind, examples, **kwargs) -> value or dict`."
    )
    evaluate_func_kwargs: dict = Field(default_factory=dict, description="Extra keyword arguments.")
    script_dir: Path | None = Field(None, description="custom metrics: a folder added to sys.path for the "
                                    "modules the script imports (Olive's); its files are not part of the cache key.")
    run_kwargs: dict | None = Field(None, description="Olive's inference run options; accepted and not used.")
    batch_size: int | None = Field(None, description="Olive's; accepted and not used (modelpress measures at batch 1).")
    io_bind: bool | None = Field(None, description="Olive's; accepted and not used.")
    inference_settings: dict | None = Field(None, description="Olive's; accepted and not used.")

    @model_validator(mode="before")
    @classmethod
    def _no_metric_func(cls, data):
        if isinstance(data, dict) and "metric_func" in data:
            raise ValueError("metric_func is Olive's function of the model's outputs; modelpress calls evaluate_func("
                             "model_dir, model_kind, examples, **evaluate_func_kwargs) once per model: write that one")
        return data


class Metric(Strict):
    """A metric of Olive's `evaluators` section."""

    name: str = Field(description="Name of the metric (results are 'name-sub_metric'); for lm_eval, the task.")
    type: MetricType = Field(description="What is measured; lm_eval: an lm-evaluation-harness task.")
    sub_types: list[SubMetric] = Field(
        default_factory=list, description="The sub-metrics to report (lm_eval: the task's metrics, e.g. acc, "
        "acc_norm, exact_match; none listed reports them all).")
    data_config: str | None = Field(None, description="Data config to measure on; default: the eval split.")
    user_config: CustomMetricConfig | None = Field(None, description="custom metrics: the script and function.")
    backend: str | None = Field(None, description="Olive's metric backend; accepted and not used.")

    @model_validator(mode="before")
    @classmethod
    def _gather_user_config(cls, data):
        """Olive gathers a metric's keys that are user_config's into user_config: user_script beside type works."""
        if isinstance(data, dict):
            moved = {k: data[k] for k in ("metric_func", *CustomMetricConfig.model_fields) if k in data}
            if moved:
                data = {**{k: v for k, v in data.items() if k not in moved},
                        "user_config": {**moved, **(data.get("user_config") or {})}}
        return data


class EvaluatorConfig(Strict):
    """The metrics that rank search candidates and the goals they must meet.

    `type: LMEvaluator` (Olive's) measures lm-evaluation-harness `tasks`; each task becomes a
    metric of type lm_eval, and the keys after `tasks` set how lm-eval runs.
    """

    name: str = Field("default", description="Name of the evaluator.")
    type: Literal["OliveEvaluator", "LMEvaluator"] = Field(
        "OliveEvaluator", description="OliveEvaluator (metrics) or LMEvaluator (lm-evaluation-harness tasks).")
    metrics: list[Metric] = Field(default_factory=list, description="Metrics to measure.")
    tasks: list[str | dict] = Field(default_factory=list, description="LMEvaluator: lm-eval task names, e.g. "
                                    "[\"arc_easy\", \"hellaswag\"], from lm-eval or include_path, or whole task "
                                    "configs (a mapping with `task` and lm-eval's task keys).")

    def task_names(self) -> list[str]:
        """The name of each task: the string, or a task config's `task`."""
        return [t if isinstance(t, str) else str(t.get("task")) for t in self.tasks]
    include_path: Path | None = Field(None, description="A folder of lm-eval task YAML files (local tasks whose "
                                      "data files are local), relative to the config file.")
    batch_size: int = Field(1, gt=0, description="lm-eval: requests per batch.")
    max_length: int | None = Field(None, gt=0, description="lm-eval: tokens of context at most; default: the "
                                   "model's.")
    limit: float | None = Field(None, gt=0, description="lm-eval: examples per task at most (a count, or a "
                                "fraction below 1).")
    num_fewshot: int | None = Field(None, ge=0, description="lm-eval: few-shot examples; default: the task's.")
    bootstrap_iters: int = Field(100000, ge=0, description="lm-eval: bootstrap samples for standard errors "
                                 "(0 skips them).")
    device: str | None = Field(None, description="lm-eval, Hugging Face models: torch device (default cpu; Olive's "
                               "'gpu' is cuda where torch has it, else the CPU with a warning).")
    model_class: Literal["hf", "ort", "ortgenai"] | None = Field(
        None, description="Olive's; accepted: modelpress picks lm-eval's model by the kind of model measured.")
    provider_options: dict | None = Field(
        None, description="Olive's execution-provider options for lm-eval; accepted and not used on the CPU.")
    baseline: str = Field(
        "input_model",
        description="Model that relative goals compare with: input_model, or the name of a pass whose output "
        "(the same for every candidate) is the reference, e.g. the fp32 ONNX conversion.",
    )

    @model_validator(mode="after")
    def _what_to_measure(self) -> "EvaluatorConfig":
        if self.type == "LMEvaluator" and not self.tasks:
            raise ValueError("an LMEvaluator needs tasks: lm-eval task names, e.g. [\"arc_easy\"]")
        if any(isinstance(t, dict) and not isinstance(t.get("task"), str) for t in self.tasks):
            raise ValueError("a task given as a mapping needs `task`: its name")
        if self.type == "OliveEvaluator" and not self.metrics:
            raise ValueError("an evaluator needs metrics (or type LMEvaluator with tasks)")
        return self
