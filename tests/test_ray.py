"""The Ray system on a real local cluster: a head and a second node on 127.0.0.1 (`ray start`).

Passes and evaluations run as Ray tasks; the tests kill workers and nodes mid-pass, send Ctrl-C to
the driver, and check that no Ray process is left once the cluster is stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import example_workspace, run_cli, sigint_live, tone_workflow, write_config
from ray_cluster import LocalCluster, ray_processes

pytest.importorskip("ray")
pytestmark = pytest.mark.e2e  # each test runs on a real cluster: seconds to minutes

SLOW_PASS = '''
import json, os, shutil, time
from pathlib import Path

from modelpress.plugin import HF, Field, ModelRef, Pass, Strict


class SlowCopyParams(Strict):
    seconds: float = Field(0.0, description="How long the pass runs.")
    marker: str = Field(description="A file each attempt appends a line to (its process and node).")
    fail: bool = Field(False, description="Raise instead of finishing.")


class SlowCopy(Pass):
    summary = "copies the model after a pause (a test pass)"
    Params = SlowCopyParams

    def run(self, ctx, params):
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        with open(params.marker, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "node": node, "token": os.environ.get("MP_TEST_TOKEN"),
                                "plain": os.environ.get("MP_TEST_PLAIN"),
                                "shaped": os.environ.get("MP_TEST_SHAPED")}) + "\\n")
        deadline = time.monotonic() + params.seconds
        while time.monotonic() < deadline:
            time.sleep(0.1)
        if params.fail:
            raise ValueError("SlowCopy was asked to fail")
        for f in Path(ctx.model.path).iterdir():
            if f.is_file() and f.name != "modelpress_model.json":
                shutil.copy(f, ctx.out / f.name)
        return ModelRef(HF, ctx.out, id="")
'''


@pytest.fixture(scope="module")
def cluster():
    """A head (2 CPUs) and a second node (1 CPU, the only one with the custom resource `node_b`)."""
    c = LocalCluster().start(head_cpus=2)
    try:
        c.add_node(num_cpus=1, resources={"node_b": 1})
        nodes = c.wait_for(2)
        c.node_b = next(n["NodeID"] for n in nodes if "node_b" in n["Resources"])
        yield c
    finally:
        c.stop()


SCRIPT = Path(__import__("tempfile").mkdtemp(prefix="mp-slow-")) / "modelpress_slow.py"
SCRIPT.write_text(SLOW_PASS)  # one file for the whole module: a plugin class is registered from one script


def _slow(tmp_path: Path, name: str = "slow", **params) -> dict:
    return {"type": "SlowCopy", "user_script": str(SCRIPT), "marker": str(tmp_path / f"{name}.attempts"), **params}


def _attempts(tmp_path: Path, name: str = "slow") -> list[dict]:
    path = tmp_path / f"{name}.attempts"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _run(tmp_path: Path, tiny_model: Path, passes: dict, ray: dict, **top):
    from modelpress.config.normalize import normalize
    from modelpress.engine import run_workflow

    raw = tone_workflow(tiny_model, passes, systems={"ray": {"type": "Ray", **ray}, "here": {"type": "LocalSystem"}},
                        host="ray",
                        cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "out"), **top)
    raw.setdefault("evaluation", {"enabled": False})
    return run_workflow(normalize(raw, tmp_path), show_progress=False)


def _wait_for(predicate, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def test_a_task_asking_for_a_resource_only_one_node_has_lands_on_that_node(cluster, tmp_path, tiny_model):
    passes = {"slow": _slow(tmp_path), "plain": {**_slow(tmp_path, "plain"), "host": "here"}}
    result = _run(tmp_path, tiny_model, passes,
                  {"address": cluster.address, "pass_resources": {"slow": {"resources": {"node_b": 1}}}})
    rows = {row["pass"]: row for row in result.history}
    assert rows["slow"]["node"] == cluster.node_b == _attempts(tmp_path)[0]["node"]
    assert rows["slow"]["pid"] != os.getpid() and rows["slow"]["cache"] == "miss"
    assert "node" not in rows["plain"] and _attempts(tmp_path, "plain")[0]["pid"] == os.getpid()  # its host: here
    assert (result.final_model.path / "config.json").is_file()  # the driver verified and recorded the entry
    again = _run(tmp_path, tiny_model, passes,
                 {"address": cluster.address, "pass_resources": {"slow": {"resources": {"node_b": 1}}}})
    assert [row["cache"] for row in again.history] == ["hit", "hit"]  # cached: nothing left the driver
    assert len(_attempts(tmp_path)) == 1


def test_a_request_no_node_can_meet_is_a_clear_error_not_a_hang(cluster, tmp_path, tiny_model):
    from modelpress.errors import ModelpressError

    started = time.monotonic()
    with pytest.raises(ModelpressError, match=r"systems\.ray\.pass_resources\.slow: the slow task asks for 1 CPU, 1 GPU, and no node"):
        _run(tmp_path, tiny_model, {"slow": _slow(tmp_path)},
             {"address": cluster.address, "pass_resources": {"slow": {"num_gpus": 1}}})
    assert time.monotonic() - started < 60 and not _attempts(tmp_path)


def test_a_worker_killed_mid_pass_is_retried_and_the_run_ends_with_the_same_result(cluster, tmp_path, tiny_model):
    def kill_first_attempt():
        _wait_for(lambda: _attempts(tmp_path), what="the pass never started")
        os.kill(_attempts(tmp_path)[0]["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_first_attempt)
    killer.start()
    result = _run(tmp_path, tiny_model, {"slow": _slow(tmp_path, seconds=4)},
                  {"address": cluster.address, "max_retries": 2})
    killer.join()
    attempts = _attempts(tmp_path)
    assert len(attempts) == 2 and attempts[0]["pid"] != attempts[1]["pid"]
    files = sorted(p.name for p in result.final_model.path.iterdir())
    assert "model.safetensors" in files
    for name in ("model.safetensors", "config.json"):
        assert (result.final_model.path / name).read_bytes() == (tiny_model / name).read_bytes()


def test_a_pass_that_raises_is_a_failed_candidate_and_is_not_retried(cluster, tmp_path, tiny_model):
    slow = [_slow(tmp_path, "ok"), _slow(tmp_path, "bad", fail=True)]
    evaluator = {"metrics": [{"name": "size", "type": "size_on_disk",
                              "sub_types": [{"name": "size_on_disk", "priority": 1}]}]}
    result = _run(tmp_path, tiny_model, {"slow": slow}, {"address": cluster.address, "max_retries": 3},
                  evaluators={"e": evaluator}, evaluator="e", search_strategy={"sampler": "sequential"})
    search = result.metrics["search"]
    assert [c["status"] for c in search["candidates"]] == ["ok", "failed"]
    assert "SlowCopy was asked to fail" in search["candidates"][1]["error"] and search["best"] == 1
    assert len(_attempts(tmp_path, "bad")) == 1  # an error the pass raises is final


def test_a_task_past_its_timeout_is_cancelled_with_a_clear_error(cluster, tmp_path, tiny_model):
    from modelpress.errors import ModelpressError

    with pytest.raises(ModelpressError, match=r"pass slow ran past systems\.ray\.timeout \(3 s\)"):
        _run(tmp_path, tiny_model, {"slow": _slow(tmp_path, seconds=60)}, {"address": cluster.address, "timeout": 3})


def test_ctrl_c_on_the_driver_cancels_the_tasks_and_keeps_finished_passes(cluster, tmp_path, tiny_model):
    raw = tone_workflow(tiny_model, {"first": _slow(tmp_path, "first"), "second": _slow(tmp_path, "second",
                                                                                          seconds=120)},
                        systems={"ray": {"type": "Ray", "address": cluster.address}}, host="ray",
                        cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "out"))
    raw["evaluation"] = {"enabled": False}
    config = write_config(tmp_path / "config.json", raw)
    driver = subprocess.Popen([sys.executable, "-m", "modelpress", "run", "--config", str(config), "--no-progress"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=sigint_live)
    _wait_for(lambda: _attempts(tmp_path, "second"), what="the second pass never started")
    worker = _attempts(tmp_path, "second")[0]["pid"]
    driver.send_signal(signal.SIGINT)
    out, _ = driver.communicate(timeout=60)
    assert driver.returncode == 130, out
    assert "cancelled the pass second on Ray system ray" in out  # by the driver, not only by ray.shutdown
    first = [p for p in (tmp_path / "cache" / "passes").iterdir() if (p / "entry.json").is_file()]
    assert len(first) == 1 and json.loads((first[0] / "entry.json").read_text())["pass"] == "first"
    _wait_for(lambda: not _alive(worker), timeout=30, what="the cancelled task's worker is still running")


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_node_lost_mid_pass_re_runs_its_task_on_another_node(tmp_path, tiny_model):
    c = LocalCluster().start(head_cpus=1)
    try:
        nodes = {"a": c.add_node(num_cpus=1, resources={"pool": 1}), "b": c.add_node(num_cpus=1, resources={"pool": 1})}
        c.wait_for(3)

        def kill_its_node():
            _wait_for(lambda: _attempts(tmp_path), what="the pass never started")
            first = _attempts(tmp_path)[0]
            for proc in nodes.values():
                import psutil

                if first["pid"] in {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}:
                    c.kill_node(proc)
                    return

        killer = threading.Thread(target=kill_its_node)
        killer.start()
        result = _run(tmp_path, tiny_model, {"slow": _slow(tmp_path, seconds=5)},
                      {"address": c.address, "max_retries": 2, "resources": {"pool": 1}})
        killer.join()
        attempts = _attempts(tmp_path)
        assert len(attempts) == 2 and attempts[0]["node"] != attempts[1]["node"]
        assert (result.final_model.path / "model.safetensors").is_file()
    finally:
        c.stop()
    assert not c.processes()


def test_fsspec_storage_carries_outputs_between_nodes_and_the_driver_verifies_them(cluster, tmp_path, tiny_model):
    from modelpress.cache import PassCache
    from modelpress.systems.storage import UrlStorage, local_ref

    url = f"file://{tmp_path / 'bucket'}"
    secret, shaped = "mp-secret-" + os.urandom(6).hex(), "hf_" + os.urandom(12).hex()
    result = _run(tmp_path, tiny_model, {"slow": _slow(tmp_path), "again": _slow(tmp_path, "again")},
                  {"address": cluster.address, "storage": url,
                   "env_vars": {"MP_TEST_TOKEN": secret, "MP_TEST_PLAIN": "mp-plain-value", "MP_TEST_SHAPED": shaped}})
    # every variable reaches the task; the secret-named one and the token-shaped value are never in Ray's logs (its
    # runtime-env agent writes the env it is given, as the plain one shows)
    assert {(a["token"], a["plain"], a["shaped"]) for a in _attempts(tmp_path)} == {(secret, "mp-plain-value", shaped)}
    logs = [f.read_text(errors="replace") for f in cluster.tmp.rglob("*") if f.is_file() and f.suffix in (".log", ".err", ".out")]
    assert any("mp-plain-value" in text for text in logs)
    assert not any(secret in text or shaped in text for text in logs)
    keys = [row["output_id"] for row in result.history]
    for key in keys:  # each entry uploaded with its manifest, and downloaded into the driver's own cache
        assert (tmp_path / "bucket" / "passes" / key / "entry.json").is_file()
        assert (tmp_path / "cache" / "passes" / key / "entry.json").is_file()
    inputs = list((tmp_path / "bucket" / "models").iterdir())
    assert len(inputs) == 1 and (inputs[0] / "model" / "config.json").is_file()  # the input model, once

    # a node that does not see the driver's folders fetches the models from the storage
    storage = UrlStorage(url)
    storage.node_dir = tmp_path / "other-node"
    ref = result.final_model
    moved = type(ref)(ref.kind, tmp_path / "not-on-this-node", ref.id, ref.base, ref.task)
    here = local_ref(storage, moved, tiny_model, inputs[0].name)
    assert here.path == tmp_path / "other-node" / "passes" / ref.id / "model"
    assert (here.path / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()

    # an entry whose files do not match its manifest is never taken
    remote = tmp_path / "bucket" / "passes" / keys[0] / "model" / "config.json"
    remote.write_text(remote.read_text() + " ")
    fresh = PassCache(tmp_path / "fresh")
    storage.fetch(fresh, keys[0])
    assert fresh.lookup(keys[0], ref) is None


def _losses(tmp_path: Path, tiny_model: Path, name: str, workers: int, batch: int, ray: dict | None = None):
    from modelpress.config.normalize import normalize
    from modelpress.engine import run_workflow

    lora = {"type": "LoRA", "r": 4, "alpha": 8, "lora_dropout": 0.0, "target_modules": ["qkv_proj", "o_proj"],
            "train_data_config": "tone", "num_workers": workers,
            "training_args": {"learning_rate": 2e-3, "per_device_train_batch_size": batch, "max_steps": 4,
                              "seed": 0, "logging_steps": 1}}
    top = {"systems": {"ray": {"type": "Ray", **ray}}, "host": "ray"} if ray else {}
    raw = tone_workflow(tiny_model, {"lora": lora}, cache_dir=str(tmp_path / name / "cache"),
                        output_dir=str(tmp_path / name / "out"), **top)
    raw["evaluation"] = {"enabled": False}
    result = run_workflow(normalize(raw, tmp_path), show_progress=False)
    log = json.loads((result.final_model.path / "training_log.json").read_text())
    return [h["loss"] for h in log["log_history"] if "loss" in h], result.history[0]


def test_a_system_without_an_address_starts_its_own_cluster_where_ray_address_names_another(cluster, tmp_path,
                                                                                             monkeypatch):
    """No address means a local cluster for the run (README); Ray took RAY_ADDRESS (a KubeRay pod sets it) or the
    cluster a `ray start` on this machine recorded, and refused object_store_memory there."""
    import ray

    from modelpress.config.schema import RaySystemConfig
    from modelpress.systems.ray_system import RaySystem

    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    system = RaySystem("local", RaySystemConfig(), tmp_path / "cache")
    try:
        system.connect({})
        assert system.started_cluster
        assert len([n for n in ray.nodes() if n.get("Alive")]) == 1  # not the module's two-node cluster
    finally:
        system.close()


def _worker_lines(cluster, text: str) -> set[tuple[str, str]]:
    """The lines holding `text` in the cluster's worker output files (what Ray forwards to the driver)."""
    return {(path.name, line) for path in cluster.tmp.glob("session_*/logs/worker-*")
            for line in path.read_text(errors="replace").splitlines() if text in line}


