"""Nothing lost: kill -9 and Ctrl-C during training resume from a checkpoint; concurrent runs share a
cache safely; a full disk is a clear error that keeps earlier outputs."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli, sigint_live, tone_workflow, write_config

pytestmark = pytest.mark.e2e


def _config(tiny_model: Path, root: Path, cache: str, steps: int = 60) -> dict:
    lora = {"type": "LoRA", "train_data_config": "tone", "r": 8, "alpha": 16, "target_modules": ["qkv_proj", "o_proj"],
            "training_args": {"max_steps": steps, "per_device_train_batch_size": 8, "learning_rate": 0.002,
                              "save_steps": 10, "logging_steps": 10}}
    return tone_workflow(tiny_model, {"lora": lora}, evaluation={"enabled": False},
                         cache_dir=str(root / cache), output_dir=str(root / f"out-{cache}"))


def _start(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "modelpress", "run", "--config", str(config), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_live)


def _wait_for_checkpoint(cache: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list(cache.glob("work/*/trainer/checkpoint-*/trainer_state.json")):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def _adapter(cache: Path) -> dict:
    from safetensors.numpy import load_file

    (path,) = cache.glob("passes/*/model/adapter/adapter_model.safetensors")
    return load_file(str(path))


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    run_cli("run", "--config", str(write_config(root / "a.json", _config(tiny_model, root, "a"))), "--no-progress")
    return root / "a"


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_training_resumes_from_its_checkpoint_with_the_same_result(how, tiny_model, tmp_path,
                                                                              uninterrupted):
    config = write_config(tmp_path / "b.json", _config(tiny_model, tmp_path, "b"))
    proc = _start(config)
    _wait_for_checkpoint(tmp_path / "b", proc)
    proc.send_signal(how)
    _, stderr = proc.communicate(timeout=60)
    if how == signal.SIGINT:
        assert proc.returncode == 130 and "run the same command again to resume" in stderr
    assert not [p for p in (tmp_path / "b" / "passes").iterdir() if not p.name.startswith(".")]
    assert not (tmp_path / "out-b" / "model").exists()  # nothing that looks complete
    resumed = run_cli("run", "--config", str(config), "--no-progress")
    assert "resuming training from checkpoint-" in resumed.stderr
    expected, got = _adapter(uninterrupted), _adapter(tmp_path / "b")
    assert expected.keys() == got.keys()
    for name in expected:
        assert abs(expected[name] - got[name]).max() < 1e-5, name
    assert not list((tmp_path / "b").glob("work/*"))  # checkpoints are removed once the entry exists
    assert not list((tmp_path / "b" / "passes").glob(".*"))  # the killed writer's leftovers are gone
    # the rate is of the steps this call trained, over the time it took (it counted the steps before the resume)
    (log,) = [json.loads(p.read_text()) for p in (tmp_path / "b").glob("passes/*/model/training_log.json")]
    assert log["training_tokens_per_second"] * log["train_seconds"] < 0.99 * log["approx_training_tokens"]


def test_logging_and_checkpoint_steps_leave_the_adapter_alone_so_changing_them_trains_nothing(tiny_model, tmp_path,
                                                                                              uninterrupted):
    """They are left out of the LoRA pass's cache key (`output_neutral`). Trained afresh with other values the
    adapter is the same to the bit; and a run with other values over the cache that holds it reuses it."""
    def other(root: Path, cache: str) -> dict:
        config = _config(tiny_model, root, cache)
        config["passes"]["lora"]["training_args"].update(logging_steps=3, save_steps=0.5)
        return {**config, "output_dir": str(tmp_path / f"out-{cache}")}

    run_cli("run", "--config", str(write_config(tmp_path / "c.json", other(tmp_path, "c"))), "--no-progress")
    expected, got = _adapter(uninterrupted), _adapter(tmp_path / "c")
    assert expected.keys() == got.keys() and all((expected[name] == got[name]).all() for name in expected)
    reused = run_cli("run", "--config", str(write_config(tmp_path / "a.json", other(uninterrupted.parent, "a"))),
                     "--no-progress")
    steps = json.loads((tmp_path / "out-a" / "run_history.json").read_text())["steps"]
    assert steps[0]["cache"] == "hit" and "training:" not in reused.stderr, reused.stderr


def test_a_run_resumed_in_a_later_epoch_of_length_grouped_batches_ends_as_one_never_stopped(tiny_model, tmp_path):
    """A checkpoint keeps the random state its epoch's length-grouped order was drawn from, so the resumed run
    skips the very batches it trained before the kill (transformers draws the order before restoring the state:
    in any epoch after the first, another order)."""
    def grouped(cache: str) -> dict:
        config = _config(tiny_model, tmp_path, cache, steps=30)
        config["passes"]["lora"]["training_args"].update(group_by_length=True, save_steps=15)
        config["data_configs"][0]["pre_process_data_config"]["max_samples"] = 80  # 10 steps an epoch
        return config

    run_cli("run", "--config", str(write_config(tmp_path / "a.json", grouped("a"))), "--no-progress")
    config = write_config(tmp_path / "b.json", grouped("b"))
    proc = _start(config)
    _wait_for_checkpoint(tmp_path / "b", proc)  # checkpoint-15: half way through the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    resumed = run_cli("run", "--config", str(config), "--no-progress")
    assert "resuming training from checkpoint-15" in resumed.stderr
    expected, got = _adapter(tmp_path / "a"), _adapter(tmp_path / "b")
    for name in expected:
        assert abs(expected[name] - got[name]).max() < 1e-5, name


def test_two_runs_sharing_a_cache_compute_each_pass_once(tiny_model, tmp_path):
    first = _config(tiny_model, tmp_path, "shared", steps=30)
    second = {**first, "output_dir": str(tmp_path / "out-second")}
    procs = [_start(write_config(tmp_path / "1.json", first)), _start(write_config(tmp_path / "2.json", second))]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    caches = []
    for out in (first["output_dir"], second["output_dir"]):
        steps = json.loads((Path(out) / "run_history.json").read_text())["steps"]
        caches.append(steps[0]["cache"])
    assert sorted(caches) == ["hit", "miss"]
    assert len([p for p in (tmp_path / "shared" / "passes").iterdir() if not p.name.startswith(".")]) == 1


def test_a_full_disk_is_a_clear_error_and_keeps_the_earlier_output(tiny_model, tmp_path):
    args = ["export", "--model", str(tiny_model), "--no-progress", "--output-dir", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache")]
    run_cli(*args, "--precision", "int4")
    before = json.loads((tmp_path / "out" / "model" / "modelpress_model.json").read_text())["id"]

    def small_disk():  # files may not grow past 1 MiB: the int8 model's weights do
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    proc = subprocess.run([sys.executable, "-m", "modelpress", *args, "--precision", "int8"],
                          capture_output=True, text=True, preexec_fn=small_disk)
    assert proc.returncode == 1, proc.stderr
    assert "disk is full" in proc.stderr and "Traceback" not in proc.stderr
    after = json.loads((tmp_path / "out" / "model" / "modelpress_model.json").read_text())["id"]
    assert after == before  # the earlier output is untouched
    assert len([p for p in (tmp_path / "cache" / "passes").iterdir() if not p.name.startswith(".")]) == 1


KILL_DURING = {
    # Replaces the named function with one that writes part of its output, then dies by SIGKILL.
    "export": ("modelpress.passes.model_builder", "run_model_builder"),
    "evaluation": ("modelpress.evaluate", "evaluate"),
}
KILLER = """
import os, signal, sys, importlib
module, name, marker = sys.argv[1], sys.argv[2], sys.argv[3]
mod = importlib.import_module(module)
def dying(ctx=None, *args, **kwargs):
    if getattr(ctx, "out", None) is not None:
        (ctx.out / "model.onnx.data").write_bytes(b"half")
    open(marker, "w").close()
    os.kill(os.getpid(), signal.SIGKILL)
