"""Models and datasets named by Hub id, from a local Hugging Face cache the test builds, network off."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import TONE_DATA, tone_workflow, write_config
from hub_cache import add_repo, folder_files, hub_env
from modelpress.errors import DataError

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


NOT_FETCHED = {"README.md": b"# card", ".gitattributes": b"*.bin filter=lfs", "pytorch_model.bin": b"pickled"}


def test_a_repo_downloaded_with_file_patterns_is_found_in_the_cache(hub_cache, tiny_model, tmp_path):
    """huggingface_hub keeps a downloaded repo's whole file list and calls a cache lookup incomplete when a listed
    file is missing, unless the lookup names the same patterns as the download: modelpress's do."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    from modelpress.config import normalize
    from modelpress.hub import cached_snapshot, dataset_patterns, model_patterns, snapshot

    add_repo(hub_cache, "acme/listed", folder_files(tiny_model), "3" * 40, not_fetched=NOT_FETCHED)
    add_repo(hub_cache, "acme/listed-tones", {"data/train.jsonl": TONE_DATA.read_bytes(), "README.md": b"---"},
             "3" * 40, repo_type="dataset", not_fetched={"data/big.parquet": b"x" * 64})
    with pytest.raises(LocalEntryNotFoundError):  # what a lookup without the patterns meets
        from huggingface_hub import snapshot_download
        snapshot_download("acme/listed", local_files_only=True)
    folder = snapshot("acme/listed", None, "model", model_patterns(False, None))
    assert folder.name == "3" * 40 and (folder / "model.safetensors").is_file()
    assert cached_snapshot("acme/listed-tones", None, "dataset", dataset_patterns(["data/train.jsonl"], None))
    assert cached_snapshot("acme/listed-tones", None, "dataset", None) is None  # the whole repo is not there
    raw = tone_workflow(tmp_path, {})
    raw["input_model"] = {"type": "HfModel", "model_path": "acme/listed"}
    raw["data_configs"][0]["load_dataset_config"] = {"data_name": "acme/listed-tones", "split": "train",
                                                     "data_files": ["data/train.jsonl"]}
    config = normalize(raw, base_dir=tmp_path)
    notes = " ".join(config.notes)
    assert "'acme/listed' is in the local Hugging Face cache" in notes
    assert "'acme/listed-tones' is in the local Hugging Face cache" in notes


def test_a_snapshot_huggingface_hub_calls_incomplete_is_used_when_it_holds_what_modelpress_reads(hub_cache,
                                                                                                  tiny_model, tmp_path):
    """`hf download org/name config.json model.safetensors tokenizer.json ...` leaves out files the patterns match
    (merges.txt, vocab.json); huggingface_hub then calls the snapshot incomplete, and modelpress said the model was
    not in the cache at all (a review). It now judges by the files it reads."""
    from modelpress.config import normalize
    from modelpress.hub import model_patterns, snapshot

    add_repo(hub_cache, "acme/hand-fetched", folder_files(tiny_model), "4" * 40,
             not_fetched={"merges.txt": b"#version: 0.2", "vocab.json": b"{}"})
    folder = snapshot("acme/hand-fetched", None, "model", model_patterns(False, None),
                      lambda f: [] if (f / "model.safetensors").is_file() else ["model.safetensors"])
    assert folder.name == "4" * 40
    raw = tone_workflow(tmp_path, {})
    raw["input_model"] = {"type": "HfModel", "model_path": "acme/hand-fetched"}
    assert "'acme/hand-fetched' is in the local Hugging Face cache" in " ".join(normalize(raw, base_dir=tmp_path).notes)


