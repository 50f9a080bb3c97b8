"""Progress reads well in a log file (plain lines, no bar redraws) and on a terminal (a bar)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from types import SimpleNamespace

import pytest

from conftest import tone_workflow, write_config
from modelpress.progress import TrainingLog, format_duration, line_interval, step_line

BAR_SIGNS = ("\r", "it/s]", "s/it]", "Loading weights", "Writing model shards", "Generating train split")


@pytest.mark.parametrize("max_steps, logging_steps, interval", [
    (20, 10, 10), (150, 10, 20), (1000, 10, 100), (20, 1, 2), (5, 1, 1), (3000, 1, 300), (100, 50, 50),
])
def test_line_interval_is_about_a_tenth_of_the_run_in_whole_logging_steps(max_steps, logging_steps, interval):
    assert line_interval(max_steps, logging_steps) == interval


@pytest.mark.parametrize("seconds, text", [(0.4, "0 s"), (40, "40 s"), (89, "89 s"), (300, "5 min"),
                                           (5400, "1.5 h")])
def test_format_duration_reads_like_a_person_would_say_it(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("args, line", [
    (("training", 40, 150, 0.21346, 2.0), "training: step 40/150, loss 0.2135, 2 s/step, eta 4 min"),
    (("training", 1, 20, None, None), "training: step 1/20"),
    (("training", 20, 20, 7.9, 0.45), "training: step 20/20, loss 7.9, 0.45 s/step"),  # done: no eta
    (("training", 3, 10, 1.0, 123.4), "training: step 3/10, loss 1, 123 s/step, eta 14 min"),
])
def test_step_line_leaves_out_what_is_unknown(args, line):
    assert step_line(*args) == line


def test_training_log_writes_a_line_every_interval_not_every_log(caplog, monkeypatch):
    logger = logging.getLogger("modelpress")
    # a CLI test earlier in the session may have replaced its handlers, turned propagation off or disabled it
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "handlers", [caplog.handler])
    monkeypatch.setattr(logger, "disabled", False)
    callback = TrainingLog("training")
    state = SimpleNamespace(max_steps=40, logging_steps=1, global_step=0, is_world_process_zero=True)
    callback.on_train_begin(None, state, None)
    with caplog.at_level(logging.INFO, logger="modelpress"):
        for step in range(1, 41):
            state.global_step = step
            callback.on_log(None, state, None, logs={"loss": 1.0 / step, "learning_rate": 1e-3})
        callback.on_log(None, state, None, logs={"train_runtime": 1.0, "train_loss": 0.5})  # the end summary
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(",")[0] for line in lines] == [f"training: step {s}/40" for s in (1, 4, 8, 12, 16, 20, 24,
                                                                                         28, 32, 36, 40)]
    assert "{" not in "".join(lines)


def _workflow(tiny_model, tmp_path, steps: int, evaluation: dict) -> str:
    lora = {"type": "LoRA", "train_data_config": "tone", "r": 4, "alpha": 8, "target_modules": ["qkv_proj"],
            "torch_dtype": "bfloat16-if-native",
            "training_args": {"max_steps": steps, "per_device_train_batch_size": 4, "logging_steps": 1}}
    config = tone_workflow(tiny_model, {"lora": lora}, evaluation=evaluation, output_dir=str(tmp_path / "out"),
                           cache_dir=str(tmp_path / "cache"))
    return str(write_config(tmp_path / "workflow.json", config))


@pytest.mark.e2e
def test_a_log_file_gets_plain_step_lines_and_no_bars(tiny_model, tmp_path):
    config = _workflow(tiny_model, tmp_path, steps=20, evaluation={"max_examples": 8})
    proc = subprocess.run([sys.executable, "-m", "modelpress", "run", "--config", config],
                          capture_output=True, text=True)  # stderr is a pipe, as when it goes to a log file
    assert proc.returncode == 0, proc.stderr
    for sign in BAR_SIGNS:
        assert sign not in proc.stderr, sign
    assert "{'loss'" not in proc.stdout + proc.stderr  # the Trainer's raw log dicts
    steps = [line for line in proc.stderr.splitlines() if line.startswith("[modelpress] training: step")]
    assert steps[0].startswith("[modelpress] training: step 1/20, loss ")
    assert steps[-1].startswith("[modelpress] training: step 20/20, loss ")
    assert "[modelpress] training: step 10/20, loss " in proc.stderr
    log = json.loads(next((tmp_path / "cache").glob("passes/*/model/training_log.json")).read_text())
    assert sum("loss" in e for e in log["log_history"]) == 20 and len(steps) <= 12  # every log, ~10% printed
    from modelpress.models import native_training_dtype

    assert log["base_dtype"] == native_training_dtype()  # what this machine multiplies natively
    assert f"torch_dtype bfloat16-if-native: training on a {log['base_dtype']} base" in proc.stderr


def _run_on_a_terminal(args: list[str]) -> tuple[subprocess.CompletedProcess, str]:
    """Run `modelpress` with a pseudo-terminal as its stderr; returns the process and what the terminal got."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    chunks: list[bytes] = []

    def drain():  # read as it comes, or the child blocks once the terminal's buffer is full
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # the child's end is closed: it has exited
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    proc = subprocess.run([sys.executable, "-m", "modelpress", *args], stdout=subprocess.PIPE, stderr=child,
                          text=True)
    os.close(child)
    reader.join(timeout=30)
    os.close(main)
    return proc, b"".join(chunks).decode(errors="replace")


@pytest.mark.e2e
def test_a_terminal_gets_a_bar_with_the_loss_beside_it(tiny_model, tmp_path):
    proc, screen = _run_on_a_terminal(["run", "--config", _workflow(tiny_model, tmp_path, steps=6,
                                                                    evaluation={"enabled": False})])
    assert proc.returncode == 0, screen
    assert "\r" in screen and "6/6" in screen  # the training bar, redrawn in place
    assert "loss=" in screen and "{'loss'" not in screen + proc.stdout  # the loss on the bar, not dicts under it
    assert "training: step" not in screen  # the bar replaces the plain lines
