"""Search: try the passes' choices, measure every candidate, and keep the best one that meets the goals.

A candidate is one concrete config per pass (an alternative config, with one value for each
searched parameter). Candidates run through the session's pass cache, so a shared prefix (the
fine-tuning, say) runs once. Each candidate's model is measured by the evaluator's metrics;
relative goals are resolved against the baseline model (the input model, or a named pass's
output). The best candidate is the one that meets every goal and ranks first by the metrics'
priorities; the Pareto frontier is computed over the ranked metrics.
"""

from __future__ import annotations

import logging
import math
import random
import time
import traceback
from dataclasses import dataclass, field

from modelpress.config.olive_tables import lm_eval_higher_is_better
from modelpress.config.schema import SUB_METRICS, EvaluatorConfig, Goal, Metric, PassConfig, SubMetric
from modelpress.errors import ModelpressError, is_disk_full
from modelpress.models import ModelRef

log = logging.getLogger("modelpress")


# --- metrics --------------------------------------------------------------------------------------

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
    ("throughput", "avg"): ("throughput",), ("size_on_disk", "size_on_disk"): ("size_mb",),
    **{("latency", k): ("latency_ms", "mean" if k == "avg" else k) for k in SUB_METRICS["latency"]},
}


_THROUGHPUT_FROM_LATENCY = {"min": "max", "max": "min", "p50": "p50"}  # examples/s at batch 1 = 1000 / ms


def _measured(result: dict, metric_type: str, sub: str):
    if metric_type == "throughput" and sub in _THROUGHPUT_FROM_LATENCY:
        ms = (result.get("latency_ms") or {}).get(_THROUGHPUT_FROM_LATENCY[sub])
        return 1000.0 / ms if ms else None
    value = result
    for part in _MEASURED[(metric_type, sub)]:
        value = value.get(part) if isinstance(value, dict) else None
    return value


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
        if metric.data_config not in measured_on:
            measured_on[metric.data_config] = session.measure(ref, role, history, metric.data_config) or {}
        measured = measured_on[metric.data_config]
        for sub in metric.sub_types:
            values[f"{metric.name}-{sub.name}"] = _measured(measured, metric.type, sub.name)
    return values


def _lm_eval(session, evaluator: EvaluatorConfig, ref: ModelRef, role: str, history: list[dict]) -> dict:
    """Every lm_eval metric's task run once through lm-evaluation-harness; cached like an evaluation."""
    from modelpress.engine import evaluation_key, record_step
    from modelpress.cache import content_id
    from modelpress.lmeval import run_tasks

    named = evaluator.task_names()
    tasks = list(evaluator.tasks) + [m.name for m in evaluator.metrics if m.type == "lm_eval" and m.name not in named]
    settings = evaluator.model_dump(mode="json", exclude={"name", "type", "metrics", "baseline", "tasks"})
    local = content_id(evaluator.include_path) if evaluator.include_path else None  # the local tasks' YAML and data
    key = evaluation_key(session, "lm-eval", ref, tasks, settings, local)
    started = time.perf_counter()
    values = session.cache.read_eval(key)
    hit = values is not None
    if not hit:
        log.info("lm-eval: %s on the %s model (%s)", ", ".join(map(_task_name, tasks)), role, ref.kind)
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
    module, digest = load_user_module(user.user_script, "modelpress_metric")
    key = evaluation_key(session, "custom-metric", ref, digest, user.evaluate_func, user.evaluate_func_kwargs,
                         metric.data_config, [sub.name for sub in metric.sub_types])
    started = time.perf_counter()
    values = session.cache.read_eval(key)
    hit = values is not None
    if not hit:
        function = getattr(module, user.evaluate_func, None)
        if function is None:
            raise ValueError(f"{user.user_script} has no function {user.evaluate_func!r}")
        eval_set = session.plan.eval_set(metric.data_config)
        result = function(str(ref.path), ref.kind, eval_set.examples if eval_set else [], **user.evaluate_func_kwargs)
        if not isinstance(result, dict):
            result = {metric.sub_types[0].name: result}
        values = {f"{metric.name}-{sub.name}": float(result[sub.name]) for sub in metric.sub_types}
        session.cache.write_eval(key, values)
    history.append(record_step(f"metric {metric.name} ({role})", key, hit, time.perf_counter() - started, None))
    return values


