"""Early stopping on the eval loss, and keeping the best evaluation's adapter (transformers' EarlyStoppingCallback and
load_best_model_at_end through the LoRA pass), on the tiny Phi-3."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from conftest import run_cli, tone_workflow, write_config
from modelpress.passes.catalog import LoRAParams

LORA = {"type": "LoRA", "train_data_config": "tone", "eval_dataset_size": 0.1, "r": 8, "alpha": 16,
        "lora_dropout": 0.0, "target_modules": ["qkv_proj", "o_proj"]}


def _train(tiny_model, work, lr: float, max_steps: int = 40, **extra) -> tuple[dict, str]:
    """One LoRA run, evaluating every 5 steps at a constant learning rate: (its training_log.json, its stderr)."""
    training = {"max_steps": max_steps, "per_device_train_batch_size": 8, "learning_rate": lr,
                "lr_scheduler_type": "constant", "logging_steps": 5, "eval_strategy": "steps", "eval_steps": 5,
                **extra.pop("training_args", {})}
    config = tone_workflow(tiny_model, {"lora": {**LORA, **extra, "training_args": training}},
                           evaluation={"enabled": False}, output_dir=str(work / "out"), cache_dir=str(work / "cache"))
    work.mkdir(parents=True, exist_ok=True)
    proc = run_cli("run", "--config", str(write_config(work / "config.json", config)), "--no-progress")
    log = json.loads(next((work / "cache").glob("passes/*/model/training_log.json")).read_text())
    return log, proc.stderr + proc.stdout


def _adapter(work):
    from safetensors.torch import load_file

    return load_file(next((work / "cache").glob("passes/*/model/adapter/adapter_model.safetensors")))


def _evals(log: dict) -> dict[int, float]:
    return {h["step"]: h["eval_loss"] for h in log["log_history"] if "eval_loss" in h}


@pytest.mark.e2e
def test_training_stops_when_the_eval_loss_no_longer_improves_by_the_threshold(tiny_model, tmp_path):
    # the eval loss falls from step 5 to step 10, but by less than the threshold: the second evaluation is no
    # improvement, and patience 1 stops the run there, keeping the last step's adapter
    log, said = _train(tiny_model, tmp_path, lr=0.002, early_stopping_patience=1, early_stopping_threshold=100.0)
    losses = _evals(log)
    assert sorted(losses) == [5, 10] and losses[10] < losses[5]
    assert log["steps"] == 10 and log["kept_step"] == 10
    assert log["stopped_early"]["step"] == 10 and log["stopped_early"]["planned_steps"] == 40
    assert log["final_eval"]["eval_loss"] == losses[10]
    assert "stopped early at step 10 of 40" in said


@pytest.mark.e2e
def test_load_best_model_at_end_keeps_the_adapter_of_the_lowest_eval_loss(tiny_model, tmp_path):
    # at this learning rate the eval loss is lowest at the first evaluation and rises after it: patience 2 stops
    # the run two evaluations later, and the adapter saved is the one trained for 5 steps
    log, said = _train(tiny_model, tmp_path / "best", lr=0.05, early_stopping_patience=2,
                       training_args={"load_best_model_at_end": True})
    losses = _evals(log)
    assert sorted(losses) == [5, 10, 15] and min(losses, key=losses.get) == 5
    assert log["steps"] == 15 and log["kept_step"] == 5 and log["stopped_early"]["best_step"] == 5
    assert log["final_eval"]["eval_loss"] == losses[5]  # the kept adapter's, not the last step's
    assert "kept the adapter of step 5" in said
    five, _ = _train(tiny_model, tmp_path / "five", lr=0.05, max_steps=5)
    best, trained_five = _adapter(tmp_path / "best"), _adapter(tmp_path / "five")
    assert best.keys() == trained_five.keys()
    assert all(best[k].equal(trained_five[k]) for k in best)
    last, _ = _train(tiny_model, tmp_path / "last", lr=0.05, early_stopping_patience=2)
    assert last["kept_step"] == 15 and any(not v.equal(best[k]) for k, v in _adapter(tmp_path / "last").items())


def _params(**changes) -> LoRAParams:
    raw = {**LORA, "training_args": {"eval_strategy": "steps", "eval_steps": 5}}
    for key, value in changes.items():
        if key == "training_args":
            raw["training_args"] = {**raw["training_args"], **value}
        elif value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return LoRAParams.model_validate({k: v for k, v in raw.items() if k != "type"})


def test_each_evaluation_saves_the_checkpoint_load_best_model_at_end_may_restore():
    ta = _params(training_args={"load_best_model_at_end": True}).training_args
    assert (ta.save_strategy, ta.save_steps) == ("steps", 5)
    ta = _params(training_args={"load_best_model_at_end": True, "eval_strategy": "epoch"}).training_args
    assert ta.save_strategy == "epoch"
    assert _params().training_args.save_steps == 0.1  # untouched without load_best_model_at_end


@pytest.mark.parametrize("changes, says", [
    ({"training_args": {"load_best_model_at_end": True, "eval_strategy": "no"}}, "set eval_strategy"),
    ({"training_args": {"load_best_model_at_end": True, "save_steps": 10}}, "save_steps 10 must equal eval_steps 5"),
    ({"training_args": {"load_best_model_at_end": True, "save_strategy": "epoch"}},
     "save_strategy 'epoch' must be eval_strategy's 'steps'"),
    ({"early_stopping_patience": 2, "training_args": {"eval_strategy": "no"}},
     "early_stopping_patience counts evaluations"),
    ({"early_stopping_patience": 2, "eval_dataset_size": None}, "early_stopping_patience needs an eval loss"),
    ({"training_args": {"load_best_model_at_end": True}, "eval_dataset_size": None},
     "load_best_model_at_end needs an eval loss"),
    ({"early_stopping_threshold": 0.01}, "early_stopping_threshold applies with early_stopping_patience"),
    ({"early_stopping_patience": 0}, "greater than 0"),
    ({"early_stopping_patience": 2, "early_stopping_threshold": -1}, "greater than or equal to 0"),
])
def test_early_stopping_settings_that_cannot_work_are_refused_up_front(changes, says):
    with pytest.raises(ValidationError, match=says):
        _params(**changes)


def test_a_resumed_run_counts_on_from_the_evaluations_without_improvement_its_checkpoint_saw(tmp_path):
    """transformers saves the callback's count in every checkpoint's trainer_state.json and, by default, starts a
    resumed run from zero: the pass gives it back, so a run resumed after a kill stops where one never killed would."""
    from transformers import EarlyStoppingCallback, TrainerState

    from modelpress.passes import early_stopping

    before = EarlyStoppingCallback(3, 0.5)
    before.early_stopping_patience_counter = 2  # two evaluations without improvement when the checkpoint was saved
    checkpoint = tmp_path / "checkpoint-20"
    checkpoint.mkdir()
    TrainerState(stateful_callbacks=[before]).save_to_json(str(checkpoint / "trainer_state.json"))
    resumed = early_stopping.stopping_callback(3, 0.5, has_evals=True)
    assert resumed.early_stopping_patience_counter == 0
    early_stopping.restore_count(resumed, checkpoint)
    assert resumed.early_stopping_patience_counter == 2
    early_stopping.restore_count(resumed, None)  # a run started afresh keeps its own count
    assert early_stopping.stopping_callback(3, 0.5, has_evals=False) is None
