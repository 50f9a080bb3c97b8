"""Rtn, Gptq and SelectiveMixedPrecision on the tiny Phi-3: the checkpoint they write, what the
genai builder makes of it, and the layer choices of the mixed-precision rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hub_cache import olive_workspace, run_offline
from modelpress.models import load_causal_lm
from modelpress.passes.mixed_precision import k_quant_layers, kld_gains, promote
from modelpress.quantized import Grid, dequantize, quant_config, rtn


def test_k_quant_layers_follow_olives_rule():
    # the first and last eighth, and every third layer from the first eighth on (i - n//8) % 3 == 2
    assert k_quant_layers(32) == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert k_quant_layers(30) == [0, 1, 2, 3, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]  # SmolLM2-135M
    assert k_quant_layers(4) == [0, 2]

    def olive(i: int, n: int) -> bool:  # olive/passes/pytorch/selective_mixed_precision.py, Olive 0.13
        return i < n / 8 or i >= 7 * n / 8 or ((i - n // 8) % 3 == 2)

    for n in range(1, 81):
        assert k_quant_layers(n) == [i for i in range(n) if olive(i, n)], n


def test_promote_stops_once_the_low_bit_share_is_at_most_ratio():
    units = [("a",), ("b",), ("c",), ("d",)]
    sizes = {("a",): 100, ("b",): 100, ("c",): 200, ("d",): 600}
    gains = {("a",): 1.0, ("b",): 5.0, ("c",): 4.0, ("d",): 0.5}  # per weight: b 0.05, c 0.02, a 0.01, d ...
    assert promote(units, gains, sizes, ratio=0.7) == [("b",), ("c",)]  # 300 of 1000 promoted
    assert promote(units, gains, sizes, ratio=0.95) == [("b",)]


def test_kld_gain_is_the_first_order_change_of_the_divergence(tiny_model):
    """The gain of a layer equals minus the derivative of the KL divergence along low -> high grid."""
    model = load_causal_lm(tiny_model).eval()
    rows = [torch.tensor([list(range(3 + i, 40 + i))]) for i in range(3)]
    low, high = Grid(4, 32, False), Grid(8, 32, False)
    gains, sizes = kld_gains(model, rows, low, high)
    target = "model.layers.1.mlp.down_proj"
    assert sizes[target] == dict(model.named_modules())[target].weight.numel()

    student = load_causal_lm(tiny_model).eval()
    linears = {n: m for n, m in student.named_modules() if isinstance(m, torch.nn.Linear)}
    with torch.no_grad():
        for module in linears.values():
            module.weight.data = dequantize(*rtn(module.weight, low), low)
        w_low = linears[target].weight.data.clone()
        delta = dequantize(*rtn(dict(model.named_modules())[target].weight, high), high) - w_low

    def divergence(t: float) -> float:
        with torch.no_grad():
            linears[target].weight.data = w_low + t * delta
            total = 0.0
            for ids in rows:
                p = torch.log_softmax(model(input_ids=ids).logits.double(), -1)
                q = torch.log_softmax(student(input_ids=ids).logits.double(), -1)
                total += float((p.exp() * (p - q)).sum(-1).mean())
            return total / len(rows)

    slope = (divergence(0.05) - divergence(-0.05)) / 0.1
    assert gains[target] == pytest.approx(-slope, rel=0.05, abs=1e-7)


def test_kld_gradient_scores_and_budgets_the_decoder_linears_only(tiny_model):
    """The LM head is quantized only when the quantizer is asked to: the selection neither scores it nor counts
    its weights in `ratio` (they would buy nothing when it stays float), and the student keeps it float."""
    from modelpress.passes.torch_quant import decoder_linears

    model = load_causal_lm(tiny_model).eval()
    rows = [torch.tensor([list(range(3 + i, 40 + i))]) for i in range(2)]
    names = set(decoder_linears(model))
    gains, sizes = kld_gains(model, rows, Grid(4, 32, False), Grid(8, 32, False), names)
    everything, _ = kld_gains(model, rows, Grid(4, 32, False), Grid(8, 32, False))
    assert set(gains) == set(sizes) == names and "lm_head" in everything and "lm_head" not in gains
    assert gains != {n: everything[n] for n in names}  # a float head changes what the other layers' gains are


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory, tiny_model):
    """tests/olive_configs/quantization-chain.json run as written, the model id served from a local cache."""
    work, home = olive_workspace(tmp_path_factory.mktemp("chain"), tiny_model, "quantization-chain.json")
    phrases = [json.loads(line) for line in (Path(__file__).parents[1] / "examples" / "minilm-tone" / "data"
                                             / "other-style.jsonl").read_text().splitlines()]
    (work / "data.jsonl").write_text("".join(json.dumps({"text": p["phrase"]}) + "\n" for p in phrases))
    proc = run_offline(work, home, "run", "--config", "config.json", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc


def _step_output(work: Path, name: str) -> Path:
    history = json.loads((work / "models" / "quantized" / "run_history.json").read_text())
    output_id = next(s for s in history["steps"] if s["pass"] == name)["output_id"]
    return next(card.parent for card in (work / "cache" / "passes").glob("*/model/modelpress_model.json")
                if json.loads(card.read_text())["id"] == output_id)


@pytest.mark.e2e
def test_mixed_precision_gptq_rtn_model_builder_gives_a_genai_model_with_the_same_outputs(chain_run):
    from modelpress.runners import GenaiRunner

    work, proc = chain_run
    rtn_out = _step_output(work, "r")
    config = quant_config(rtn_out)
    # k_quant_mixed on 4 layers: layers 0 and 2 keep 8 bits in qkv and down (Olive's rule: 0 < 4/8, and
    # (2 - 0) % 3 == 2; 3 is not >= 7*4/8); Rtn adds the head and embeddings
    assert config["bits"] == 4 and config["group_size"] == 32 and config["lm_head"] and config["embeds"]
    assert {n for n, o in config["overrides"].items() if o.get("bits") == 8} == {
        "lm_head", "model.embed_tokens", "model.layers.2.self_attn.qkv_proj", "model.layers.2.mlp.down_proj",
        "model.layers.0.self_attn.qkv_proj", "model.layers.0.mlp.down_proj"}
    from safetensors import safe_open

    with safe_open(str(rtn_out / "model.safetensors"), "pt") as stored:
        names = set(stored.keys())
    quantized = {n.removesuffix(".qweight") for n in names if n.endswith(".qweight")}
    assert "model.layers.1.self_attn.qkv_proj" in quantized  # quantized by Gptq, kept by Rtn
    assert not {f"{m}.weight" for m in quantized} & names  # stored once, packed: no float copy beside it
    genai = work / "models" / "quantized" / "model"
    assert json.loads((genai / "genai_config.json").read_text())["search"]["max_length"] == 256
    ids = list(range(5, 45))
    with torch.no_grad():
        expected = load_causal_lm(rtn_out).eval()(input_ids=torch.tensor([ids])).logits[0].numpy()
        original = load_causal_lm(_step_output(work, "s")).eval()(input_ids=torch.tensor([ids])).logits[0].numpy()
    got = GenaiRunner(genai).logits(ids)
    # accuracy level 0 (float compute): the genai model computes exactly the quantized weights
    assert np.abs(got - expected).max() < 1e-3 * np.abs(expected).max()
    assert np.abs(original - expected).max() > 1e-2  # and they are quantized: not the float model
    assert "embeddings are quantized" in proc.stderr + (work / "models" / "quantized" / "run_history.json").read_text()
    assert "GPTQ on" in (work / "models" / "quantized" / "run_history.json").read_text()


def test_rtn_keeps_a_bfloat16_inputs_float_tensors_in_bfloat16(tiny_model, tmp_path):
    """The passes quantize a float32 copy of the input; the tensors they leave unquantized (embeddings, norms) are
    written in the input's own dtype, not float32 (twice the size), and config.json says which."""
    from types import SimpleNamespace

    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from modelpress.passes.quant_specs import RtnParams
    from modelpress.passes.torch_quant import run_rtn

    sizes = {}
    for dtype in ("float32", "bfloat16"):
        source = tmp_path / dtype
        AutoModelForCausalLM.from_pretrained(tiny_model, dtype=getattr(torch, dtype)).save_pretrained(source)
        for f in Path(tiny_model).glob("tokenizer*"):
            (source / f.name).write_bytes(f.read_bytes())
        ctx = SimpleNamespace(model=SimpleNamespace(path=source, task={}), out=tmp_path / f"rtn-{dtype}", notes=[],
                              input_model=SimpleNamespace(trust_remote_code=False))
        run_rtn(ctx, RtnParams())
        with safe_open(str(ctx.out / "model.safetensors"), "pt") as f:
            floats = {f.get_tensor(k).dtype for k in f.keys() if not k.endswith(("qweight", "qzeros", "scales"))}
        assert floats == {getattr(torch, dtype)}
        assert json.loads((ctx.out / "config.json").read_text())["dtype"] == dtype
        sizes[dtype] = (ctx.out / "model.safetensors").stat().st_size
        logits = load_causal_lm(ctx.out)(input_ids=torch.tensor([[1, 5, 9, 2]])).logits
        assert logits.shape[-1] == 1048 and torch.isfinite(logits).all()
    assert sizes["bfloat16"] < 0.8 * sizes["float32"]


