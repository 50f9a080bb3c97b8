"""Search, evaluators and goals: pure ranking rules, then real searches through the CLI on the tiny Phi-3."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_cli, tone_workflow, write_config
from test_report_browser import CHROMIUM, FLAGS, PARETO_BLUE
from modelpress.config.evaluator_schema import EvaluatorConfig, Goal
from modelpress.goals import Objective, goal_bound, pareto


@pytest.mark.parametrize("goal,baseline,higher,bound", [
    (Goal(type="threshold", value=0.8), 0.5, True, 0.8),
    (Goal(type="min-improvement", value=0.1), 0.5, True, 0.6),
    (Goal(type="max-degradation", value=0.02), 0.9, True, 0.88),
    (Goal(type="max-degradation", value=5), 20.0, False, 25.0),  # latency may rise by at most 5 ms
    (Goal(type="percent-min-improvement", value=20), 10.0, False, 8.0),  # 20% faster
    (Goal(type="percent-max-degradation", value=10), 0.8, True, 0.72),
])
def test_goals_resolve_against_the_baseline(goal, baseline, higher, bound):
    assert goal_bound(goal, baseline, higher) == pytest.approx(bound)


def _objective(goals: dict | None = None) -> Objective:
    evaluator = EvaluatorConfig.model_validate({"metrics": [
        {"name": "acc", "type": "accuracy", "sub_types": [
            {"name": "accuracy_score", "priority": 1, **({"goal": goals["acc"]} if goals else {})}]},
        {"name": "lat", "type": "latency", "sub_types": [{"name": "p50", "priority": 2}]}]})
    return Objective.resolve(evaluator, {"acc-accuracy_score": 0.8, "lat-p50": 10.0})


def test_ranking_violations_and_pareto_front():
    objective = _objective({"acc": {"type": "max-degradation", "value": 0.05}})
    assert objective.violations({"acc-accuracy_score": 0.76, "lat-p50": 3}) == {}
    assert set(objective.violations({"acc-accuracy_score": 0.70, "lat-p50": 3})) == {"acc-accuracy_score"}
    assert objective.violations({"acc-accuracy_score": float("nan")})["acc-accuracy_score"] == math.inf
    # higher accuracy ranks first; at equal accuracy the faster one wins
    assert objective.sort_key({"acc-accuracy_score": 0.9, "lat-p50": 9}) < objective.sort_key(
        {"acc-accuracy_score": 0.8, "lat-p50": 1})
    assert objective.sort_key({"acc-accuracy_score": 0.8, "lat-p50": 1}) < objective.sort_key(
        {"acc-accuracy_score": 0.8, "lat-p50": 2})
    cands = [{"id": i, "status": "ok", "metrics": {"acc-accuracy_score": a, "lat-p50": lat}}
             for i, (a, lat) in enumerate([(0.9, 10), (0.8, 5), (0.8, 6), (0.7, 4), (0.6, 4.5)], 1)]
    cands.append({"id": 9, "status": "failed", "metrics": {}})
    assert pareto(cands, objective) == {1, 2, 4}


def test_a_value_at_its_bound_but_for_float_rounding_meets_the_goal():
    objective = _objective({"acc": {"type": "max-degradation", "value": 0.1}})  # 0.8 - 0.1 = 0.7000000000000001
    assert objective.violations({"acc-accuracy_score": 14 / 20, "lat-p50": 3}) == {}
    assert set(objective.violations({"acc-accuracy_score": 0.6999, "lat-p50": 3})) == {"acc-accuracy_score"}
    assert objective.violations({"acc-accuracy_score": -math.inf})["acc-accuracy_score"] > 0  # not met by the slack
    latency = Objective.resolve(EvaluatorConfig.model_validate({"metrics": [{"name": "lat", "type": "latency",
        "sub_types": [{"name": "p50", "priority": 1, "goal": {"type": "threshold", "value": 100}}]}]}), {})
    assert latency.violations({"lat-p50": math.inf}) and not latency.violations({"lat-p50": 100.0})


def test_the_frontier_holds_the_best_and_closest_prefers_measured_goals():
    from types import SimpleNamespace

    from modelpress.search import Search

    objective = _objective({"acc": {"type": "threshold", "value": 0.75}})
    cands = [{"id": i, "status": "ok", "metrics": {"acc-accuracy_score": a, "lat-p50": lat}}
             for i, (a, lat) in enumerate([(0.8, 10), (0.7, 5)], 1)]
    for c in cands:
        c["violations"] = objective.violations(c["metrics"])
    assert pareto(cands, objective) == {1}  # 2 misses the goal: it does not push the best off the frontier
    for c in cands:
        c["violations"]["lat-p50"] = math.inf if c["id"] == 1 else 0.01  # 1 never measured a goal metric
    search = SimpleNamespace(objective=objective)
    assert Search._closest(search, cands)["id"] == 2


def test_same_type_alternatives_are_told_apart_by_what_they_set(tiny_model, tmp_path):
    from modelpress.config.normalize import normalize
    from modelpress.search import describe

    rtn = "OnnxBlockWiseRtnQuantization"
    raw = tone_workflow(tiny_model, {"onnx": {"type": "OnnxConversion"},
                                     "quant": [{"type": rtn, "block_size": 32}, {"type": rtn, "block_size": 128}]},
                        search_strategy={"sampler": "sequential"})
    slot = normalize(raw, tmp_path).passes[1]
    assert [describe(choice, slot) for choice in slot.choices()] == [
        f"quant: {rtn}, block_size=32", f"quant: {rtn}, block_size=128"]


def test_one_unranked_sub_metric_ranks_and_two_metrics_of_one_name_are_refused(tiny_model, tmp_path):
    from modelpress.config.normalize import normalize
    from modelpress.errors import ConfigError

    raw = tone_workflow(tiny_model, {}, evaluators={"e": {"metrics": [
        {"name": "acc", "type": "accuracy", "sub_types": [{"name": "accuracy_score"}]}]}}, evaluator="e")
    assert normalize(raw, tmp_path).evaluator.metrics[0].sub_types[0].priority == 1  # as in Olive
    raw["evaluators"]["e"]["metrics"].append({"name": "acc", "type": "latency", "sub_types": [{"name": "p50"}]})
    with pytest.raises(ConfigError, match=r"evaluators.e.metrics\[1\].name: a second metric named 'acc'"):
        normalize(raw, tmp_path)


def test_olives_tpe_sampler_config_is_read(tiny_model, tmp_path):
    from modelpress.config.normalize import normalize

    raw = tone_workflow(tiny_model, {}, search_strategy={
        "sampler": "tpe", "sampler_config": {"seed": 3, "multivariate": True, "group": True}})
    search = normalize(raw, tmp_path).search
    assert (search.sampler, search.seed, search.multivariate, search.group) == ("tpe", 3, True, True)


# --- the Search class on a fake session: every sampler and order, without models -------------------

class _FakeSession:
    """Runs no model: a chain's 'model' is its tuple of block sizes, and `score` gives its metrics."""

    def __init__(self, slots, search: dict, score, parallel: int = 1, delay: float | None = None):
        from types import SimpleNamespace

        from modelpress.config.schema import SearchConfig

        evaluator = EvaluatorConfig.model_validate({"metrics": [
            {"name": "acc", "type": "accuracy", "sub_types": [
                {"name": "accuracy_score", "priority": 1, "goal": {"type": "threshold", "value": 0.0}}]},
            {"name": "lat", "type": "latency", "sub_types": [{"name": "p50", "priority": 2}]}]})
        self.config = SimpleNamespace(search=SearchConfig(enabled=True, **search), passes=slots, evaluator=evaluator)
        self.input_ref = "input"
        self.score, self.runs, self.parallel = score, [], parallel
        self.running, self.most_at_once = 0, 0
        self.delay = (0.02 if parallel > 1 else 0) if delay is None else delay  # a batch's threads overlap

    def concurrency(self) -> int:
        return self.parallel

    def cancel(self) -> None:
        pass

    def run_chain(self, passes, history):
        import threading
        import time

        from modelpress.models import ModelRef

        combo = tuple(p.params.block_size for p in passes)
        with threading.Lock():
            self.runs.append(combo)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(self.delay)
        self.running -= 1
        return ModelRef("onnx", Path("/nonexistent"), id=str(combo), task={"combo": combo})

    def measure(self, ref, role, history, data_config=None):
        if ref == "input":
            return {"accuracy": 0.5, "latency_ms": {"p50": 10.0}}
        accuracy, latency = self.score(ref.task["combo"])
        return {"accuracy": accuracy, "latency_ms": {"p50": latency}}


