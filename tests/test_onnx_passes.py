"""The ONNX passes on tiny real models: export parity, quantizers, fusion, float16 and session tuning.

Models: a seeded 2-layer BERT classifier with the real all-MiniLM-L6-v2 tokenizer, and the
session's tiny Phi-3 (conftest). Tolerances are stated next to each assertion.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CLASSIFY, LABELS, tone_workflow  # the tiny BERT (conftest) and its classes
from modelpress.config.normalize import normalize
from modelpress.config.schema import InputModelConfig
from modelpress.context import DataPlan, PassContext
from modelpress.errors import ModelpressError
from modelpress.models import ModelRef, load_causal_lm, load_classifier, load_tokenizer
from modelpress.onnx_model import (
    DATA_FILE,
    MODEL_FILE,
    OnnxModel,
    load_session,
    model_bytes,
    op_counts,
    pad_batch,
    save_onnx,
)
from modelpress.passes.catalog import CATALOG, HF, ONNX, ONNX_GENAI
from modelpress.passes.onnx_conversion import run_conversion
from modelpress.passes.onnx_passes import (
    calibration_feeds,
    run_dynamic,
    run_float16,
    run_hqq,
    run_rtn,
    run_static,
    run_transformers_optimization,
)
from modelpress.passes.onnx_specs import (
    OnnxBlockWiseRtnQuantizationParams,
    OnnxConversionParams,
    OnnxDynamicQuantizationParams,
    OnnxFloatToFloat16Params,
    OnnxHqqQuantizationParams,
    OnnxStaticQuantizationParams,
    OrtSessionParamsTuningParams,
    OrtTransformersOptimizationParams,
)

FP32_ATOL = 1e-4  # max |logit difference| between onnxruntime fp32 and torch fp32
AGREEMENT = 0.8  # share of argmax predictions a quantized model must share with fp32
# The tiny Phi-3 is random: its next-token logits are nearly flat, so int4 noise flips the argmax
# (measured top-1 agreement 0.3). Its logit vectors still point the same way (measured cosine
# 0.85-0.87 at block 32), where a broken quantizer (wrong packing, scales) gives ~0.
INT4_COSINE = 0.8


def _ctx(ref: ModelRef, out: Path, task: str, data=None) -> PassContext:
    out.mkdir(parents=True, exist_ok=True)
    return PassContext(ref, out, InputModelConfig(model_path=ref.path, task=task), "cpu", data, show_progress=False)


def _run(run, params, ref: ModelRef, out: Path, data=None) -> ModelRef:
    return run(_ctx(ref, out, ref.task.get("task", "text-generation"), data), params)


@pytest.fixture(scope="module")
def phi_onnx(tiny_model, tmp_path_factory) -> ModelRef:
    ref = ModelRef(HF, tiny_model, id="phi", task={"task": "text-generation"})
    return _run(run_conversion, OnnxConversionParams(), ref, tmp_path_factory.mktemp("phi-onnx"))


def _token_batch(vocab: int, rows: int = 32, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Rows of random ids of lengths 4..24, right-padded: the attention mask has zeros."""
    rng = np.random.default_rng(seed)
    return pad_batch([rng.integers(1, vocab, size=int(rng.integers(4, 25))).tolist() for _ in range(rows)])


@pytest.fixture(scope="module")
def bert_batch(bert_folder):
    return _token_batch(json.loads((bert_folder / "config.json").read_text())["vocab_size"])


@pytest.fixture(scope="module")
def phi_batch(tiny_model):
    return _token_batch(json.loads((tiny_model / "config.json").read_text())["vocab_size"], rows=8)


def _agreement(reference: np.ndarray, got: np.ndarray, mask: np.ndarray) -> float:
    """Share of (row, or row and position) argmax predictions that match."""
    same = reference.argmax(-1) == got.argmax(-1)
    return float(same[mask.astype(bool)].mean() if same.ndim == 2 else same.mean())


def _cosine(reference: np.ndarray, got: np.ndarray, mask: np.ndarray) -> float:
    """Mean cosine similarity of the logit vectors at unpadded positions."""
    a, b = reference[mask.astype(bool)], got[mask.astype(bool)]
    return float(np.mean((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)))


def test_every_onnx_pass_is_in_the_catalog():
    for name in ("OnnxConversion", "OnnxBlockWiseRtnQuantization", "OnnxHqqQuantization", "OnnxDynamicQuantization",
                 "OnnxStaticQuantization", "OrtTransformersOptimization", "OnnxFloatToFloat16",
                 "OrtSessionParamsTuning"):
        spec = CATALOG[name]
        assert spec.output_kind(ONNX) == ONNX and spec.needs_data == (name == "OnnxStaticQuantization")
        assert callable(spec.runner())
    assert CATALOG["OnnxBlockWiseRtnQuantization"].search_space()["block_size"] == [32, 128]


# --- conversion -------------------------------------------------------------------------------