def test_lora_on_two_ddp_workers_matches_one_worker_with_the_same_global_batch(cluster, tmp_path, tiny_model,
                                                                               caplog):
    caplog.set_level("INFO", logger="modelpress")  # as `modelpress run` logs (restored after the test)
    before = _worker_lines(cluster, "training: step 4/4")
    # the pass's own task only waits for its two training workers: it asks for no CPU
    ddp, row = _losses(tmp_path, tiny_model, "ddp", 2, 4,
                       {"address": cluster.address, "pass_resources": {"lora": {"num_cpus": 0}}})
    single, _ = _losses(tmp_path, tiny_model, "single", 1, 8)
    alone, _ = _losses(tmp_path, tiny_model, "alone", 1, 4)
    assert len(ddp) == len(single) == 4
    assert ddp == pytest.approx(single, rel=1e-5)  # 2 x 4 rows per step: the same rows as one process's 8
    assert ddp != pytest.approx(alone, rel=1e-3)  # and not what one worker's 4 rows give
    assert any("data-parallel on 2 workers (DDP, gloo)" in note for note in row["notes"])
    # rank 0's step lines are in its output, which Ray forwards to the driver: as modelpress logs them, not bare
    [(_, line)] = _worker_lines(cluster, "training: step 4/4") - before
    assert line.startswith("INFO training: step 4/4")  # through modelpress's redacting handler, at the driver's level


