"""ExtractAdapters: a LoRA model built by the genai builder, its adapter moved to inputs and a file.

Checked on the tiny Phi-3 with adapters whose B matrices are not zero (a fresh LoRA's are), so an
adapter that is lost or misapplied shows in the logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from modelpress.context import PassContext
from modelpress.errors import ModelpressError
from modelpress.models import ADAPTER_DIR, ModelRef
from modelpress.onnx_adapters import ADAPTER_FILES, read_adapter
from modelpress.passes.catalog import CATALOG, HF, HF_ADAPTER, ONNX_GENAI
from modelpress.runners import GenaiRunner

IDS = list(range(5, 29))


def _ctx(ref: ModelRef, out: Path) -> PassContext:
    from modelpress.config.schema import InputModelConfig

    return PassContext(model=ref, out=out, input_model=InputModelConfig(model_path=out), execution_provider="cpu",
                       data=None, show_progress=False)


def _adapter(tiny_model: Path, out: Path, seed: int, peft: str = "LORA") -> ModelRef:
    """A LoRA (or DoRA) adapter on the tiny model with random, non-zero B: out/adapter beside the base."""
    import torch
    from peft import LoraConfig, get_peft_model

    from modelpress.models import load_causal_lm

    torch.manual_seed(seed)
    model = get_peft_model(load_causal_lm(tiny_model), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                                  use_dora=peft == "DORA"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    model.save_pretrained(str(out / ADAPTER_DIR))
    return ModelRef(HF_ADAPTER, out, id=f"a{seed}", base=tiny_model)


def _run(ref: ModelRef, out: Path, pass_type: str, **params) -> ModelRef:
    spec = CATALOG[pass_type]
    return spec.runner()(_ctx(ref, out), spec.params.model_validate(params))


@pytest.fixture(scope="module")
def built(tiny_model, tmp_path_factory):
    """(base genai, LoRA genai, extracted LoRA genai, second adapter's genai) on the tiny model."""
    tmp = tmp_path_factory.mktemp("xa")
    base = _run(ModelRef(HF, tiny_model, id="m"), tmp / "base", "ModelBuilder", precision="fp32")
    lora = _run(_adapter(tiny_model, tmp / "a1", 1), tmp / "lora", "ModelBuilder", precision="fp32")
    extracted = _run(lora, tmp / "extracted", "ExtractAdapters")
    second = _run(_adapter(tiny_model, tmp / "a2", 2), tmp / "lora2", "ModelBuilder", precision="fp32")
    return base, lora, extracted, second


def test_the_adapter_becomes_inputs_and_a_file_and_the_model_is_its_base_without_it(built):
    base, lora, extracted, _ = built
    assert extracted.kind == ONNX_GENAI
    graph = onnx.load(str(extracted.path / "model.onnx"), load_external_data=False).graph
    inputs = {i.name: i for i in graph.input if ".lora_" in i.name}
    assert len(inputs) == 4 * 7 * 2  # 4 layers, 7 linears each (q, k, v, o, gate, up, down), A and B
    a = inputs["model.layers.0.attn.q_proj.lora_A.MatMul.weight"].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in a] == [256, "lora_r"]
    weights = read_adapter(extracted.path / ADAPTER_FILES["onnx_adapter"])
    built_lora = {t.name: onnx.numpy_helper.to_array(t) for t in
                  onnx.load(str(lora.path / "model.onnx")).graph.initializer if ".lora_" in t.name}
    assert weights.keys() == built_lora.keys()
    assert all(np.array_equal(weights[k], built_lora[k]) for k in weights)

    with_adapter = GenaiRunner(extracted.path).logits(IDS)
    before = GenaiRunner(lora.path).logits(IDS)
    without = GenaiRunner(extracted.path, use_adapter=False).logits(IDS)
    plain = GenaiRunner(base.path).logits(IDS)
    assert np.abs(with_adapter - before).max() <= 1e-4 * np.abs(before).max()
    assert np.abs(without - plain).max() <= 1e-5 * np.abs(plain).max()
    assert np.abs(before - plain).max() > 0.05 * np.abs(plain).max()  # the adapter matters: the checks could fail


