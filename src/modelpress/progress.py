"""Progress that reads well on a terminal and in a log file.

On a terminal a bar redraws itself in place; in a log file each redraw is another line, so a
long run leaves thousands of them. modelpress draws bars only when asked (by default: when
stderr is a terminal; `--progress`/`--no-progress` decide otherwise) and reports long steps
as a few plain log lines instead, such as
`[modelpress] training: step 40/150, loss 0.213, 3.1 s/step, eta 5 min`.
"""

from __future__ import annotations

import logging
import time

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

log = logging.getLogger("modelpress")

LINES_PER_RUN = 10  # plain lines per training run, about one every 10% of the steps
QUIET_SECONDS = 300  # ...but never longer than this without a line, so a slow run still shows it is alive


def use_modelpress_output(trainer, bars: bool, label: str) -> None:
    """Replace the Trainer's printing of raw log dicts (`{'loss': ...}` on stdout) with modelpress's.

    With bars, the terminal bar stays and shows the loss beside it; without, the Trainer's
    PrinterCallback (what `disable_tqdm=True` installs) gives way to plain log lines.
    """
    trainer.remove_callback(PrinterCallback)
    if bars:
        if trainer.pop_callback(ProgressCallback) is not None:  # a notebook's own widget is left alone
            trainer.add_callback(LossBar())
    else:
        trainer.add_callback(TrainingLog(label))


def line_interval(max_steps: int, logging_steps: int) -> int:
    """Steps between plain lines: a multiple of `logging_steps` (so each line has a fresh loss), ~10% of the run."""
    return logging_steps * max(1, round(max_steps / LINES_PER_RUN / logging_steps))


def format_duration(seconds: float) -> str:
    """A rough human duration: `40 s`, `5 min`, `1.5 h`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def step_line(label: str, step: int, total: int, loss: float | None, seconds_per_step: float | None) -> str:
    """`lora: step 40/150, loss 0.213, 3.1 s/step, eta 5 min` (parts that are unknown are left out)."""
    parts = [f"{label}: step {step}/{total}"]
    if loss is not None:
        parts.append(f"loss {loss:.4g}")
    if seconds_per_step:
        parts.append(f"{seconds_per_step:.2g} s/step" if seconds_per_step < 10 else f"{seconds_per_step:.0f} s/step")
        if step < total:
            parts.append(f"eta {format_duration(seconds_per_step * (total - step))}")
    return ", ".join(parts)


class TrainingLog(TrainerCallback):
    """Plain log lines in place of a bar: the first step, then every `line_interval` steps, evals and the end."""

    def __init__(self, label: str):
        self.label = label
        self.interval = 1
        self.started = self.last_line = 0.0
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        # state.logging_steps, not args': the Trainer has turned a fractional one into a step count
        self.interval = line_interval(state.max_steps, state.logging_steps)
        self.started = self.last_line = time.perf_counter()
        self.first_step = state.global_step  # a resumed run times only the steps it does itself

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" not in (logs or {}) or not state.is_world_process_zero:
            return  # an eval or end-of-training summary: on_evaluate and on_train_end report those
        step = state.global_step
        due = step % self.interval == 0 or step in (1, state.max_steps)
        if due or time.perf_counter() - self.last_line > QUIET_SECONDS:
            done = step - self.first_step
            rate = (time.perf_counter() - self.started) / done if done > 0 else None
            log.info(step_line(self.label, step, state.max_steps, logs["loss"], rate))
            self.last_line = time.perf_counter()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero and metrics and "eval_loss" in metrics:
            log.info("%s: eval at step %d/%d, eval loss %.4g", self.label, state.global_step, state.max_steps,
                     metrics["eval_loss"])

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            log.info("%s: trained to step %d/%d in %s", self.label, state.global_step, state.max_steps,
                     format_duration(time.perf_counter() - self.started))


class LossBar(ProgressCallback):
    """The Trainer's terminal bar, with the latest losses beside it instead of dicts printed under it."""

    def __init__(self):
        super().__init__()
        self.shown: dict[str, str] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is None or not state.is_world_process_zero:
            return
        logs = logs or {}
        self.shown.update({k: f"{logs[k]:.4g}" for k in ("loss", "eval_loss") if isinstance(logs.get(k), float)})
        if self.shown:
            self.training_bar.set_postfix(self.shown, refresh=False)
