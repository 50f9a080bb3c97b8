"""The `systems`, engine and `search_strategy` sections, in Olive 0.5's and 0.13's spellings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from modelpress.config.collector import Collector, as_mapping, did_you_mean, nested_wins, unwrap
from modelpress.config.olive_tables import INERT_ENGINE_KEYS, INERT_SEARCH_KEYS, TARGETS, VENDOR_EPS
from modelpress.config.schema import EngineConfig, RaySystemConfig, SearchConfig, SystemConfig
from modelpress.config.paths import local_path

ENGINE_KEYS = (
    "log_severity_level", "host", "target", "search_strategy", "execution_providers",
    "cache_dir", "output_dir", "evaluate_input_model", "clean_cache", "clean_evaluation_cache", "evaluator",
    "cache_config", *INERT_ENGINE_KEYS,
)
CACHE_CONFIG_KEYS = ("cache_dir", "clean_cache", "clean_evaluation_cache")  # Olive's CacheConfig keys read here
SHARED_CACHE_KEYS = ("account_name", "container_name", "enable_shared_cache", "update_shared_cache")
EP_NAMES = {
    "CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda", "DmlExecutionProvider": "dml",
    "cpu": "cpu", "cuda": "cuda", "dml": "dml",
}
PYTHON_ENVIRONMENT_KEYS = ("python_environment_path", "environment_variables", "prepend_to_path")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

def systems_section(raw: Any, base_dir: Path, c: Collector) -> dict[str, SystemConfig]:
    """Each system by name: this machine (LocalSystem, PythonEnvironment) or a Ray cluster."""
    if raw is None or as_mapping(raw, "systems", c) is None:
        return {}
    systems = {}
    for name, spec in raw.items():
        system = one_system(spec, f"systems.{name}", base_dir, c)
        if system is not None:
            systems[name] = system
    return systems


def one_system(spec: Any, path: str, base_dir: Path, c: Collector) -> SystemConfig | None:
    """One system's settings, named in `systems` or written where engine.host/target name one (as Olive allows)."""
    if as_mapping(spec, path, c) is None:
        return None
    flat, where = unwrap(dict(spec), "config", path, c)
    typ = flat.pop("type", None)
    if typ == "PythonEnvironment":
        c.warn(f"{path}: a PythonEnvironment system runs here in modelpress's own Python environment "
               "(python_environment_path, environment_variables and prepend_to_path are not used).")
        for key in PYTHON_ENVIRONMENT_KEYS:
            flat.pop(key, None)
    elif typ not in ("LocalSystem", "Ray"):
        hint = ("Olive's AzureML system is gone from Olive itself; run the workflow on a Ray cluster with "
                "type 'Ray' (README: Several machines), or here with type 'LocalSystem'.")
        c.add(f"{path}.type", f"system type {typ!r} is not supported", hint)
        return None
    if flat.pop("hf_token", None) is not None:
        c.note(f"{where}.hf_token: a Hub token is always read from HF_TOKEN or the Hugging Face login.")
    ep = _accelerator_ep(flat.pop("accelerators", None) or [], f"{where}.accelerators", c)
    if typ == "Ray":
        ray = ray_system(flat, where, base_dir, c)
        return None if ray is None else SystemConfig(type="Ray", execution_provider=ep, ray=ray)
    c.unknown_keys(flat, (), where)
    return SystemConfig(execution_provider=ep)


def ray_system(flat: dict, where: str, base_dir: Path, c: Collector) -> RaySystemConfig | None:
    """A Ray system's keys, validated; `storage` made absolute (a path) or checked (an fsspec URL)."""
    ray = c.validate(RaySystemConfig, flat, where)
    if ray is None:
        return None
    if ray.address not in (None, "auto") and not re.fullmatch(r"(ray://)?[\w.\-]+:\d+", ray.address):
        c.add(f"{where}.address", f"found {ray.address!r}",
              "Give none (a local cluster for the run), \"auto\" (the cluster this machine joined) or "
              "\"host:port\" of the head node.")
    storage = ray.storage
    if storage and "://" in storage:
        protocol = storage.split("://", 1)[0]
        try:
            import fsspec

            fsspec.get_filesystem_class(protocol)
        except ImportError as err:
            c.add(f"{where}.storage", f"fsspec needs another package for {protocol}:// ({err})",
                  "Install it on every node (for example s3fs, gcsfs or adlfs).")
        except ValueError:
            c.add(f"{where}.storage", f"fsspec knows no protocol {protocol!r}",
                  "Use a path every node sees, or a URL such as s3://bucket/prefix or file:///shared/dir.")
    elif storage:
        folder = local_path(storage, base_dir, f"{where}.storage", c)
        if folder is not None:
            ray = ray.model_copy(update={"storage": str(folder)})
    return ray