def test_classifier_export_matches_torch_with_padding(bert_onnx, bert_folder, bert_batch):
    ids, mask = bert_batch
    assert not mask.all()  # the batch really has padding
    with torch.no_grad():
        expected = load_classifier(bert_folder).eval()(input_ids=torch.tensor(ids),
                                                       attention_mask=torch.tensor(mask)).logits.numpy()
    model = OnnxModel(bert_onnx.path)
    got = model.logits(ids, mask)
    assert model.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    assert got.shape == (len(ids), len(LABELS)) and got.dtype == np.float32
    assert np.abs(got - expected).max() < FP32_ATOL
    # No class takes more than 60% of the rows, so a model that always says one class (a broken
    # quantizer) cannot reach the 80% agreement the quantizer tests ask for.
    assert np.bincount(expected.argmax(-1)).max() <= 0.6 * len(ids)
    assert bert_onnx.kind == ONNX and bert_onnx.task == CLASSIFY
    files = {p.name for p in bert_onnx.path.iterdir()}
    assert {MODEL_FILE, DATA_FILE, "config.json", "tokenizer.json"} <= files
    assert not any(name.endswith(".safetensors") for name in files)


def test_export_has_dynamic_batch_and_sequence_axes(bert_onnx):
    session = load_session(bert_onnx.path)
    assert all(spec.shape == ["batch", "sequence"] and spec.type == "tensor(int64)" for spec in session.get_inputs())
    assert session.get_outputs()[0].name == "logits"


def test_causal_lm_export_matches_torch(phi_onnx, tiny_model, phi_batch):
    ids, mask = phi_batch
    with torch.no_grad():
        expected = load_causal_lm(tiny_model).eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                                                     use_cache=False).logits.numpy()
    got = OnnxModel(phi_onnx.path).logits(ids, mask)
    assert got.shape == expected.shape == (*ids.shape, expected.shape[-1])
    valid = mask.astype(bool)  # logits at padded positions are unused and differ by design
    assert np.abs(got - expected)[valid].max() < FP32_ATOL
    assert (phi_onnx.path / "generation_config.json").is_file()


def test_kv_cache_export_decodes_incrementally(tiny_model, tmp_path):
    ref = ModelRef(HF, tiny_model, id="phi", task={"task": "text-generation"})
    out = _run(run_conversion, OnnxConversionParams(use_kv_cache=True), ref, tmp_path / "kv")
    ids = np.random.default_rng(3).integers(0, 1000, size=(1, 12))
    with torch.no_grad():
        expected = load_causal_lm(tiny_model).eval()(input_ids=torch.tensor(ids), use_cache=False).logits.numpy()
    model = OnnxModel(out.path)
    assert np.abs(model.logits(ids) - expected).max() < FP32_ATOL  # an empty past scores the whole sequence
    session = model.session
    names = [o.name for o in session.get_outputs()]
    empty = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
             for i in session.get_inputs() if i.name.startswith("past_key_values")}
    first = session.run(None, {"input_ids": ids[:, :8], "attention_mask": np.ones((1, 8), np.int64),
                               "position_ids": np.arange(8)[None], **empty})
    past = {n.replace("present", "past_key_values"): v for n, v in zip(names[1:], first[1:])}
    step = session.run(["logits"], {"input_ids": ids[:, 8:], "attention_mask": np.ones((1, 12), np.int64),
                                    "position_ids": np.arange(8, 12)[None], **past})
    assert np.abs(step[0] - expected[:, 8:]).max() < FP32_ATOL
    # a row right-padded in a batch decodes at its own length: without position ids its new tokens sat at the
    # padded width, and its logits differed by up to 4.8 from the row alone
    padded = np.concatenate([ids[:, :8], np.zeros((1, 3), np.int64)], axis=1)
    empty = {k: v for k, v in empty.items()}
    first = session.run(None, {"input_ids": padded, "attention_mask": np.array([[1] * 8 + [0] * 3]),
                               "position_ids": np.array([list(range(8)) + [7, 7, 7]]), **empty})
    past = {n.replace("present", "past_key_values"): v for n, v in zip(names[1:], first[1:])}
    step = session.run(["logits"], {"input_ids": ids[:, 8:9], "attention_mask": np.array([[1] * 8 + [0] * 3 + [1]]),
                                    "position_ids": np.array([[8]]), **past})
    assert np.abs(step[0] - expected[:, 8:9]).max() < FP32_ATOL


