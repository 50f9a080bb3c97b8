"""Early stopping on the eval loss and the best evaluation's adapter, for the LoRA-family passes.

transformers does the work: its EarlyStoppingCallback counts the evaluations that did not lower the eval loss by
more than the threshold, and `load_best_model_at_end` loads the checkpoint of the lowest one. This module adds what a
resumable, self-describing pass needs around them: the callback's count carried over a resume (transformers saves it
in every checkpoint but restores it only with `restore_callback_states_from_checkpoint`, which would also restore
the Trainer's control flags), which step's adapter was kept, and where training stopped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("modelpress")

CALLBACK = "EarlyStoppingCallback"


def stopping_callback(patience: int | None, threshold: float, has_evals: bool):
    """transformers' EarlyStoppingCallback for these settings (None: no early stopping)."""
    if not patience or not has_evals:
        return None
    from transformers import EarlyStoppingCallback

    return EarlyStoppingCallback(patience, threshold)


def restore_count(callback, checkpoint: Path | None) -> None:
    """Give `callback` the count of evaluations without improvement it had when `checkpoint` was saved, so a resumed
    run stops where one never interrupted would."""
    if callback is None or checkpoint is None:
        return
    try:
        saved = json.loads((Path(checkpoint) / "trainer_state.json").read_text()).get("stateful_callbacks", {})
    except (OSError, ValueError):
        return  # transformers refuses an unreadable checkpoint itself when it resumes from it
    state = saved.get(CALLBACK)
    state = state[0] if isinstance(state, list) and state else state
    for name, value in (state or {}).get("attributes", {}).items():
        setattr(callback, name, value)


def kept_step(trainer) -> int:
    """The step whose adapter the pass saves: the best evaluation's where transformers loaded its checkpoint
    (load_best_model_at_end, and a best checkpoint it found), else the last step's."""
    state = trainer.state
    if trainer.args.load_best_model_at_end and state.best_model_checkpoint and state.best_global_step:
        return state.best_global_step
    return state.global_step


def evaluations(trainer) -> dict[int, float]:
    """{step: eval loss} of the evaluations made while training."""
    return {h["step"]: h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h and "step" in h}


def stopped_early(trainer, result, patience: int | None) -> dict | None:
    """Where early stopping ended the training (None: not asked for, or every planned step ran)."""
    if not patience or result.global_step >= trainer.state.max_steps:
        return None
    losses = evaluations(trainer)
    best = min(losses, key=losses.get) if losses else None
    return {"step": result.global_step, "planned_steps": trainer.state.max_steps, "best_step": best,
            "best_eval_loss": losses.get(best)}


def notes(trainer, result, stopped: dict | None, patience: int | None) -> list[str]:
    """What the log and the run's notes say of early stopping and of the adapter kept."""
    said = [f"stopped early at step {stopped['step']} of {stopped['planned_steps']}: no better eval loss in "
            f"{patience} evaluations"] if stopped else []
    if kept_step(trainer) != result.global_step:
        said.append(f"kept the adapter of step {kept_step(trainer)}, the lowest eval loss (load_best_model_at_end)")
    for line in said:
        log.info("training: %s", line)
    return said
