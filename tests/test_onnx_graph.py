"""The ONNX graph passes of Olive's LLM recipes, each checked against its input on the tiny Phi-3."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from modelpress.context import PassContext
from modelpress.models import ModelRef
from modelpress.passes.catalog import CATALOG, HF, ModelBuilderParams
from modelpress.runners import GenaiRunner

IDS = list(range(5, 37))


def _ctx(ref: ModelRef, out: Path) -> PassContext:
    from modelpress.config.schema import InputModelConfig

    return PassContext(model=ref, out=out, input_model=InputModelConfig(model_path=out), execution_provider="cpu",
                       data=None, show_progress=False)


def _build(folder: Path, out: Path, precision: str = "fp32") -> ModelRef:
    from modelpress.passes.model_builder import run_model_builder

    return run_model_builder(_ctx(ModelRef(HF, folder, id="m"), out), ModelBuilderParams(precision=precision))


def _run(ref: ModelRef, out: Path, pass_type: str, **params) -> ModelRef:
    spec = CATALOG[pass_type]
    return spec.runner()(_ctx(ref, out), spec.params.model_validate(params))


@pytest.fixture(scope="module")
def tied_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny Phi-3 with an LM head equal to its embedding table, stored twice (not declared tied, so the
    genai builder writes both; for a model declared tied it already shares one)."""
    import torch

    from modelpress.models import load_causal_lm, load_tokenizer

    model = load_causal_lm(tiny_model)
    model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
    out = tmp_path_factory.mktemp("tied") / "model"
    model.save_pretrained(str(out))
    load_tokenizer(tiny_model).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def genai_fp32(tied_model, tmp_path_factory) -> ModelRef:
    return _build(tied_model, tmp_path_factory.mktemp("g") / "fp32")


def _logits(ref: ModelRef) -> np.ndarray:
    return GenaiRunner(ref.path).logits(IDS)


def _ops(ref: ModelRef) -> dict:
    model = onnx.load(str(ref.path / "model.onnx"), load_external_data=False)
    counts: dict = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_tie_word_embeddings_keeps_the_logits_and_drops_the_heads_copy(genai_fp32, tmp_path):
    from modelpress.onnx_model import model_bytes

    tied = _run(genai_fp32, tmp_path / "tied", "GraphSurgeries", surgeries=[{"surgeon": "TieWordEmbeddings"}])
    assert _ops(tied).get("Gemm") == 1
    np.testing.assert_allclose(_logits(tied), _logits(genai_fp32), atol=1e-4)
    saved = model_bytes(genai_fp32.path) - model_bytes(tied.path)
    graph = onnx.load(str(genai_fp32.path / "model.onnx"), load_external_data=False).graph
    table = next(t for t in graph.initializer if t.name == "model.embed_tokens.weight")
    assert saved >= 0.99 * 4 * int(np.prod(table.dims))  # one vocab x hidden float32 matrix