def test_a_partial_snapshot_offline_is_an_error_naming_what_it_lacks(hub_cache, tiny_model, tmp_path):
    from modelpress.config import normalize
    from modelpress.errors import ConfigError
    from modelpress.errors import ModelpressError
    from modelpress.hub import missing_model_files, model_patterns, snapshot

    files = folder_files(tiny_model)
    add_repo(hub_cache, "acme/partial", {k: v for k, v in files.items() if not k.endswith(".safetensors")}, "4" * 40)
    with pytest.raises(ModelpressError, match=r"input_model.model_path: model 'acme/partial' is in the local Hugging "
                       r"Face cache .* without model\*\.safetensors and HF_HUB_OFFLINE is set.*hf download acme/partial"):
        snapshot("acme/partial", None, "model", model_patterns(False, None), missing_model_files(None),
                 key="input_model.model_path")
    raw = tone_workflow(tmp_path, {})
    raw["input_model"] = {"type": "HfModel", "model_path": "acme/partial"}
    with pytest.raises(ConfigError, match=r"input_model.model_path.*'acme/partial' is in the local Hugging Face "
                       r"cache without model\*\.safetensors"):
        normalize(raw, base_dir=tmp_path)
    # a sharded model lacking one shard its index names
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    shard = tmp_path / "sharded"
    shard.mkdir()
    (shard / "config.json").write_text("{}")
    (shard / "model.safetensors.index.json").write_text(json.dumps(index))
    (shard / "model-00001-of-00002.safetensors").write_bytes(b"")
    (shard / "tokenizer.json").write_text("{}")
    assert missing_model_files(None)(shard) == ["model-00002-of-00002.safetensors"]
    assert missing_model_files("m.gguf")(shard) == ["m.gguf"]
    only_consolidated = tmp_path / "mistral-like"  # another tool's snapshot: weights transformers does not load
    only_consolidated.mkdir()
    (only_consolidated / "config.json").write_text("{}")
    (only_consolidated / "consolidated.safetensors").write_bytes(b"")
    (only_consolidated / "tokenizer.model").write_bytes(b"")
    assert missing_model_files(None)(only_consolidated) == ["model*.safetensors"]


def test_a_snapshot_without_its_tokenizer_or_its_remote_code_is_partial(hub_cache, tiny_model, tmp_path):
    """Loading the model alone (transformers' from_pretrained) caches config and weights but no tokenizer; with
    trust_remote_code the modules config.json's auto_map names are needed too. The fetch hint names the files."""
    from modelpress.errors import ModelpressError
    from modelpress.hub import missing_model_files, model_patterns, snapshot

    files = {k: v for k, v in folder_files(tiny_model).items() if not k.startswith("tokenizer")}
    add_repo(hub_cache, "acme/no-tokenizer", files, "5" * 40)
    with pytest.raises(ModelpressError, match=r"without a tokenizer \(tokenizer.json or vocab.json or vocab.txt or "
                       r"\*.model or \*.tiktoken\)"
                       r".*hf download acme/no-tokenizer --include \"\*.json\" \"model\*.safetensors\""):
        snapshot("acme/no-tokenizer", None, "model", model_patterns(False, None), missing_model_files(None))
    coded = dict(folder_files(tiny_model))
    config = json.loads(coded["config.json"])
    config["auto_map"] = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM",
                          "AutoTokenizer": ["other/repo--tokenization_y.YTokenizer", None]}
    coded["config.json"] = json.dumps(config).encode()
    coded["configuration_x.py"] = b"# the config class"
    add_repo(hub_cache, "acme/remote-code", coded, "6" * 40)
    folder = hub_cache / "models--acme--remote-code" / "snapshots" / ("6" * 40)
    assert missing_model_files(None, trust_remote_code=True)(folder) == ["modeling_x.py"]
    assert missing_model_files(None)(folder) == []  # without trust_remote_code no module is read
    pruned = tmp_path / "pruned"  # a snapshot whose blobs were pruned: its tokenizer link points at nothing
    pruned.mkdir()
    (pruned / "config.json").write_text("{}")
    (pruned / "model.safetensors").write_bytes(b"")
    (pruned / "tokenizer.model").symlink_to(tmp_path / "blobs" / "gone")
    (pruned / "x.model").mkdir()
    assert missing_model_files(None)(pruned) == ["a tokenizer (tokenizer.json or vocab.json or vocab.txt or *.model "
                                                 "or *.tiktoken)"]
    (pruned / "tokenizer.model").unlink()
    (pruned / "tokenizer.model").write_text("x")
    (pruned / "model.safetensors").unlink()  # pruned weights: a link to nothing is no weights either (a review)
    (pruned / "model.safetensors").symlink_to(tmp_path / "blobs" / "gone-too")
    assert missing_model_files(None)(pruned) == ["model*.safetensors"]
    for only in ("vocab.txt", "spiece.model", "cl100k.tiktoken"):  # BERT's WordPiece, T5's SentencePiece, tiktoken
        other = tmp_path / only.replace(".", "-")
        other.mkdir()
        (other / "config.json").write_text("{}")
        (other / "model.safetensors").write_bytes(b"")
        (other / only).write_text("x")
        assert missing_model_files(None)(other) == [], only
    assert model_patterns(True, "m.Q4.gguf") == ["*.json", "*.jinja", "m.Q4.gguf", "*.py"]  # not the repo's weights