def _slots(*sizes):
    """Steps named s0, s1, ... whose choices are block sizes 16, 32, ... (index i gives 16 * 2**i)."""
    from modelpress.config.schema import PassConfig
    from modelpress.passes.catalog import CATALOG

    params = CATALOG["OnnxBlockWiseRtnQuantization"].params
    return [PassConfig(name=f"s{i}", type="OnnxBlockWiseRtnQuantization", params=params(block_size=16),
                       search_space={"block_size": [16 * 2 ** j for j in range(n)]} if n > 1 else {})
            for i, n in enumerate(sizes)]


def _search(slots, search, score, parallel: int = 1, delay: float | None = None):
    from modelpress.search import Search

    session = _FakeSession(slots, search, score, parallel, delay)
    engine = Search(session)
    engine.run({"metrics": {}})
    return engine, session


def _index(combo):
    return tuple(int(math.log2(b // 16)) for b in combo)


def test_pass_by_pass_keeps_a_step_value_that_was_measured_in_an_earlier_step():
    # step s1's first value (index 0) is the better one; it was measured while s0 was searched
    def score(combo):
        a, b, c = _index(combo)
        return 0.9 - 0.1 * a - 0.2 * b - 0.01 * c, 1.0
    engine, session = _search(_slots(2, 2, 2), {"execution_order": "pass-by-pass"}, score)
    measured = [_index(c) for c in session.runs]
    assert measured == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]  # s2 is searched around s1 = 0
    assert engine._best(engine.candidates)["id"] == 1


@pytest.mark.parametrize("sampler", ["sequential", "random", "tpe"])
def test_pass_by_pass_searches_every_step_with_each_sampler(sampler):
    engine, session = _search(_slots(3, 2), {"execution_order": "pass-by-pass", "sampler": sampler},
                              lambda combo: (0.5 + 0.1 * _index(combo)[0] + 0.01 * _index(combo)[1], 1.0))
    measured = {_index(c) for c in session.runs}
    assert {(0, 0), (1, 0), (2, 0)} <= measured  # all of s0
    assert (2, 1) in measured  # then s1 around the best s0 (index 2)
    assert len(session.runs) == 4  # nothing measured twice


def test_tpe_stops_when_the_space_is_exhausted_and_pass_by_pass_with_no_choice_measures_the_one_config():
    engine, session = _search(_slots(2, 2), {"sampler": "tpe"}, lambda combo: (0.7, float(sum(combo))))
    assert sorted(_index(c) for c in session.runs) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    engine, session = _search(_slots(1, 1), {"execution_order": "pass-by-pass"}, lambda combo: (0.7, 1.0))
    assert session.runs == [(16, 16)] and engine.candidates[0]["status"] == "ok"


def test_a_failed_candidate_is_recorded_and_the_search_goes_on():
    def score(combo):
        if _index(combo) == (1,):
            raise RuntimeError("this block size does not fit")
        return 0.8, 1.0
    engine, _ = _search(_slots(3), {}, score)
    statuses = [c["status"] for c in engine.candidates]
    assert statuses == ["ok", "failed", "ok"] and "does not fit" in engine.candidates[1]["error"]


def test_a_failed_candidates_error_is_saved_with_its_secrets_hidden():
    """The error goes to metrics.json, the report and the search table: a token in it was written as it was."""
    token = "hf_" + "Q7r" * 10

    def score(combo):
        raise RuntimeError(f"401 Client Error for url: https://hub.example/x?token={token}")
    engine, _ = _search(_slots(1), {}, score)
    assert token not in engine.candidates[0]["error"] and "401 Client Error" in engine.candidates[0]["error"]


def _summary(engine) -> list:
    return [(c["id"], c["choice"], c["status"], c.get("metrics"), c["goals_met"]) for c in engine.candidates]


@pytest.mark.parametrize("search", [
    {"sampler": "sequential"}, {"sampler": "random", "seed": 3}, {"sampler": "tpe", "seed": 1},
    {"sampler": "sequential", "max_samples": 5}, {"sampler": "random", "stop_when_goals_met": True},
    {"execution_order": "pass-by-pass", "sampler": "random"}, {"sampler": "tpe", "max_iter": 7}])
def test_candidates_run_in_parallel_give_the_sequential_search_result(search):
    def score(combo):
        a, b = _index(combo)
        if (a, b) == (2, 1):
            raise RuntimeError("this one fails")
        return 0.5 + 0.1 * a - 0.05 * b, 1.0 + b

    sequential, _ = _search(_slots(3, 3), search, score)
    parallel, session = _search(_slots(3, 3), search, score, parallel=3)
    if search.get("stop_when_goals_met"):  # every candidate meets the threshold: the first one stops the search
        assert len(sequential.candidates) < 9 and sequential.candidates[-1]["goals_met"]
    if search.get("sampler") == "tpe" and "max_iter" not in search:
        # tpe asks a batch before it is told, so its later proposals may differ from a sequential run's;
        # on this space both find the best candidate
        assert parallel._best(parallel.candidates)["choice"] == sequential._best(sequential.candidates)["choice"]
    elif search.get("stop_when_goals_met"):  # the first batch's candidates all ran: all are recorded
        assert _summary(parallel)[:len(sequential.candidates)] == _summary(sequential)
        assert len(parallel.candidates) == 3
    elif search.get("sampler") != "tpe":
        assert _summary(parallel) == _summary(sequential)
    assert 1 < session.most_at_once <= 3


@pytest.mark.parametrize("search, delay", [({"max_time": 0.25}, 0.5), ({"stop_when_goals_met": True}, 0.5),
                                           ({"sampler": "tpe", "max_time": 0.25}, 0.5),
                                           # the second step's batch starts within the budget and ends past it
                                           ({"execution_order": "pass-by-pass", "max_time": 1.5}, 1.0)])
def test_candidates_that_ran_together_are_all_recorded_when_the_budget_runs_out_among_them(search, delay):
    """A batch ran at once was recorded one by one until the budget said stop: past max_time every candidate that
    had run was dropped with its history ("no candidate was evaluated"), and with stop_when_goals_met the batch-
    mates of the first to meet the goals were dropped though one of them ranked first."""
    engine, session = _search(_slots(3, 3), search, lambda combo: (0.5 + 0.1 * _index(combo)[0], 1.0), parallel=3,
                              delay=delay)
    # every run is a candidate: one batch (tpe's random start may propose one combination twice in it), or in
    # pass-by-pass one batch a step, the second starting with the combination the first measured
    assert 1 < len(session.runs) and len(engine.candidates) == len(set(session.runs))
    if search.get("execution_order") == "pass-by-pass":  # both steps' batches ran, nothing twice
        assert len(session.runs) == len(set(session.runs)) == 5
    else:
        assert len(session.runs) <= 3
    assert all(c["status"] == "ok" for c in engine.candidates)
    assert max(c["metrics"]["acc-accuracy_score"] for c in engine.candidates) == pytest.approx(
        engine._best(engine.candidates)["metrics"]["acc-accuracy_score"])


@pytest.mark.parametrize("baseline", [float("nan"), float("inf"), None])
def test_a_relative_goal_on_a_baseline_without_a_finite_value_is_a_clear_error(baseline):
    from modelpress.goals import GoalError

    with pytest.raises(GoalError, match="relative to the baseline"):
        goal_bound(Goal(type="max-degradation", value=0.02), baseline, True)


def test_a_percent_goal_on_a_zero_baseline_is_bound_at_zero_and_past_zero_is_refused(tiny_model, tmp_path, caplog):
    """A percent of 0 is 0, as in Olive: an error count of 0 must stay 0. It stopped the run after the baseline was
    measured."""
    from modelpress.config.normalize import normalize
    from modelpress.errors import ConfigError

    for kind in ("percent-min-improvement", "percent-max-degradation"):
        for higher in (True, False):
            assert goal_bound(Goal(type=kind, value=10), 0.0, higher) == 0.0
    assert "which is 0: a candidate must only not be worse than 0" in caplog.text
    raw = tone_workflow(tiny_model, {}, evaluators={"e": {"metrics": [{"name": "lat", "type": "latency", "sub_types": [
        {"name": "p50", "priority": 1, "goal": {"type": "percent-min-improvement", "value": 100}}]}]}}, evaluator="e")
    with pytest.raises(ConfigError, match="latency p50 cannot improve by 100%"):
        normalize(raw, tmp_path)


def test_percent_goals_on_a_negative_baseline_point_the_right_way():
    # a custom metric of -10 where higher is better: 10% degradation allows down to -11, not -9
    assert goal_bound(Goal(type="percent-max-degradation", value=10), -10.0, True) == pytest.approx(-11.0)
    assert goal_bound(Goal(type="percent-min-improvement", value=10), -10.0, True) == pytest.approx(-9.0)
    assert goal_bound(Goal(type="percent-max-degradation", value=10), 20.0, False) == pytest.approx(22.0)


EVALUATOR = {"metrics": [
    {"name": "accuracy", "type": "accuracy", "sub_types": [
        {"name": "accuracy_score", "priority": 1, "goal": {"type": "min-improvement", "value": 0.05}},
        {"name": "f1_score"}]},
    {"name": "latency", "type": "latency", "sub_types": [{"name": "p50", "priority": 2}]},
    {"name": "size", "type": "size_on_disk", "sub_types": [{"name": "size_on_disk"}]},
]}
LORA = {"type": "LoRA", "r": 16, "alpha": 32, "target_modules": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
        "train_data_config": "tone", "eval_dataset_size": 0.1,
        "training_args": {"learning_rate": 2e-3, "per_device_train_batch_size": 16, "max_steps": 80, "seed": 0}}


def _search_config(tmp_path: Path, tiny_model: Path, builder: dict, search: dict, evaluator: dict = EVALUATOR,
                   cache: Path | None = None) -> Path:
    raw = tone_workflow(tiny_model, {"lora": LORA, "merge": {"type": "MergeAdapterWeights"}, "builder": builder},
                        evaluators={"tone": evaluator}, evaluator="tone", search_strategy=search,
                        cache_dir=str(cache or tmp_path / "cache"), output_dir=str(tmp_path / "out"))
    raw["evaluation"] = {"max_examples": 40}
    return write_config(tmp_path / "search.json", raw)


@pytest.fixture(scope="module")
def search_cache(tmp_path_factory) -> Path:
    """One pass cache shared by this module's searches (the fine-tuning runs once)."""
    return tmp_path_factory.mktemp("search-cache")


BUILDER_SPACE = {"type": "ModelBuilder", "precision": ["int4", "int8"], "block_size": [32, 64, 128]}


@pytest.fixture(scope="module")
def six_candidates(tmp_path_factory, tiny_model, search_cache):
    """The 6-candidate builder search, run once through the CLI: (output folder, CLI result)."""
    work = tmp_path_factory.mktemp("six")
    config = _search_config(work, tiny_model, BUILDER_SPACE, {"sampler": "sequential"}, cache=search_cache)
    return work / "out", run_cli("run", "--config", str(config), "--no-progress")


@pytest.mark.e2e
def test_search_measures_every_candidate_and_keeps_the_best(six_candidates):
    out, proc = six_candidates
    search = json.loads((out / "metrics.json").read_text())["search"]
    assert search["space_size"] == 6 and search["evaluated"] == 6 and search["failed"] == 0
    cands = search["candidates"]
    assert [c["passes"][2]["params"]["precision"] for c in cands] == ["int4"] * 3 + ["int8"] * 3
    for c in cands:
        assert 0 <= c["metrics"]["accuracy-accuracy_score"] <= 1 and c["metrics"]["latency-p50"] > 0
        assert c["metrics"]["size-size_on_disk"] > 0
    int4 = [c["metrics"]["size-size_on_disk"] for c in cands[:3]]
    int8 = [c["metrics"]["size-size_on_disk"] for c in cands[3:]]
    assert max(int4) < min(int8)  # int4 weights are smaller: the candidates really differ
    best = next(c for c in cands if c["best"])
    assert best["goals_met"] and best["pareto"] and best["id"] == search["best"]
    ranked = [c for c in cands if c["goals_met"]]
    assert all(best["metrics"]["accuracy-accuracy_score"] >= c["metrics"]["accuracy-accuracy_score"] for c in ranked)
    assert set(search["pareto"]) == {c["id"] for c in cands if c["pareto"]}
    card = json.loads((out / "model" / "modelpress_model.json").read_text())
    assert card["id"] == best["model_id"] and card["kind"] == "onnx-genai"
    steps = json.loads((out / "run_history.json").read_text())["steps"]
    lora_steps = [s for s in steps if s["pass"] == "lora"]
    assert len(lora_steps) == 6 and sum(s["cache"] == "miss" for s in lora_steps) <= 1  # trained at most once
    report = (out / "report.html").read_text()
    assert report.count("<tr><td>#") == 6 and "id='candidates'" in report
    assert f"Best: candidate #{best['id']}" in report and "BEST" in proc.stdout


@pytest.mark.e2e
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_headless_chromium_renders_the_search_report(six_candidates, tmp_path):
    from PIL import Image

    out, _ = six_candidates
    search = json.loads((out / "metrics.json").read_text())["search"]
    page = (out / "report.html").as_uri()
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<tr><td>#") == 6 and f"Best: candidate #{search['best']}" in dom
    for c in search["candidates"]:
        assert f"point-#{c['id']}" in dom and format(c["metrics"]["accuracy-accuracy_score"], ".4g") in dom
    shot = tmp_path / "search.png"
    subprocess.run([*common, "--window-size=1100,1800", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120, check=True)
    filled = sum(1 for px in Image.open(shot).convert("RGB").getdata() if px == PARETO_BLUE)
    assert filled > 200  # the Pareto candidates' markers are drawn filled


@pytest.mark.e2e
def test_unmeetable_goal_ends_with_a_clear_report_and_keeps_the_old_model(tmp_path, tiny_model, search_cache):
    config = _search_config(tmp_path, tiny_model, BUILDER_SPACE, {"sampler": "sequential"}, cache=search_cache)
    run_cli("run", "--config", str(config), "--no-progress")
    before = (tmp_path / "out" / "model" / "modelpress_model.json").read_text()
    impossible = json.loads(json.dumps(EVALUATOR))
    impossible["metrics"][0]["sub_types"][0]["goal"] = {"type": "threshold", "value": 0.999}
    config = _search_config(tmp_path, tiny_model, BUILDER_SPACE, {"sampler": "sequential"}, impossible,
                            cache=search_cache)
    proc = run_cli("run", "--config", str(config), "--no-progress", check=False)
    assert proc.returncode == 3, proc.stderr
    assert "NO CANDIDATE MEETS THE GOALS" in proc.stdout and "Traceback" not in proc.stderr
    search = json.loads((tmp_path / "out" / "metrics.json").read_text())["search"]
    assert search["best"] is None and search["closest"] in {c["id"] for c in search["candidates"]}
    assert all(not c["goals_met"] and "accuracy-accuracy_score" in c["violations"] for c in search["candidates"])
    assert (tmp_path / "out" / "model" / "modelpress_model.json").read_text() == before
    assert "No candidate meets the goals" in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.e2e
@pytest.mark.parametrize("search", [
    {"sampler": "random", "max_samples": 3, "seed": 7},
    {"sampler": "tpe", "max_samples": 4, "seed": 3},
    {"sampler": "sequential", "execution_order": "pass-by-pass"},
    {"search_algorithm": "exhaustive", "stop_when_goals_met": True},  # Olive 0.5's spelling
])
def test_samplers_and_orders(tmp_path, tiny_model, search_cache, search):
    config = _search_config(tmp_path, tiny_model, BUILDER_SPACE, search, cache=search_cache)
    run_cli("run", "--config", str(config), "--no-progress")
    result = json.loads((tmp_path / "out" / "metrics.json").read_text())["search"]
    combos = [tuple(c["choice"]) for c in result["candidates"]]
    if search.get("sampler") == "random":
        assert len(combos) == 3
        (tmp_path / "again").mkdir()
        again = _search_config(tmp_path / "again", tiny_model, BUILDER_SPACE, search, cache=search_cache)
        run_cli("run", "--config", str(again), "--no-progress")
        second = json.loads((tmp_path / "again" / "out" / "metrics.json").read_text())["search"]
        assert [tuple(c["choice"]) for c in second["candidates"]] == combos  # the seed fixes the sample
    elif search.get("sampler") == "tpe":
        assert len(combos) == 4
    elif search.get("execution_order") == "pass-by-pass":
        assert len(combos) == 6  # one step is searched: all of its choices
    else:
        assert len(combos) == 1 and result["candidates"][0]["goals_met"]  # stopped at the first that met them


def _install_example_plugin(tmp_path: Path) -> Path:
    src = tmp_path / "custom-pass"
    shutil.copytree(ROOT / "examples" / "custom-pass", src)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True, capture_output=True)
    return site


@pytest.mark.e2e
def test_plugin_pass_from_a_script_is_searched_and_a_failing_candidate_is_skipped(tmp_path, tiny_model, search_cache):
    script = tmp_path / "modelpress_fake_quantize.py"
    shutil.copy(ROOT / "examples" / "custom-pass" / "modelpress_fake_quantize.py", script)
    fake = {"type": "FakeQuantize", "user_script": script.name, "bits": [8, 3], "group_size": [64, 48]}
    (tmp_path / "metric_lib").mkdir()
    (tmp_path / "metric_lib" / "metric_helpers_mp.py").write_text(  # imported from script_dir, as in Olive
        "from pathlib import Path\n\ndef count(model_dir, suffix):\n"
        "    return len(list(Path(model_dir).glob('*' + suffix)))\n")
    (tmp_path / "metric.py").write_text(
        "from pathlib import Path\n\nfrom metric_helpers_mp import count\n\n"
        "def weight_files(model_dir, model_kind, examples, suffix):\n"
        "    with open(Path(__file__).with_name('calls.txt'), 'a') as calls:\n"
        "        calls.write(model_dir + '\\n')\n"
        "    return {'files': count(model_dir, suffix), 'rows': len(examples)}\n")
    custom = {"name": "custom", "type": "custom", "user_config": {
        "user_script": "metric.py", "evaluate_func": "weight_files", "evaluate_func_kwargs": {"suffix": ".safetensors"},
        "script_dir": "metric_lib"},
        "sub_types": [{"name": "files", "higher_is_better": False}, {"name": "rows", "higher_is_better": True}]}
    evaluator = {"metrics": [*EVALUATOR["metrics"], custom]}
    raw = tone_workflow(tiny_model, {"lora": LORA, "merge": {"type": "MergeAdapterWeights"}, "fake": fake},
                        evaluators={"tone": evaluator}, evaluator="tone", search_strategy={"sampler": "sequential"},
                        cache_dir=str(search_cache), output_dir=str(tmp_path / "out"))
    raw["evaluation"] = {"max_examples": 40}
    config = write_config(tmp_path / "plugin.json", raw)
    run_cli("run", "--config", str(config), "--no-progress")
    search = json.loads((tmp_path / "out" / "metrics.json").read_text())["search"]
    failed = [c for c in search["candidates"] if c["status"] == "failed"]
    ok = [c for c in search["candidates"] if c["status"] == "ok"]
    assert len(search["candidates"]) == 4 and len(failed) == 2 and len(ok) == 2
    assert all("group_size 48 does not divide" in c["error"] for c in failed)
    by_bits = {c["passes"][2]["params"]["bits"]: c["metrics"]["accuracy-accuracy_score"] for c in ok}
    # the custom metric ran on each candidate's folder and the eval rows, because the config named it
    assert all(c["metrics"]["custom-files"] == 1 and c["metrics"]["custom-rows"] == 40 for c in ok)
    assert by_bits[8] >= by_bits[3]  # 3-bit rounding of every weight cannot help a trained model
    steps = json.loads((tmp_path / "out" / "run_history.json").read_text())["steps"]
    assert any(s["type"] == "FakeQuantize" and s["cache"] == "miss" for s in steps)
    assert "FakeQuantize" in (tmp_path / "out" / "config.resolved.json").read_text()
    # custom metric results are cached like built-in ones: a re-run does not call the function again
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == len(set(calls)) >= 3  # the baseline and the two measured candidates, once each
    run_cli("run", "--config", str(config), "--no-progress")
    assert (tmp_path / "calls.txt").read_text().splitlines() == calls
    steps = json.loads((tmp_path / "out" / "run_history.json").read_text())["steps"]
    metric_steps = [s for s in steps if s["pass"].startswith("metric custom")]
    assert metric_steps and all(s["cache"] == "hit" for s in metric_steps)
    # an edited script is a different metric: measured again
    (tmp_path / "metric.py").write_text((tmp_path / "metric.py").read_text() + "# edited\n")
    run_cli("run", "--config", str(config), "--no-progress")
    assert len((tmp_path / "calls.txt").read_text().splitlines()) == 2 * len(calls)
    # a renamed metric is measured under its new name (its values were read under the old one: every goal on it
    # was "not measured")
    custom["name"] = "renamed"
    write_config(config, raw)
    run_cli("run", "--config", str(config), "--no-progress")
    search = json.loads((tmp_path / "out" / "metrics.json").read_text())["search"]
    assert all(c["metrics"]["renamed-files"] == 1 and "custom-files" not in c["metrics"]
               for c in search["candidates"] if c["status"] == "ok")


@pytest.mark.e2e
def test_installed_plugin_package_is_found_through_its_entry_point(tmp_path, tiny_model):
    site = _install_example_plugin(tmp_path)
    raw = tone_workflow(tiny_model, {"fake": {"type": "FakeQuantize", "bits": 4}},
                        cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "out"))
    raw["evaluation"] = {"max_examples": 10}
    config = write_config(tmp_path / "installed.json", raw)
    env_cmd = [sys.executable, "-m", "modelpress"]
    import os

    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([*env_cmd, "passes"], capture_output=True, text=True, env=env)
    assert "FakeQuantize" in proc.stdout
    proc = subprocess.run([*env_cmd, "run", "--config", str(config), "--no-progress"], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    history = json.loads((tmp_path / "out" / "run_history.json").read_text())["steps"]
    assert history[0]["type"] == "FakeQuantize" and "rounded" in history[0]["notes"][0]
    # without the package, the same config is a clear validation error
    proc = run_cli("validate", str(config), check=False)
    assert proc.returncode == 2 and "unknown pass type 'FakeQuantize'" in proc.stderr


@pytest.mark.e2e
def test_dora_loha_lokr_as_alternatives_train_and_merge_exactly(tmp_path, tiny_model):
    import torch
    from peft import PeftModel

    from modelpress.models import load_causal_lm

    short = {"train_data_config": "tone", "eval_dataset_size": 0.1, "r": 4, "target_modules": ["qkv_proj", "o_proj"],
             "training_args": {"learning_rate": 5e-3, "per_device_train_batch_size": 8, "max_steps": 6}}
    passes = {"ft": [{"type": kind, **short} for kind in ("DoRA", "LoHa", "LoKr")], "merge": {"type": "MergeAdapterWeights"}}
    raw = tone_workflow(tiny_model, passes, search_strategy={"sampler": "sequential"},
                        cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "out"))
    raw["evaluation"] = {"max_examples": 8, "evaluate_input_model": False}
    run_cli("run", "--config", str(write_config(tmp_path / "adapters.json", raw)), "--no-progress")
    search = json.loads((tmp_path / "out" / "metrics.json").read_text())["search"]
    assert [c["passes"][0]["type"] for c in search["candidates"]] == ["DoRA", "LoHa", "LoKr"]
    assert all(c["status"] == "ok" for c in search["candidates"])
    steps = json.loads((tmp_path / "out" / "run_history.json").read_text())["steps"]
    entries = tmp_path / "cache" / "passes"
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    for kind, peft_key in (("DoRA", "use_dora"), ("LoHa", "hada_w1"), ("LoKr", "lokr_w1")):
        adapter = entries / next(s["output_id"] for s in steps if s["type"] == kind) / "model" / "adapter"
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config.get(peft_key) is True or peft_key in (adapter / "adapter_model.safetensors").read_bytes().decode(
            "latin-1")
        position = next(i for i, s in enumerate(steps) if s["type"] == kind)
        merged = entries / steps[position + 1]["output_id"] / "model"
        with torch.no_grad():
            expected = PeftModel.from_pretrained(load_causal_lm(tiny_model), str(adapter)).eval()(input_ids=ids).logits
            got = load_causal_lm(merged).eval()(input_ids=ids).logits
            base = load_causal_lm(tiny_model).eval()(input_ids=ids).logits
        assert torch.allclose(got, expected, atol=1e-4), kind
        assert not torch.allclose(base, expected, atol=1e-4), kind  # training changed the model


@pytest.mark.e2e
def test_evaluator_without_search_checks_the_goals_of_the_one_workflow(tmp_path, tiny_model, search_cache):
    builder = {"type": "ModelBuilder", "precision": "int4", "block_size": 32}
    config = _search_config(tmp_path, tiny_model, builder, False, cache=search_cache)
    proc = run_cli("run", "--config", str(config), "--no-progress")
    search = json.loads((tmp_path / "out" / "metrics.json").read_text())["search"]
    assert search["space_size"] == 1 and search["evaluated"] == 1 and search["best"] == 1
    assert search["goals"][0].startswith("accuracy-accuracy_score >= ") and "meets goals" in proc.stdout
    assert (tmp_path / "out" / "model" / "genai_config.json").is_file()


def test_a_script_cannot_replace_a_built_in_pass(tmp_path):
    from modelpress.passes.catalog import CATALOG
    from modelpress.passes.plugins import PluginError, load_script

    script = tmp_path / "evil.py"
    script.write_text("from modelpress.plugin import Pass\n\nclass Sneaky(Pass):\n    name = 'LoRA'\n")
    built_in = CATALOG["LoRA"]
    with pytest.raises(PluginError, match="would replace the built-in pass"):
        load_script(script)
    assert CATALOG["LoRA"] is built_in


def test_a_threshold_may_be_negative_and_a_relative_goal_may_not():
    from pydantic import ValidationError

    from modelpress.config.evaluator_schema import Goal

    assert Goal(type="threshold", value=-5).value == -5  # a reward or log-likelihood metric
    for kind in ("min-improvement", "max-degradation", "percent-min-improvement", "percent-max-degradation"):
        with pytest.raises(ValidationError, match="must be 0 or more"):
            Goal(type=kind, value=-1)


def test_two_ranked_sub_metrics_with_one_priority_are_warned_about(tmp_path):
    from modelpress.config.collector import Collector
    from modelpress.config.evaluator_section import _check_priorities
    from modelpress.config.evaluator_schema import EvaluatorConfig, Goal

    evaluator = EvaluatorConfig.model_validate({"metrics": [
        {"name": "acc", "type": "accuracy", "sub_types": [{"name": "accuracy_score", "priority": 1}]},
        {"name": "lat", "type": "latency", "sub_types": [{"name": "p50", "priority": 1}, {"name": "p90"}]}]})
    c = Collector()
    _check_priorities(evaluator, "evaluators.e", c)
    assert any("acc-accuracy_score and lat-p50 both have priority 1" in w for w in c.warnings)
    assert not any("goal" in w for w in c.warnings)
    evaluator.metrics[1].sub_types[1].goal = Goal(type="threshold", value=50)  # on an unranked sub-metric
    c = Collector()
    _check_priorities(evaluator, "evaluators.e", c)
    assert any(w.startswith("evaluators.e.metrics[1].sub_types[1].goal: lat-p90 has no priority, and Olive ignores")
               for w in c.warnings)


def test_a_goal_on_a_throughput_percentile_says_it_is_not_olive_s_number():
    """Olive 0.13's throughput p90 is 1000 / latency p90 (its 10th percentile); modelpress's is the 90th."""
    from modelpress.config.collector import Collector
    from modelpress.config.evaluator_section import _check_metric
    from modelpress.config.evaluator_schema import Metric

    def warnings(sub: dict) -> list[str]:
        c = Collector()
        _check_metric(Metric.model_validate({"name": "tp", "type": "throughput", "sub_types": [sub]}), "m", c)
        return c.warnings

    [warning] = warnings({"name": "p90", "priority": 1, "goal": {"type": "threshold", "value": 100}})
    assert warning.startswith("m.sub_types[0]: throughput p90 here is the 90th percentile of examples/s (1000 / "
                              "latency's 10th); Olive 0.13 reports 1000 / latency's p90")
    assert "(1000 / latency's 0.1th)" in warnings({"name": "p999", "priority": 1})[0]
    assert warnings({"name": "p90"}) == warnings({"name": "avg", "priority": 1}) == []  # unranked, or Olive's own


@pytest.mark.e2e
def test_a_size_goal_needs_no_data_and_secrets_stay_out_of_metrics(tiny_model, tmp_path):
    """size_on_disk reads the files: a workflow without data is measured (it read None and missed every goal);
    Olive's sub-type 'bytes' is in bytes; a token among a pass's options stays out of metrics.json's candidates;
    a run whose every candidate fails exits 1 (a failure), not 3 (goals missed)."""
    evaluator = {"metrics": [{"name": "size", "type": "size_on_disk", "sub_types": [
        {"name": "bytes", "goal": {"type": "threshold", "value": 2e9}}, {"name": "size_on_disk"}]}]}
    builder = {"type": "ModelBuilder", "precision": "int4", "extra_options": {"comment": "hf_SECRETabcdefghij1234567"}}
    raw = {"input_model": {"type": "HfModel", "model_path": str(tiny_model)}, "passes": {"builder": builder},
           "evaluators": {"e": evaluator}, "evaluator": "e",
           "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")}
    proc = run_cli("run", "--no-progress", "--config", str(write_config(tmp_path / "c.json", raw)))
    search = json.loads((tmp_path / "out" / "metrics.json").read_text())["search"]
    [candidate] = search["candidates"]
    files = sum((f.stat().st_size for f in (tmp_path / "out" / "model").rglob("*") if f.is_file()))
    assert candidate["goals_met"] and candidate["metrics"]["size-bytes"] > 0
    assert abs(candidate["metrics"]["size-bytes"] - files) < 0.05 * files  # the card aside, the model's files
    assert candidate["metrics"]["size-size_on_disk"] == pytest.approx(candidate["metrics"]["size-bytes"] / 2**20)
    for f in (tmp_path / "out").rglob("*.json"):
        assert "SECRET" not in f.read_text(), f
    assert "SECRET" not in proc.stdout + proc.stderr
    raw["passes"]["rename"] = {"type": "GraphSurgeries",  # fails when it runs: the graph has no such input
                               "surgeries": [{"surgeon": "RenameInputs", "old_names": ["nope"], "new_names": ["x"]}]}
    failed = run_cli("run", "--no-progress", "--config", str(write_config(tmp_path / "c.json", raw)), check=False)
    assert failed.returncode == 1 and "no candidate was measured (1 of 1 failed; the first:" in failed.stderr, \
        failed.stderr