def test_int8_embeddings_stay_close_and_shrink(genai_fp32, tmp_path):
    quantized = _run(genai_fp32, tmp_path / "q8", "GraphSurgeries", surgeries=[{"surgeon": "QuantizeEmbeddingInt8"}])
    assert _ops(quantized).get("GatherBlockQuantized") == 1
    assert _ops(quantized)["Gather"] == _ops(genai_fp32)["Gather"] - 1  # the embedding lookup, not the mask's
    from onnx import numpy_helper

    def table(ref, *names):
        inits = {t.name: t for t in onnx.load(str(ref.path / "model.onnx")).graph.initializer}
        return [numpy_helper.to_array(inits[n]).astype(np.float32) for n in names]

    name = "model.embed_tokens.weight"
    [embed] = table(genai_fp32, name)
    codes, scales, zeros = table(quantized, f"{name}_q8", f"{name}_scales", f"{name}_zero_points")
    vocab, hidden = codes.shape
    blocks = (codes.reshape(vocab, -1, 32) - zeros[..., None]) * scales[..., None]
    assert np.all(np.abs(blocks.reshape(vocab, hidden) - embed) <= scales.repeat(32, axis=1) / 2 + 1e-7)
    # the model with int8 lookups computes exactly what the float model does on the dequantized table
    fake = tmp_path / "fake"
    shutil.copytree(genai_fp32.path, fake)
    model = onnx.load(str(fake / "model.onnx"))
    next(t for t in model.graph.initializer if t.name == name).CopyFrom(
        numpy_helper.from_array(blocks.reshape(vocab, hidden), name))
    onnx.save(model, str(fake / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    np.testing.assert_allclose(_logits(quantized), _logits(ModelRef(genai_fp32.kind, fake, id="f")), atol=1e-5)
    assert os.path.getsize(quantized.path / "model.onnx.data") < os.path.getsize(genai_fp32.path / "model.onnx.data")


def test_rename_surgeon_refuses_an_unknown_input(genai_fp32, tmp_path):
    from modelpress.errors import ModelpressError

    with pytest.raises(ModelpressError, match="no input nope"):
        _run(genai_fp32, tmp_path / "r", "GraphSurgeries",
             surgeries=[{"surgeon": "RenameInputs", "old_names": ["nope"], "new_names": ["x"]}])


def test_peephole_optimizer_keeps_the_logits(genai_fp32, tmp_path):
    cleaned = _run(genai_fp32, tmp_path / "p", "OnnxPeepholeOptimizer")
    np.testing.assert_allclose(_logits(cleaned), _logits(genai_fp32), atol=1e-4)


def test_peephole_without_onnxscript_optimize_runs_no_optimizer(tmp_path):
    """Each step is on its own switch: the reshape fusion (on by default) no longer runs onnxscript's optimizer,
    so a constant the optimizer would fold stays unless onnxscript_optimize is on."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from modelpress.onnx_model import save_onnx

    two = [numpy_helper.from_array(np.full((4,), v, dtype=np.float32), n) for n, v in (("a", 1.0), ("b", 2.0))]
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"]), helper.make_node("Add", ["x", "c"], ["y"])],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], two)
    src = tmp_path / "src"
    src.mkdir()
    save_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), src)
    ref = ModelRef("onnx", src, id="s", task={"task": "text-generation"})
    for switch, nodes in ((False, 2), (True, 1)):
        out = _run(ref, tmp_path / str(switch), "OnnxPeepholeOptimizer", onnxscript_optimize=switch)
        assert len(onnx.load(str(out.path / "model.onnx")).graph.node) == nodes


def test_dynamic_to_fixed_shape_fixes_the_batch_and_keeps_the_logits(genai_fp32, tmp_path):
    from modelpress.passes.onnx_graph import output_dims

    fixed = _run(genai_fp32, tmp_path / "f", "DynamicToFixedShape", dim_param=["batch_size"], dim_value=[1])
    assert output_dims(fixed.path / "model.onnx")["logits"][0] == 1
    np.testing.assert_allclose(_logits(fixed), _logits(genai_fp32), atol=1e-5)
    with pytest.raises(Exception, match="no dynamic dimension nope"):
        _run(genai_fp32, tmp_path / "f2", "DynamicToFixedShape", dim_param=["nope"], dim_value=[1])


def test_a_builder_on_an_adapter_keeps_the_users_own_nodes_to_exclude(tmp_path):
    """The adapter's MatMuls are excluded from int4 with the builder's nodes_to_exclude, which the user's own
    extra_options.nodes_to_exclude was dropped by (the builder keeps a key's last value)."""
    import json

    from modelpress.passes.catalog import HF_ADAPTER, ModelBuilderParams
    from modelpress.passes.model_builder import _source

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    (tmp_path / "m" / "adapter").mkdir(parents=True)
    (tmp_path / "m" / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    ref = ModelRef(HF_ADAPTER, tmp_path / "m", id="a", base=tmp_path / "base")
    params = ModelBuilderParams(precision="int4", extra_options={"nodes_to_exclude": "/lm_head/MatMul"})
    _, extra = _source(_ctx(ref, tmp_path / "out"), params)
    excluded = next(o for o in extra if o.startswith("nodes_to_exclude=")).split("=", 1)[1].split(",")
    assert "/lm_head/MatMul" in excluded and any("lora_A" in n for n in excluded)


def test_kquant_on_a_plain_onnx_graph_imports_the_com_microsoft_domain(tmp_path):
    """onnxruntime's k-quant writes MatMulNBits without its domain's opset import (onnx's checker refuses that)."""
    from onnx import TensorProto, helper, numpy_helper

    from modelpress.passes.catalog import ONNX

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight])
    (tmp_path / "in").mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "in" / "model.onnx"))
    out = _run(ModelRef(ONNX, tmp_path / "in", id="toy"), tmp_path / "out", "OnnxKQuantQuantization", bits=4,
               block_size=32)
    onnx.checker.check_model(str(out.path / "model.onnx"))


