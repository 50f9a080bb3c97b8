"""A Ray system's keys are validated up front, with the key path and the fix; tokens in env_vars are not saved."""

from __future__ import annotations

import json

import pytest

from conftest import TONE_DATA, tone_workflow
from modelpress.config.normalize import normalize
from modelpress.errors import ConfigError, ModelpressError

MODEL = None


@pytest.fixture(autouse=True)
def _model(tiny_model):
    global MODEL
    MODEL = tiny_model


def _raw(tmp_path, ray: dict, **top) -> dict:
    lora = {"type": "LoRA", "train_data_config": "tone", "target_modules": ["qkv_proj"]}
    return tone_workflow(MODEL, {"lora": lora, "merge": {"type": "MergeAdapterWeights"}},
                         systems={"cluster": {"type": "Ray", **ray}, "here": {"type": "LocalSystem"}},
                         host="cluster", cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "out"), **top)


def _problems(tmp_path, raw) -> str:
    with pytest.raises(ConfigError) as err:
        normalize(raw, tmp_path)
    return str(err.value)


@pytest.mark.parametrize("ray, expected", [
    ({"address": "not an address"}, "systems.cluster.address: found 'not an address'"),
    ({"storage": "nosuchproto://bucket/x"}, "systems.cluster.storage: fsspec knows no protocol 'nosuchproto'"),
    ({"pass_resources": {"lroa": {"num_cpus": 2}}}, "systems.cluster.pass_resources.lroa: no pass has this name. "
                                                    "Did you mean 'lora'?"),
    ({"num_gpus": -1}, "systems.cluster.num_gpus"),
    ({"max_concurrency": 0}, "systems.cluster.max_concurrency"),
    ({"timeout": 0}, "systems.cluster.timeout"),
    ({"max_retry": 2}, "systems.cluster.max_retry"),
])
def test_bad_ray_keys_are_config_errors_naming_the_key(tmp_path, ray, expected):
    assert expected in _problems(tmp_path, _raw(tmp_path, ray))


def test_a_pass_host_must_name_a_system_and_one_ray_system_per_run(tmp_path):
    raw = _raw(tmp_path, {})
    raw["passes"]["merge"]["host"] = "clustr"
    assert "passes.merge.host: no system named 'clustr' is defined. Did you mean 'cluster'?" in _problems(tmp_path, raw)
    raw = _raw(tmp_path, {})
    raw["systems"]["other"] = {"type": "Ray", "address": "auto"}
    raw["target"] = "other"
    from modelpress.engine import Session

    with pytest.raises(ModelpressError, match="names 2 Ray systems"):
        Session.start(normalize(raw, tmp_path), show_progress=False)


def test_ray_system_keys_resolve_and_env_var_values_are_not_saved(tmp_path):
    raw = _raw(tmp_path, {"address": "auto", "storage": "shared", "env_vars": {"HF_TOKEN": "hf_SECRET123"},
                          "pass_resources": {"lora": {"num_cpus": 4, "resources": {"big": 1}}}})
    raw["passes"]["merge"]["host"] = "here"
    config = normalize(raw, tmp_path)
    ray = config.systems["cluster"].ray
    assert ray.storage == str(tmp_path / "shared") and ray.pass_resources["lora"].resources == {"big": 1}
    assert config.ray_system("cluster")[0] == "cluster" and config.ray_system("here") is None
    assert config.passes[1].host == "here" and config.engine.host == "cluster"
    resolved = json.dumps(config.resolved())
    assert "hf_SECRET123" not in resolved and '"HF_TOKEN": "(set, not shown)"' in resolved
    assert str(TONE_DATA)  # the data the workflow names


def test_the_seed_style_aml_system_can_be_a_ray_system(tmp_path):
    raw = _raw(tmp_path, {})
    raw["systems"] = {"aml": {"type": "Ray", "config": {"address": "auto", "max_concurrency": 3}}}
    raw["host"] = raw["target"] = "aml"
    config = normalize(raw, tmp_path)
    assert config.systems["aml"].ray.max_concurrency == 3 and config.engine.target == "aml"


def test_data_parallel_training_on_a_url_storage_is_refused_before_anything_runs(tmp_path):
    raw = _raw(tmp_path, {"storage": f"file://{tmp_path / 'bucket'}"})
    raw["passes"]["lora"]["num_workers"] = 2
    assert "passes.lora.num_workers: data-parallel training on Ray system 'cluster' needs a storage path" in \
        _problems(tmp_path, raw)
    target_only = {**raw, "target": "cluster"}
    target_only.pop("host")  # the cluster only evaluates: the training's workers still go to it
    assert "passes.lora.num_workers" in _problems(tmp_path, target_only)
    raw["passes"]["lora"]["host"] = "here"  # run here, its workers still go to the cluster the run connected to
    assert "passes.lora.num_workers" in _problems(tmp_path, raw)
    raw["passes"]["lora"].pop("host")
    raw.pop("host")  # no Ray system in the run: the training starts a local cluster, which sees this disk
    normalize(raw, tmp_path)
    raw = _raw(tmp_path, {"storage": str(tmp_path / "shared")})
    raw["passes"]["lora"]["num_workers"] = 2
    normalize(raw, tmp_path)


@pytest.mark.parametrize("where, expected", [("engine", 3), ("passes", 3), ("one pass here", 1), ("target", 1)])
def test_candidates_run_at_once_only_when_every_pass_runs_on_the_cluster(tmp_path, where, expected):
    from types import SimpleNamespace

    from modelpress.engine import Session

    raw = _raw(tmp_path, {"max_concurrency": 3}, target="cluster" if where == "target" else None)
    raw.pop("host")
    if where == "engine":
        raw["host"] = "cluster"
    elif where in ("passes", "one pass here"):
        for p in raw["passes"].values():
            p["host"] = "cluster"
        if where == "one pass here":
            raw["passes"]["merge"]["host"] = "here"
    config = normalize(raw, tmp_path)
    system = SimpleNamespace(name="cluster", config=config.systems["cluster"].ray)  # as connected
    session = Session(config, None, None, "cpu", None, systems={"cluster": system})
    assert session.concurrency() == expected