def test_generation_uses_the_adapter_and_one_model_serves_another_adapter(built, tmp_path):
    base, lora, extracted, second = built
    rows = [IDS[:6], IDS[3:12]]
    assert GenaiRunner(extracted.path).generate_ids(rows, 8) == GenaiRunner(lora.path).generate_ids(rows, 8)
    # a second adapter (same base, modules and rank) extracted from its own build runs on the first model
    other = _run(second, tmp_path / "second", "ExtractAdapters", save_format="safetensors")
    swapped = GenaiRunner(extracted.path, adapter=other.path / ADAPTER_FILES["safetensors"]).logits(IDS)
    own = GenaiRunner(second.path).logits(IDS)
    assert np.abs(swapped - own).max() <= 1e-4 * np.abs(own).max()
    assert np.abs(swapped - GenaiRunner(extracted.path).logits(IDS)).max() > 1e-3


def test_numpy_format_and_fixed_rank_without_defaults(built, tmp_path):
    _, lora, _, _ = built
    out = _run(lora, tmp_path / "npz", "ExtractAdapters", save_format="numpy", dynamic_lora_r=False,
               optional_inputs=False)
    assert (out.path / "adapter_weights.npz").is_file() and not (out.path / "adapter_weights.onnx_adapter").exists()
    graph = onnx.load(str(out.path / "model.onnx"), load_external_data=False).graph
    assert not any(".lora_" in t.name for t in graph.initializer)  # no defaults: an adapter is required
    a = next(i for i in graph.input if i.name == "model.layers.0.attn.q_proj.lora_A.MatMul.weight")
    assert [d.dim_value for d in a.type.tensor_type.shape.dim] == [256, 4]
    with pytest.raises(Exception, match="lora_A"):
        GenaiRunner(out.path, use_adapter=False).logits(IDS)
    assert np.allclose(GenaiRunner(out.path).logits(IDS), GenaiRunner(lora.path).logits(IDS), atol=1e-4)


def test_an_int4_base_keeps_its_adapter_float_and_serves_it(tiny_model, tmp_path):
    lora = _run(_adapter(tiny_model, tmp_path / "a", 1), tmp_path / "int4", "ModelBuilder", precision="int4",
                int4_nodes_to_exclude=["/lm_head/MatMul"])
    graph = onnx.load(str(lora.path / "model.onnx"), load_external_data=False).graph
    ops = {n.name: n.op_type for n in graph.node}
    assert ops["/model/layers.0/attn/q_proj/MatMul_Q4"] == "MatMulNBits"  # the base is int4
    assert ops["/model/layers.3/mlp/down_proj/lora_B/MatMul"] == "MatMul"  # its adapter float
    assert ops["/lm_head/MatMul"] == "MatMul"  # and the user's own exclusion still holds
    extracted = _run(lora, tmp_path / "x", "ExtractAdapters")  # checks itself: exact without prepacking
    rows = [IDS[:6]]
    assert GenaiRunner(extracted.path).generate_ids(rows, 6) == GenaiRunner(lora.path).generate_ids(rows, 6)


def test_what_cannot_be_extracted_gets_a_clear_error(built, tiny_model, tmp_path):
    base = built[0]
    with pytest.raises(ModelpressError, match="no LoRA weights .* unmerged adapter"):
        _run(base, tmp_path / "none", "ExtractAdapters")
    with pytest.raises(ModelpressError, match="LoRA adapters only; this input's adapter is DORA.*MergeAdapterWeights"):
        _run(_adapter(tiny_model, tmp_path / "dora", 3, "DORA"), tmp_path / "dora-built", "ModelBuilder")
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="writes only LoRA adapters"):
        CATALOG["ExtractAdapters"].params.model_validate({"adapter_type": "dora"})


def test_modelpress_generate_picks_the_folders_adapter_or_none(built):
    from modelpress.generate import generate

    _, lora, extracted, _ = built
    prompt = "hello there"
    own = "".join(generate(extracted.path, prompt, 6, raw=True))
    assert own == "".join(generate(lora.path, prompt, 6, raw=True))
    base = "".join(generate(extracted.path, prompt, 6, raw=True, use_adapter=False))
    assert base == "".join(generate(built[0].path, prompt, 6, raw=True))


