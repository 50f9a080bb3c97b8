"""LoRA on some decoder layers only (layers_to_transform, negative indices from the top)."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import tone_workflow, write_config
from modelpress.errors import ModelpressError
from modelpress.passes.lora import decoder_layers


def test_negative_layer_indices_count_from_the_top():
    config = SimpleNamespace(num_hidden_layers=30)
    assert decoder_layers([-1, -3, -2], config) == [27, 28, 29]
    assert decoder_layers([0, -30, 5], config) == [0, 5]
    assert decoder_layers(None, config) is None
    with pytest.raises(ModelpressError, match=r"\[30, -31\] name no layer of this model, which has 30"):
        decoder_layers([30, -31, 2], config)


@pytest.mark.e2e
def test_only_the_named_layers_get_an_adapter_and_the_merge_changes_only_them(tiny_model, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    n = json.loads((tiny_model / "config.json").read_text())["num_hidden_layers"]
    lora = {"type": "LoRA", "train_data_config": "tone", "r": 4, "alpha": 8, "target_modules": ["qkv_proj", "o_proj"],
            "layers_to_transform": [-1], "training_args": {"max_steps": 3, "per_device_train_batch_size": 4,
                                                           "learning_rate": 1e-2}}
    config = tone_workflow(tiny_model, {"lora": lora, "merge": {"type": "MergeAdapterWeights"}},
                           evaluation={"enabled": False}, output_dir=str(tmp_path / "out"),
                           cache_dir=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "modelpress", "run", "--no-progress", "--config",
                           str(write_config(tmp_path / "workflow.json", config))], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    adapter = next((tmp_path / "cache").glob("passes/*/model/adapter/adapter_model.safetensors"))
    with safe_open(str(adapter), "pt") as f:
        keys = list(f.keys())
    assert keys and all(f".layers.{n - 1}." in k for k in keys), keys
    base, merged = load_file(str(tiny_model / "model.safetensors")), {}
    for shard in (tmp_path / "out" / "model").glob("*.safetensors"):
        merged.update(load_file(str(shard)))
    changed = {k for k in base if k in merged and not (merged[k].float() == base[k].float()).all()}
    assert changed == {f"model.layers.{n - 1}.self_attn.qkv_proj.weight", f"model.layers.{n - 1}.self_attn.o_proj.weight"}


def test_every_trained_weight_is_float32_over_a_bfloat16_base(tiny_model, tmp_path):
    """peft keeps LoRA layers in float32 over a bfloat16 base but copies a classifier's head (modules_to_save) in
    the base's dtype, where AdamW's small late updates round away: the pass makes every trained weight float32."""
    import torch

    from modelpress.config.schema import InputModelConfig
    from modelpress.context import PassContext
    from modelpress.models import ModelRef
    from modelpress.passes.catalog import HF, LoRAParams
    from modelpress.passes.lora import _peft_model

    ctx = PassContext(ModelRef(HF, tiny_model, id="m"), tmp_path, InputModelConfig(model_path=tiny_model), "cpu",
                      data=None, show_progress=False)
    params = LoRAParams(r=4, target_modules=["qkv_proj"], torch_dtype="bfloat16", train_data_config="tone")
    model = _peft_model(ctx, params, None, ["joy", "fear"])
    trained = {name: weight.dtype for name, weight in model.named_parameters() if weight.requires_grad}
    assert any("score" in name for name in trained) and any("lora_A" in name for name in trained)
    assert set(trained.values()) == {torch.float32}, trained
    frozen = {weight.dtype for weight in model.parameters() if not weight.requires_grad}
    assert frozen == {torch.bfloat16}  # the base stays as asked
    out = model(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([1]))  # bfloat16 hidden states into it
    out.loss.backward()
    assert out.logits.dtype == torch.float32
    assert all(w.grad is not None and w.grad.dtype == torch.float32 for w in model.parameters() if w.requires_grad)


def test_a_classifier_trains_with_the_attention_the_input_model_names(tiny_model, tmp_path):
    """load_kwargs.attn_implementation reached a causal LM's LoRA only: a classifier trained with transformers'
    default kernel, while the setting was in the pass's cache key."""
    from modelpress.config.schema import InputModelConfig
    from modelpress.context import PassContext
    from modelpress.models import ModelRef
    from modelpress.passes.catalog import HF, LoRAParams
    from modelpress.passes.lora import _peft_model

    params = LoRAParams(r=4, target_modules=["qkv_proj"], train_data_config="tone")
    for attention in ("eager", "sdpa"):
        ctx = PassContext(ModelRef(HF, tiny_model, id="m"), tmp_path,
                          InputModelConfig(model_path=tiny_model, attn_implementation=attention), "cpu",
                          data=None, show_progress=False)
        model = _peft_model(ctx, params, None, ["joy", "fear"])
        assert model.get_base_model().config._attn_implementation == attention