def test_kv_cache_export_of_a_sliding_window_model_keeps_the_whole_past(tiny_model, tmp_path):
    """A config with sliding_window (Phi-3-mini: 2047) made the traced cache a sliding one: past the window the
    present came back shorter than past + new and the positions restarted from the cut length."""
    import shutil

    folder = tmp_path / "sliding"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "sliding_window": 6}))
    out = _run(run_conversion, OnnxConversionParams(use_kv_cache=True),
               ModelRef(HF, folder, id="s", task={"task": "text-generation"}), tmp_path / "kv")
    ids = np.random.default_rng(4).integers(0, 1000, size=(1, 12))
    with torch.no_grad():
        expected = load_causal_lm(folder).eval()(input_ids=torch.tensor(ids), use_cache=False).logits.numpy()
    session = OnnxModel(out.path).session
    names = [o.name for o in session.get_outputs()]
    empty = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
             for i in session.get_inputs() if i.name.startswith("past_key_values")}
    first = session.run(None, {"input_ids": ids[:, :8], "attention_mask": np.ones((1, 8), np.int64),
                               "position_ids": np.arange(8)[None], **empty})
    assert first[1].shape[2] == 8  # the whole past, not the window's
    past = {n.replace("present", "past_key_values"): v for n, v in zip(names[1:], first[1:])}
    step = session.run(None, {"input_ids": ids[:, 8:], "attention_mask": np.ones((1, 12), np.int64),
                              "position_ids": np.arange(8, 12)[None], **past})
    assert step[1].shape[2] == 12 and np.abs(step[0] - expected[:, 8:]).max() < FP32_ATOL


def test_kv_cache_is_rejected_for_a_classifier(bert_folder, tmp_path):
    ref = ModelRef(HF, bert_folder, id="bert", task=dict(CLASSIFY))
    with pytest.raises(ModelpressError, match="use_kv_cache"):
        _run(run_conversion, OnnxConversionParams(use_kv_cache=True), ref, tmp_path / "x")


def test_single_file_export_stays_one_file_through_quantization(bert_folder, bert_batch, tmp_path):
    ref = ModelRef(HF, bert_folder, id="bert", task=dict(CLASSIFY))
    single = _run(run_conversion, OnnxConversionParams(save_as_external_data=False), ref, tmp_path / "one")
    assert not (single.path / DATA_FILE).exists()
    out = _run(run_dynamic, OnnxDynamicQuantizationParams(), single, tmp_path / "q")
    assert {p.name for p in out.path.iterdir() if "onnx" in p.name} == {MODEL_FILE}
    ids, mask = bert_batch
    assert OnnxModel(out.path).logits(ids, mask).shape == (len(ids), len(LABELS))


def test_bad_params_are_config_errors():
    with pytest.raises(ValueError, match="target_opset"):
        OnnxConversionParams(target_opset=17)
    with pytest.raises(ValueError, match="block_size"):
        OnnxBlockWiseRtnQuantizationParams(block_size=48)
    with pytest.raises(ValueError, match="intra_thread_num_list"):
        OrtSessionParamsTuningParams(intra_thread_num_list=[-1])
    with pytest.raises(ValueError, match="extra_options.MatMulConstBonly"):
        OnnxDynamicQuantizationParams(extra_options={"MatMulConstBonly": True})


# --- weight-only int4 -------------------------------------------------------------------------

INT4 = [(run_rtn, OnnxBlockWiseRtnQuantizationParams(block_size=32)),
        (run_hqq, OnnxHqqQuantizationParams(block_size=32, accuracy_level=4))]


def test_int4_causal_lm_is_smaller_and_close_to_fp32(phi_onnx, phi_batch, tmp_path):
    # RTN only: HQQ's torch solver takes ~15 s on this model on 2 CPU cores; HQQ is checked on the classifier.
    # MatMuls only: int4 embeddings add their own error on this random model (checked below)
    out = _run(run_rtn, OnnxBlockWiseRtnQuantizationParams(block_size=32, op_types_to_quantize=["MatMul"]), phi_onnx,
               tmp_path / "q")
    ops = op_counts(out.path / MODEL_FILE)
    assert ops.get("MatMulNBits", 0) >= 4 * 4  # at least the four projections of each of the four layers
    assert model_bytes(out.path) < 0.4 * model_bytes(phi_onnx.path)  # fp32 -> int4 + scales
    ids, mask = phi_batch
    fp32, int4 = OnnxModel(phi_onnx.path).logits(ids, mask), OnnxModel(out.path).logits(ids, mask)
    assert not np.array_equal(fp32, int4)
    assert _cosine(fp32, int4, mask) >= INT4_COSINE
    assert out.kind == ONNX and out.task == phi_onnx.task


@pytest.mark.parametrize(("run", "params"), INT4, ids=["rtn", "hqq"])
def test_int4_classifier_agrees_with_fp32(run, params, bert_onnx, bert_batch, tmp_path):
    out = _run(run, params, bert_onnx, tmp_path / "q")
    ids, mask = bert_batch
    fp32, int4 = OnnxModel(bert_onnx.path).logits(ids, mask), OnnxModel(out.path).logits(ids, mask)
    assert op_counts(out.path / MODEL_FILE).get("MatMulNBits", 0) > 0
    assert model_bytes(out.path) < model_bytes(bert_onnx.path)
    assert _agreement(fp32, int4, mask) >= AGREEMENT
    assert out.task == CLASSIFY
    assert _accuracy_levels(out.path) == {params.accuracy_level}  # written on every MatMulNBits, or on none


