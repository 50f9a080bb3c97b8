"""Plain ONNX folders (modelpress.onnx_model) and the session-tuning pass that writes ort_session.json.

The model is conftest's seeded 2-layer BERT classifier exported to ONNX.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from modelpress.config.schema import InputModelConfig
from modelpress.context import PassContext
from modelpress.errors import ModelpressError
from modelpress.onnx_model import (
    DATA_FILE,
    MODEL_FILE,
    SESSION_FILE,
    OnnxModel,
    copy_model_folder,
    load_session,
    pad_batch,
    save_onnx,
)
from modelpress.passes.onnx_passes import run_session_tuning
from modelpress.passes.onnx_specs import OrtSessionParamsTuningParams


def _ctx(ref, out, task: str) -> PassContext:
    out.mkdir(parents=True, exist_ok=True)
    return PassContext(ref, out, InputModelConfig(model_path=ref.path, task=task), "cpu", None, show_progress=False)


# --- session tuning ---------------------------------------------------------------------------

def test_session_tuning_writes_settings_that_load_session_honours(bert_onnx, tmp_path):
    params = OrtSessionParamsTuningParams(intra_thread_num_list=[1, 2], opt_level_list=["all", "basic"],
                                          sequence_length=16, warmup_num=1, repeat_test_num=3)
    ctx = _ctx(bert_onnx, tmp_path / "t", "text-classification")
    out = run_session_tuning(ctx, params)
    report = json.loads((out.path / SESSION_FILE).read_text())
    assert len(report["measurements"]) == 2 * 2 * 2
    chosen = report["session_options"]
    assert min(r["latency_ms"]["median"] for r in report["measurements"]) == next(
        r["latency_ms"]["median"] for r in report["measurements"] if r["session_options"] == chosen)
    options = load_session(out.path).get_session_options()
    assert options.intra_op_num_threads == chosen["intra_op_num_threads"]
    assert options.execution_mode.name == {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}[
        chosen["execution_mode"]]
    assert (out.path / MODEL_FILE).read_bytes() == (bert_onnx.path / MODEL_FILE).read_bytes()
    assert "session options" in ctx.notes[-1]


def test_load_session_reads_every_option_from_ort_session_json(bert_onnx, tmp_path):
    folder = tmp_path / "m"
    copy_model_folder(bert_onnx.path, folder)
    for name in (MODEL_FILE, DATA_FILE):
        shutil.copy(bert_onnx.path / name, folder / name)
    settings = {"intra_op_num_threads": 2, "inter_op_num_threads": 3, "execution_mode": "parallel",
                "graph_optimization_level": "basic"}
    (folder / SESSION_FILE).write_text(json.dumps({"session_options": settings}))
    options = load_session(folder).get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 3)
    assert options.execution_mode.name == "ORT_PARALLEL"
    assert options.graph_optimization_level.name == "ORT_ENABLE_BASIC"
    (folder / SESSION_FILE).write_text(json.dumps({"session_options": {"execution_mode": "fast"}}))
    with pytest.raises(ModelpressError, match=SESSION_FILE):
        load_session(folder)


# --- folder helpers ---------------------------------------------------------------------------

def test_copy_model_folder_leaves_out_the_model_and_the_cards(bert_onnx, tmp_path):
    src = tmp_path / "src"
    copy_model_folder(bert_onnx.path, src)
    for name in (MODEL_FILE, DATA_FILE):
        shutil.copy(bert_onnx.path / name, src / name)
    for name in (SESSION_FILE, "modelpress_model.json"):
        (src / name).write_text("{}")
    copy_model_folder(src, tmp_path / "dst")
    copied = {p.name for p in (tmp_path / "dst").iterdir()}
    assert "config.json" in copied and "tokenizer.json" in copied
    assert not copied & {MODEL_FILE, DATA_FILE, SESSION_FILE, "modelpress_model.json"}


@pytest.mark.parametrize("external", [True, False])
def test_save_onnx_writes_one_file_or_model_plus_data(external, bert_onnx, tmp_path):
    import onnx

    save_onnx(onnx.load(str(bert_onnx.path / MODEL_FILE)), tmp_path, external=external)
    assert (tmp_path / DATA_FILE).is_file() == external
    ids, mask = pad_batch([[101, 2023, 102], [101, 102]])
    assert np.array_equal(OnnxModel(tmp_path).logits(ids, mask), OnnxModel(bert_onnx.path).logits(ids, mask))