def _rtn(source: Path, out: Path, **params):
    from types import SimpleNamespace

    from modelpress.passes.quant_specs import RtnParams
    from modelpress.passes.torch_quant import run_rtn

    ctx = SimpleNamespace(model=SimpleNamespace(path=source, task={}), out=out, notes=[],
                          input_model=SimpleNamespace(trust_remote_code=False))
    run_rtn(ctx, RtnParams(**params))
    return out


def test_the_mixed_precision_choice_travels_down_a_quantization_chain(tiny_model, tmp_path):
    """SelectiveMixedPrecision's choice is read by every quantizer after it, as Olive's model attribute is: a Rtn
    after a first quantizer still keeps the head at the chosen 8 bits (it came out 4-bit)."""
    import shutil

    source = tmp_path / "chosen"
    shutil.copytree(tiny_model, source)
    (source / "mixed_precision.json").write_text(json.dumps(
        {"algorithm": "k_quant_last", "default": {"bits": 4}, "overrides": {"lm_head": {"bits": 8}}}))
    first = _rtn(source, tmp_path / "first", bits=4, group_size=32)
    assert (first / "mixed_precision.json").is_file()
    second = _rtn(first, tmp_path / "second", bits=4, group_size=32, lm_head=True)
    assert quant_config(second)["overrides"]["lm_head"]["bits"] == 8