def _accuracy_levels(folder: Path) -> set:
    import onnx

    nodes = onnx.load(str(folder / MODEL_FILE), load_external_data=False).graph.node
    return {next((a.i for a in n.attribute if a.name == "accuracy_level"), None) for n in nodes
            if n.op_type == "MatMulNBits"}


def test_rtn_keeps_excluded_nodes_in_float(bert_onnx, tmp_path):
    import onnx

    graph = onnx.load(str(bert_onnx.path / MODEL_FILE), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    target = next(n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights)
    params = OnnxBlockWiseRtnQuantizationParams(block_size=32, nodes_to_exclude=[target])
    out = _run(run_rtn, params, bert_onnx, tmp_path / "q")
    assert _node_ops(out.path)[target] == "MatMul"
    assert "MatMulNBits" in _node_ops(out.path).values()


def _node_ops(folder: Path) -> dict[str, str]:
    import onnx

    return {n.name: n.op_type for n in onnx.load(str(folder / MODEL_FILE), load_external_data=False).graph.node}


def test_weight_only_quantizer_that_quantizes_nothing_is_an_error(bert_onnx, tmp_path):
    params = OnnxBlockWiseRtnQuantizationParams(nodes_to_exclude=[
        name for name, op in _node_ops(bert_onnx.path).items() if op == "MatMul"])
    with pytest.raises(ModelpressError, match="no MatMul .* was quantized"):
        _run(run_rtn, params, bert_onnx, tmp_path / "q")


def test_int4_genai_model_loads_and_generates(tiny_model, tmp_path):
    import onnxruntime_genai as og

    from modelpress.passes.catalog import ModelBuilderParams
    from modelpress.passes.model_builder import run_model_builder

    ref = ModelRef(HF, tiny_model, id="phi", task={"task": "text-generation"})
    fp32 = _run(run_model_builder, ModelBuilderParams(precision="fp32"), ref, tmp_path / "fp32")
    fp32.task = {"task": "text-generation"}
    out = _run(run_rtn, OnnxBlockWiseRtnQuantizationParams(block_size=32), fp32, tmp_path / "int4")
    assert out.kind == ONNX_GENAI
    decoder = json.loads((out.path / "genai_config.json").read_text())["model"]["decoder"]["filename"]
    assert op_counts(out.path / decoder).get("MatMulNBits", 0) > 0
    assert model_bytes(out.path, decoder) < 0.4 * model_bytes(fp32.path, decoder)
    model = og.Model(str(out.path))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=20, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([[5, 6, 7, 8]], dtype=np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    assert len(generator.get_sequence(0)) == 20


# --- int8 -------------------------------------------------------------------------------------

def test_dynamic_int8_has_integer_matmuls_and_agrees(bert_onnx, bert_batch, tmp_path):
    out = _run(run_dynamic, OnnxDynamicQuantizationParams(), bert_onnx, tmp_path / "q")
    ops = op_counts(out.path / MODEL_FILE)
    assert ops.get("DynamicQuantizeLinear", 0) > 0 and ops.get("MatMulInteger", 0) > 0
    assert model_bytes(out.path) < 0.5 * model_bytes(bert_onnx.path)  # int8 weights and embeddings
    ids, mask = bert_batch
    fp32, int8 = OnnxModel(bert_onnx.path).logits(ids, mask), OnnxModel(out.path).logits(ids, mask)
    assert not np.array_equal(fp32, int8)
    assert _agreement(fp32, int8, mask) >= AGREEMENT


@pytest.fixture(scope="module")
def calibration_data(bert_folder, tmp_path_factory) -> DataPlan:
    """A real data plan over a small JSONL classification file."""
    folder = tmp_path_factory.mktemp("data")
    rows = [{"text": f"the {a} {b} was {c} today", "label": LABELS[i % 3]}
            for i, (a, b, c) in enumerate((a, b, c) for a in ("old", "new", "red", "tiny") for b in ("car", "film")
                                          for c in ("great", "awful", "fine", "late"))]
    (folder / "calib.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    load = {"data_name": "json", "data_files": ["calib.jsonl"]}
    raw = {"input_model": {"type": "HfModel", "model_path": str(bert_folder), "task": "text-classification"},
           "data_configs": [{"name": "calib", "load_dataset_config": load,
                             "pre_process_data_config": {"text_template": "{text}", "label_col": "label",
                                                         "max_seq_len": 16}}],
           "passes": {}, "engine": {"output_dir": str(folder / "out"), "cache_dir": str(folder / "cache")}}
    return DataPlan(normalize(raw, base_dir=folder), folder / "cache")


def test_static_qdq_calibrates_on_the_data_config(bert_onnx, bert_batch, calibration_data, tmp_path):
    params = OnnxStaticQuantizationParams(data_config="calib", calibration_samples=20)
    ctx = _ctx(bert_onnx, tmp_path / "q", "text-classification", calibration_data)
    feeds = calibration_feeds(ctx, params)
    assert len(feeds) == 20 and all(f["input_ids"].shape[1] <= 16 for f in feeds)
    out = run_static(ctx, params)
    ops = op_counts(out.path / MODEL_FILE)
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    ids, mask = bert_batch
    fp32, int8 = OnnxModel(bert_onnx.path).logits(ids, mask), OnnxModel(out.path).logits(ids, mask)
    assert not np.array_equal(fp32, int8)
    assert _agreement(fp32, int8, mask) >= AGREEMENT
    assert any("calibrated on 20 rows of 'calib'" in note for note in ctx.notes)


@pytest.mark.parametrize("method", ["MinMax", "Entropy"])
def test_static_quantization_calibrates_a_sentence_pair_with_its_segments(method, bert_onnx, bert_folder, tmp_path):
    """Two text columns are a pair for the calibration rows too: the feeds carry the tokenizer's segment ids."""
    from transformers import AutoTokenizer

    folder = tmp_path / "data"
    folder.mkdir()
    rows = [{"a": f"the {w} car", "b": f"it was {v}", "label": LABELS[i % 3]}
            for i, (w, v) in enumerate((w, v) for w in ("old", "new", "red") for v in ("great", "awful"))]
    (folder / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    raw = {"input_model": {"type": "HfModel", "model_path": str(bert_folder), "task": "text-classification"},
           "data_configs": [{"name": "pairs", "load_dataset_config": {"data_name": "json", "data_files": ["pairs.jsonl"]},
                             "pre_process_data_config": {"input_cols": ["a", "b"], "label_col": "label",
                                                         "max_seq_len": 16}}],
           "passes": {}, "engine": {"output_dir": str(folder / "out"), "cache_dir": str(folder / "cache")}}
    plan = DataPlan(normalize(raw, base_dir=folder), folder / "cache")
    ctx = _ctx(bert_onnx, tmp_path / "q", "text-classification", plan)
    feeds = calibration_feeds(ctx, OnnxStaticQuantizationParams(data_config="pairs", calibrate_method=method,
                                                                calibration_samples=6))
    tokenizer = AutoTokenizer.from_pretrained(bert_folder)
    first = tokenizer(rows[0]["a"], rows[0]["b"])
    assert feeds[0]["input_ids"][0].tolist()[:len(first["input_ids"])] == first["input_ids"]
    assert feeds[0]["token_type_ids"][0].tolist()[:len(first["input_ids"])] == first["token_type_ids"]
    assert 1 in first["token_type_ids"]


@pytest.mark.parametrize("method", ["MinMax", "Entropy"])
def test_static_quantization_of_a_causal_lm_calibrates_on_prompt_and_completion(method, phi_onnx, phi_batch,
                                                                                tiny_model, tmp_path):
    plan = DataPlan(normalize(tone_workflow(tiny_model, {}), base_dir=tmp_path), tmp_path / "cache")
    params = OnnxStaticQuantizationParams(data_config="tone", calibration_samples=16, calibrate_method=method)
    ctx = _ctx(phi_onnx, tmp_path / "q", "text-generation", plan)
    first = plan.examples("tone")[0]
    tokenizer = load_tokenizer(phi_onnx.path)
    expected = tokenizer(first.prompt + first.completion, truncation=True, max_length=96)["input_ids"]
    feeds = calibration_feeds(ctx, params)
    assert feeds[0]["input_ids"][0, :len(expected)].tolist() == expected
    lengths = {f["input_ids"].shape[1] for f in feeds}
    if method == "MinMax":
        assert feeds[0]["input_ids"].shape[1] == len(expected) and len(lengths) > 1
    else:  # histogram calibration stacks tensors across rows: the rows are padded to one length
        assert len(lengths) == 1 and feeds[0]["attention_mask"].sum() == len(expected)
    out = run_static(ctx, params)
    ids, mask = phi_batch
    fp32, int8 = OnnxModel(phi_onnx.path).logits(ids, mask), OnnxModel(out.path).logits(ids, mask)
    # measured 0.99 with the MatMul/Gemm default; quantizing every op type gives 0.29 (see op_types_to_quantize)
    assert _cosine(fp32, int8, mask) >= 0.95


def test_static_quantization_names_an_unknown_data_config(bert_onnx, calibration_data, tmp_path):
    params = OnnxStaticQuantizationParams(data_config="calibration")
    with pytest.raises(ModelpressError, match="'calibration'.*calib"):
        _run(run_static, params, bert_onnx, tmp_path / "q", calibration_data)


# --- fusion and float16 -----------------------------------------------------------------------

def test_transformers_optimization_fuses_bert_and_keeps_logits(bert_onnx, bert_batch, tmp_path):
    out = _run(run_transformers_optimization, OrtTransformersOptimizationParams(), bert_onnx, tmp_path / "o")
    ops = op_counts(out.path / MODEL_FILE)
    assert ops.get("SkipLayerNormalization", 0) > 0  # a fusion really happened
    ids, mask = bert_batch
    fp32, fused = OnnxModel(bert_onnx.path).logits(ids, mask), OnnxModel(out.path).logits(ids, mask)
    assert np.abs(fused - fp32).max() < FP32_ATOL


def test_transformers_optimization_falls_back_for_unsupported_model_type(phi_onnx, phi_batch, tmp_path):
    ctx = _ctx(phi_onnx, tmp_path / "o", "text-generation")
    out = run_transformers_optimization(ctx, OrtTransformersOptimizationParams())
    assert "graph optimizations only" in ctx.notes[-1]  # phi3 has no fusions in onnxruntime's optimizer
    ids, mask = phi_batch
    fp32, optimized = OnnxModel(phi_onnx.path).logits(ids, mask), OnnxModel(out.path).logits(ids, mask)
    assert np.abs(optimized - fp32)[mask.astype(bool)].max() < FP32_ATOL


@pytest.mark.parametrize("keep_io_types", [True, False])
def test_float16_runs_on_cpu_and_stays_close(keep_io_types, phi_onnx, phi_batch, tmp_path):
    out = _run(run_float16, OnnxFloatToFloat16Params(keep_io_types=keep_io_types), phi_onnx, tmp_path / "h")
    assert model_bytes(out.path) < 0.6 * model_bytes(phi_onnx.path)
    session = load_session(out.path)
    assert session.get_outputs()[0].type == ("tensor(float)" if keep_io_types else "tensor(float16)")
    ids, mask = phi_batch
    fp32, fp16 = OnnxModel(phi_onnx.path).logits(ids, mask), OnnxModel(out.path).logits(ids, mask)
    valid = mask.astype(bool)
    # float16 keeps ~3 significant digits: allow 1% of the largest logit
    assert np.abs(fp16 - fp32)[valid].max() < 0.01 * np.abs(fp32[valid]).max()
    assert _agreement(fp32, fp16, mask) >= 0.95


def test_float16_overflow_is_an_error(tmp_path):
    from onnx import TensorProto, helper

    # logits = float(input_ids): token ids above 65504 overflow float16 (onnxruntime's CPU runs most float16
    # ops in float32 behind inserted casts, so an overflow needs a Cast to float16 like this one)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["x"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["x", "scale"], ["logits"])], "overflow",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence"])],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [1.0])])
    src = tmp_path / "src"
    src.mkdir()
    save_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), src)
    (src / "config.json").write_text(json.dumps({"vocab_size": 200_000}))
    ref = ModelRef(ONNX, src, id="", task={"task": "text-classification"})
    with pytest.raises(ModelpressError, match="NaN or infinite.*op_block_list"):
        _run(run_float16, OnnxFloatToFloat16Params(), ref, tmp_path / "h")


def test_plain_onnx_passes_refuse_a_genai_folder(tmp_path):
    ref = ModelRef(ONNX_GENAI, tmp_path, id="", task={"task": "text-generation"})
    with pytest.raises(ModelpressError, match="plain ONNX models"):
        _run(run_dynamic, OnnxDynamicQuantizationParams(), ref, tmp_path / "q")


def test_int8_quantizers_write_nothing_into_their_input_folder(bert_onnx, calibration_data, tmp_path, monkeypatch):
    """onnxruntime writes a shape-inferred copy beside the model file it quantizes: that is a folder of the pass's
    own, never the input (the previous step's cache entry)."""
    import onnx

    written: list[Path] = []
    infer = onnx.shape_inference.infer_shapes_path
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes_path",
                        lambda src, out=None, *a, **k: (written.append(Path(out or src)), infer(src, out, *a, **k))[1])
    before = sorted(p.name for p in bert_onnx.path.iterdir())
    _run(run_dynamic, OnnxDynamicQuantizationParams(), bert_onnx, tmp_path / "d" / "model")
    ctx = _ctx(bert_onnx, tmp_path / "s" / "model", "text-classification", calibration_data)
    run_static(ctx, OnnxStaticQuantizationParams(data_config="calib", calibration_samples=4))
    assert written and all(p.parent != bert_onnx.path for p in written)
    assert sorted(p.name for p in bert_onnx.path.iterdir()) == before
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["model"]  # the private copy is gone


def test_float16_takes_olives_include_lists_and_defaults(phi_onnx, tmp_path):
    """Olive's keys as Olive reads them: float16 graph edges by default, and an include list converts only
    what it names (every other operator type stays float32)."""
    import onnx

    assert OnnxFloatToFloat16Params().keep_io_types is False
    with pytest.raises(ValueError, match="op_include_list and op_block_list exclude each other"):
        OnnxFloatToFloat16Params(op_include_list=["MatMul"], op_block_list=["Add"])
    out = _run(run_float16, OnnxFloatToFloat16Params(op_include_list=["MatMul"], keep_io_types=True), phi_onnx,
               tmp_path / "h")
    graph = onnx.load(str(out.path / MODEL_FILE), load_external_data=False).graph
    half = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    matmul_weights = {name for n in graph.node if n.op_type == "MatMul" for name in n.input}
    assert half and half <= matmul_weights  # only MatMul weights became float16


def test_int8_quantizers_preprocess_as_olive_and_go_on_without_it_when_it_fails(bert_onnx, tmp_path, monkeypatch):
    import onnxruntime.quantization.preprocess as preprocess

    calls: list[Path] = []
    real = preprocess.quant_pre_process
    monkeypatch.setattr(preprocess, "quant_pre_process", lambda src, out, **kw: (calls.append(Path(src)),
                                                                                 real(src, out, **kw))[1])
    ctx = _ctx(bert_onnx, tmp_path / "a" / "model", "text-classification")
    run_dynamic(ctx, OnnxDynamicQuantizationParams())
    assert calls == [bert_onnx.path / MODEL_FILE]  # read in place: it writes only its output, in the pass's folder
    assert not any("quant_pre_process" in n for n in ctx.notes)
    run_dynamic(_ctx(bert_onnx, tmp_path / "b" / "model", "text-classification"),
                OnnxDynamicQuantizationParams(quant_preprocess=False))
    assert len(calls) == 1

    def broken(src, out, **kw):
        raise RuntimeError("symbolic shape inference failed")

    monkeypatch.setattr(preprocess, "quant_pre_process", broken)
    ctx = _ctx(bert_onnx, tmp_path / "c" / "model", "text-classification")
    out = run_dynamic(ctx, OnnxDynamicQuantizationParams())
    assert any("quant_pre_process failed (RuntimeError" in n for n in ctx.notes)
    assert op_counts(out.path / MODEL_FILE).get("MatMulInteger", 0) > 0


def test_dynamic_quantization_reads_olives_precision_key():
    assert OnnxDynamicQuantizationParams.model_validate({"precision": "uint8"}).weight_type == "QUInt8"


def test_rtn_quantizes_the_embedding_table_too_by_default_as_olive_does(phi_onnx, phi_batch, tmp_path):
    matmuls = _run(run_rtn, OnnxBlockWiseRtnQuantizationParams(block_size=32, op_types_to_quantize=["MatMul"]),
                   phi_onnx, tmp_path / "m")
    both = _run(run_rtn, OnnxBlockWiseRtnQuantizationParams(block_size=32), phi_onnx, tmp_path / "b")
    assert op_counts(both.path / MODEL_FILE).get("GatherBlockQuantized") == 1
    assert "GatherBlockQuantized" not in op_counts(matmuls.path / MODEL_FILE)
    assert model_bytes(both.path) < model_bytes(matmuls.path)
    ids, mask = phi_batch
    fp32, int4 = OnnxModel(phi_onnx.path).logits(ids, mask), OnnxModel(both.path).logits(ids, mask)
    assert _cosine(fp32, int4, mask) >= 0.7  # the random tiny model, every weight at 4 bits
    ctx = _ctx(phi_onnx, tmp_path / "8", "text-generation")
    eight = run_rtn(ctx, OnnxBlockWiseRtnQuantizationParams(block_size=32, bits=8))
    assert _cosine(fp32, OnnxModel(eight.path).logits(ids, mask), mask) > 0.99
    assert op_counts(eight.path / MODEL_FILE).get("GatherBlockQuantized") == 1  # 8-bit tables too, as in Olive
    assert any("1 embedding Gather(s) -> GatherBlockQuantized" in n for n in ctx.notes)


def test_rtn_of_embeddings_alone_quantizes_them_at_4_bits_and_refuses_to_quantize_nothing(phi_onnx, tmp_path):
    four = _run(run_rtn, OnnxBlockWiseRtnQuantizationParams(block_size=32, op_types_to_quantize=["Gather"]),
                phi_onnx, tmp_path / "4")
    ops = op_counts(four.path / MODEL_FILE)
    assert ops.get("GatherBlockQuantized") == 1 and "MatMulNBits" not in ops  # it wrote the float model unchanged
    with pytest.raises(ModelpressError, match="no embedding Gather in .* was quantized"):
        _run(run_rtn, OnnxBlockWiseRtnQuantizationParams(block_size=32, bits=8, op_types_to_quantize=["Gather"],
                                                         nodes_to_exclude=_gather_names(phi_onnx)),
             phi_onnx, tmp_path / "none")


def test_a_quantizer_on_a_quantized_model_says_it_quantized_nothing(phi_onnx, tmp_path):
    """The count of MatMulNBits included those the input had: RTN on an int4 model quantized nothing, succeeded and
    noted '1 of 0 MatMul nodes -> MatMulNBits'."""
    int4 = _run(run_rtn, OnnxBlockWiseRtnQuantizationParams(block_size=32, op_types_to_quantize=["MatMul"]),
                phi_onnx, tmp_path / "int4")
    assert op_counts(int4.path / MODEL_FILE).get("MatMulNBits", 0) > 0
    with pytest.raises(ModelpressError, match="MatMulNBits already: a quantized model is not quantized again"):
        _run(run_rtn, OnnxBlockWiseRtnQuantizationParams(block_size=32, bits=8, op_types_to_quantize=["MatMul"]),
             int4, tmp_path / "again")


def _gather_names(ref) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(ref.path / MODEL_FILE), load_external_data=False).graph.node
            if n.op_type == "Gather"]


