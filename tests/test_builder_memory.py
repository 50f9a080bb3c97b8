"""The bounded-memory int4/int8 export (modelpress.passes.builder_memory) writes what the plain genai
builder writes: the same nodes, the same initializer bytes, the same genai_config.json, the same logits.

Its memory is measured, not tested, in benchmarks/scale.py.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from modelpress.passes.builder_memory import bounded_builder
from modelpress.runners import GenaiRunner


def _build(src: Path, out: Path, precision: str, options: list[str], bounded: bool) -> dict:
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    from modelpress.passes.model_builder import _quiet_quantizer_logs

    _quiet_quantizer_logs()
    stats: dict = {}
    parsed = parse_extra_options("m", str(src), str(out), precision, "cpu", str(out) + ".cache", options, search=None)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            (bounded_builder(stats) if bounded else contextlib.nullcontext()):
        create_model("m", str(src), str(out), precision, "cpu", str(out) + ".cache", **parsed)
    return stats


def _same_model(plain: Path, bounded: Path) -> None:
    a, b = onnx.load(str(plain / "model.onnx")), onnx.load(str(bounded / "model.onnx"))
    nodes_a = {n.name: n.SerializeToString() for n in a.graph.node}
    nodes_b = {n.name: n.SerializeToString() for n in b.graph.node}
    assert nodes_a == nodes_b  # same operators, names, inputs, outputs and attributes
    inits_a = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    inits_b = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert inits_a.keys() == inits_b.keys()
    assert all(inits_a[k].dtype == inits_b[k].dtype and np.array_equal(inits_a[k], inits_b[k]) for k in inits_a)
    assert [i.SerializeToString() for i in a.graph.input] == [i.SerializeToString() for i in b.graph.input]
    assert [o.SerializeToString() for o in a.graph.output] == [o.SerializeToString() for o in b.graph.output]
    assert (plain / "genai_config.json").read_text() == (bounded / "genai_config.json").read_text()
    ids = list(range(5, 37))
    assert np.array_equal(GenaiRunner(plain).logits(ids), GenaiRunner(bounded).logits(ids))


def _llama(tmp_path_factory, tied: bool) -> Path:
    """A tiny bf16 Llama (SmolLM2's architecture) with grouped KV heads, seeded."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from modelpress.models import load_tokenizer
    from modelpress.tiny import create_tiny_model

    phi = create_tiny_model(tmp_path_factory.mktemp("phi") / "tiny")
    tokenizer = load_tokenizer(phi)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
                         max_position_embeddings=512, dtype="bfloat16")
    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("llama") / "tiny-llama"
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("precision, options", [("int4", []), ("int8", []), ("int4", ["algo_config=rtn"]),
                                                ("int4", ["accuracy_level=4", "is_symmetric=false"])],
                         ids=["int4", "int8", "int4-rtn", "int4-asym-level4"])
def test_bounded_export_of_phi3_equals_the_builders(precision, options, tiny_model, tmp_path):
    _build(tiny_model, tmp_path / "plain", precision, options, bounded=False)
    stats = _build(tiny_model, tmp_path / "bounded", precision, options, bounded=True)
    assert stats.get("bounded") is True and not stats.get("whole_graph_nbits"), stats
    assert stats["streamed"] == 4 * 5 + 1  # qkv, o, gate, up (the builder splits gate_up), down; the LM head
    _same_model(tmp_path / "plain", tmp_path / "bounded")


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_bounded_export_of_a_bf16_llama_equals_the_builders(tied, tmp_path_factory, tmp_path):
    llama = _llama(tmp_path_factory, tied)
    _build(llama, tmp_path / "plain", "int4", [], bounded=False)
    stats = _build(llama, tmp_path / "bounded", "int4", [], bounded=True)
    if tied:  # the builder shares one int4 table between the embedding Gather and the head: its own path
        assert stats == {"bounded": False, "why_not": "per-node overrides or quantized embeddings"}
    else:
        assert stats.get("bounded") is True and stats["streamed"] == 3 * 5 + 1, stats  # 5 MatMuls a layer, the head
    _same_model(tmp_path / "plain", tmp_path / "bounded")


