"""Safe by default: no pickle code runs from a model folder; remote code only when asked."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest

from modelpress.errors import ModelpressError
from modelpress.models import load_causal_lm

pytestmark = pytest.mark.e2e


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # creates the marker file if ever unpickled


def test_a_pickled_checkpoint_cannot_run_code(tiny_model, tmp_path):
    folder = tmp_path / "evil"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"x": Payload(str(marker))}, handle)
    with pytest.raises(Exception):
        load_causal_lm(folder)
    assert not marker.exists()


def test_remote_code_runs_only_when_the_config_asks(tiny_model, tmp_path):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model, folder)
    marker = tmp_path / "ran"
    (folder / "custom_model.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "modelpress_custom"  # unknown to transformers: only the folder's code can build it
    config["auto_map"] = {"AutoConfig": "custom_model.Config", "AutoModelForCausalLM": "custom_model.Missing"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelpressError, match="trust_remote_code: true"):
        load_causal_lm(folder)
    assert not marker.exists()


def test_secrets_in_a_config_never_reach_the_output(tiny_model, tmp_path, capsys):
    from modelpress.cli import main

    config = {"input_model": {"type": "HfModel", "model_path": str(tiny_model),
                              "load_kwargs": {"token": "hf_SECRET123"}},
              "systems": {"aml": {"type": "AzureML", "config": {"hf_token": "hf_SECRET456"}}},
              "passes": {}, "output_dir": str(tmp_path / "out")}
    (tmp_path / "c.json").write_text(json.dumps(config))
    assert main(["run", "--config", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert "token" in err and "SECRET" not in err


def test_names_in_a_config_cannot_make_modelpress_write_elsewhere(tiny_model, tmp_path):
    from conftest import run_cli

    root = tmp_path / "root"
    root.mkdir()
    config = {"input_model": {"type": "HfModel", "model_path": str(tiny_model)},
              "passes": {"../../../escape": {"type": "ModelBuilder", "precision": "int4"}},
              "evaluation": {"enabled": False},
              "cache_dir": str(root / "cache"), "output_dir": str(root / "out")}
    (tmp_path / "c.json").write_text(json.dumps(config))
    run_cli("run", "--config", str(tmp_path / "c.json"), "--no-progress")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "root"]
    assert sorted(p.name for p in root.iterdir()) == ["cache", "out"]