def test_an_8_bit_table_is_quantized_only_where_rows_are_looked_up():
    """GatherBlockQuantized takes 8-bit data along axis 0 only: a Gather along another axis stays float."""
    from onnx import TensorProto, helper, numpy_helper

    from modelpress.passes.surgeons import int8_gathers

    table = numpy_helper.from_array(np.ones((4, 32), dtype=np.float32), "table")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"], name="rows", axis=0),
             helper.make_node("Gather", ["table", "ids"], ["cols"], name="cols", axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("rows", "cols")],
                              [table])
    assert [n.name for n in int8_gathers(helper.make_model(graph), set())] == ["rows"]


@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_8_bit_embeddings_compute_what_the_float_model_does_on_the_dequantized_table(
        phi_onnx, phi_batch, tmp_path, symmetric):
    """onnxruntime's quantizer takes 4-bit Gathers only; modelpress writes the 8-bit GatherBlockQuantized itself
    (symmetric: codes shifted by 128 and no zero points, which the operator defaults to 128)."""
    import shutil

    import onnx
    from onnx import numpy_helper

    out = _run(run_rtn, OnnxBlockWiseRtnQuantizationParams(block_size=16, bits=8, is_symmetric=symmetric,
                                                           op_types_to_quantize=["Gather"]), phi_onnx, tmp_path / "q")
    ops = op_counts(out.path / MODEL_FILE)
    assert ops.get("GatherBlockQuantized") == 1 and "MatMulNBits" not in ops  # Gather alone, as asked
    inits = {t.name: t for t in onnx.load(str(out.path / MODEL_FILE)).graph.initializer}
    [name] = [n.removesuffix("_q8") for n in inits if n.endswith("_q8")]
    codes = numpy_helper.to_array(inits[f"{name}_q8"]).astype(np.float32)
    scales = numpy_helper.to_array(inits[f"{name}_scales"])
    zeros = numpy_helper.to_array(inits[f"{name}_zero_points"]).astype(np.float32) if not symmetric else 128.0
    assert (f"{name}_zero_points" in inits) is not symmetric
    rows, width = codes.shape
    table = ((codes.reshape(rows, -1, 16) - (zeros if symmetric else zeros[..., None])) * scales[..., None])
    fake = tmp_path / "fake"
    shutil.copytree(phi_onnx.path, fake)
    model = onnx.load(str(fake / MODEL_FILE))
    original = next(t for t in model.graph.initializer if t.name == name)
    before = numpy_helper.to_array(original)
    # half a step, but a full one for the value the symmetric range clips (+128 steps does not fit in int8)
    step = np.abs(scales).repeat(16, axis=1) * (1 if symmetric else 0.5)
    assert np.all(np.abs(table.reshape(rows, width) - before) <= step + 1e-6)
    original.CopyFrom(numpy_helper.from_array(table.reshape(rows, width).astype(np.float32), name))
    onnx.save(model, str(fake / MODEL_FILE))
    ids, mask = phi_batch
    np.testing.assert_allclose(OnnxModel(out.path).logits(ids, mask), OnnxModel(fake).logits(ids, mask), atol=1e-4)


def test_rtn_quantizes_only_the_nodes_it_is_given(phi_onnx, tmp_path):
    """onnxruntime's own nodes_to_include adds to its operator types; Olive's key (and modelpress's) restricts."""
    import onnx

    graph = onnx.load(str(phi_onnx.path / MODEL_FILE), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    matmuls = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    out = _run(run_rtn, OnnxBlockWiseRtnQuantizationParams(block_size=32, nodes_to_include=matmuls[:2]), phi_onnx,
               tmp_path / "q")
    ops = op_counts(out.path / MODEL_FILE)
    assert ops.get("MatMulNBits") == 2 and "GatherBlockQuantized" not in ops
    everything = _run(run_rtn, OnnxBlockWiseRtnQuantizationParams(block_size=32, nodes_to_include=[]), phi_onnx,
                      tmp_path / "all")  # an empty list restricts nothing, as in Olive
    assert op_counts(everything.path / MODEL_FILE).get("MatMulNBits", 0) >= len(matmuls)