# --- goals and ranking ------------------------------------------------------------------------------

def goal_bound(goal: Goal, baseline: float | None, higher: bool) -> float:
    """The value a candidate must reach (at least when higher is better, at most otherwise)."""
    if goal.type == "threshold":
        return goal.value
    if _missing(baseline) or math.isinf(baseline):
        raise GoalError(f"a {goal.type} goal is relative to the baseline model's value, and the baseline "
                        f"measured {baseline}. Use a 'threshold' goal for this metric, or see in the run history "
                        f"why the baseline has no finite value.")
    sign = 1 if higher else -1
    if goal.type == "min-improvement":
        return baseline + sign * goal.value
    if goal.type == "max-degradation":
        return baseline - sign * goal.value
    step = abs(baseline) * goal.value / 100  # a percent of the baseline's size, so negative baselines work too
    return baseline + sign * step if goal.type == "percent-min-improvement" else baseline - sign * step


class GoalError(ModelpressError):
    """A goal that cannot be resolved against the measured baseline."""


def _missing(value) -> bool:
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
            if _missing(value):
                out[key] = math.inf
                continue
            gap = (bound - value) if higher else (value - bound)
            if gap > 0:
                out[key] = gap / (abs(bound) or 1.0)
        return out

    def sort_key(self, values: dict) -> tuple:
        """Smaller is better: each ranked metric in priority order, oriented."""
        key = []
        for name, higher in self.ranked:
            value = values.get(name)
            if _missing(value):
                key.append(math.inf)
            else:
                key.append(-value if higher else value)
        return tuple(key)


def pareto(candidates: list[dict], objective: Objective) -> set[int]:
    """Ids of the measured candidates that no other beats on every ranked metric."""
    points = {c["id"]: objective.sort_key(c["metrics"]) for c in candidates if c["status"] == "ok"}
    front = set()
    for cid, p in points.items():
        if not any(all(a <= b for a, b in zip(q, p)) and q != p for other, q in points.items() if other != cid):
            front.add(cid)
    return front


# --- candidates -------------------------------------------------------------------------------------

def describe(choice: PassConfig, slot: PassConfig) -> str:
    """What distinguishes this choice: its type when the step has alternatives, and its searched values."""
    parts = [choice.type] if slot.alternatives else []
    searched = set(slot.search_space) | {k for a in slot.alternatives for k in a.search_space}
    values = choice.params.model_dump(mode="json")
    parts += [f"{k}={values[k]}" for k in sorted(searched) if k in values]
    return f"{slot.name}: {', '.join(parts)}" if parts else slot.name