@pytest.mark.e2e
def test_evaluation_enabled_false_keeps_a_search_to_its_evaluator(tiny_model, tmp_path):
    """With evaluation.enabled false the search measures what its evaluator names and no more: no generation
    evaluation of the input and best models on the eval data."""
    evaluator = {"metrics": [{"name": "size", "type": "size_on_disk", "sub_types": [{"name": "size_on_disk"}]}]}
    raw = tone_workflow(tiny_model, {"builder": {"type": "ModelBuilder", "precision": "int4"}},
                        evaluators={"e": evaluator}, evaluator="e", evaluation={"enabled": False, "max_examples": 8},
                        cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "out"))
    run_cli("run", "--no-progress", "--config", str(write_config(tmp_path / "c.json", raw)))
    steps = [s["pass"] for s in json.loads((tmp_path / "out" / "run_history.json").read_text())["steps"]]
    assert steps == ["builder"], steps
    raw["evaluation"]["enabled"] = True
    run_cli("run", "--no-progress", "--config", str(write_config(tmp_path / "c.json", raw)))
    steps = [s["pass"] for s in json.loads((tmp_path / "out" / "run_history.json").read_text())["steps"]]
    assert any(s.startswith("evaluate") for s in steps), steps


@pytest.mark.e2e
def test_a_failed_step_that_candidates_share_runs_once(tmp_path, tiny_model):
    """Candidates that differ only after a failing step: it failed once per candidate (an hour of training each,
    in a search after a LoRA that runs out of memory); now the later ones are told of the first failure."""
    (tmp_path / "boom.py").write_text(
        "from pathlib import Path\n\nfrom modelpress.plugin import HF, Pass, Strict\n\n\n"
        "class Boom(Pass):\n    Params = Strict\n    accepts = (HF,)\n    produces = HF\n    version = '1'\n\n"
        "    def run(self, ctx, params):\n"
        "        with open(Path(__file__).with_name('calls.txt'), 'a') as calls:\n"
        "            calls.write('boom\\n')\n"
        "        raise RuntimeError('out of memory, say')\n")
    evaluator = {"metrics": [{"name": "size", "type": "size_on_disk", "sub_types": [{"name": "size_on_disk",
                                                                                    "priority": 1}]}]}
    raw = tone_workflow(tiny_model, {"boom": {"type": "Boom", "user_script": "boom.py"},
                                     "rtn": {"type": "Rtn", "bits": [4, 8]}},
                        evaluators={"e": evaluator}, evaluator="e", search_strategy={"sampler": "sequential"},
                        cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "out"))
    proc = run_cli("run", "--config", str(write_config(tmp_path / "w.json", raw)), "--no-progress", check=False)
    assert proc.returncode != 0
    assert (tmp_path / "calls.txt").read_text().splitlines() == ["boom"]
    errors = [c["error"] for c in json.loads((tmp_path / "out" / "metrics.json").read_text())["search"]["candidates"]]
    assert len(errors) == 2 and "out of memory, say" in errors[0]
    assert "failed earlier in this run on the same input and settings: RuntimeError: out of memory, say" in errors[1]