def test_quantized_embeddings_untie_a_tied_head_so_pytorch_reads_the_quantized_table(tiny_model, tmp_path):
    """Olive unties when the head or the embeddings are quantized: with embeds alone the config said tied, and
    PyTorch evaluated the float table copied from the head (the ONNX model read the quantized one)."""
    from transformers import AutoModelForCausalLM

    tied = AutoModelForCausalLM.from_pretrained(tiny_model)
    tied.config.tie_word_embeddings = True
    tied.lm_head.weight = tied.model.embed_tokens.weight
    source = tmp_path / "tied"
    tied.save_pretrained(source)
    for f in Path(tiny_model).glob("tokenizer*"):
        (source / f.name).write_bytes(f.read_bytes())
    out = _rtn(source, tmp_path / "q", bits=4, group_size=32, embeds=True)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    loaded = load_causal_lm(out)
    original = tied.model.embed_tokens.weight.detach()
    assert not torch.equal(loaded.model.embed_tokens.weight, original)  # the quantized table
    assert torch.equal(loaded.lm_head.weight, original)  # the float head


def test_group_sizes_are_those_matmulnbits_takes():
    from modelpress.passes.quant_specs import GptqParams, ModuleOverride, RtnParams

    for good in (-1, 16, 32, 128, 4096):
        assert RtnParams(group_size=good).group_size == good
    from modelpress.passes.quant_specs import SelectiveMixedPrecisionParams

    for bad in (0, 8, 48, 96, -2):
        with pytest.raises(ValueError, match="power of two of at least 16"):
            GptqParams(group_size=bad)
        with pytest.raises(ValueError, match="power of two of at least 16"):
            SelectiveMixedPrecisionParams(algorithm="kld_gradient", group_size=bad)
    with pytest.raises(ValueError, match="power of two of at least 16"):
        ModuleOverride(group_size=8)


