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
import warnings

from modelpress.config.schema import PassConfig
from modelpress.errors import is_disk_full
from modelpress.goals import Objective, missing, pareto
from modelpress.metrics import default_evaluator, metric_values
from modelpress.models import ModelRef
from modelpress.redact import SHOWN, is_secret_key, redact, redact_text

log = logging.getLogger("modelpress")


SHUFFLED_MAX = 100_000  # spaces up to this size are listed and shuffled; larger ones are drawn without listing


def draw_order(sizes: list[int], seed: int | None):
    """Every combination of choice indexes (one per size) once, in a random order fixed by `seed`, lazily:
    a search space of many parameters can hold more combinations than memory, while its budget measures few."""
    import itertools

    rng = random.Random(seed)
    total = math.prod(sizes)
    if total <= SHUFFLED_MAX:
        order = list(itertools.product(*(range(n) for n in sizes)))
        rng.shuffle(order)
        yield from order
        return
    seen: set[int] = set()
    while len(seen) < total:
        number = rng.randrange(total)
        if number in seen:
            continue
        seen.add(number)
        indexes = []
        for n in reversed(sizes):  # the last slot varies fastest, as in itertools.product
            number, index = divmod(number, n)
            indexes.append(index)
        yield tuple(reversed(indexes))


# --- candidates ---------------------------------------------------------------------------------------

def describe(choice: PassConfig, slot: PassConfig, varying: dict[str, set[str]] | None = None) -> str:
    """What distinguishes this choice: its type when the step has alternatives, its searched values, and the
    settings (nested ones by their dotted names) that the step's other choices of its type set otherwise;
    `varying`: `varying_settings(slot)`, made once for a step's many candidates."""
    parts = [choice.type] if slot.alternatives else []
    searched = set(slot.search_space) | {k for a in slot.alternatives for k in a.search_space}
    values = _flat(choice.params.model_dump(mode="json"))
    searched |= (varying if varying is not None else varying_settings(slot)).get(choice.type, set())
    parts += [f"{k}={SHOWN if is_secret_key(k.rsplit('.', 1)[-1]) else redact_text(str(values[k]))}"
              for k in sorted(searched) if k in values]
    return f"{slot.name}: {', '.join(parts)}" if parts else slot.name


def varying_settings(slot: PassConfig) -> dict[str, set[str]]:
    """For each pass type among the step's choices, the settings (dotted names) its choices do not all share."""
    by_type: dict[str, list[dict]] = {}
    for c in slot.choices():
        by_type.setdefault(c.type, []).append(_flat(c.params.model_dump(mode="json")))
    return {typ: {k for k in set().union(*flats) if any(f.get(k) != flats[0].get(k) for f in flats[1:])}
            for typ, flats in by_type.items()}