def test_kquant_int4_and_int8_quantize_every_matmul_and_int8_is_closer(genai_fp32, tmp_path):
    ref = _logits(genai_fp32)
    errors = {}
    for bits in (4, 8):
        out = _run(genai_fp32, tmp_path / f"k{bits}", "OnnxKQuantQuantization", bits=bits, block_size=32,
                   accuracy_level=0)
        assert _ops(out).get("MatMulNBits", 0) >= 4 * 3 and "MatMul" not in _ops(out)
        imports = {o.domain for o in onnx.load(str(out.path / "model.onnx"), load_external_data=False).opset_import}
        assert "com.microsoft" in imports  # MatMulNBits's domain is imported (onnx's checker asks for it)
        errors[bits] = np.abs(_logits(out) - ref).max()
    rtn = _run(genai_fp32, tmp_path / "rtn", "OnnxBlockWiseRtnQuantization", block_size=32, is_symmetric=False,
               accuracy_level=0)
    errors["rtn"] = np.abs(_logits(rtn) - ref).mean()
    assert 0 < errors[8] < 0.25 * errors[4]  # int8 is far closer (the random tiny model is very sensitive)
    assert np.abs(_logits(_run(genai_fp32, tmp_path / "k4b", "OnnxKQuantQuantization", bits=4, block_size=32,
                               accuracy_level=0)) - ref).mean() <= 1.05 * errors["rtn"]  # k-quant fits scales


@pytest.mark.e2e
def test_olive_graph_pass_config_runs_as_written(tiny_model, tmp_path):
    """tests/olive_configs/graph-passes.json: conversion, peephole, surgeries, k-quant and fixed shapes."""
    import json

    from hub_cache import olive_workspace, run_offline
    from modelpress.onnx_model import OnnxModel
    from modelpress.passes.onnx_graph import output_dims

    work, home = olive_workspace(tmp_path, tiny_model, "graph-passes.json")
    proc = run_offline(work, home, "run", "--config", "config.json", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "target_opset: 17 is read as 18" in proc.stderr
    final = work / "models" / "graph" / "model"
    ops = _ops(ModelRef("onnx", final, id="x"))
    assert ops.get("GatherBlockQuantized") == 1 and ops.get("MatMulNBits", 0) >= 4 * 3 + 1  # every weight, the head too
    assert output_dims(final / "model.onnx")["logits"][0] == 1
    import onnx

    nbits = [n for n in onnx.load(str(final / "model.onnx"), load_external_data=False).graph.node
             if n.op_type == "MatMulNBits"]
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in nbits}
    assert [name for name, b in bits.items() if b == 8] == [next(n.name for n in nbits if "node_linear_16" in n.name)]
    notes = json.dumps(json.loads((work / "models" / "graph" / "run_history.json").read_text())["steps"])
    assert "TieWordEmbeddings: skipped (the head's weight is not the transposed embedding table)" in notes
    ids = np.array([list(range(5, 21))], dtype=np.int64)
    assert np.isfinite(OnnxModel(final).logits(ids, np.ones_like(ids))).all()