@pytest.mark.e2e
def test_the_seed_workflow_runs_through_the_cluster(cluster, tmp_path, tiny_model):
    """The seed's host/target name an `aml` system it never defines: defined as a Ray system, they run there."""
    work = example_workspace(tmp_path, tiny_model)
    raw = json.loads((work / "seed-config.json").read_text())
    raw["systems"] = {"aml": {"type": "Ray", "config": {"address": cluster.address}}}
    config = write_config(work / "seed-ray.json", raw)
    run_cli("run", "--config", str(config), "--no-progress")
    out = tmp_path / "model-cache" / "models" / "phi3-finetuned"
    steps = json.loads((out / "run_history.json").read_text())["steps"]
    passes = [s for s in steps if s["type"] != "evaluation"]
    assert [s["pass"] for s in passes] == ["lora", "merge_adapter_weights", "builder"]
    assert all(s.get("node") and s["cache"] == "miss" for s in passes)
    assert (out / "model" / "genai_config.json").is_file()


@pytest.mark.e2e
def test_the_six_candidate_search_runs_on_the_cluster_at_most_max_concurrency_at_once(cluster, tmp_path, tiny_model):
    from test_search import BUILDER_SPACE, _search_config

    (tmp_path / "local").mkdir()
    local = _search_config(tmp_path / "local", tiny_model, BUILDER_SPACE, {"sampler": "sequential"},
                           cache=tmp_path / "cache-local")
    run_cli("run", "--config", str(local), "--no-progress")
    (tmp_path / "ray").mkdir()
    config = _search_config(tmp_path / "ray", tiny_model, BUILDER_SPACE, {"sampler": "sequential"},
                            cache=tmp_path / "cache-ray")
    raw = json.loads(config.read_text())
    # training with as many threads as the local run uses gives the same adapter (torch's sums follow the
    # thread count); the builds and evaluations run two at a time, one CPU each
    raw.update(systems={"ray": {"type": "Ray", "address": cluster.address, "max_concurrency": 2,
                                "pass_resources": {"lora": {"num_cpus": 2}}}}, host="ray", target="ray")
    write_config(config, raw)
    run_cli("run", "--config", str(config), "--no-progress")
    sequential = json.loads((tmp_path / "local" / "out" / "metrics.json").read_text())["search"]
    parallel = json.loads((tmp_path / "ray" / "out" / "metrics.json").read_text())["search"]
    assert [c["choice"] for c in parallel["candidates"]] == [c["choice"] for c in sequential["candidates"]]
    assert parallel["evaluated"] == 6 and parallel["failed"] == 0
    accuracy = "accuracy-accuracy_score"
    assert [c["metrics"][accuracy] for c in parallel["candidates"]] == \
        [c["metrics"][accuracy] for c in sequential["candidates"]]
    spans = [(c["started"], c["ended"]) for c in parallel["candidates"]]
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most == 2  # two at once, never more
    steps = json.loads((tmp_path / "ray" / "out" / "run_history.json").read_text())["steps"]
    assert {s["pass"] for s in steps if s.get("node")} >= {"lora", "merge", "builder"}
    # each evaluation computed on the one CPU its task reserved, not a thread per core of the node beside the other
    ran_on = [json.loads(p.read_text())["ran_on"] for p in (tmp_path / "cache-ray" / "evals").glob("*.json")]
    assert len(ran_on) == 7 and {r["thread_limit"] for r in ran_on} == {1}  # the input model and six candidates