@pytest.mark.parametrize("modules", [["embed_tokens"], ["o_proj"], ["lm_head"]])
def test_a_module_trained_in_full_inside_a_bfloat16_base_hands_on_bfloat16(tiny_model, tmp_path, modules):
    """modules_to_save inside the network (the embeddings, a projection) trains in float32 but gives the next layer,
    whose weights are bfloat16, bfloat16 activations (float32 ones made its matmul fail); the LM head keeps float32."""
    import torch

    from modelpress.config.schema import InputModelConfig
    from modelpress.context import PassContext
    from modelpress.models import ModelRef
    from modelpress.passes.catalog import HF, LoRAParams
    from modelpress.passes.lora import _peft_model

    ctx = PassContext(ModelRef(HF, tiny_model, id="m"), tmp_path, InputModelConfig(model_path=tiny_model), "cpu",
                      data=None, show_progress=False)
    params = LoRAParams(r=4, target_modules=["qkv_proj"], torch_dtype="bfloat16", train_data_config="tone",
                        modules_to_save=modules)
    model = _peft_model(ctx, params, None, None)
    trained = {name: weight.dtype for name, weight in model.named_parameters() if weight.requires_grad}
    assert any(f"{modules[0]}.modules_to_save" in name for name in trained), trained
    assert set(trained.values()) == {torch.float32}, trained
    out = model(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([[5, 6, 7]]))
    out.loss.backward()
    assert out.logits.dtype == (torch.float32 if modules == ["lm_head"] else torch.bfloat16)
    assert all(w.grad is not None for w in model.parameters() if w.requires_grad)


@pytest.mark.parametrize("modules", [["embed_tokens"], ["lm_head"]])
def test_a_tied_embedding_trained_in_full_inside_a_bfloat16_base_runs(tmp_path, modules):
    """A model that ties its head to its embeddings (SmolLM2, Qwen2.5) trains both copies as one weight: the first
    module cast it to float32 and the second, seeing float32, got no hooks, so bfloat16 hidden states met the
    float32 head and the first forward raised."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from modelpress.config.schema import InputModelConfig
    from modelpress.context import PassContext
    from modelpress.models import ModelRef
    from modelpress.passes.catalog import HF, LoRAParams
    from modelpress.passes.lora import _base_dtype, _peft_model

    torch.manual_seed(0)
    folder = tmp_path / "tied"
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)) \
        .save_pretrained(str(folder))
    ctx = PassContext(ModelRef(HF, folder, id="m"), tmp_path, InputModelConfig(model_path=folder), "cpu",
                      data=None, show_progress=False)
    params = LoRAParams(r=4, target_modules=["q_proj"], torch_dtype="bfloat16", train_data_config="tone",
                        modules_to_save=modules)
    model = _peft_model(ctx, params, None, None)
    out = model(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([[5, 6, 7]]))
    out.loss.backward()
    assert out.logits.dtype == torch.float32  # the head is trained (tied), so it hands on float32
    assert all(w.grad is not None and w.grad.dtype == torch.float32 for w in model.parameters() if w.requires_grad)
    assert {w.dtype for w in model.parameters() if not w.requires_grad} == {torch.bfloat16}
    # training_log.json's base_dtype: the frozen base's, not the trained float32 embedding copy's
    assert _base_dtype(model, None) == "bfloat16"
    assert str(model.get_input_embeddings().weight.dtype) == "torch.float32"  # what it was read from


@pytest.mark.e2e
def test_float16_trains_a_float32_base_under_fp16_autocast_as_in_olive(tiny_model, tmp_path):
    """Olive's torch_dtype float16 is fp16 mixed precision over a float32 base (a float16 base trains unstably);
    where float16 is emulated (a CPU without AMX-FP16) the run says it is slow."""
    from modelpress.models import native_float16

    lora = {"type": "LoRA", "train_data_config": "tone", "r": 4, "target_modules": ["qkv_proj"],
            "torch_dtype": "float16", "training_args": {"max_steps": 2, "per_device_train_batch_size": 2}}
    config = tone_workflow(tiny_model, {"lora": lora}, evaluation={"enabled": False},
                           output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "modelpress", "run", "--no-progress", "--config",
                           str(write_config(tmp_path / "workflow.json", config))], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    log = json.loads(next((tmp_path / "cache").glob("passes/*/model/training_log.json")).read_text())
    assert (log["base_dtype"], log["autocast"]) == ("float32", "float16")
    assert ("which this machine emulates" in proc.stderr) is not native_float16()


@pytest.mark.parametrize("kind", ["lora", "loha"])
def test_training_a_tied_embedding_keeps_the_tie_and_the_merged_model_is_the_one_trained(tmp_path, kind):
    """modules_to_save: [embed_tokens] on a model whose head shares the embedding (SmolLM2): LoRA trains them as one
    matrix (peft's ensure_weight_tying), so the merged model keeps the tie it was brought with; it came out untied,
    its head the untrained table, and peft warned. LoHa, which peft cannot tie, trains the input table alone.
    Either way the merged model answers as the trained one did."""
    import torch
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from modelpress.passes.lora import _adapts_tied_embedding, adapter_config

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "base")
    params = SimpleNamespace(r=4, alpha=8, lora_dropout=0.0, rank_dropout=0.0, module_dropout=0.0,
                             target_modules=["q_proj"], modules_to_save=["embed_tokens"], adapter_type=kind)
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    tied = _adapts_tied_embedding(base, params)
    assert tied and not _adapts_tied_embedding(base, SimpleNamespace(**{**vars(params), "modules_to_save": None}))
    model = get_peft_model(base, adapter_config(params, "CAUSAL_LM", None, tied))
    with torch.no_grad():  # what training does to the trainable copy of the table
        for name, weight in model.named_parameters():
            if weight.requires_grad and "embed_tokens" in name:
                weight.add_(0.5 * torch.randn_like(weight))
    ids = torch.tensor([[1, 5, 9, 20, 33]])
    expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")
    # as MergeAdapterWeights merges an adapter with modules_to_save (peft's path)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                                       tmp_path / "adapter").merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
    assert reloaded.config.tie_word_embeddings is (kind == "lora")