def test_the_builder_refuses_a_checkpoint_whose_row_blocks_matmulnbits_cannot_take(tmp_path):
    """group_size -1 makes each whole row one block: 96 inputs is no block onnxruntime takes (the model failed to
    load only at evaluation), 256 is."""
    from safetensors.torch import save_file

    from modelpress.quantized import blocks_the_builder_refuses

    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {
        "quant_method": "olive", "bits": 4, "group_size": -1, "symmetric": False, "overrides": {}}}))
    save_file({"a.qweight": torch.zeros(8, 48, dtype=torch.uint8), "b.qweight": torch.zeros(8, 128, dtype=torch.uint8),
               "model.embed_tokens.qweight": torch.zeros(8, 288, dtype=torch.uint8)},  # given to it as float
              str(tmp_path / "model.safetensors"))
    assert blocks_the_builder_refuses(tmp_path) == ["a (blocks of 96)"]


def test_an_olive_checkpoint_stored_without_symmetric_zero_points_reads_as_its_middle_level(tiny_model, tmp_path):
    """Olive writes no qzeros for a symmetric module; modelpress wrote them, and failed on Olive's with a KeyError."""
    from safetensors.torch import load_file, save_file

    from modelpress.quantized import dequantized_state

    out = _rtn(tiny_model, tmp_path / "sym", bits=4, group_size=32, sym=True)
    expected = dequantized_state(out)
    state = load_file(str(out / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.endswith(".qzeros")}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    got = dequantized_state(out)
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    shapes = {k: v.shape for k, v in state.items() if k.endswith(".qzeros")}
    again = _rtn(out, tmp_path / "again", bits=4, group_size=32, sym=True, lm_head=True)  # Rtn keeps them
    assert torch.equal(dequantized_state(again)["model.layers.0.self_attn.qkv_proj.weight"],
                       expected["model.layers.0.self_attn.qkv_proj.weight"])
    kept = load_file(str(again / "model.safetensors"))  # written back in the layout the builder splits right
    assert {k: kept[k].shape for k in shapes} == shapes


def test_an_override_on_one_of_q_k_v_quantizes_the_three_alike(tmp_path):
    """onnxruntime-genai packs a layer's q/k/v into one MatMul and refuses members of different bits: an override
    on q_proj alone made a checkpoint the builder failed on. They share the most precise grid, as in Olive."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from modelpress.passes.quant_specs import RtnParams
    from modelpress.passes.torch_quant import quant_plan

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    params = RtnParams(bits=4, group_size=32, overrides={"model.layers.0.self_attn.q_proj": {"bits": 8},
                                                         "model.layers.1.self_attn.v_proj": {"group_size": 16}})
    plan, config = quant_plan(model, params, tmp_path)
    grids = {name.removeprefix("model.layers."): (g.bits, g.group_size) for name, g in plan.items()
             if name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert grids == {"0.self_attn.q_proj": (8, 32), "0.self_attn.k_proj": (8, 32), "0.self_attn.v_proj": (8, 32),
                     "0.self_attn.o_proj": (4, 32), "1.self_attn.q_proj": (4, 16), "1.self_attn.k_proj": (4, 16),
                     "1.self_attn.v_proj": (4, 16), "1.self_attn.o_proj": (4, 32)}
    assert config["overrides"]["model.layers.0.self_attn.k_proj"] == {"bits": 8}


def test_an_override_naming_a_module_the_pass_leaves_alone_is_an_error(tmp_path):
    """`{"lm_head": {"bits": 8}}` under lm_head false, or a typo: the setting did nothing, without a word."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from modelpress.errors import ModelpressError
    from modelpress.passes.quant_specs import RtnParams
    from modelpress.passes.torch_quant import quant_plan

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ModelpressError, match="'lm_head' is not among the 7 modules this pass quantizes. Set "
                                              "lm_head: true"):
        quant_plan(model, RtnParams(overrides={"lm_head": {"bits": 8}}), tmp_path)
    with pytest.raises(ModelpressError, match="'model.layers.0.mlp.dwon_proj' is not among .* full names, such as "
                                              "'model.layers.0.self_attn.q_proj'"):
        quant_plan(model, RtnParams(overrides={"model.layers.0.mlp.dwon_proj": {"bits": 8}}), tmp_path)
    plan, _ = quant_plan(model, RtnParams(lm_head=True, overrides={"lm_head": {"bits": 8}}), tmp_path)
    assert plan["lm_head"].bits == 8


