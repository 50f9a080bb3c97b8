"""Models and datasets named by Hub id, from a local Hugging Face cache the test builds, network off."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import TONE_DATA, tone_workflow, write_config
from hub_cache import add_repo, folder_files, hub_env

MODEL_ID = "acme/tiny-phi3"
MAIN, OLD = "1" * 40, "2" * 40


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory, tiny_model):
    """A Hugging Face home whose hub cache holds the tiny Phi-3 (main, and an older commit) and a dataset."""
    home = tmp_path_factory.mktemp("hf")
    files = folder_files(tiny_model)
    add_repo(home / "hub", MODEL_ID, files, MAIN)
    older = dict(files, **{"config.json": files["config.json"].replace(b"}", b', "note": "older"}', 1)})
    add_repo(home / "hub", MODEL_ID, older, OLD, branch=None)
    add_repo(home / "hub", "acme/tones", {"data/train.jsonl": TONE_DATA.read_bytes()}, MAIN, repo_type="dataset")
    return home


@pytest.fixture
def hub_cache(hf_home, monkeypatch):
    """This process's huggingface_hub pointed at the test cache, offline."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hf_home / "hub"


def _cli(*args, home, cwd=None):
    return subprocess.run([sys.executable, "-m", "modelpress", *args], cwd=cwd, capture_output=True, text=True,
                          env=hub_env(home))


def test_snapshot_comes_from_the_cache_and_revision_pins_it(hub_cache):
    from modelpress.hub import snapshot

    main = snapshot(MODEL_ID, None)
    assert main == hub_cache / "models--acme--tiny-phi3" / "snapshots" / MAIN
    assert (main / "config.json").is_file() and (main / "model.safetensors").is_file()
    old = snapshot(MODEL_ID, OLD)
    assert old.name == OLD and b"older" in (old / "config.json").read_bytes()


def test_uncached_model_while_offline_is_one_clear_error(hub_cache):
    from modelpress.errors import ModelpressError
    from modelpress.hub import snapshot

    with pytest.raises(ModelpressError, match=r"'acme/missing'.*not in the local Hugging Face cache.*HF_HUB_OFFLINE"
                       r".*hf download acme/missing --revision v2"):
        snapshot("acme/missing", "v2")


def test_hub_model_and_dataset_ids_are_read_from_the_config(hub_cache, tmp_path):
    from modelpress.config import normalize
    from modelpress.context import DataPlan

    raw = tone_workflow(tmp_path, {})
    raw["input_model"] = {"type": "HfModel", "model_path": MODEL_ID, "load_kwargs": {"revision": OLD}}
    raw["data_configs"][0]["load_dataset_config"] = {"data_name": "acme/tones", "split": "train"}
    config = normalize(raw, base_dir=tmp_path)
    assert config.input_model.hub_id == MODEL_ID and config.input_model.model_path is None
    assert config.input_model.revision == OLD
    assert any("is in the local Hugging Face cache" in note for note in config.notes)
    plan = DataPlan(config, tmp_path / "cache")
    plan.resolve_hub_data()
    examples = plan.examples("tone")
    assert len(examples) == 1464 and examples[0].completion in {"joy", "fear", "sadness", "surprise"}


def test_validate_says_whether_the_cache_holds_the_model(hf_home, tmp_path):
    cached = write_config(tmp_path / "cached.json", {**tone_workflow(tmp_path, {}),
                                                     "input_model": {"type": "HfModel", "model_path": MODEL_ID}})
    proc = _cli("validate", str(cached), home=hf_home)
    assert proc.returncode == 0, proc.stderr
    assert "'acme/tiny-phi3' is in the local Hugging Face cache" in proc.stderr
    missing = write_config(tmp_path / "missing.json", {**tone_workflow(tmp_path, {}),
                                                       "input_model": {"type": "HfModel", "model_path": "acme/nope"}})
    proc = _cli("validate", str(missing), home=hf_home)
    assert proc.returncode == 2
    assert "'acme/nope' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in proc.stderr
    assert "hf download acme/nope" in proc.stderr


@pytest.mark.e2e
def test_run_from_a_hub_id_keys_the_cache_by_snapshot_content_and_never_shows_the_token(hf_home, tiny_model,
                                                                                          tmp_path):
    from modelpress.cache import content_id

    passes = {"lora": {"type": "LoRA", "r": 4, "target_modules": ["qkv_proj"], "train_data_config": "tone",
                       "eval_dataset_size": 0.1,
                       "training_args": {"max_steps": 2, "per_device_train_batch_size": 4}}}
    raw = {**tone_workflow(tiny_model, passes), "input_model": {"type": "HfModel", "model_path": MODEL_ID},
           "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
           "evaluation": {"max_examples": 4}}
    config = write_config(tmp_path / "hub.json", raw)
    env = {**hub_env(hf_home), "HF_TOKEN": "hf_NotARealTokenButSecret123"}
    proc = subprocess.run([sys.executable, "-m", "modelpress", "run", "--config", str(config), "--no-progress"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    snapshot = hf_home / "hub" / "models--acme--tiny-phi3" / "snapshots" / MAIN
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["models"]["input"]["model_id"] == content_id(snapshot)
    assert metrics["models"]["input"]["model_id"] == content_id(tiny_model)  # same bytes, same key
    written = proc.stdout + proc.stderr + "".join(p.read_text(errors="ignore") for p in (tmp_path / "out").rglob("*.json"))
    assert "hf_NotARealTokenButSecret123" not in written
    resolved = json.loads((tmp_path / "out" / "config.resolved.json").read_text())
    assert resolved["input_model"]["hub_id"] == MODEL_ID