@pytest.mark.e2e
def test_the_ray_search_example_picks_the_same_best_candidate_as_the_sequential_one(demo_run):
    """search-ray.json: the demo's search on a local cluster started for the run (its own evaluations)."""
    run_cli("run", "--config", str(demo_run / "search.json"), "--no-progress")
    proc = run_cli("run", "--config", str(demo_run / "search-ray.json"), "--no-progress")
    assert "a local cluster started for this run" in proc.stderr
    sequential = json.loads((demo_run / "runs" / "search" / "metrics.json").read_text())["search"]
    parallel = json.loads((demo_run / "runs" / "search-ray" / "metrics.json").read_text())["search"]
    accuracy = "accuracy-accuracy_score"
    scores = [c["metrics"][accuracy] for c in sequential["candidates"]]
    assert [c["metrics"][accuracy] for c in parallel["candidates"]] == scores  # measured again, on the cluster
    assert parallel["best"] is not None
    # Accuracy ranks first among the candidates that meet the goals. The latency goal is timed, on the cluster
    # with the one thread a task reserves and here with both cores (README, "Several machines"), so a candidate
    # can miss it on the cluster only; among those meeting the goals there, the best is the most accurate, and
    # it is the sequential run's best whenever that one met them too and no other ties with it.
    met = {c["id"] for c in parallel["candidates"] if c["goals_met"]}
    assert parallel["best"] in met
    assert scores[parallel["best"] - 1] == max(scores[i - 1] for i in met)
    if sequential["best"] in met and scores.count(scores[sequential["best"] - 1]) == 1:
        assert parallel["best"] == sequential["best"]
    steps = json.loads((demo_run / "runs" / "search-ray" / "run_history.json").read_text())["steps"]
    assert any(s["type"] == "evaluation" and s["cache"] == "miss" for s in steps)


def test_zz_no_ray_process_is_left_after_the_clusters_stop(cluster):
    cluster.stop()
    assert not cluster.processes()
    assert not ray_processes(), ray_processes()
