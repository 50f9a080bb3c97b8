"""The tensor-by-tensor LoRA merge (modelpress.passes.merge_stream) gives peft's merge_and_unload weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modelpress.models import ADAPTER_DIR, load_causal_lm
from modelpress.passes import merge_stream
from modelpress.passes.merge_stream import merge_streamed, why_not_streamed


def _adapter(tiny_model: Path, out: Path, **lora) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(5)
    model = get_peft_model(load_causal_lm(tiny_model), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                                  **lora))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    model.save_pretrained(str(out / ADAPTER_DIR))
    return out / ADAPTER_DIR


def _peft_merge(tiny_model: Path, adapter: Path) -> dict:
    from peft import PeftModel

    merged = PeftModel.from_pretrained(load_causal_lm(tiny_model), str(adapter)).merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


@pytest.mark.parametrize("lora", [{}, {"use_rslora": True}], ids=["lora", "rslora"])
def test_streamed_merge_equals_peft_merge_and_loads(lora, tiny_model, tmp_path, monkeypatch):
    adapter = _adapter(tiny_model, tmp_path / "a", **lora)
    assert why_not_streamed(adapter, tiny_model) is None
    monkeypatch.setattr(merge_stream, "SHARD_BYTES", 1 << 20)  # several shards and an index, as a large model has
    merged = merge_streamed(adapter, tiny_model, tmp_path / "merged")
    assert merged == 4 * 4  # qkv, o, gate_up, down in each of the 4 layers
    assert (tmp_path / "merged" / "model.safetensors.index.json").is_file()
    ours = load_causal_lm(tmp_path / "merged").state_dict()
    reference = _peft_merge(tiny_model, adapter)
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)
    base = load_causal_lm(tiny_model).state_dict()
    assert not torch.equal(ours["model.layers.0.self_attn.o_proj.weight"], base["model.layers.0.self_attn.o_proj.weight"])


def test_adapters_it_does_not_cover_are_left_to_peft(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model

    embedded = get_peft_model(load_causal_lm(tiny_model), LoraConfig(r=4, target_modules=["embed_tokens", "o_proj"]))
    embedded.save_pretrained(str(tmp_path / "e" / ADAPTER_DIR))
    assert "embed_tokens" in why_not_streamed(tmp_path / "e" / ADAPTER_DIR, tiny_model)  # LoRA on the embeddings
    assert "DORA" in why_not_streamed(_adapter(tiny_model, tmp_path / "d", use_dora=True), tiny_model).upper()
    assert "modules_to_save" in why_not_streamed(_adapter(tiny_model, tmp_path / "s", modules_to_save=["lm_head"]),
                                                  tiny_model)