def test_code_another_repo_lends_is_read_from_the_cache_or_named_with_its_fetch(hub_cache, hf_home, tiny_model,
                                                                              tmp_path):
    """An auto_map class in another repo ("acme/code--modeling_x.X"): transformers loads it from that repo, after the
    run went offline. It was neither fetched nor checked: validate said the model needed no network, and the run
    failed inside a pass with transformers' own offline error (a review)."""
    from modelpress.config import normalize
    from modelpress.errors import ModelpressError
    from modelpress.inputs import pin_hub_commit

    files = dict(folder_files(tiny_model))
    config = json.loads(files["config.json"])
    config["auto_map"] = {"AutoModelForCausalLM": "acme/code--modeling_x.XForCausalLM"}
    files["config.json"] = json.dumps(config).encode()
    add_repo(hub_cache, "acme/borrows-code", files, "9" * 40)
    raw = {**tone_workflow(tmp_path, {}), "input_model": {"type": "HfModel", "model_path": "acme/borrows-code",
                                                          "load_kwargs": {"trust_remote_code": True}}}
    path = write_config(tmp_path / "w.json", raw)
    checked = _cli("validate", str(path), home=hf_home)
    assert checked.returncode == 2 and "auto_map names code in 'acme/code', which is not in the local Hugging Face " \
        "cache and HF_HUB_OFFLINE is set" in checked.stderr, checked.stderr
    assert 'hf download acme/code --include "*.py" "*.json"' in checked.stderr
    with pytest.raises(ModelpressError, match=r"its auto_map names acme/code's code\): model 'acme/code' is not in "):
        pin_hub_commit(normalize(raw, base_dir=tmp_path, sources_here=False).input_model)
    add_repo(hub_cache, "acme/code", {"modeling_x.py": b"# the class", "config.json": b"{}"}, "a" * 40)
    checked = _cli("validate", str(path), home=hf_home)
    assert checked.returncode == 0 and "it is used without any network access" in checked.stderr, checked.stderr
    assert pin_hub_commit(normalize(raw, base_dir=tmp_path).input_model).revision == "9" * 40
    del raw["input_model"]["load_kwargs"]  # without trust_remote_code no code is read, and none is asked for
    assert "auto_map" not in _cli("validate", str(write_config(tmp_path / "w.json", raw)), home=hf_home).stderr


def test_a_download_without_safetensors_weights_is_one_clear_error(hub_cache, tmp_path, monkeypatch):
    """A repo that ships only pickled pytorch_model.bin: the download fetches its config and tokenizer, and
    modelpress says why it stops instead of leaving transformers to fail at load time."""
    from huggingface_hub import constants

    import modelpress.hub as hub
    from modelpress.errors import ModelpressError

    fetched = tmp_path / "snapshot"
    fetched.mkdir()
    (fetched / "config.json").write_text("{}")
    (fetched / "tokenizer.json").write_text("{}")
    (fetched / "pytorch_model.bin").write_bytes(b"pickled")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # online: the repo is not cached, so it is fetched
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub, "_download", lambda *args: fetched)  # stands in for the network only
    monkeypatch.setattr(hub, "_repo_files", lambda *args: ["config.json", "tokenizer.json", "pytorch_model.bin"])
    with pytest.raises(ModelpressError, match=r"input_model.model_path: model 'acme/bin-only' was downloaded .* "
                       r"lacks model\*\.safetensors\. The repo has no safetensors weights: modelpress never loads pickled"):
        hub.snapshot("acme/bin-only", None, "model", hub.model_patterns(False, None), hub.missing_model_files(None),
                     key="input_model.model_path")
    # a GGUF repo named without gguf_file: the advice was about safetensors; it names the GGUF files (a review)
    (fetched / "pytorch_model.bin").unlink()
    (fetched / "config.json").unlink()
    monkeypatch.setattr(hub, "_repo_files", lambda *args: ["README.md", "m-Q4_K_M.gguf", "m-Q8_0.gguf"])
    with pytest.raises(ModelpressError, match=r"The repo holds GGUF files \(m-Q4_K_M.gguf, m-Q8_0.gguf\): name one "
                       r"with input_model gguf_file"):
        hub.snapshot("acme/m-GGUF", None, "model", hub.model_patterns(False, None), hub.missing_model_files(None),
                     key="input_model.model_path")


@pytest.mark.parametrize("name", ["acme/my--model", "acme/model.git", "acme/" + "m" * 97])
def test_names_the_hub_refuses_are_read_as_local_paths(hub_cache, tmp_path, name):
    from modelpress.config import normalize
    from modelpress.errors import ConfigError
    from modelpress.hub import is_hub_id

    assert not is_hub_id(name)
    raw = tone_workflow(tmp_path, {})
    raw["input_model"] = {"type": "HfModel", "model_path": name}
    with pytest.raises(ConfigError, match=r"input_model.model_path.*model folder not found"):
        normalize(raw, base_dir=tmp_path)


