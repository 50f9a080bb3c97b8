"""The `systems`, engine and `search_strategy` sections, in Olive 0.5's and 0.13's spellings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelpress.config.collector import Collector, as_mapping, did_you_mean, unwrap
from modelpress.config.olive_tables import INERT_ENGINE_KEYS, TARGETS, VENDOR_EPS
from modelpress.config.schema import EngineConfig, SearchConfig
from modelpress.config.sources import resolve_path

ENGINE_KEYS = (
    "log_severity_level", "host", "target", "search_strategy", "execution_providers",
    "cache_dir", "output_dir", "evaluate_input_model", "clean_cache", "workflow_id", "output_name", "evaluator",
    *INERT_ENGINE_KEYS,
)
EP_NAMES = {
    "CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda", "DmlExecutionProvider": "dml",
    "cpu": "cpu", "cuda": "cuda", "dml": "dml",
}
PYTHON_ENVIRONMENT_KEYS = ("python_environment_path", "environment_variables", "prepend_to_path")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

def systems_section(raw: Any, c: Collector) -> dict[str, str | None]:
    """Map each system name to its execution provider (None when it names none)."""
    if raw is None or as_mapping(raw, "systems", c) is None:
        return {}
    systems = {}
    for name, spec in raw.items():
        path = f"systems.{name}"
        if as_mapping(spec, path, c) is None:
            continue
        flat, where = unwrap(dict(spec), "config", path)
        typ = flat.pop("type", None)
        if typ == "PythonEnvironment":
            c.warn(f"{path}: a PythonEnvironment system runs here in modelpress's own Python environment "
                   "(python_environment_path, environment_variables and prepend_to_path are not used).")
            for key in PYTHON_ENVIRONMENT_KEYS:
                flat.pop(key, None)
        elif typ != "LocalSystem":
            c.add(f"{path}.type", f"system type {typ!r} is not supported",
                  "modelpress runs on this machine: use type 'LocalSystem'.")
            continue
        if flat.pop("hf_token", None) is not None:
            c.note(f"{where}.hf_token: a Hub token is always read from HF_TOKEN or the Hugging Face login.")
        c.unknown_keys(flat, ("accelerators",), where)
        systems[name] = _accelerator_ep(flat.get("accelerators") or [], f"{where}.accelerators", c)
    return systems


def _accelerator_ep(accelerators: Any, path: str, c: Collector) -> str | None:
    if not isinstance(accelerators, list) or not accelerators:
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
        merged, path = {**top, **engine}, "engine"
    for key in [k for k in merged if k in INERT_ENGINE_KEYS]:
        c.warn(f"{key}: accepted and not used: {INERT_ENGINE_KEYS[key]}.")
    return merged, path


def engine(raw: dict, path: str, systems: dict, base_dir: Path, c: Collector) -> EngineConfig | None:
    def at(key: str) -> str:
        return f"{path}.{key}" if path else key

    for key in ("host", "target"):
        name = raw.get(key)
        if isinstance(name, str) and name not in systems:
            c.warn(f"{at(key)}: no system named {name!r} is defined; the workflow runs on this machine.")
    ep = _engine_ep(raw, at, systems, c)
    data = {"execution_provider": ep or "cpu", "clean_cache": raw.get("clean_cache", False)}
    for key in ("cache_dir", "output_dir"):
        if key in raw:
            data[key] = resolve_path(raw[key], base_dir)
        else:
            data[key] = base_dir / EngineConfig.model_fields[key].default
    level = raw.get("log_severity_level", 1)
    if isinstance(level, int) and 0 <= level < len(LOG_LEVELS):
        data["log_level"] = LOG_LEVELS[level]
    else:
        c.add(at("log_severity_level"), f"found {level!r}; allowed: 0 (debug) to 4 (critical)")
    return c.validate(EngineConfig, data, path)


def _engine_ep(raw: dict, at, systems: dict, c: Collector) -> str | None:
    eps = raw.get("execution_providers")
    if eps is not None:
        if not isinstance(eps, list) or not eps:
            c.add(at("execution_providers"), f"must be a non-empty list, found {eps!r}")
            return None
        return _ep_name(eps[0], at("execution_providers[0]"), c)
    names = [raw.get(key) for key in ("target", "host")]
    return next((systems[n] for n in names if isinstance(n, str) and systems.get(n)), None)


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
    data.pop("output_model_num", None)
    return c.validate(SearchConfig, {"enabled": True, **data}, path) or SearchConfig()
