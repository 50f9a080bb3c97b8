"""QLoRA on the CPU with bitsandbytes: it trains, and the eval-mode repacking pitfall is guarded."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import run_cli, tone_workflow, write_config
from modelpress.errors import MissingDependencyError

pytestmark = pytest.mark.e2e
bnb = pytest.importorskip("bitsandbytes")


def _qlora_config(tiny_model, out, steps=30):
    qlora = {"type": "QLoRA", "train_data_config": "tone", "eval_dataset_size": 0.1,
             "double_quant": True, "r": 8, "alpha": 16, "target_modules": ["qkv_proj", "o_proj"],
             "training_args": {"max_steps": steps, "per_device_train_batch_size": 8, "learning_rate": 0.002,
                               "logging_steps": 5, "eval_strategy": "steps", "eval_steps": 10}}
    return tone_workflow(tiny_model, {"qlora": qlora, "merge": {"type": "MergeAdapterWeights"}},
                         evaluation={"max_examples": 20}, output_dir=str(out / "out"), cache_dir=str(out / "cache"))


def test_qlora_trains_and_merges_on_cpu(tiny_model, tmp_path):
    path = write_config(tmp_path / "qlora.json", _qlora_config(tiny_model, tmp_path))
    run_cli("run", "--config", str(path), "--no-progress")
    log = json.loads(next((tmp_path / "cache").glob("passes/*/model/training_log.json")).read_text())
    losses = [e["loss"] for e in log["log_history"] if "loss" in e]
    assert losses[-1] < losses[0] * 0.7, losses  # it learns, despite evaluations mid-training
    assert any("eval_loss" in e for e in log["log_history"][:-1])
    merged = tmp_path / "out" / "model"
    assert (merged / "model.safetensors").is_file()  # merged into a full-precision HF folder
    assert "quantization_config" not in json.loads((merged / "config.json").read_text())


def _four_bit_model(tiny_model):
    from transformers import BitsAndBytesConfig

    from modelpress.models import load_causal_lm

    return load_causal_lm(tiny_model, quantization_config=BitsAndBytesConfig(load_in_4bit=True))


def _packed(model) -> bool:
    return any(getattr(getattr(m.weight, "quant_state", None), "packing_format_for_cpu", False)
               for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))


def test_eval_forward_does_not_repack_4bit_weights_once_guarded(tiny_model):
    from modelpress.passes.lora import _disable_cpu_repacking

    ids = torch.tensor([[5, 6, 7, 8]])
    unguarded = _four_bit_model(tiny_model).eval()
    with torch.no_grad():
        unguarded(input_ids=ids)
    if not _packed(unguarded):
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks here")
    guarded = _four_bit_model(tiny_model)
    assert _disable_cpu_repacking(guarded) > 0
    with torch.no_grad():
        guarded.eval()(input_ids=ids)
    assert not _packed(guarded)


def test_missing_bitsandbytes_names_the_install_command(monkeypatch, tiny_model):
    from modelpress.passes.lora import run_qlora

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'modelpress\[qlora\]'"):
        run_qlora(ctx=None, params=None)