def test_revision_with_a_local_path_warns_and_a_hub_gguf_path_names_its_two_keys(hub_cache, tiny_model, tmp_path):
    from modelpress.config import normalize
    from modelpress.errors import ConfigError

    raw = tone_workflow(tmp_path, {})
    raw["input_model"] = {"type": "HfModel", "model_path": str(tiny_model), "load_kwargs": {"revision": OLD}}
    warnings = normalize(raw, base_dir=tmp_path).warnings
    assert any(w.startswith("input_model.revision: '" + OLD + "' pins a Hub revision") and "ignored" in w
               for w in warnings), warnings
    raw["input_model"] = {"type": "HfModel", "model_path": "acme/tiny-gguf/tiny.Q4_0.gguf"}
    with pytest.raises(ConfigError, match=r"input_model.model_path: no local file acme/tiny-gguf/tiny.Q4_0.gguf.*"
                                          r"model_path 'acme/tiny-gguf' and gguf_file 'tiny.Q4_0.gguf'"):
        normalize(raw, base_dir=tmp_path)


def test_a_run_is_offline_until_its_session_closes(monkeypatch):
    import os

    from huggingface_hub import constants, is_offline_mode

    from modelpress.hub import go_offline

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delitem(sys.modules, "datasets.config", raising=False)
    restore = go_offline()
    assert is_offline_mode() and os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
    # datasets imported while offline reads the switches as on; closing the session turns them off there too
    late = SimpleNamespace(HF_HUB_OFFLINE=True, HF_DATASETS_OFFLINE=True)
    monkeypatch.setitem(sys.modules, "datasets.config", late)
    restore()
    assert not is_offline_mode() and os.environ["HF_HUB_OFFLINE"] == "0" and "HF_DATASETS_OFFLINE" not in os.environ
    assert late.HF_HUB_OFFLINE is False and late.HF_DATASETS_OFFLINE is False


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
    assert not any("split" in w for w in config.warnings)
    del raw["data_configs"][0]["load_dataset_config"]["split"]  # Olive's default is another split: said
    warnings = normalize(raw, base_dir=tmp_path).warnings
    assert any("split: not given, so modelpress reads the 'train' split of 'acme/tones'" in w for w in warnings)


def test_a_ray_worker_reads_the_driver_s_dataset_commit_and_needs_no_model_source_of_its_own(hub_cache, tmp_path):
    """A worker gets the input model from the storage, and reads a Hub dataset at the commit the driver's cache
    keys were made from, not where its own cache's branch points."""
    from modelpress.config import normalize
    from modelpress.context import DataPlan
    from modelpress.errors import ConfigError

    first = TONE_DATA.read_bytes().splitlines(keepends=True)
    add_repo(hub_cache, "acme/moving", {"data/train.jsonl": b"".join(first[:40])}, "5" * 40, repo_type="dataset")
    add_repo(hub_cache, "acme/moving", {"data/train.jsonl": b"".join(first[:60])}, "6" * 40, repo_type="dataset")
    raw = tone_workflow(tmp_path, {})
    raw["input_model"] = {"type": "HfModel", "model_path": "acme/only-on-the-driver"}
    raw["data_configs"][0]["load_dataset_config"] = {"data_name": "acme/moving", "split": "train"}
    with pytest.raises(ConfigError, match="acme/only-on-the-driver"):
        normalize(raw, base_dir=tmp_path)
    config = normalize(raw, base_dir=tmp_path, sources_here=False)  # as ray_tasks._setup reads the job's config
    plan = DataPlan(config, tmp_path / "cache", tmp_path)
    plan.pin_hub_revisions({"tone": "5" * 40})  # the driver read the dataset before its branch moved
    plan.resolve_hub_data()
    assert plan.hub_revisions() == {"tone": "5" * 40} and len(plan.examples("tone")) == 40
    unpinned = DataPlan(normalize(raw, base_dir=tmp_path, sources_here=False), tmp_path / "cache", tmp_path)
    unpinned.resolve_hub_data()
    assert unpinned.hub_revisions() == {"tone": "6" * 40} and len(unpinned.examples("tone")) == 60