def _accelerator_ep(accelerators: Any, path: str, c: Collector) -> str | None:
    if isinstance(accelerators, (str, dict)):  # one accelerator written without its list
        accelerators = [accelerators]
    if not isinstance(accelerators, list):
        c.add(path, f"must be a list of accelerators, found {accelerators!r}",
              'e.g. [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}].')
        return None
    if not accelerators:
        return None
    first = accelerators[0]
    if isinstance(first, str):
        return "cuda" if first.lower() == "gpu" else "cpu"
    if isinstance(first, dict):
        eps = first.get("execution_providers") or []
        if isinstance(eps, list) and eps:
            return _ep_name(eps[0], f"{path}[0].execution_providers[0]", c)
        return "cuda" if str(first.get("device", "cpu")).lower() == "gpu" else "cpu"
    c.add(f"{path}[0]", f"must be a device name or a mapping, found {first!r}")
    return None


def _ep_name(value: Any, path: str, c: Collector) -> str | None:
    if isinstance(value, str) and value in EP_NAMES:
        return EP_NAMES[value]
    if isinstance(value, str) and value in VENDOR_EPS:
        c.add(path, f"{value} is for {VENDOR_EPS[value]}, which modelpress does not target",
              f"{TARGETS}: use CPUExecutionProvider, CUDAExecutionProvider or DmlExecutionProvider.")
        return None
    hint = did_you_mean(value, EP_NAMES) or "Allowed: CPUExecutionProvider, CUDAExecutionProvider, DmlExecutionProvider."
    c.add(path, f"unknown execution provider {value!r}", hint)
    return None


def engine_section(raw: dict, c: Collector) -> tuple[dict, str]:
    """The engine keys, from the top level (Olive 0.13) and the `engine` block (Olive 0.5)."""
    engine = raw.get("engine")
    top = {k: raw[k] for k in ENGINE_KEYS if k in raw}
    merged, path = top, ""
    if engine is not None and as_mapping(engine, "engine", c) is not None:
        c.unknown_keys(engine, ENGINE_KEYS, "engine")
        for key in [k for k in top if k in engine and top[k] != engine[k]]:
            c.warn(f"{key} is given at the top level and under engine, differently: engine.{key} is used "
                   f"({engine[key]!r}, not {top[key]!r}); keep one")
        merged, path = {**top, **engine}, "engine"
    for key in [k for k in merged if k in INERT_ENGINE_KEYS]:
        c.warn(f"{key}: accepted and not used: {INERT_ENGINE_KEYS[key]}.")
    if "cache_config" in merged:
        merged = _lift_cache_config(merged, f"{path}.cache_config" if path else "cache_config", c)
    return merged, path


# Olive 0.13's SearchStrategyConfig fields: written beside sampler_config, never in it
STRATEGY_KEYS = ("execution_order", "sampler", "output_model_num", "stop_when_goals_met", "max_iter", "max_time",
                 "include_pass_params")


def _lift_cache_config(merged: dict, where: str, c: Collector) -> dict:
    """Olive's `cache_config` block: its cache_dir, clean_cache and clean_evaluation_cache take the place of the
    engine keys of those names (Olive reads the block instead of them); its shared-cache keys are not used."""
    cache = merged.pop("cache_config")
    if as_mapping(cache, where, c) is None:
        return merged
    c.unknown_keys(cache, (*CACHE_CONFIG_KEYS, *SHARED_CACHE_KEYS), where)
    for key in [k for k in SHARED_CACHE_KEYS if cache.get(k)]:
        c.warn(f"{where}.{key}: accepted and not used: there is no shared (cloud) cache; cache_dir is a local folder.")
    lifted = {k: cache[k] for k in CACHE_CONFIG_KEYS if k in cache}
    if isinstance(lifted.get("cache_dir"), list):  # Olive: a local folder and, maybe, a shared cache URL
        local = [d for d in lifted["cache_dir"] if isinstance(d, str) and "://" not in d]
        if len(local) != len(lifted["cache_dir"]):
            c.warn(f"{where}.cache_dir: the shared cache URL is not used; cache_dir is a local folder.")
        lifted["cache_dir"] = local[0] if local else ".modelpress-cache"
    for key in [k for k in lifted if k in merged and merged[k] != lifted[k]]:
        c.warn(f"{key} is given beside cache_config.{key}, differently: cache_config's is used ({lifted[key]!r}), "
               "as in Olive; keep one")
    for key in [k for k in CACHE_CONFIG_KEYS if k in merged and k not in lifted]:  # Olive reads the block alone
        c.warn(f"{key} is ignored: cache_config is given, and Olive reads these settings from it alone (its "
               f"{key} is left at the default); move {key} into cache_config")
        merged.pop(key)
    return {**merged, **lifted}