def test_k_quant_names_a_node_the_model_lacks(genai_fp32, tmp_path):
    """A per-node setting for a name the graph does not have was silently dropped (a recipe's genai-builder name
    /lm_head/MatMul on a dynamo export, whose nodes are named node_linear_N)."""
    from modelpress.errors import ModelpressError

    with pytest.raises(ModelpressError, match=r"customized_weight_config names '/model/layers.9/mlp/up_proj/MatMul'"
                                              r", which is not a weight MatMul node of the model \(it has"):
        _run(genai_fp32, tmp_path / "k", "OnnxKQuantQuantization", bits=4, block_size=32,
             customized_weight_config={"/lm_head/MatMul": {"bits": 8}, "/model/layers.9/mlp/up_proj/MatMul": {}})


def test_k_quant_per_node_settings_reach_the_quantizer(genai_fp32, tmp_path):
    """Per-node bits and group_size reach onnxruntime (an unknown key is refused: tests/test_config.py)."""
    out = _run(genai_fp32, tmp_path / "k", "OnnxKQuantQuantization", bits=4, block_size=32,
               customized_weight_config={"/lm_head/MatMul": {"bits": 8, "group_size": 64}})
    nodes = [n for n in onnx.load(str(out.path / "model.onnx"), load_external_data=False).graph.node
             if n.op_type == "MatMulNBits"]
    settings = {(n.name.startswith("/lm_head/"),) + tuple(next(a.i for a in n.attribute if a.name == key)
                                                           for key in ("bits", "block_size")) for n in nodes}
    assert settings == {(True, 8, 64), (False, 4, 32)}


def test_renamed_genai_inputs_and_outputs_are_renamed_in_genai_config_too(genai_fp32, tmp_path):
    """onnxruntime-genai feeds the graph by the names genai_config.json maps: they follow the renames, and the
    renamed model generates as before. Surgeon names match in any case, as in Olive."""
    import json

    from modelpress.runners import GenaiRunner

    renamed = _run(genai_fp32, tmp_path / "r", "GraphSurgeries", surgeries=[
        {"surgeon": "renameinputs", "old_names": ["input_ids"], "new_names": ["tokens"]},
        {"surgeon": "RenameOutputs", "old_names": ["logits"], "new_names": ["scores"]}])
    decoder = json.loads((renamed.path / "genai_config.json").read_text())["model"]["decoder"]
    assert decoder["inputs"]["input_ids"] == "tokens" and decoder["outputs"]["logits"] == "scores"
    graph = onnx.load(str(renamed.path / "model.onnx"), load_external_data=False).graph
    assert "tokens" in {i.name for i in graph.input} and "scores" in {o.name for o in graph.output}
    rows = [list(IDS[:8]), list(IDS[3:12])]
    assert GenaiRunner(renamed.path).generate_ids(rows, 5) == GenaiRunner(genai_fp32.path).generate_ids(rows, 5)
    # the completion loss's full pass feeds the graph by the same map (it fed and read the default names)
    np.testing.assert_allclose(GenaiRunner(renamed.path).logits_batch(rows),
                               GenaiRunner(genai_fp32.path).logits_batch(rows), atol=1e-5)


def test_a_plain_onnx_model_with_its_logits_renamed_still_runs(bert_onnx, tmp_path):
    """RenameOutputs on a plain ONNX model passed its own check, and every later evaluation or session tuning asked
    onnxruntime for "logits" and failed ("Invalid Output Name")."""
    from modelpress.onnx_model import OnnxModel

    renamed = _run(bert_onnx, tmp_path / "r", "GraphSurgeries", surgeries=[
        {"surgeon": "RenameOutputs", "old_names": ["logits"], "new_names": ["scores"]}])
    ids = [[101, 2023, 2003, 102], [101, 2204, 102]]
    np.testing.assert_array_equal(OnnxModel(renamed.path).logits(ids), OnnxModel(bert_onnx.path).logits(ids))