setattr(mod, name, dying)
from modelpress.cli import main
sys.exit(main(sys.argv[4:]))
"""


@pytest.mark.parametrize("stage", sorted(KILL_DURING))
def test_kill_during_export_or_evaluation_then_rerun_finishes_from_the_cache(stage, tiny_model, tmp_path):
    config = _config(tiny_model, tmp_path, "c", steps=10)
    config["passes"]["merge"] = {"type": "MergeAdapterWeights"}
    config["passes"]["builder"] = {"type": "ModelBuilder", "precision": "int4"}
    config["evaluation"] = {"max_examples": 20}
    path = write_config(tmp_path / "c.json", config)
    module, name = KILL_DURING[stage]
    marker = tmp_path / "died"
    proc = subprocess.run([sys.executable, "-c", KILLER, module, name, str(marker), "run", "--config", str(path),
                           "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL and marker.exists(), proc.stderr
    assert not (tmp_path / "out-c" / "metrics.json").exists()
    rerun = run_cli("run", "--config", str(path), "--no-progress")
    steps = json.loads((tmp_path / "out-c" / "run_history.json").read_text())["steps"]
    expected = ["hit", "hit", "miss"] if stage == "export" else ["hit", "hit", "hit"]
    assert [s["cache"] for s in steps[:3]] == expected, rerun.stderr
    assert (tmp_path / "out-c" / "model" / "genai_config.json").is_file()
    assert json.loads((tmp_path / "out-c" / "metrics.json").read_text())["models"]["final"]["examples"] == 20


def test_two_different_models_never_share_a_cache_entry(tiny_model, tmp_path):
    from modelpress.tiny import create_tiny_model

    other = create_tiny_model(tmp_path / "other", seed=1)  # same shapes and tokenizer, other weights
    for model in (tiny_model, other):
        run_cli("export", "--model", str(model), "--no-progress", "--output-dir", str(tmp_path / "out"),
                "--cache-dir", str(tmp_path / "cache"))
    history = json.loads((tmp_path / "out" / "run_history.json").read_text())["steps"]
    assert history[0]["cache"] == "miss"
    assert len([p for p in (tmp_path / "cache" / "passes").iterdir() if not p.name.startswith(".")]) == 2


def test_a_checkpoint_holds_its_batch_order_before_transformers_marks_it_complete(tmp_path):
    """The order file is written before the Trainer's own files: trainer_state.json, written last, is what makes
    a checkpoint count as complete (and older ones are rotated away right after), so a kill between the two can
    no longer leave a complete-looking checkpoint that resumes in another order."""
    from types import SimpleNamespace

    import torch

    from modelpress.passes.batch_order import ORDER_FILE, ResumableOrder

    seen: list[bool] = []

    class Trainer:
        def _save_checkpoint(self, model, trial):
            folder = tmp_path / "checkpoint-7"
            seen.append((folder / ORDER_FILE).is_file())
            folder.mkdir(exist_ok=True)
            (folder / "trainer_state.json").write_text("{}")

    class Resumable(ResumableOrder, Trainer):
        pass

    trainer = Resumable()
    trainer.args, trainer.state = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(global_step=7)
    trainer._order = SimpleNamespace(drawn_from=torch.get_rng_state(), epoch=1)
    trainer._save_checkpoint(None, None)
    assert seen == [True]


def test_epoch_checkpoints_and_a_restarting_schedule_reach_the_trainer(tiny_model, tmp_path):
    """save_strategy 'epoch' and lr_scheduler_type 'cosine_with_restarts' (Olive configs write both) were refused.
    The first checkpoint is now the first epoch's end, and the logged learning rates are transformers' own
    schedule for these settings, restarts included."""
    import torch
    from transformers import get_scheduler

    config = _config(tiny_model, tmp_path, "e", steps=20)
    args = config["passes"]["lora"]["training_args"]
    args.update(save_strategy="epoch", lr_scheduler_type="cosine_with_restarts", lr_scheduler_kwargs={"num_cycles": 2},
                logging_steps=1, save_steps=3)  # saved by steps, the first checkpoint would be checkpoint-3
    config["data_configs"][0]["pre_process_data_config"]["max_samples"] = 80  # 10 steps an epoch
    proc = _start(write_config(tmp_path / "e.json", config))
    _wait_for_checkpoint(tmp_path / "e", proc)
    assert [p.name for p in (tmp_path / "e").glob("work/*/trainer/checkpoint-*")] == ["checkpoint-10"]
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    (log,) = (tmp_path / "e").glob("passes/*/model/training_log.json")
    history = json.loads(log.read_text())["log_history"]
    logged = [entry["learning_rate"] for entry in history if "learning_rate" in entry]
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=args["learning_rate"])
    schedule = get_scheduler("cosine_with_restarts", optimizer, num_warmup_steps=0, num_training_steps=20,
                             scheduler_specific_kwargs={"num_cycles": 2})
    expected = []
    for _ in range(20):
        expected.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert len(logged) == 20 and logged == pytest.approx(expected)
    assert logged[10] > logged[9]  # the restart