def engine(raw: dict, path: str, systems: dict, base_dir: Path, c: Collector) -> EngineConfig | None:
    def at(key: str) -> str:
        return f"{path}.{key}" if path else key

    data = {}
    for key in ("host", "target"):
        name = raw.get(key)
        if isinstance(name, dict):  # the system written in place, as Olive allows: kept under a name of its own
            system = one_system(name, at(key), base_dir, c)
            name = next(n for n in (key, *(f"{key} (inline {i})" for i in range(1, len(systems) + 2)))
                        if n not in systems)
            if system is None:
                continue
            systems[name] = system
        if isinstance(name, str) and name not in systems:
            c.warn(f"{at(key)}: no system named {name!r} is defined; the workflow runs on this machine.")
        elif isinstance(name, str):
            data[key] = name
        elif name is not None:
            c.add(at(key), f"must name a system of `systems` or be one (a mapping with its type), found {name!r}")
    ep = _engine_ep(raw, at, [data.get("target"), data.get("host")], systems, c)
    data.update(execution_provider=ep or "cpu", clean_cache=raw.get("clean_cache", False),
                clean_evaluation_cache=raw.get("clean_evaluation_cache", False))
    for key in ("cache_dir", "output_dir"):
        default = base_dir / EngineConfig.model_fields[key].default
        folder = local_path(raw[key], base_dir, at(key), c) if key in raw else default
        # a URL or an unknown ~user is said once (the default stands in); a null is left for the schema to refuse
        data[key] = default if folder is None and raw.get(key) is not None else folder
    level = raw.get("log_severity_level", 1)
    if isinstance(level, int) and 0 <= level < len(LOG_LEVELS):
        data["log_level"] = LOG_LEVELS[level]
    else:
        c.add(at("log_severity_level"), f"found {level!r}; allowed: 0 (debug) to 4 (critical)")
    return c.validate(EngineConfig, data, path)


def _engine_ep(raw: dict, at, names: list, systems: dict, c: Collector) -> str | None:
    eps = raw.get("execution_providers")
    if eps is not None:
        if not isinstance(eps, list) or not eps:
            c.add(at("execution_providers"), f"must be a non-empty list, found {eps!r}")
            return None
        return _ep_name(eps[0], at("execution_providers[0]"), c)
    return next((systems[n].execution_provider for n in names
                 if isinstance(n, str) and n in systems and systems[n].execution_provider), None)


SAMPLERS = {"exhaustive": "sequential", "sequential": "sequential", "random": "random", "tpe": "tpe",
            "optuna": "tpe"}


def search_section(engine_raw: dict, engine_path: str, c: Collector) -> SearchConfig:
    """`search_strategy`: false/absent (off), true (defaults), or Olive 0.13's / 0.5's mapping."""
    value = engine_raw.get("search_strategy")
    path = f"{engine_path}.search_strategy" if engine_path else "search_strategy"
    if value in (None, False):
        return SearchConfig()
    if value is True:
        return SearchConfig(enabled=True)
    if as_mapping(value, path, c) is None:
        return SearchConfig()
    data = dict(value)
    nested = data.pop("sampler_config", None)  # Olive 0.13 takes the sampler's keys nested here or beside it
    if nested is not None and as_mapping(nested, f"{path}.sampler_config", c) is not None:
        # the strategy's own keys stay outside, as in Olive, where a copy inside goes to the sampler, which
        # ignores it; the sampler's keys inside win
        own = [k for k in nested if k in STRATEGY_KEYS]
        for key in own:
            c.warn(f"{path}.sampler_config.{key}: not read: {key} is the search strategy's own key, which Olive "
                   "reads beside sampler_config; write it there")
        data = nested_wins({k: v for k, v in nested.items() if k not in own}, data, f"{path}.sampler_config", c)
    algorithm = data.pop("search_algorithm", None)  # Olive 0.5: search_algorithm + search_algorithm_config
    legacy = data.pop("search_algorithm_config", None) or {}
    if algorithm is not None:
        data.setdefault("sampler", algorithm)
    if isinstance(legacy, dict):
        data.setdefault("max_samples", legacy.get("num_samples", 0))
        if "seed" in legacy:
            data.setdefault("seed", legacy["seed"])
    if isinstance(data.get("sampler"), str):
        data["sampler"] = SAMPLERS.get(data["sampler"], data["sampler"])
    for key in ("max_iter", "max_time", "max_samples"):  # Olive's null: no limit
        if key in data and data[key] is None:
            data[key] = 0
    if data.pop("include_pass_params", True) is False:  # Olive: search between passes' alternatives only
        c.warn(f"{path}.include_pass_params: false is not read: Olive then leaves every pass parameter at its "
               "first value and searches only between a pass's alternatives; modelpress searches every list the "
               "config writes (write one value to fix a parameter).")
    for key, why in INERT_SEARCH_KEYS.items():
        if key in data:
            data.pop(key)
            c.warn(f"{path}.{key}: accepted and not used: {why}.")
    return c.validate(SearchConfig, {"enabled": True, **data}, path) or SearchConfig()