def test_renamed_key_value_inputs_rewrite_genai_configs_layer_template(genai_fp32, tmp_path):
    """genai names each layer's cache input from one template ("past_key_values.%d.key"): renaming every layer's
    input the same way rewrites the template, and the model generates as before; renaming some layers only
    is an error that says why."""
    import json

    from modelpress.errors import ModelpressError
    from modelpress.runners import GenaiRunner

    decoder = json.loads((genai_fp32.path / "genai_config.json").read_text())["model"]["decoder"]
    template, layers = decoder["inputs"]["past_key_names"], decoder["num_hidden_layers"]
    old = [template % i for i in range(layers)]
    renamed = _run(genai_fp32, tmp_path / "r", "GraphSurgeries", surgeries=[
        {"surgeon": "RenameInputs", "old_names": old, "new_names": [f"cache_k_{i}_in" for i in range(layers)]}])
    decoder = json.loads((renamed.path / "genai_config.json").read_text())["model"]["decoder"]
    assert decoder["inputs"]["past_key_names"] == "cache_k_%d_in"
    assert decoder["inputs"]["past_value_names"] == "past_key_values.%d.value"  # not renamed
    rows = [list(IDS[:8]), list(IDS[3:12])]
    assert GenaiRunner(renamed.path).generate_ids(rows, 5) == GenaiRunner(genai_fp32.path).generate_ids(rows, 5)
    np.testing.assert_allclose(GenaiRunner(renamed.path).logits_batch(rows),  # renamed cache inputs, fed empty
                               GenaiRunner(genai_fp32.path).logits_batch(rows), atol=1e-5)
    with pytest.raises(ModelpressError, match=r"RenameInputs: onnxruntime-genai names the 'past_key_values.%d.key' "
                                              r"inputs of all \d+ layers with one template"):
        _run(genai_fp32, tmp_path / "p", "GraphSurgeries", surgeries=[
            {"surgeon": "RenameInputs", "old_names": old[:1], "new_names": ["first_key"]}])


def test_a_rename_without_its_names_is_a_config_error():
    from modelpress.passes.onnx_specs import GraphSurgeriesParams

    with pytest.raises(ValueError, match=r"surgeries\[0\]: RenameInputs needs old_names"):
        GraphSurgeriesParams(surgeries=[{"surgeon": "RenameInputs", "new_names": ["x"]}])