def test_a_run_reads_a_hub_branch_at_the_commit_it_resolved_first(hub_cache, tiny_model, tmp_path):
    """GgufExport reads the input's GGUF file again mid-run, for its metadata: a download that moved the branch
    meanwhile must not hand it another file than the run converted (a review)."""
    from modelpress.config import normalize
    from modelpress.inputs import gguf_source, pin_hub_commit

    add_repo(hub_cache, "acme/moving-gguf", {"m.gguf": b"first", "config.json": b"{}"}, "7" * 40)
    raw = tone_workflow(tmp_path, {})
    raw["input_model"] = {"type": "HfModel", "model_path": "acme/moving-gguf", "gguf_file": "m.gguf"}
    written = normalize(raw, base_dir=tmp_path).input_model
    pinned = pin_hub_commit(written)
    assert (pinned.revision, written.revision) == ("7" * 40, None)
    add_repo(hub_cache, "acme/moving-gguf", {"m.gguf": b"second", "config.json": b"{}"}, "8" * 40)  # main moves
    assert gguf_source(pinned).read_bytes() == b"first"
    assert gguf_source(written).read_bytes() == b"second"  # what GgufExport read before runs pinned the commit
    local = normalize(tone_workflow(tiny_model, {}), base_dir=tmp_path).input_model
    assert pin_hub_commit(local) is local


