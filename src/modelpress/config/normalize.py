"""Read a workflow config in any supported schema and normalise it into `WorkflowConfig`.

Three spellings of the same workflow are accepted:
- the seed's (Olive 0.5/0.6): `PyTorchModel` + `hf_config`, params nested under `params`
  and `config`, `lora_r`, `corpus_strategy`, an `engine` block;
- Olive 0.13's: `HfModel` + `model_path`, flat pass params, engine keys at the top level;
- modelpress's own, which is Olive 0.13's plus an `evaluation` block and a few data keys.
Every problem found is collected with the key path the user wrote, then raised at once.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

from pydantic import AliasChoices

from modelpress.config.checks import check_workflow
from modelpress.config.collector import Collector, as_mapping, did_you_mean, unwrap
from modelpress.config.data_section import data_configs
from modelpress.config.schema import (
    SUB_METRICS,
    EngineConfig,
    EvaluationConfig,
    EvaluatorConfig,
    Metric,
    PassConfig,
    SearchConfig,
    WorkflowConfig,
)
from modelpress.config.sources import input_model, resolve_path
from modelpress.errors import ConfigError, Problem
from modelpress.passes.catalog import CATALOG, LoRAParams

ENGINE_KEYS = (
    "log_severity_level", "host", "target", "search_strategy", "execution_providers",
    "cache_dir", "output_dir", "evaluate_input_model", "clean_cache", "workflow_id", "output_name", "evaluator",
)
TOP_KEYS = ("$schema", "input_model", "systems", "data_configs", "passes", "engine", "evaluation", "evaluators", "evaluator",
            *ENGINE_KEYS)
EP_NAMES = {
    "CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda", "DmlExecutionProvider": "dml",
    "cpu": "cpu", "cuda": "cuda", "dml": "dml",
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
OLIVE_ONLY_PASSES = {  # Olive passes modelpress lacks, and what to use instead
    "OnnxQuantization": "OnnxDynamicQuantization or OnnxStaticQuantization",
    "OnnxMatMul4Quantizer": "OnnxBlockWiseRtnQuantization (int4 MatMulNBits)",
    "GptqQuantizer": "OnnxBlockWiseRtnQuantization, or ModelBuilder with precision int4",
    "AutoAWQQuantizer": "OnnxBlockWiseRtnQuantization, or ModelBuilder with precision int4",
}


def read_config_file(path: str | Path) -> Any:
    """Parse a JSON or YAML file; syntax errors name the line and column."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([Problem(str(path), "config file not found", "Check the path given to --config.")])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError([Problem(str(path), f"not UTF-8 text ({err.reason} at byte {err.start})",
                                   "Save the config as UTF-8.")]) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        return _parse_yaml(text, path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError([Problem(f"{path}:{err.lineno}:{err.colno}", f"invalid JSON: {err.msg}",
                                   "Fix the syntax at that line (JSON allows no trailing commas or comments).")]
                          ) from None


def _parse_yaml(text: str, path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError([Problem(where, f"invalid YAML: {getattr(err, 'problem', err)}",
                                   "Fix the syntax at that line.")]) from None


def load_config(path: str | Path) -> WorkflowConfig:
    """Read, normalise and validate a config file; raise `ConfigError` listing every problem."""
    path = Path(path)
    raw = read_config_file(path)
    return normalize(raw, base_dir=path.resolve().parent, source=path)


def normalize(raw: Any, base_dir: Path, source: Path | None = None) -> WorkflowConfig:
    """Normalise a parsed config (any supported schema) into a validated `WorkflowConfig`."""
    c = Collector()
    if not isinstance(raw, dict):
        raise ConfigError([Problem("", f"the config must be a mapping of sections, found {type(raw).__name__}")],
                          str(source) if source else None)
    style = _detect_style(raw)
    c.unknown_keys(raw, TOP_KEYS, "")
    engine_raw, engine_path = _engine_section(raw, c)
    systems = _systems(raw.get("systems"), c)
    model = input_model(raw.get("input_model"), base_dir, c)
    data = data_configs(raw.get("data_configs", []), base_dir, c)
    search = _search(engine_raw, engine_path, c)
    passes = _passes(raw.get("passes", {}), search, base_dir, c)
    engine = _engine(engine_raw, engine_path, systems, base_dir, c)
    evaluation = _evaluation(raw, engine_raw, c)
    evaluator = _evaluator(raw, engine_raw, base_dir, c)
    if model and engine and passes is not None:
        check_workflow(model, data, passes, engine, evaluation, search, evaluator, c)
    if c.problems:
        raise ConfigError(c.problems, str(source) if source else None)
    return WorkflowConfig(source=source, schema_style=style, input_model=model, data_configs=data,
                          passes=passes, evaluation=evaluation, evaluator=evaluator, search=search,
                          engine=engine, warnings=c.warnings, notes=c.notes)


def _detect_style(raw: dict) -> str:
    model = raw.get("input_model")
    if isinstance(model, dict) and ("config" in model or model.get("type") == "PyTorchModel"):
        return "olive-0.5"
    if "evaluation" in raw:
        return "modelpress"
    return "olive-0.13"


# --- passes ------------------------------------------------------------------------------------

def _passes(raw: Any, search: SearchConfig, base_dir: Path, c: Collector) -> list[PassConfig] | None:
    if as_mapping(raw, "passes", c) is None:
        return None
    passes = []
    for name, spec in raw.items():
        path = f"passes.{name}"
        options = spec if isinstance(spec, list) else [spec]
        if not options:
            c.add(path, "an empty list of configs", "Give the pass one config (a mapping).")
            continue
        configs = []
        for i, option in enumerate(options):
            where = f"{path}[{i}]" if isinstance(spec, list) else path
            if as_mapping(option, where, c) is not None:
                configs.append(_pass(name, option, where, base_dir, c))
        if None in configs or not configs:
            continue
        searched = len(configs) > 1 or any(cfg.search_space for cfg in configs)
        if searched and not search.enabled:
            what = "several configs" if len(configs) > 1 else f"lists of values for {sorted(configs[0].search_space)}"
            c.add(path, f"{what} make this pass a search choice, but search is off",
                  "Set search_strategy (e.g. {\"sampler\": \"sequential\"}), or give one value per parameter.")
            continue
        passes.append(configs[0].model_copy(update={"alternatives": configs[1:]}))
    return passes


def _load_plugins(spec: dict, path: str, base_dir: Path, c: Collector) -> bool:
    """Register the passes of the script this pass names, or of installed plugin packages."""
    from modelpress.passes.plugins import PluginError, load_entry_points, load_script

    script = spec.get("user_script")
    if script is None:
        if spec.get("type") not in CATALOG:
            load_entry_points()
        return True
    file = resolve_path(script, base_dir) if isinstance(script, str) else None
    if file is None or not file.is_file():
        c.add(f"{path}.user_script", f"file not found: {file or script!r}",
              "Give the path of the Python file that defines the pass (relative to the config file).")
        return False
    try:
        names = load_script(file)
    except PluginError as err:
        c.add(f"{path}.user_script", str(err), "Fix the script: it must define a subclass of modelpress.plugin.Pass.")
        return False
    if spec.get("type") not in names:
        c.add(f"{path}.type", f"{file.name} defines {', '.join(names)}, not {spec.get('type')!r}",
              "Set type to the name of one of the script's passes.")
        return False
    return True


SEARCHABLE_VALUES = "SEARCHABLE_VALUES"  # Olive's marker: search this param over its declared values


def _split_search(flat: dict, params_model, spec, where: str, c: Collector) -> tuple[dict, dict[str, list]]:
    """Take searched parameters out of `flat`: a list where one value is expected, or SEARCHABLE_VALUES."""
    fields = {}
    for name, info in params_model.model_fields.items():
        fields[name] = (name, info)
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            fields.update({a: (name, info) for a in alias.choices if isinstance(a, str)})
    declared = spec.search_space()
    fixed, space = {}, {}
    for key, value in flat.items():
        name, info = fields.get(key, (key, None))
        if info is None:
            fixed[key] = value
            continue
        takes_list = typing.get_origin(info.annotation) is list or "list[" in str(info.annotation)
        if value == SEARCHABLE_VALUES:
            if name not in declared:
                c.add(f"{where}.{key}", f"{spec.name}.{name} declares no search values",
                      f"List the values to try, e.g. {key}: [a, b]. Searchable by default: "
                      f"{', '.join(declared) or 'none'}.")
                continue
            space[name] = declared[name]
        elif isinstance(value, list) and (not takes_list or (value and all(isinstance(v, list) for v in value))):
            if not value:
                c.add(f"{where}.{key}", "an empty list of values to search", "Give at least one value.")
                continue
            space[name] = value
        else:
            fixed[key] = value
    return fixed, space


def _validated_space(params_model, fixed: dict, space: dict[str, list], where: str, c: Collector) -> dict | None:
    """Each searched value validated on its own (so an error names the value); coerced values returned."""
    out = {}
    for name, values in space.items():
        good = []
        for i, value in enumerate(values):
            trial = c.validate(params_model, {**fixed, **{k: v[0] for k, v in space.items()}, name: value},
                               f"{where}.{name}[{i}]", lambda _key, i=i: f"{where}.{name}[{i}]")
            if trial is not None:
                good.append(getattr(trial, name))
        if len(good) != len(values):
            return None
        out[name] = good
    return out


def _pass(name: str, spec: dict, path: str, base_dir: Path, c: Collector) -> PassConfig | None:
    typ = spec.get("type")
    if not _load_plugins(spec, path, base_dir, c):
        return None
    if not isinstance(typ, str) or typ not in CATALOG:
        supported = ", ".join(CATALOG)
        if typ is None:
            c.add(f"{path}.type", "required key is missing", f"Supported passes: {supported}.")
        elif typ in OLIVE_ONLY_PASSES:
            c.add(f"{path}.type", f"Olive's pass {typ!r} is not in modelpress",
                  f"Use {OLIVE_ONLY_PASSES[typ]}, or add it as a plugin pass (docs/plugins.md).")
        else:
            hint = did_you_mean(typ, CATALOG) or f"Supported passes: {supported}."
            c.add(f"{path}.type", f"unknown pass type {typ!r}", hint)
        return None
    flat, where = unwrap({k: v for k, v in spec.items() if k not in ("type", "user_script")}, "config", path)
    params_model = CATALOG[typ].params
    flat, space = _split_search(flat, params_model, CATALOG[typ], where, c)
    first = {**flat, **{k: v[0] for k, v in space.items()}}
    params = c.validate(params_model, first, where)
    if params is None:
        return None
    space = _validated_space(params_model, flat, space, where, c)
    if space is None:
        return None
    if typ == "LoRA":
        _warn_4bit_options(params, path, c)
    return PassConfig(name=name, type=typ, params=params, search_space=space)


def _warn_4bit_options(params: LoRAParams, path: str, c: Collector) -> None:
    used = [k for k in ("double_quant", "quant_type", "compute_dtype") if getattr(params, k) is not None]
    if used:
        c.warn(f"{path}: {', '.join(used)} apply to 4-bit QLoRA only; this LoRA pass trains the full-precision "
               "base and ignores them (use type 'QLoRA' to train on a 4-bit base).")


# --- systems and engine ----------------------------------------------------------------------------

def _systems(raw: Any, c: Collector) -> dict[str, str | None]:
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
        if typ != "LocalSystem":
            c.add(f"{path}.type", f"system type {typ!r} is not supported",
                  "modelpress runs on this machine: use type 'LocalSystem'.")
            continue
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
    hint = did_you_mean(value, EP_NAMES) or "Allowed: CPUExecutionProvider, CUDAExecutionProvider, DmlExecutionProvider."
    c.add(path, f"unknown execution provider {value!r}", hint)
    return None


def _engine_section(raw: dict, c: Collector) -> tuple[dict, str]:
    engine = raw.get("engine")
    top = {k: raw[k] for k in ENGINE_KEYS if k in raw}
    if engine is None:
        return top, ""
    if as_mapping(engine, "engine", c) is None:
        return top, ""
    c.unknown_keys(engine, ENGINE_KEYS, "engine")
    return {**top, **engine}, "engine"


def _engine(raw: dict, path: str, systems: dict, base_dir: Path, c: Collector) -> EngineConfig | None:
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


def _search(engine_raw: dict, engine_path: str, c: Collector) -> SearchConfig:
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


def _evaluator(raw: dict, engine_raw: dict, base_dir: Path, c: Collector) -> EvaluatorConfig | None:
    """Olive's `evaluators` (named) and `evaluator` (which one the engine uses, or an inline one)."""
    named = raw.get("evaluators") or {}
    if as_mapping(named, "evaluators", c) is None:
        return None
    chosen = engine_raw.get("evaluator", raw.get("evaluator"))
    path = "evaluator"
    if chosen is None:
        if not named:
            return None
        if len(named) > 1:
            c.add("evaluator", f"several evaluators are defined ({', '.join(named)}) and none is chosen",
                  "Set evaluator to the name of the one to use.")
            return None
        chosen = next(iter(named))
    if isinstance(chosen, str):
        if chosen not in named:
            hint = did_you_mean(chosen, named) or f"Defined: {', '.join(named) or 'none'}."
            c.add(path, f"no evaluator named {chosen!r}", hint)
            return None
        body, path = named[chosen], f"evaluators.{chosen}"
        name = chosen
    else:
        body, name = chosen, "default"
    if as_mapping(body, path, c) is None:
        return None
    evaluator = c.validate(EvaluatorConfig, {"name": name, **body}, path)
    if evaluator is None:
        return None
    for i, metric in enumerate(evaluator.metrics):
        where = f"{path}.metrics[{i}]"
        _check_metric(metric, where, c)
        if metric.user_config is not None and metric.user_config.user_script is not None:
            script = resolve_path(str(metric.user_config.user_script), base_dir)
            if not script.is_file():
                c.add(f"{where}.user_config.user_script", f"file not found: {script}",
                      "Paths are relative to the config file's folder.")
            metric.user_config.user_script = script
    return evaluator


def _check_metric(metric: Metric, where: str, c: Collector) -> None:
    if metric.type == "custom":
        user = metric.user_config
        if user is None or user.user_script is None or not user.evaluate_func:
            c.add(f"{where}.user_config", "a custom metric needs user_config with user_script and evaluate_func",
                  "Name the script and the function that computes the metric.")
        for j, sub in enumerate(metric.sub_types):
            if sub.higher_is_better is None:
                c.add(f"{where}.sub_types[{j}].higher_is_better", "required for a custom metric",
                      "Set it to true or false.")
        return
    known = SUB_METRICS[metric.type]
    for j, sub in enumerate(metric.sub_types):
        if sub.name not in known:
            hint = did_you_mean(sub.name, known) or f"Allowed for {metric.type}: {', '.join(known)}."
            c.add(f"{where}.sub_types[{j}].name", f"{metric.type} has no sub-metric {sub.name!r}", hint)


def _evaluation(raw: dict, engine_raw: dict, c: Collector) -> EvaluationConfig:
    data = raw.get("evaluation", {})
    if as_mapping(data, "evaluation", c) is None:
        return EvaluationConfig()
    if "evaluate_input_model" in engine_raw:
        data = {**data, "evaluate_input_model": engine_raw["evaluate_input_model"]}
    return c.validate(EvaluationConfig, data, "evaluation") or EvaluationConfig()