def test_surgeries_on_a_graph_whose_initializers_are_inputs_too_leave_no_required_input():
    """Older exporters list each initializer among the graph inputs too (keep_initializers_as_inputs): removing
    or renaming the initializer left that input behind as a required one."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from modelpress.passes.surgeons import SURGEONS

    table = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["embed", "input_ids"], ["h"], name="embed_gather"),
         helper.make_node("ReduceSum", ["h"], ["y"], keepdims=0)], "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 3]),
         helper.make_tensor_value_info("embed", TensorProto.FLOAT, [16, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(table, "embed")])
    ids = np.array([[1, 2, 3]], dtype=np.int64)

    def required(model) -> list[str]:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        session.run(None, {"input_ids": ids})
        return sorted(i.name for i in session.get_inputs())

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    quantized, _ = SURGEONS["QuantizeEmbeddingInt8"](onnx.ModelProto.FromString(model.SerializeToString()))
    assert required(quantized) == ["input_ids"]
    renamed, _ = SURGEONS["RenameInputs"](onnx.ModelProto.FromString(model.SerializeToString()), ["embed"], ["table"])
    assert "table" in {i.name for i in renamed.graph.initializer}
    required(renamed)  # runs with input_ids alone: the renamed input keeps its initializer as its default


@pytest.mark.parametrize("symmetric", [False, True])
def test_a_float16_table_is_coded_with_the_scales_it_stores(symmetric):
    """The codes of a float16 table were computed with float32 scales and the scales then stored rounded to float16:
    reading back was off by more than half a step (0.57 of one, measured by a review). Each value now reads back
    within half a step of the scale as stored."""
    from modelpress.passes.surgeons import _block_int8

    table = (np.random.default_rng(0).standard_normal((64, 96)) * 0.05).astype(np.float16)
    codes, scale, zero = _block_int8(table.astype(np.float32), 32, symmetric, table.dtype)
    assert np.array_equal(scale, scale.astype(np.float16).astype(np.float32))  # what the model stores
    steps = np.repeat(scale, 32, axis=1)
    offset = 128 if symmetric else np.repeat(zero, 32, axis=1).astype(np.float32)
    back = (codes.astype(np.float32) - offset) * steps
    error = np.abs(back - table.astype(np.float32)) / np.abs(steps)
    if symmetric:  # a value of the other sign as large as the extreme lands past code 255: clipped, by design
        inside = (table.astype(np.float32) / steps > -128.5) & (table.astype(np.float32) / steps < 127.5)
        error = error[inside]
    assert error.max() <= 0.5 + 1e-3


def test_olive_recipes_int4_then_shared_int8_table_keeps_one_table_in_a_genai_model(tied_model, genai_fp32, tmp_path):
    """olive-recipes' Qwen3.5 CPU chain: ModelBuilder int4, QuantizeEmbeddingInt8, ShareEmbeddingLmHead. The genai
    model's head is now 8-bit, so its logits come closer to the float model's than the int4 model's, and the file
    holds the table once."""
    from modelpress.onnx_model import model_bytes

    int4 = _build(tied_model, tmp_path / "int4", precision="int4")
    embedded = _run(int4, tmp_path / "embedded", "GraphSurgeries", surgeries=[{"surgeon": "QuantizeEmbeddingInt8"}])
    shared = _run(int4, tmp_path / "shared", "GraphSurgeries",
                  surgeries=[{"surgeon": "QuantizeEmbeddingInt8"}, {"surgeon": "ShareEmbeddingLmHead"}])
    graph = onnx.load(str(shared.path / "model.onnx"), load_external_data=False).graph
    head = next(n for n in graph.node if "logits" in n.output)
    assert head.op_type == "MatMulNBits" and next(a.i for a in head.attribute if a.name == "bits") == 8
    assert next(n for n in graph.node if head.input[1] in n.output).op_type == "Reshape"
    reference, before, after = _logits(genai_fp32), _logits(int4), _logits(shared)
    assert np.abs(after - reference).mean() < np.abs(before - reference).mean()
    assert np.corrcoef(before.ravel(), after.ravel())[0, 1] > 0.99
    vocab, hidden = next(t.dims for t in graph.initializer if t.name.endswith("_q8"))
    assert model_bytes(shared.path) < model_bytes(embedded.path) - vocab * hidden // 2  # the int4 head's codes went
    old_head = next(n for n in onnx.load(str(int4.path / "model.onnx"), load_external_data=False).graph.node
                    if "logits" in n.output)
    assert not set(old_head.input[1:]) & {t.name for t in graph.initializer}


def test_metadata_only_makes_a_genai_folder_of_an_exported_model_with_its_kv_cache(tiny_model, tmp_path):
    """Olive's OnnxConversion (use_kv_cache) -> ModelBuilder metadata_only: the exported graph, copied as it is, runs
    in onnxruntime-genai with the config the builder writes, and gives the PyTorch model's logits and greedy answer,
    a prompt in a padded batch the same as alone (the export took no position ids, so a shorter row decoded at the
    batch's width). Before, metadata_only on a Hugging Face model wrote a folder with no model in it, and on an ONNX
    model was refused."""
    import torch

    from modelpress.config.normalize import normalize
    from modelpress.errors import ConfigError
    from modelpress.models import load_causal_lm
    from modelpress.runners import GenaiRunner

    (tmp_path / "onnx").mkdir()
    (tmp_path / "genai").mkdir()
    exported = _run(ModelRef(HF, tiny_model, id="m"), tmp_path / "onnx", "OnnxConversion", use_kv_cache=True)
    genai = _run(exported, tmp_path / "genai", "ModelBuilder", metadata_only=True)
    assert genai.kind == "onnx-genai" and (genai.path / "genai_config.json").is_file()
    config = json.loads((genai.path / "genai_config.json").read_text())
    assert config["model"]["decoder"]["inputs"]["position_ids"] == "position_ids"
    with torch.no_grad():
        expected = load_causal_lm(tiny_model)(torch.tensor([IDS])).logits[0].numpy()
    runner = GenaiRunner(genai.path)
    np.testing.assert_allclose(runner.logits(IDS), expected, atol=1e-4)
    with torch.no_grad():  # eight greedy steps through the KV cache, against PyTorch's (no end of sequence here)
        greedy = load_causal_lm(tiny_model).generate(torch.tensor([IDS]), max_new_tokens=8, do_sample=False,
                                                     eos_token_id=None)[0, len(IDS):].tolist()
    generated = runner.generate_ids([IDS], 8)[0]
    assert generated == greedy
    longer = list(range(5, 5 + len(IDS) + 7))
    assert runner.generate_ids([IDS, longer], 8)[0] == greedy  # right-padded beside a longer row
    from conftest import tone_workflow

    from modelpress.errors import ModelpressError

    raw = tone_workflow(tiny_model, {"mb": {"type": "ModelBuilder", "metadata_only": True}})
    with pytest.raises(ConfigError, match="passes.mb.metadata_only: writes genai_config.json for an ONNX model"):
        normalize(raw, tmp_path)
    # a graph input genai would not feed (renamed): an error naming it, not a config that leaves it out (a review)
    (tmp_path / "renamed").mkdir()
    (tmp_path / "genai2").mkdir()
    renamed = _run(exported, tmp_path / "renamed", "GraphSurgeries",
                   surgeries=[{"surgeon": "RenameInputs", "old_names": ["attention_mask"], "new_names": ["mask"]}])
    with pytest.raises(ModelpressError, match="the graph takes mask, which onnxruntime-genai would not feed"):
        _run(renamed, tmp_path / "genai2", "ModelBuilder", metadata_only=True)
    # ExtractAdapters after a torch export finds no builder-written LoRA MatMuls: refused when the config is read
    lora = {"type": "LoRA", "train_data_config": "tone", "target_modules": ["qkv_proj"]}
    raw = tone_workflow(tiny_model, {"lora": lora, "c": {"type": "OnnxConversion", "use_kv_cache": True},
                                     "mb": {"type": "ModelBuilder", "metadata_only": True},
                                     "e": {"type": "ExtractAdapters"}})
    with pytest.raises(ConfigError, match="passes.e: ExtractAdapters reads the LoRA MatMuls the genai builder "
                                          "writes, and 'c' exported the model with torch"):
        normalize(raw, tmp_path)


def test_an_adapter_exports_beside_its_base_or_merged_with_the_peft_models_logits(tiny_model, tmp_path):
    """Olive's LoRA -> OnnxConversion: the adapter's layers are nodes of their own (or, merge_adapter_weights true,
    folded into the weights), and the graph computes what the PEFT model does. It was refused."""
    import onnxruntime as ort
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from modelpress.models import ADAPTER_DIR, load_causal_lm
    from modelpress.passes.catalog import HF_ADAPTER

    torch.manual_seed(0)
    peft = get_peft_model(load_causal_lm(tiny_model), LoraConfig(r=4, lora_alpha=8, target_modules=["qkv_proj"],
                                                                  init_lora_weights=False))
    folder = tmp_path / "adapter-model"
    peft.save_pretrained(str(folder / ADAPTER_DIR))
    ids = np.array([IDS], dtype=np.int64)
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(load_causal_lm(tiny_model), str(folder / ADAPTER_DIR)).eval()
        expected = adapted(torch.tensor(ids)).logits[0].numpy()
        plain = load_causal_lm(tiny_model)(torch.tensor(ids)).logits[0].numpy()
    assert np.abs(expected - plain).max() > 1e-2  # the adapter changes the model

    def export(name: str, ref: ModelRef, **params) -> tuple[np.ndarray, int]:
        (tmp_path / name).mkdir()
        out = _run(ref, tmp_path / name, "OnnxConversion", **params)
        session = ort.InferenceSession(str(out.path / "model.onnx"), providers=["CPUExecutionProvider"])
        logits = session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0]
        return logits, _ops(out)["MatMul"]

    adapter = ModelRef(HF_ADAPTER, folder, id="a", base=tiny_model)
    _, base_matmuls = export("base", ModelRef(HF, tiny_model, id="m"))
    unmerged, unmerged_matmuls = export("unmerged", adapter)
    merged, merged_matmuls = export("merged", adapter, merge_adapter_weights=True)
    np.testing.assert_allclose(unmerged, expected, atol=1e-4)
    np.testing.assert_allclose(merged, expected, atol=1e-4)
    layers = load_causal_lm(tiny_model).config.num_hidden_layers
    assert (merged_matmuls, unmerged_matmuls) == (base_matmuls, base_matmuls + 2 * layers)  # lora_A and lora_B


def test_renaming_an_adapter_input_renames_its_weights_in_the_adapter_file(tmp_path):
    """After ExtractAdapters the adapter file is keyed by graph input names: RenameInputs renamed the input and
    left the file's key, which then fed no input."""
    import onnx
    from onnx import TensorProto, helper

    from modelpress.onnx_adapters import read_adapter, write_adapter

    src = tmp_path / "src"
    src.mkdir()
    weight = "model.layers.0.attn.qkv_proj.lora_A.MatMul.weight"
    graph = helper.make_graph([helper.make_node("MatMul", ["x", weight], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2]),
                               helper.make_tensor_value_info(weight, TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src / "model.onnx"))
    write_adapter({weight: np.eye(2, dtype=np.float32)}, src / "adapter_weights.npz")
    out = _run(ModelRef("onnx", src, id="a"), tmp_path / "out", "GraphSurgeries",
               surgeries=[{"surgeon": "RenameInputs", "old_names": [weight], "new_names": ["lora_a_0"]}])
    assert [i.name for i in onnx.load(str(out.path / "model.onnx")).graph.input] == ["x", "lora_a_0"]
    assert list(read_adapter(out.path / "adapter_weights.npz")) == ["lora_a_0"]


def test_bfloat16_lora_weights_are_written_to_and_read_from_an_onnx_adapter(tmp_path):
    """A bf16 genai build's LoRA weights (ModelBuilder precision bf16, then ExtractAdapters) are bfloat16 arrays as
    onnx reads them, which OrtValue.ortvalue_from_numpy refused (and OrtValue.numpy refuses to give back)."""
    import ml_dtypes
    import onnxruntime as ort

    from modelpress.onnx_adapters import read_adapter, write_adapter

    weights = (np.arange(12, dtype=np.float32).reshape(3, 4) / 7).astype(ml_dtypes.bfloat16)
    path = tmp_path / "adapter_weights.onnx_adapter"
    write_adapter({"lora_A": weights, "lora_B": np.ones((4, 3), np.float32)}, path)
    stored = ort.AdapterFormat.read_adapter(str(path)).get_parameters()
    assert stored["lora_A"].data_type() == "tensor(bfloat16)" and stored["lora_A"].shape() == [3, 4]
    back = read_adapter(path)
    assert back["lora_A"].dtype == weights.dtype and np.array_equal(back["lora_A"].view(np.uint16),
                                                                     weights.view(np.uint16))
    assert np.array_equal(back["lora_B"], np.ones((4, 3), np.float32))
    from modelpress.errors import ModelpressError

    for name in ("adapter_weights.npz", "adapter_weights.safetensors"):  # numpy cannot read bfloat16 back
        with pytest.raises(ModelpressError, match="use save_format onnx_adapter"):
            write_adapter({"lora_A": weights}, tmp_path / name)


def test_a_gpu_precision_is_refused_where_the_gpu_provider_fell_back_to_the_cpu(tiny_model, tmp_path):
    """A config naming CUDA and fp16 validated (the provider is resolved when the run starts), then the CUDA provider
    fell back to the CPU with a warning and the builder was asked for an fp16 CPU model, which the config check
    refuses when the CPU is named."""
    from modelpress.errors import ModelpressError

    for options in ({}, {"execution_provider": "cuda"}):
        with pytest.raises(ModelpressError, match="ModelBuilder precision fp16 runs on a GPU, and this machine runs "
                                                  "the cpu execution provider"):
            _run(ModelRef(HF, tiny_model, id="m"), tmp_path / "fp16", "ModelBuilder", precision="fp16", **options)