class Search:
    """Runs candidates through the session and records what each measured."""

    def __init__(self, session):
        self.session = session
        self.config = session.config
        self.settings = self.config.search
        self.slots = self.config.passes
        self.choices = [slot.choices() for slot in self.slots]
        self.history: list[dict] = []
        self.candidates: list[dict] = []
        self.by_combo: dict[tuple, dict] = {}
        self.refs: dict[int, ModelRef] = {}  # candidate id -> its model
        self.combos: dict[int, tuple[int, ...]] = {}  # candidate id -> each step's choice index
        self.started = time.perf_counter()
        self.draws = 0
        evaluator = self.config.evaluator
        if evaluator is None:
            with_accuracy = session.plan.eval_set() is not None and session.plan.eval_set().label_column is not None
            evaluator = default_evaluator(with_accuracy)
        self.evaluator = evaluator
        self.objective: Objective | None = None

    def space_size(self) -> int:
        return math.prod(len(c) for c in self.choices)

    def budget_left(self) -> bool:
        s = self.settings
        if s.max_samples and len(self.candidates) >= s.max_samples:
            return False
        if s.max_iter and self.draws >= s.max_iter:
            return False
        if s.max_time and time.perf_counter() - self.started >= s.max_time:
            return False
        if s.stop_when_goals_met and any(c.get("goals_met") for c in self.candidates):
            return False
        return True

    def baseline(self) -> dict:
        """Measure the model that relative goals compare with."""
        name = self.evaluator.baseline
        if name == "input_model":
            ref, role = self.session.input_ref, "input"
        else:
            upto = self.slots[: [s.name for s in self.slots].index(name) + 1]
            ref, role = self.session.run_chain([c[0] for c in self.choices[: len(upto)]], self.history), name
        values = metric_values(self.session, self.evaluator, ref, f"baseline ({role})", self.history)
        return {"model": role, "model_id": ref.id, "model_kind": ref.kind, "metrics": values}

    def evaluate(self, combo: tuple[int, ...]) -> dict:
        """Run and measure one candidate (each slot's choice index); a failure is recorded, not raised."""
        self.draws += 1
        if combo in self.by_combo:
            return self.by_combo[combo]
        passes = [self.choices[i][j] for i, j in enumerate(combo)]
        choice = [describe(p, s) for p, s in zip(passes, self.slots) if len(s.choices()) > 1]
        record = {"id": len(self.candidates) + 1, "choice": choice or ["(the one configuration)"],
                  "passes": [{"name": p.name, "type": p.type, "params": p.params.model_dump(mode="json")}
                             for p in passes]}
        started = time.perf_counter()
        log.info("candidate %d: %s", record["id"], "; ".join(record["choice"]))
        try:
            ref = self.session.run_chain(passes, self.history)
            values = metric_values(self.session, self.evaluator, ref, f"candidate {record['id']}", self.history)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as err:  # a failed candidate is recorded and skipped, never fatal
            if is_disk_full(err):
                raise
            log.warning("candidate %d failed: %s: %s", record["id"], type(err).__name__, err)
            log.debug("%s", traceback.format_exc())
            record.update(status="failed", error=f"{type(err).__name__}: {err}", metrics={}, goals_met=False,
                          violations={})
        else:
            violations = self.objective.violations(values)
            self.refs[record["id"]] = ref
            record.update(status="ok", model_id=ref.id, model_kind=ref.kind,
                          metrics=values, goals_met=not violations, violations=violations)
        record["seconds"] = round(time.perf_counter() - started, 3)
        self.candidates.append(record)
        self.by_combo[combo] = record
        self.combos[record["id"]] = combo
        return record

    # --- samplers ---------------------------------------------------------------------------------

    def run(self, baseline: dict) -> None:
        self.objective = Objective.resolve(self.evaluator, baseline["metrics"])
        self.started = time.perf_counter()  # max_time is for the candidates, not the baseline's training
        if self.settings.execution_order == "pass-by-pass":
            self._pass_by_pass()
        else:
            self._joint(list(range(len(self.slots))), [0] * len(self.slots))

    def _joint(self, free: list[int], fixed: list[int]) -> list[dict]:
        """Sample over the slots in `free` (the others keep their index in `fixed`); the records measured.

        A combination measured before (by an earlier pass-by-pass step) is returned from the record
        it already has, so a step's comparison always includes the value it starts from.
        """
        sizes = [len(self.choices[i]) for i in free]

        def combo(indexes) -> tuple[int, ...]:
            out = list(fixed)
            for slot, j in zip(free, indexes):
                out[slot] = j
            return tuple(out)

        sampler = self.settings.sampler
        if sampler == "tpe":
            return self._tpe(free, sizes, combo)
        import itertools

        order = list(itertools.product(*(range(n) for n in sizes)))
        if sampler == "random":
            random.Random(self.settings.seed).shuffle(order)
        records = []
        for indexes in order:
            if not self.budget_left():
                break
            records.append(self.evaluate(combo(indexes)))
        return records

    def _tpe(self, free: list[int], sizes: list[int], combo) -> list[dict]:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        directions = ["maximize" if higher else "minimize" for _, higher in self.objective.ranked] or ["minimize"]

        # a candidate that misses goals is infeasible (its constraint > 0): TPE models it apart
        sampler = optuna.samplers.TPESampler(seed=self.settings.seed, n_startup_trials=min(4, math.prod(sizes)))
        study = optuna.create_study(directions=directions, sampler=sampler)
        total = math.prod(sizes)
        records: dict[int, dict] = {}  # candidate id -> record, for the combinations of this subspace
        asked = 0
        while self.budget_left() and len(records) < total:
            if self.settings.max_iter == 0 and asked >= 10 * total:
                break  # the sampler keeps proposing measured candidates: treat the space as exhausted
            asked += 1
            trial = study.ask()
            indexes = [trial.suggest_categorical(self.slots[slot].name, list(range(n)))
                       for slot, n in zip(free, sizes)]
            record = self.evaluate(combo(indexes))
            records[record["id"]] = record
            if record["status"] != "ok":
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            violation = sum(min(v, 1e6) for v in record["violations"].values())
            trial.set_constraint("goals", violation)
            values = [record["metrics"].get(k) for k, _ in self.objective.ranked] or [0.0]
            if any(_missing(v) for v in values):
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            study.tell(trial, values)
        return list(records.values())

    def _pass_by_pass(self) -> None:
        """Search one step at a time, in order, fixing each to its best before the next."""
        fixed = [0] * len(self.slots)
        if all(len(options) < 2 for options in self.choices):
            self.evaluate(tuple(fixed))  # nothing to choose: the one configuration is the candidate
            return
        for slot, options in enumerate(self.choices):
            if len(options) < 2:
                continue
            tried = [c for c in self._joint([slot], fixed) if c["status"] == "ok"]
            best = self._best(tried) or self._closest(tried)
            if best is not None:
                fixed[slot] = self.combos[best["id"]][slot]
            if not self.budget_left():
                return

    # --- results ----------------------------------------------------------------------------------

    def _best(self, candidates: list[dict]) -> dict | None:
        good = [c for c in candidates if c["status"] == "ok" and c["goals_met"]]
        return min(good, key=lambda c: (self.objective.sort_key(c["metrics"]), c["id"]), default=None)

    def _closest(self, candidates: list[dict]) -> dict | None:
        measured = [c for c in candidates if c["status"] == "ok"]
        return min(measured, key=lambda c: (len(c["violations"]), sum(c["violations"].values()),
                                            self.objective.sort_key(c["metrics"]), c["id"]), default=None)

    def summary(self, baseline: dict) -> dict:
        front = pareto(self.candidates, self.objective)
        best = self._best(self.candidates)
        closest = None if best else self._closest(self.candidates)
        for c in self.candidates:
            c["pareto"] = c["id"] in front
            c["best"] = best is not None and c["id"] == best["id"]
        return {
            "sampler": self.settings.sampler, "execution_order": self.settings.execution_order,
            "space_size": self.space_size(), "evaluated": len(self.candidates),
            "failed": sum(c["status"] != "ok" for c in self.candidates),
            "seconds": round(time.perf_counter() - self.started, 3),
            "ranked_metrics": [{"metric": k, "higher_is_better": h} for k, h in self.objective.ranked],
            "goals": [text for _, _, text in self.objective.bounds.values()],
            "goal_metrics": list(self.objective.bounds),
            "baseline": baseline,
            "best": best["id"] if best else None,
            "closest": closest["id"] if closest else None,
            "pareto": sorted(front),
            "candidates": self.candidates,
        }


def run_search(session):
    """Search, then write the best candidate (if any meets the goals) and the evidence to the output folder."""
    from modelpress.engine import RunResult, write_outputs

    search = Search(session)
    log.info("search: %d candidates in the space (%s, %s)", search.space_size(), search.settings.sampler,
             search.settings.execution_order)
    baseline = search.baseline()
    search.run(baseline)
    result = search.summary(baseline)
    final = search.refs.get(result["best"] or result["closest"])
    models = {}
    if session.config.evaluation.evaluate_input_model or baseline["model"] == "input":
        models["input"] = session.measure(session.input_ref, "input", search.history)
    if result["best"]:
        models["best"] = session.measure(final, "best", search.history)
    metrics = {"models": {k: v for k, v in models.items() if v}, "search": result}
    write_outputs(session.config, final if result["best"] else None, session.task_card(), search.history, metrics)
    return RunResult(session.config.engine.output_dir, final, search.history, metrics)