def test_a_hub_dataset_without_the_split_asked_for_names_the_splits_it_has(hub_cache, tmp_path):
    from modelpress.config import normalize
    from modelpress.context import DataPlan
    from modelpress.errors import DataError

    add_repo(hub_cache, "acme/test-only", {"data/test.jsonl": TONE_DATA.read_bytes()}, "7" * 40, repo_type="dataset")
    raw = tone_workflow(tmp_path, {})
    raw["input_model"] = {"type": "HfModel", "model_path": MODEL_ID}
    raw["data_configs"][0]["load_dataset_config"] = {"data_name": "acme/test-only"}  # split: train by default
    plan = DataPlan(normalize(raw, base_dir=tmp_path), tmp_path / "cache")
    plan.resolve_hub_data()
    with pytest.raises(DataError, match=r"Hub dataset 'acme/test-only': Unknown split \"train\". Should be one of "
                       r"\['test'\]\. Set split to one of them"):
        plan.examples("tone")


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
    from modelpress.hub import model_patterns

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
    read = model_patterns(False, None)  # the files modelpress fetches and reads
    assert metrics["models"]["input"]["model_id"] == content_id(snapshot, only=read)
    assert metrics["models"]["input"]["model_id"] == content_id(tiny_model, only=read)  # same bytes, same key
    written = proc.stdout + proc.stderr + "".join(p.read_text(errors="ignore") for p in (tmp_path / "out").rglob("*.json"))
    assert "hf_NotARealTokenButSecret123" not in written
    resolved = json.loads((tmp_path / "out" / "config.resolved.json").read_text())
    assert resolved["input_model"]["hub_id"] == MODEL_ID
    # the commit the cache's main pointed at is recorded: the config says only "main" (or nothing)
    source = json.loads((tmp_path / "out" / "run_history.json").read_text())["input_model"]
    assert (source["hub_id"], source["commit"], source["revision"]) == (MODEL_ID, MAIN, None)
    assert source["content_id"] == metrics["models"]["input"]["model_id"]
    assert f"input model: {MODEL_ID} at commit {MAIN}" in proc.stderr
    # the adapter's cache entry says how it was prompted, so `modelpress evaluate` can be pointed at it
    [entry] = [card for card in (tmp_path / "cache" / "passes").glob("*/model/modelpress_model.json")]
    task = json.loads(entry.read_text())["task"]
    assert task["text_template"] == raw["data_configs"][0]["pre_process_data_config"]["text_template"]
    assert task["add_bos"] is True and task["data_config"] == "tone"
    # pinned to the commit main points at: the same bytes, so every pass and evaluation is reused
    raw["input_model"]["revision"] = MAIN
    proc = subprocess.run([sys.executable, "-m", "modelpress", "run", "--config", str(write_config(config, raw)),
                           "--no-progress"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    steps = json.loads((tmp_path / "out" / "run_history.json").read_text())["steps"]
    assert [s["cache"] for s in steps] == ["hit"] * len(steps), steps


def test_a_hub_snapshot_is_keyed_by_the_files_modelpress_fetches_and_reads(tmp_path):
    """Files another tool adds to a snapshot (a README, a checkpoint folder, Mistral's consolidated weights) neither
    match the download patterns nor change the input model's key; a weight that changes does."""
    from modelpress.cache import content_id
    from modelpress.hub import model_patterns

    read = model_patterns(False, None)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    before = content_id(tmp_path, only=read)
    for extra in ("README.md", "checkpoint-500/model.safetensors", "consolidated.safetensors", "pytorch_model.bin"):
        (tmp_path / extra).parent.mkdir(exist_ok=True)
        (tmp_path / extra).write_bytes(b"added later")
    assert content_id(tmp_path, only=read) == before != content_id(tmp_path)
    # a local folder: `hf download --local-dir` rewrites timestamps under .cache/ on every check, a clone has .git/
    everything = content_id(tmp_path, model=True)
    for hidden in (".cache/huggingface/download/model.safetensors.metadata", ".git/index", ".DS_Store"):
        (tmp_path / hidden).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / hidden).write_text("1733400000.123")
    assert content_id(tmp_path, model=True) == everything
    assert content_id(tmp_path) != content_id(tmp_path, model=True)  # other folders (lm-eval tasks) count them
    tasks = content_id(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "utils.cpython-311.pyc").write_bytes(b"bytecode lm-eval's import wrote")
    assert content_id(tmp_path) == tasks  # but not what a tool writes there by itself
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    assert content_id(tmp_path, only=read) != before


MOODS_CARD = b"""---
configs:
- config_name: tones
  data_files:
  - split: train
    path: tones/*.jsonl
- config_name: short
  data_files:
  - split: train
    path: short/**/*.jsonl
- config_name: big
  data_files: big/data.jsonl
---
# Moods
"""
SHORT_ROWS = b'{"phrase": "we won!", "tone": "joy"}\n{"phrase": "the lights went out", "tone": "fear"}\n'


def test_a_dataset_subset_is_fetched_as_its_card_names_it(hf_home, hub_cache, tmp_path):
    """A subset named without data_files asks the cache (and a download) for the card and the files `datasets`
    reads for that subset (its own, and the first config's, from which it infers the format), so a cache
    holding those serves it offline and other subsets are neither needed nor fetched. huggingface_hub itself,
    asked for the whole repo, calls that cache incomplete."""
    from modelpress.config import normalize
    from modelpress.context import DataPlan
    from modelpress.hub import cached_snapshot, dataset_files

    repo = "acme/moods"
    add_repo(hub_cache, repo, {"README.md": MOODS_CARD, "tones/train.jsonl": TONE_DATA.read_bytes(),
                               "short/2026/train.jsonl": SHORT_ROWS}, MAIN,
             repo_type="dataset", not_fetched={"big/data.jsonl": b'{"phrase": "x", "tone": "joy"}\n'})
    for subset, rows in (("tones", 1464), ("short", 2)):
        raw = {**tone_workflow(tmp_path, {}), "input_model": {"type": "HfModel", "model_path": MODEL_ID}}
        raw["data_configs"][0]["load_dataset_config"] = {"data_name": repo, "subset": subset, "split": "train"}
        checked = _cli("validate", str(write_config(tmp_path / "w.json", raw)), home=hf_home)
        assert checked.returncode == 0, checked.stderr
        assert f"Hub dataset '{repo}' is in the local Hugging Face cache" in checked.stderr, checked.stderr
        plan = DataPlan(normalize(raw, base_dir=tmp_path), tmp_path / "cache")
        plan.resolve_hub_data()
        assert len(plan.examples("tone")) == rows
    assert dataset_files(repo, None, [], None, "big", fetch=False) == ["big/data.jsonl", "README.md", "tones/*.jsonl"]
    assert dataset_files(repo, None, [], None, "short", fetch=False) == ["short/**/*.jsonl", "short/*.jsonl",
                                                                         "README.md", "tones/*.jsonl"]
    # a subset the card does not name is a mistake, said before anything is fetched (it fetched the whole repo)
    with pytest.raises(DataError, match=r"subset 'tonez' is not one of the dataset's subsets \(tones, short, big\)"):
        dataset_files(repo, None, [], None, "tonez", fetch=False)
    raw["data_configs"][0]["load_dataset_config"]["subset"] = "tonez"
    checked = _cli("validate", str(write_config(tmp_path / "w.json", raw)), home=hf_home)
    assert checked.returncode == 2 and "load_dataset_config.subset: subset 'tonez' is not one" in checked.stderr
    assert cached_snapshot(repo, None, "dataset") is None


def test_hf_datasets_offline_alone_keeps_hub_datasets_offline_and_the_hint_names_their_files(hf_home, tmp_path):
    """modelpress downloads datasets itself (huggingface_hub), which reads HF_HUB_OFFLINE alone: a user who set
    datasets' own HF_DATASETS_OFFLINE got downloads; validate's hint fetched the whole repo."""
    raw = tone_workflow(tmp_path, {})
    raw["data_configs"][0]["load_dataset_config"] = {"data_name": "acme/not-here", "data_files": ["train.jsonl"],
                                                     "split": "train"}
    env = {**hub_env(hf_home), "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "1"}
    checked = subprocess.run([sys.executable, "-m", "modelpress", "validate", str(write_config(tmp_path / "w.json",
                              raw))], capture_output=True, text=True, env=env)
    assert checked.returncode == 2, checked.stderr
    assert "is not in the local Hugging Face cache and HF_DATASETS_OFFLINE is set" in \
        checked.stderr and '--include "train.jsonl" "README.md"' in checked.stderr, checked.stderr
    assert "unset HF_DATASETS_OFFLINE so" in checked.stderr
    # each switch in force is named, as the libraries read them: TRANSFORMERS_OFFLINE where HF_HUB_OFFLINE is unset
    env = {k: v for k, v in hub_env(hf_home).items() if k != "HF_HUB_OFFLINE"}
    checked = subprocess.run([sys.executable, "-m", "modelpress", "validate", str(tmp_path / "w.json")],
                             capture_output=True, text=True, env={**env, "TRANSFORMERS_OFFLINE": "1"})
    assert "cache and TRANSFORMERS_OFFLINE and HF_DATASETS_OFFLINE are set" in checked.stderr, checked.stderr
    assert "unset TRANSFORMERS_OFFLINE and HF_DATASETS_OFFLINE so" in checked.stderr
    raw = {**tone_workflow(tmp_path, {}), "input_model": {"type": "HfModel", "model_path": "acme/no-such-model"}}
    env = {**env, "TRANSFORMERS_OFFLINE": "1"}
    checked = subprocess.run([sys.executable, "-m", "modelpress", "validate", str(write_config(tmp_path / "m.json",
                              raw))], capture_output=True, text=True, env=env)
    assert "'acme/no-such-model' is not in the local Hugging Face cache and TRANSFORMERS_OFFLINE is set" in \
        checked.stderr and "unset TRANSFORMERS_OFFLINE so" in checked.stderr, checked.stderr
    checked = subprocess.run([sys.executable, "-m", "modelpress", "validate", str(tmp_path / "m.json")],
                             capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"})
    assert "unset HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE so" in checked.stderr, checked.stderr  # both keep it off


def test_a_dataset_snapshot_datasets_filled_in_part_is_not_taken_as_whole(hf_home, hub_cache, tmp_path):
    """datasets' own downloads leave no list of the repo's files, so huggingface_hub calls any snapshot folder they
    made complete: a subset never downloaded was read from it (datasets failed) and validate said it was cached."""
    from modelpress.config import normalize
    from modelpress.context import DataPlan
    from modelpress.errors import ModelpressError

    card = b"---\nconfigs:\n- config_name: en\n  data_files: en/*.jsonl\n- config_name: fr\n  data_files: fr/*.jsonl\n---\n"
    add_repo(hub_cache, "acme/langs", {"README.md": card, "en/train.jsonl": SHORT_ROWS}, "6" * 40,
             repo_type="dataset")  # no tree cache: as load_dataset("acme/langs", "en") leaves it
    raw = {**tone_workflow(tmp_path, {}), "input_model": {"type": "HfModel", "model_path": MODEL_ID}}
    raw["data_configs"][0]["load_dataset_config"] = {"data_name": "acme/langs", "subset": "fr", "split": "train"}
    checked = _cli("validate", str(write_config(tmp_path / "w.json", raw)), home=hf_home)
    assert checked.returncode == 2 and "acme/langs' is in the local Hugging Face cache without fr/*.jsonl" in \
        checked.stderr, checked.stderr
    plan = DataPlan(normalize(raw, base_dir=tmp_path, sources_here=False), tmp_path / "cache")
    with pytest.raises(ModelpressError, match="without fr/\\*.jsonl and HF_HUB_OFFLINE and HF_DATASETS_OFFLINE are set"):
        plan.resolve_hub_data()
    raw["data_configs"][0]["load_dataset_config"]["subset"] = "en"  # the subset that is there: read
    plan = DataPlan(normalize(raw, base_dir=tmp_path), tmp_path / "cache")
    plan.resolve_hub_data()
    assert len(plan.examples("tone")) == 2


def test_an_uncached_subset_offline_is_told_to_fetch_the_repo_as_validate_tells_it(hub_cache, tmp_path):
    """Offline with no card cached, the run's hint fetched the card alone (a second error followed); validate's named
    the repo: both name the repo now (a review)."""
    from modelpress.config import normalize
    from modelpress.context import DataPlan
    from modelpress.errors import ModelpressError

    raw = {**tone_workflow(tmp_path, {}), "input_model": {"type": "HfModel", "model_path": MODEL_ID}}
    raw["data_configs"][0]["load_dataset_config"] = {"data_name": "acme/absent", "subset": "fr", "split": "train"}
    plan = DataPlan(normalize(raw, base_dir=tmp_path, sources_here=False), tmp_path / "cache")
    with pytest.raises(ModelpressError, match=r"dataset 'acme/absent' is not in the local Hugging Face cache") as err:
        plan.resolve_hub_data()
    assert "`hf download acme/absent --repo-type dataset` and copy" in str(err.value), str(err.value)


def test_a_subsets_nested_files_are_asked_for_with_and_without_folders_between(tmp_path):
    """A card's `data/**/train-*.parquet` was asked for as `data/train-*.parquet` alone, which huggingface_hub's
    fnmatch filter does not match to data/2024/train-0.parquet: nested files were neither fetched nor required."""
    from fnmatch import fnmatch

    from modelpress.hub import subset_patterns

    (tmp_path / "README.md").write_text("---\nconfigs:\n- config_name: years\n  data_files: data/**/train-*.parquet\n"
                                        "---\n")
    patterns = subset_patterns(tmp_path, "years")
    for path in ("data/2024/train-0.parquet", "data/train-0.parquet"):
        assert any(fnmatch(path, p) for p in patterns), (path, patterns)


def test_a_hub_dataset_given_by_split_reads_the_split_asked_for(hub_cache, tmp_path):
    """data_files as {split: files} with split 'validation': the split's files were passed on as a list, which
    datasets calls 'train', and reading them failed with "Unknown split 'validation'"."""
    from modelpress.config import normalize
    from modelpress.context import DataPlan

    rows = TONE_DATA.read_bytes().splitlines(keepends=True)
    add_repo(hub_cache, "acme/by-split", {"tr.jsonl": b"".join(rows[:30]), "va.jsonl": b"".join(rows[30:42])},
             "8" * 40, repo_type="dataset")
    raw = tone_workflow(tmp_path, {})
    raw["input_model"] = {"type": "HfModel", "model_path": MODEL_ID}
    raw["data_configs"][0]["load_dataset_config"] = {
        "data_name": "acme/by-split", "data_files": {"train": "tr.jsonl", "validation": "va.jsonl"},
        "split": "validation[:10]"}
    plan = DataPlan(normalize(raw, base_dir=tmp_path), tmp_path / "cache")
    plan.resolve_hub_data()
    assert len(plan.examples("tone")) == 10


def test_a_double_star_pattern_fetches_what_datasets_reads():
    """`data/**/*.parquet` matches data/a.parquet in datasets, not in the download filter: those rows were never
    downloaded, and a cache filled otherwise later gave other rows under the same key."""
    from huggingface_hub.utils import filter_repo_objects

    from modelpress.hub import dataset_patterns

    patterns = dataset_patterns(["data/**/*.parquet"], None)
    fetched = set(filter_repo_objects(["data/a.parquet", "data/sub/b.parquet", "other/c.parquet", "README.md"],
                                      allow_patterns=patterns))
    assert fetched == {"data/a.parquet", "data/sub/b.parquet", "README.md"}


def test_a_hub_datasets_fingerprint_is_its_commit_however_the_revision_is_written(tmp_path):
    from modelpress.config.schema import DataConfig
    from modelpress.data_files import data_fingerprint

    snapshot = tmp_path / ("9" * 40)
    prints = {data_fingerprint(DataConfig(name="d", hub_id="acme/x", revision=rev, text_template="{a}"), snapshot)
              for rev in (None, "main", "9" * 40)}
    assert len(prints) == 1


def test_a_hub_dataset_that_does_not_parse_says_so_without_a_format_it_never_had(hub_cache, tmp_path):
    from modelpress.config import normalize
    from modelpress.context import DataPlan
    from modelpress.errors import DataError

    add_repo(hub_cache, "acme/broken", {"data/train.jsonl": b'{"phrase": "a", "tone": "joy"}\n{"phrase" "b"}\n'},
             "a" * 40, repo_type="dataset")
    raw = tone_workflow(tmp_path, {})
    raw["input_model"] = {"type": "HfModel", "model_path": MODEL_ID}
    raw["data_configs"][0]["load_dataset_config"] = {"data_name": "acme/broken", "split": "train"}
    plan = DataPlan(normalize(raw, base_dir=tmp_path), tmp_path / "cache")
    plan.resolve_hub_data()
    with pytest.raises(DataError, match="datasets cannot read this Hub dataset's files") as err:
        plan.examples("tone")
    assert "as None" not in str(err.value)
