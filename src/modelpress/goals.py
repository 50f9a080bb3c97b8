"""Goals and ranking: a metric goal resolved against the baseline model, the ranked metrics a candidate is sorted
by, and the Pareto front over them. `modelpress.search` applies them to the candidates it measures."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from modelpress.config.evaluator_schema import EvaluatorConfig, Goal
from modelpress.errors import ModelpressError
from modelpress.metrics import higher_is_better

log = logging.getLogger("modelpress")


def goal_bound(goal: Goal, baseline: float | None, higher: bool) -> float:
    """The value a candidate must reach (at least when higher is better, at most otherwise)."""
    if goal.type == "threshold":
        return goal.value
    if missing(baseline) or math.isinf(baseline):
        raise GoalError(f"a {goal.type} goal is relative to the baseline model's value, and the baseline "
                        f"measured {baseline}. Use a 'threshold' goal for this metric, or see in the run history "
                        f"why the baseline has no finite value.")
    sign = 1 if higher else -1
    if goal.type.startswith("percent-") and baseline == 0:  # as in Olive: a percent of 0 is 0, the bound is 0
        log.warning("a %s goal is a percent of the baseline model's value, which is 0: a candidate must only not be "
                    "worse than 0. Use min-improvement, max-degradation or a threshold to ask for more.", goal.type)
        return 0.0
    if goal.type == "min-improvement":
        return baseline + sign * goal.value
    if goal.type == "max-degradation":
        return baseline - sign * goal.value
    step = abs(baseline) * goal.value / 100  # a percent of the baseline's size, so negative baselines work too
    return baseline + sign * step if goal.type == "percent-min-improvement" else baseline - sign * step


GOAL_TOLERANCE = 1e-9  # relative: a value that reaches its bound but for float rounding meets the goal
class GoalError(ModelpressError):
    """A goal that cannot be resolved against the measured baseline."""


def missing(value) -> bool:
    """A metric that has no usable value: not measured, or NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass
class Objective:
    """The evaluator's ranked metrics and resolved goals."""

    evaluator: EvaluatorConfig
    baseline: dict = field(default_factory=dict)
    ranked: list[tuple[str, bool]] = field(default_factory=list)  # (key, higher is better) by priority
    bounds: dict[str, tuple[float, bool, str]] = field(default_factory=dict)  # key -> (bound, higher, text)

    @classmethod
    def resolve(cls, evaluator: EvaluatorConfig, baseline: dict) -> "Objective":
        subs = [(m, s) for m in evaluator.metrics for s in m.sub_types]
        ranked = sorted(((s.priority, f"{m.name}-{s.name}", higher_is_better(m, s)) for m, s in subs
                         if s.priority > 0))
        bounds = {}
        for m, s in subs:
            if s.goal is None:
                continue
            key, higher = f"{m.name}-{s.name}", higher_is_better(m, s)
            try:
                bound = goal_bound(s.goal, baseline.get(key), higher)
            except GoalError as err:
                raise GoalError(f"evaluators.{evaluator.name}, metric {m.name}, sub-metric {s.name}: {err}") from None
            bounds[key] = (bound, higher, f"{key} {'>=' if higher else '<='} {bound:.4g} ({s.goal.type} "
                                          f"{s.goal.value:g}" + (f" from {baseline[key]:.4g})"
                                                                  if s.goal.type != "threshold" else ")"))
        return cls(evaluator, baseline, [(k, h) for _, k, h in ranked], bounds)

    def violations(self, values: dict) -> dict[str, float]:
        """Goals a candidate misses, with the relative shortfall of each."""
        out = {}
        for key, (bound, higher, _) in self.bounds.items():
            value = values.get(key)
            if missing(value):
                out[key] = math.inf
                continue
            gap = (bound - value) if higher else (value - bound)
            # 0.8 - 0.1 is 0.7000000000000001: a finite value that far off its bound meets it
            slack = GOAL_TOLERANCE * max(abs(bound), abs(value), 1.0) if math.isfinite(value) else 0.0
            if gap > slack:
                out[key] = gap / (abs(bound) or 1.0)
        return out

    def sort_key(self, values: dict) -> tuple:
        """Smaller is better: each ranked metric in priority order, oriented."""
        key = []
        for name, higher in self.ranked:
            value = values.get(name)
            if missing(value):
                key.append(math.inf)
            else:
                key.append(-value if higher else value)
        return tuple(key)


def pareto(candidates: list[dict], objective: Objective) -> set[int]:
    """Ids of the measured candidates that no other beats on every ranked metric: among those that meet the
    goals when any does (as Olive does, so the best is on it), else among all."""
    measured = [c for c in candidates if c["status"] == "ok"]
    meeting = [c for c in measured if not c.get("violations")]
    points = {c["id"]: objective.sort_key(c["metrics"]) for c in meeting or measured}
    front = set()
    for cid, p in points.items():
        if not any(all(a <= b for a, b in zip(q, p)) and q != p for other, q in points.items() if other != cid):
            front.add(cid)
    return front
