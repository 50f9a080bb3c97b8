"""The Phi-3 cookbook's own config (`phrase-classification.json`) runs as written: only its data path is
changed, and `microsoft/Phi-3-mini-4k-instruct` is served from a local Hugging Face cache that holds the
tiny Phi-3 under that id."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import EXAMPLE
from hub_cache import add_repo, folder_files, hub_env

pytestmark = pytest.mark.e2e
PHI3 = "microsoft/Phi-3-mini-4k-instruct"


@pytest.fixture(scope="module")
def cookbook_run(tmp_path_factory, tiny_model):
    home = tmp_path_factory.mktemp("hf")
    add_repo(home / "hub", PHI3, folder_files(tiny_model), "3" * 40)
    work = tmp_path_factory.mktemp("cookbook")
    shutil.copy(EXAMPLE / "cookbook-config.json", work / "phrase-classification.json")
    (work / "data").symlink_to(EXAMPLE / "data")
    validate = subprocess.run([sys.executable, "-m", "modelpress", "validate", "phrase-classification.json"],
                              cwd=work, capture_output=True, text=True, env=hub_env(home))
    run = subprocess.run([sys.executable, "-m", "modelpress", "run", "--config", "phrase-classification.json",
                          "--no-progress"], cwd=work, capture_output=True, text=True, env=hub_env(home))
    return work, validate, run


def test_cookbook_config_validates_as_written(cookbook_run):
    _, validate, _ = cookbook_run
    assert validate.returncode == 0, validate.stderr
    assert "valid (olive-0.5 schema): lora (LoRA) -> merge (MergeAdapterWeights) -> mb (ModelBuilder)" in validate.stdout
    assert f"'{PHI3}' is in the local Hugging Face cache" in validate.stderr


def test_cookbook_config_runs_to_an_int4_genai_model_on_the_cpu(cookbook_run):
    import onnxruntime_genai as og

    work, _, run = cookbook_run
    assert run.returncode == 0, run.stderr[-3000:]
    model = work / "models" / "model"
    og.Model(str(model))
    card = json.loads((model / "modelpress_model.json").read_text())
    assert card["kind"] == "onnx-genai"
    assert card["task"]["text_template"] == "<|user|>\n{phrase}<|end|>\n<|assistant|>\n{tone}<|end|>"
    # the GPU system falls back to the CPU with one warning
    assert run.stderr.count("CUDAExecutionProvider is not available on this machine") == 1
    steps = json.loads((work / "models" / "run_history.json").read_text())["steps"]
    lora = next(s for s in steps if s["pass"] == "lora")
    assert any("trained 150 steps" in note for note in lora["notes"])
    final = json.loads((work / "models" / "metrics.json").read_text())["models"]["final"]
    assert final["model_kind"] == "onnx-genai" and final["label_column"] == "tone"
    assert "eval split" in final["eval_data"] and final["examples"] == 343  # 30% of the 1,143 distinct phrases