def test_a_checkpoint_stored_in_another_dtype_than_its_config_says_builds_alike(tmp_path_factory, tmp_path):
    """config.json says bfloat16 and the weights are stored in float32: the builder's from_pretrained casts them to
    bfloat16 and the bounded path kept them float32, so the int4 codes differed."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    llama = _llama(tmp_path_factory, tied=False)
    folder = tmp_path / "stored-float32"
    shutil.copytree(llama, folder)
    weights = load_file(str(folder / "model.safetensors"))
    torch.manual_seed(5)  # float32 values that bfloat16 rounds
    save_file({k: v.float() + 1e-4 * torch.randn(v.shape) for k, v in weights.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    _build(folder, tmp_path / "plain", "int4", [], bounded=False)
    stats = _build(folder, tmp_path / "bounded", "int4", [], bounded=True)
    assert stats.get("bounded") is True, stats
    _same_model(tmp_path / "plain", tmp_path / "bounded")


def test_per_node_bits_fall_back_to_the_builders_pass_and_still_match(tiny_model, tmp_path):
    options = ["algo_config=k_quant_mixed"]  # the head and some qkv/down projections at 8 bits
    _build(tiny_model, tmp_path / "plain", "int4", options, bounded=False)
    stats = _build(tiny_model, tmp_path / "bounded", "int4", options, bounded=True)
    assert stats.get("whole_graph_nbits") is True, stats  # the 8-bit nodes go through the builder's own pass
    graph = onnx.load(str(tmp_path / "bounded" / "model.onnx"), load_external_data=False).graph
    assert "/lm_head/MatMul_Q8" in {n.name for n in graph.node}
    _same_model(tmp_path / "plain", tmp_path / "bounded")


def test_what_is_not_bounded_says_why_and_builds_as_before(tiny_model, tmp_path):
    stats = _build(tiny_model, tmp_path / "fp32", "fp32", [], bounded=True)
    assert stats["bounded"] is False and "only int4/int8" in stats["why_not"]


def test_a_checkpoint_whose_names_differ_takes_the_builders_own_path(tiny_model, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "renamed"
    shutil.copytree(tiny_model, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["model.norm.scale"] = tensors.pop("model.norm.weight")  # a name only a key mapping could resolve
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    stats = _build(folder, tmp_path / "out", "int4", [], bounded=True)
    assert stats["bounded"] is False and "model.norm.weight" in stats["why_not"], stats
    assert (tmp_path / "out" / "model.onnx").is_file()


def test_a_tied_head_at_int8_builds_a_working_model_without_alarming_the_user(tmp_path_factory, tmp_path):
    """k_quant_last on a tied model (SmolLM2's shape): the builder's int8 embedding lookup names the head's
    initializers before they are declared, and onnx_ir logs "The model is invalid" while saving. The model
    is complete: genai runs it, and its logits follow the float model's. The warning goes to builder.log."""
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from conftest import run_cli, write_config

    llama = _llama(tmp_path_factory, tied=True)
    config = {"input_model": {"type": "HfModel", "model_path": str(llama)},
              "passes": {"builder": {"type": "ModelBuilder", "precision": "int4", "algo_config": "k_quant_last"}},
              "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")}
    proc = run_cli("run", "--config", str(write_config(tmp_path / "w.json", config)), "--no-progress")
    assert "The model is invalid" not in proc.stdout + proc.stderr
    built = next((tmp_path / "cache").rglob("genai_config.json")).parent
    assert "The model is invalid" in (built / "builder.log").read_text()
    assert json.loads((built / "genai_config.json").read_text())["model"]["type"] == "llama"
    graph = onnx.load(str(built / "model.onnx"), load_external_data=False).graph
    assert "/lm_head/MatMul_Q8" in {n.name for n in graph.node}  # the head kept at 8 bits, shared with the lookup
    ids = list(range(5, 37))
    got = GenaiRunner(built).logits(ids)
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(str(llama), dtype=torch.float32)(
            torch.tensor([ids])).logits[0].numpy()
    assert np.isfinite(got).all() and got.shape == want.shape
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.95
