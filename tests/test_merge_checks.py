"""Which adapters the tensor-by-tensor merge takes, and which go to peft's merge (that handles every case)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from modelpress.passes.merge_stream import why_not_streamed  # noqa: E402


def _pair(tmp_path, adapted: str, base_keys: list[str], config: dict | None = None):
    adapter, base = tmp_path / "adapter", tmp_path / "base"
    adapter.mkdir()
    base.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    save_file({f"base_model.model.{adapted}.lora_A.weight": torch.zeros(2, 4),
               f"base_model.model.{adapted}.lora_B.weight": torch.zeros(4, 2)}, str(adapter / "adapter_model.safetensors"))
    save_file({k: torch.zeros(4, 4) for k in base_keys}, str(base / "model.safetensors"))
    (base / "config.json").write_text(json.dumps(config or {"model_type": "llama"}))
    return adapter, base


def test_a_plain_lora_on_stored_weights_is_merged_tensor_by_tensor(tmp_path):
    assert why_not_streamed(*_pair(tmp_path, "model.layers.0.q_proj", ["model.layers.0.q_proj.weight"])) is None


def test_an_adapted_weight_the_checkpoint_does_not_store_goes_to_peft(tmp_path):
    """A tied head is stored only as the embeddings (SmolLM2): the streamed merge raised a KeyError on it."""
    why = why_not_streamed(*_pair(tmp_path, "lm_head", ["model.embed_tokens.weight"]))
    assert why == "the base checkpoint stores no lm_head.weight"


def test_a_base_with_its_own_model_code_goes_to_peft(tmp_path):
    """Its Python files (auto_map) must travel with the merged folder, as peft's save_pretrained carries them."""
    config = {"model_type": "custom", "auto_map": {"AutoModelForCausalLM": "modeling_x.X"}}
    why = why_not_streamed(*_pair(tmp_path, "model.layers.0.q_proj", ["model.layers.0.q_proj.weight"], config))
    assert why == "the base ships its own model code (auto_map)"


def test_a_quantized_base_goes_to_peft(tmp_path):
    """An adapter on layers a quantizer left in float passed every check, and the streamed merge cast the base's
    packed integer tensors (qweight, qzeros) to float32 while config.json still named their quantization."""
    config = {"model_type": "llama", "quantization_config": {"quant_method": "gptq", "bits": 4}}
    why = why_not_streamed(*_pair(tmp_path, "model.layers.0.q_proj", ["model.layers.0.q_proj.weight"], config))
    assert why == "the base is quantized (quantization_config)"


def test_the_streamed_merge_keeps_an_integer_buffer_as_stored(tmp_path):
    """Every stored tensor was cast to float32, an int64 position_ids buffer (older BERT and GPT-2 checkpoints)
    included."""
    from safetensors.torch import load_file

    from modelpress.passes.merge_stream import merge_streamed

    adapter, base = _pair(tmp_path, "model.layers.0.q_proj", ["model.layers.0.q_proj.weight"])
    weights = load_file(str(base / "model.safetensors"))
    save_file({**weights, "model.position_ids": torch.arange(8)[None]}, str(base / "model.safetensors"))
    assert merge_streamed(adapter, base, tmp_path / "merged") == 1
    (shard,) = (tmp_path / "merged").glob("*.safetensors")
    merged = load_file(str(shard))
    positions = merged["model.position_ids"]
    assert positions.dtype == torch.int64 and positions.tolist() == [list(range(8))]
    assert merged["model.layers.0.q_proj.weight"].dtype == torch.float32


def test_qlora_computes_in_torch_dtype_unless_told_otherwise_as_olive_does():
    from modelpress.passes.catalog import QLoRAParams
    from modelpress.passes.lora import bnb_config

    def compute(**params):
        return bnb_config(QLoRAParams(train_data_config="d", **params)).bnb_4bit_compute_dtype

    assert compute() == torch.float32
    assert compute(torch_dtype="bfloat16") == torch.bfloat16  # was float32 whatever torch_dtype said
    assert compute(torch_dtype="bfloat16", compute_dtype="float32") == torch.float32