def _flat(values: dict, prefix: str = "") -> dict:
    """Nested settings as dotted keys (training_args.learning_rate), so a label names the one that differs."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Search:
    """Runs candidates through the session and records what each measured."""

    def __init__(self, session):
        self.session = session
        self.config = session.config
        self.settings = self.config.search
        self.slots = self.config.passes
        self.choices = [slot.choices() for slot in self.slots]
        self.varying = [varying_settings(slot) for slot in self.slots]  # what labels each step's choices
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
        self.parallel = session.concurrency()  # candidates at once (the host cluster's max_concurrency)

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

    def evaluate(self, combo: tuple[int, ...], outcome: dict | None = None) -> dict:
        """Record one candidate (each slot's choice index), running it unless `outcome` holds its run already;
        a failure is recorded, not raised."""
        self.draws += 1
        if combo in self.by_combo:
            return self.by_combo[combo]
        number = len(self.candidates) + 1
        outcome = outcome or self._execute(combo, number)
        passes = [self.choices[i][j] for i, j in enumerate(combo)]
        record = {"id": number, "choice": self._choice(combo),
                  "passes": [{"name": p.name, "type": p.type, "params": redact(p.params.model_dump(mode="json"))}
                             for p in passes]}
        if "error" in outcome:
            record.update(status="failed", error=outcome["error"], metrics={}, goals_met=False, violations={})
        else:
            ref, values = outcome["ref"], outcome["values"]
            violations = self.objective.violations(values)
            self.refs[number] = ref
            record.update(status="ok", model_id=ref.id, model_kind=ref.kind,
                          metrics=values, goals_met=not violations, violations=violations)
        record.update(seconds=outcome["seconds"], started=outcome["started"], ended=outcome["ended"])
        self.history.extend(outcome["history"])
        self.candidates.append(record)
        self.by_combo[combo] = record
        self.combos[number] = combo
        return record

    def _choice(self, combo: tuple[int, ...]) -> list[str]:
        passes = [self.choices[i][j] for i, j in enumerate(combo)]
        return [describe(p, s, varying) for p, s, options, varying in zip(passes, self.slots, self.choices,
                                                                          self.varying) if len(options) > 1] or \
            ["(the one configuration)"]

    def _execute(self, combo: tuple[int, ...], number: int) -> dict:
        """Run the candidate's passes and measure its model: {ref, values} or {error}, with its history rows."""
        passes = [self.choices[i][j] for i, j in enumerate(combo)]
        history: list[dict] = []
        started, wall = time.perf_counter(), time.time()
        log.info("candidate %d: %s", number, "; ".join(self._choice(combo)))
        outcome: dict = {"history": history}
        try:
            ref = self.session.run_chain(passes, history)
            outcome.update(ref=ref, values=metric_values(self.session, self.evaluator, ref, f"candidate {number}",
                                                         history))
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as err:  # a failed candidate is recorded and skipped, never fatal
            if is_disk_full(err):
                raise
            log.warning("candidate %d failed: %s: %s", number, type(err).__name__, err)
            log.debug("%s", traceback.format_exc())
            outcome["error"] = redact_text(f"{type(err).__name__}: {err}")  # saved in metrics.json and the report
        return {**outcome, "seconds": round(time.perf_counter() - started, 3), "started": round(wall, 3),
                "ended": round(time.time(), 3)}

    def _batch_size(self) -> int:
        """Candidates to run at once: the host's max_concurrency, no more than the budget still allows."""
        n = self.parallel
        if self.settings.max_samples:
            n = min(n, self.settings.max_samples - len(self.candidates))
        if self.settings.max_iter:
            n = min(n, self.settings.max_iter - self.draws)
        return max(n, 1)

    def _run_many(self, combos: list[tuple[int, ...]]) -> dict:
        """Run the new combinations among `combos` at once (threads, each waiting on its cluster tasks).

        Their records are made afterwards, in order, by `evaluate`, exactly as a sequential run makes
        them; one run alone is left to `evaluate`.
        """
        fresh = list(dict.fromkeys(c for c in combos if c not in self.by_combo))
        if len(fresh) < 2:
            return {}
        from concurrent.futures import ThreadPoolExecutor, wait

        first = len(self.candidates) + 1
        pool = ThreadPoolExecutor(max_workers=len(fresh), thread_name_prefix="candidate")
        try:
            futures = {c: pool.submit(self._execute, c, first + i) for i, c in enumerate(fresh)}
            wait(futures.values())
            return {c: f.result() for c, f in futures.items()}
        except BaseException:
            self.session.cancel()  # Ctrl-C: tasks in flight stop; finished passes stay in the cache
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

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

        order = draw_order(sizes, self.settings.seed) if sampler == "random" else itertools.product(
            *(range(n) for n in sizes))
        records: list[dict] = []
        while self.budget_left():
            batch = [combo(indexes) for indexes in itertools.islice(order, self._batch_size())]
            if not batch:
                break
            outcomes = self._run_many(batch)
            for c in batch:
                if c not in outcomes and not self.budget_left():  # a candidate that ran is recorded whatever
                    continue  # the budget says now: it may rank first, and its time is spent
                records.append(self.evaluate(c, outcomes.get(c)))
        return records

    def _tpe(self, free: list[int], sizes: list[int], combo) -> list[dict]:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        directions = ["maximize" if higher else "minimize" for _, higher in self.objective.ranked] or ["minimize"]

        # a candidate that misses goals is infeasible (its constraint > 0): TPE models it apart
        with warnings.catch_warnings():  # optuna calls multivariate and group experimental: Olive's defaults
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(seed=self.settings.seed, n_startup_trials=min(4, math.prod(sizes)),
                                                 multivariate=self.settings.multivariate,
                                                 group=self.settings.group and self.settings.multivariate)
        study = optuna.create_study(directions=directions, sampler=sampler)
        total = math.prod(sizes)
        records: dict[int, dict] = {}  # candidate id -> record, for the combinations of this subspace
        asked = 0
        while self.budget_left() and len(records) < total:
            if self.settings.max_iter == 0 and asked >= 10 * total:
                break  # the sampler keeps proposing measured candidates: treat the space as exhausted
            trials = []
            for _ in range(min(self._batch_size(), total - len(records))):
                asked += 1
                trial = study.ask()  # a batch is asked before any of it is told (the parallel case)
                trials.append((trial, combo([trial.suggest_categorical(self.slots[slot].name, list(range(n)))
                                             for slot, n in zip(free, sizes)])))
            outcomes = self._run_many([c for _, c in trials])
            for trial, c in trials:
                if c not in outcomes and not self.budget_left():
                    continue
                self._tell(study, trial, self.evaluate(c, outcomes.get(c)), records)
        return list(records.values())

    def _tell(self, study, trial, record: dict, records: dict) -> None:
        """Tell the study what the trial's candidate measured; a failed or unmeasured one is a failed trial."""
        import optuna

        records[record["id"]] = record
        values = [record["metrics"].get(k) for k, _ in self.objective.ranked] or [0.0]
        if record["status"] != "ok" or any(missing(v) for v in values):
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        trial.set_constraint("goals", sum(min(v, 1e6) for v in record["violations"].values()))
        study.tell(trial, values)

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
        # a goal metric that was not measured is further from the goals than any measured shortfall
        return min(measured, key=lambda c: (sum(math.isinf(v) for v in c["violations"].values()),
                                            len(c["violations"]), sum(c["violations"].values()),
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
            "chart_axes": chart_axes(self.objective.evaluator),
            "goals": [text for _, _, text in self.objective.bounds.values()],
            "goal_metrics": list(self.objective.bounds),
            "baseline": baseline,
            "best": best["id"] if best else None,
            "closest": closest["id"] if closest else None,
            "pareto": sorted(front),
            "candidates": self.candidates,
        }


def chart_axes(evaluator) -> dict:
    """The sub-metrics the report's chart plots, chosen by metric type: the accuracy score, and a latency
    statistic (p50 first, else the first one the evaluator names)."""
    accuracy = next((f"{m.name}-{s.name}" for m in evaluator.metrics if m.type == "accuracy"
                     for s in m.sub_types if s.name == "accuracy_score"), None)
    latency = [(m, s) for m in evaluator.metrics if m.type == "latency" for s in m.sub_types]
    chosen = next((ms for ms in latency if ms[1].name == "p50"), latency[0] if latency else None)
    return {"accuracy": accuracy, "latency": f"{chosen[0].name}-{chosen[1].name}" if chosen else None,
            "latency_stat": chosen[1].name if chosen else "p50"}


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
    models, evaluation = {}, session.config.evaluation
    if evaluation.enabled and (evaluation.evaluate_input_model or baseline["model"] == "input"):
        models["input"] = session.measure(session.input_ref, "input", search.history)
    if evaluation.enabled and result["best"]:
        models["best"] = session.measure(final, "best", search.history)
    metrics = {"models": {k: v for k, v in models.items() if v}, "search": result}
    model = session.config.input_model  # the resolved config as written: a Hub branch, not the commit the run pinned
    written = session.config.model_copy(update={"input_model": model.model_copy(
        update={"revision": session.source.get("revision", model.revision)})})
    write_outputs(written, final if result["best"] else None, session.task_card(), search.history, metrics,
                  session.source)
    return RunResult(session.config.engine.output_dir, final, search.history, metrics)