def test_weights_outside_linear_layers_are_refused_when_most_and_said_otherwise(tmp_path, caplog):
    """transformers 5 keeps a mixture of experts' weights as fused 3-D parameters and GPT-2 its projections in
    Conv1D: Gptq and Rtn quantized only the nn.Linear layers and wrote a checkpoint called quantized that was
    mostly (GPT-2: all) float, without a word."""
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MixtralConfig,
                              MixtralForCausalLM)

    from modelpress.errors import ModelpressError
    from modelpress.passes.quant_specs import RtnParams
    from modelpress.passes.torch_quant import quant_plan

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=32,
                                      bos_token_id=0, eos_token_id=0))
    with pytest.raises(ModelpressError, match=r"GPT2LMHeadModel: 100% of its decoder layers' weights are not in "
                                              r"nn.Linear layers \(transformer.h.0.attn.c_attn.weight"):
        quant_plan(gpt2, RtnParams(), tmp_path)
    moe = MixtralForCausalLM(MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4))
    with pytest.raises(ModelpressError, match=r"MixtralForCausalLM: 89% .*experts.gate_up_proj.*OnnxConversion"):
        quant_plan(moe, RtnParams(), tmp_path)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    with caplog.at_level("WARNING", logger="modelpress"):
        plan, _ = quant_plan(llama, RtnParams(group_size=16), tmp_path)
    assert len(plan) == 14 and "not in nn.Linear" not in caplog.text
    llama.model.layers[0].register_parameter("table", torch.nn.Parameter(torch.zeros(4, 8)))  # a small one: said
    with caplog.at_level("WARNING", logger="modelpress"):
        plan, _ = quant_plan(llama, RtnParams(group_size=16), tmp_path)
    assert len(plan) == 14 and "under 1% of its decoder layers' weights are not in nn.Linear layers " \
        "(model.layers.0.table)" in caplog.text


def test_a_group_size_that_does_not_divide_the_inputs_is_told_one_that_does_and_runs():
    """SmolLM2's 576 inputs against the default 128: the advice was -1, a 576-wide block that MatMulNBits then
    refused (it takes powers of two of at least 16)."""
    with pytest.raises(ValueError, match="576 inputs do not split into groups of 128; choose a group_size that "
                                         "divides it, such as 64 "):
        Grid(4, 128).check("model.layers.0.self_attn.q_proj", 576)
    with pytest.raises(ValueError, match=r"choose a group_size that divides it \(or -1 for one group per row\)"):
        Grid(4, 128).check("x", 200)  # no power of two of at least 16 divides 200
    Grid(4, 64).check("model.layers.0.self_attn.q_proj", 576)