def test_modelpress_generate_names_a_prompt_past_the_context_and_a_file_that_is_no_adapter(built, tmp_path):
    import json

    from modelpress.generate import generate

    folder = built[0].path
    context = json.loads((folder / "genai_config.json").read_text())["model"]["context_length"]
    with pytest.raises(ModelpressError, match=f"the model reads at most {context}: shorten it"):
        list(generate(folder, "hello " * context, 4, raw=True))
    from transformers import AutoTokenizer

    per_word = len(AutoTokenizer.from_pretrained(folder)("hello " * 100, add_special_tokens=False)["input_ids"]) / 100
    near_the_end = "hello " * int((context - 16) / per_word)  # room for fewer tokens than asked: stops at the context
    assert len("".join(generate(folder, near_the_end, 64, raw=True))) > 0
    (tmp_path / "junk.onnx_adapter").write_bytes(b"not an adapter")
    with pytest.raises(ModelpressError, match="cannot be loaded as an adapter of this model"):
        list(generate(folder, "hello", 4, raw=True, adapter=tmp_path / "junk.onnx_adapter"))


@pytest.mark.e2e
def test_olive_lora_adapter_recipe_runs_as_written(tiny_model, tmp_path):
    """tests/olive_configs/lora-adapters.json (Olive's qlora/dora recipe chain): LoRA -> ModelBuilder ->
    ExtractAdapters, then `modelpress generate` with the folder's adapter and with none."""
    import shutil

    from hub_cache import OLIVE_CONFIGS, olive_workspace, run_offline

    work, home = olive_workspace(tmp_path, tiny_model, "lora-adapters.json")
    shutil.copytree(OLIVE_CONFIGS / "lm_eval_tasks", work / "lm_eval_tasks")
    proc = run_offline(work, home, "run", "--config", "config.json", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = work / "models" / "adapters" / "model"
    assert (final / "adapter_weights.onnx_adapter").is_file() and (final / "genai_config.json").is_file()
    trained = read_adapter(final / "adapter_weights.onnx_adapter")
    # 4 layers: q, k, v (qkv_proj, unpacked by the builder) and o; A and B each
    assert len(trained) == 4 * 4 * 2 and all(np.isfinite(v).all() for v in trained.values())
    assert any(np.abs(v).max() > 0 for k, v in trained.items() if ".lora_B." in k)  # trained: B left zero
    runs = {name: run_offline(work, home, "generate", str(final), "--prompt", "I won!", "--max-new-tokens", "4",
                              *extra)
            for name, extra in (("own", ()), ("none", ("--adapter", "none")),
                                ("missing", ("--adapter", "nope.onnx_adapter")))}
    assert runs["own"].returncode == 0 and runs["none"].returncode == 0, runs["own"].stderr[-2000:]
    assert runs["missing"].returncode == 2 and "--adapter: nope.onnx_adapter: no such file" in runs["missing"].stderr



@pytest.mark.parametrize("pass_type, options", [("OnnxBlockWiseRtnQuantization", {"block_size": 32}),
                                                ("OnnxKQuantQuantization", {"bits": 4, "block_size": 32})])
def test_quantizing_after_extract_adapters_keeps_the_adapter_inputs(built, tmp_path, pass_type, options):
    """The adapter weights are graph inputs whose initializers are only defaults: a quantizer that folded them in
    as constants cut the inputs off, so no other adapter could be served."""
    _, _, extracted, _ = built
    quantized = _run(extracted, tmp_path / "q", pass_type, **options)
    graph = onnx.load(str(quantized.path / "model.onnx"), load_external_data=False).graph
    assert sum(".lora_" in i.name for i in graph.input) == 4 * 7 * 2
    assert sum(n.op_type == "MatMulNBits" for n in graph.node) >= 4 * 7  # the base weights are quantized
    with_adapter = GenaiRunner(quantized.path).logits(IDS)
    without = GenaiRunner(quantized.path, use_adapter=False).logits(IDS)
    assert np.abs(with_adapter - without).max() > 0.01 * np.abs(without).max()  # the adapter still acts
