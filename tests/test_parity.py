"""Numerical parity: merge is exact, ONNX fp32 matches PyTorch, int4 mostly agrees with fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modelpress.config.schema import InputModelConfig
from modelpress.context import PassContext
from modelpress.evaluate import GenaiRunner, TorchRunner, normalise_label
from modelpress.models import ADAPTER_DIR, ModelRef, load_causal_lm
from modelpress.passes.catalog import HF, HF_ADAPTER, MergeAdapterWeightsParams, ModelBuilderParams
from modelpress.passes.merge import run_merge
from modelpress.passes.model_builder import run_model_builder

pytestmark = pytest.mark.e2e
ONNX_FP32_ATOL = 1e-3  # max |logit difference| allowed between onnxruntime fp32 and torch fp32


def _ctx(ref: ModelRef, out: Path, base: Path) -> PassContext:
    out.mkdir(parents=True, exist_ok=True)
    return PassContext(ref, out, InputModelConfig(model_path=base), "cpu", data=None, show_progress=False)


@pytest.fixture(scope="module")
def random_adapter(tiny_model, tmp_path_factory) -> ModelRef:
    """A LoRA adapter with random (non-zero) B matrices, so merging has something to change."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(load_causal_lm(tiny_model), LoraConfig(
        r=8, lora_alpha=16, target_modules=["qkv_proj", "o_proj"], init_lora_weights=False, task_type="CAUSAL_LM"))
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(str(folder / ADAPTER_DIR))
    return ModelRef(HF_ADAPTER, folder, id="adapter", base=tiny_model)


def test_merged_model_equals_base_plus_adapter(random_adapter, tiny_model, tmp_path):
    from peft import PeftModel

    merged_ref = run_merge(_ctx(random_adapter, tmp_path / "merged", tiny_model), MergeAdapterWeightsParams())
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        unmerged = PeftModel.from_pretrained(load_causal_lm(tiny_model), str(random_adapter.path / ADAPTER_DIR)).eval()
        expected = unmerged(input_ids=ids).logits
        merged = load_causal_lm(merged_ref.path).eval()(input_ids=ids).logits
        base = load_causal_lm(tiny_model).eval()(input_ids=ids).logits
    assert torch.allclose(merged, expected, atol=1e-4)
    assert not torch.allclose(base, expected, atol=1e-2)  # the adapter really changes the model


def test_merge_is_noop_when_already_merged(tiny_model, tmp_path):
    ref = ModelRef(HF, tiny_model, id="base")
    assert run_merge(_ctx(ref, tmp_path / "m", tiny_model), MergeAdapterWeightsParams()) is ref


def test_onnx_fp32_matches_torch_logits(tiny_model, tmp_path):
    ref = ModelRef(HF, tiny_model, id="base")
    onnx_ref = run_model_builder(_ctx(ref, tmp_path / "fp32", tiny_model), ModelBuilderParams(precision="fp32"))
    ids = list(range(5, 45))
    with torch.no_grad():
        expected = load_causal_lm(tiny_model).eval()(input_ids=torch.tensor([ids])).logits[0].numpy()
    got = GenaiRunner(onnx_ref.path).logits(ids)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < ONNX_FP32_ATOL


def test_int4_predictions_agree_with_fp32_on_most_eval_examples(demo_run, tmp_path):
    from modelpress.config import load_config
    from modelpress.context import DataPlan

    config = load_config(demo_run / "demo.json")
    merged_dir = next(p.parent for p in (demo_run / "runs" / "cache" / "passes").glob("*/model/model.safetensors"))
    merged = ModelRef.load(merged_dir)
    fp32 = run_model_builder(_ctx(merged, tmp_path / "fp32", merged_dir), ModelBuilderParams(precision="fp32"))
    examples = DataPlan(config, tmp_path).eval_set().examples[:120]
    int4 = GenaiRunner(demo_run / "runs" / "demo" / "model")
    full = GenaiRunner(fp32.path)
    torch_runner = TorchRunner(merged)
    agree_int4 = agree_torch = 0
    for ex in examples:
        reference = normalise_label(full.generate(ex.prompt, True, 6)[0])
        agree_int4 += normalise_label(int4.generate(ex.prompt, True, 6)[0]) == reference
        agree_torch += normalise_label(torch_runner.generate(ex.prompt, True, 6)[0]) == reference
    assert agree_torch == len(examples)  # fp32 ONNX and torch make the same greedy choices
    assert agree_int4 / len(examples) >= 0.8
