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
import string
import typing
from pathlib import Path
from typing import Any

from pydantic import AliasChoices

from modelpress.config.collector import Collector, did_you_mean
from modelpress.config.schema import (
    SUB_METRICS,
    DataConfig,
    EngineConfig,
    EvaluationConfig,
    EvaluatorConfig,
    InputModelConfig,
    Metric,
    PassConfig,
    SearchConfig,
    WorkflowConfig,
)
from modelpress.errors import ConfigError, Problem
from modelpress.passes.catalog import BUILDER_PRECISIONS, CATALOG, HF, HF_ADAPTER, ONNX, LoRAParams, data_refs

ENGINE_KEYS = (
    "log_severity_level", "host", "target", "search_strategy", "execution_providers",
    "cache_dir", "output_dir", "evaluate_input_model", "clean_cache", "workflow_id", "output_name", "evaluator",
)
TOP_KEYS = ("input_model", "systems", "data_configs", "passes", "engine", "evaluation", "evaluators", "evaluator",
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
    model = _input_model(raw.get("input_model"), base_dir, c)
    data = _data_configs(raw.get("data_configs", []), base_dir, c)
    search = _search(engine_raw, engine_path, c)
    passes = _passes(raw.get("passes", {}), search, base_dir, c)
    engine = _engine(engine_raw, engine_path, systems, base_dir, c)
    evaluation = _evaluation(raw, engine_raw, c)
    evaluator = _evaluator(raw, engine_raw, base_dir, c)
    if model and engine and passes is not None:
        _check_workflow(model, data, passes, engine, evaluation, c)
        _check_search(passes, search, evaluator, data, c)
    if c.problems:
        raise ConfigError(c.problems, str(source) if source else None)
    return WorkflowConfig(source=source, schema_style=style, input_model=model, data_configs=data,
                          passes=passes, evaluation=evaluation, evaluator=evaluator, search=search,
                          engine=engine, warnings=c.warnings)


def _detect_style(raw: dict) -> str:
    model = raw.get("input_model")
    if isinstance(model, dict) and ("config" in model or model.get("type") == "PyTorchModel"):
        return "olive-0.5"
    if "evaluation" in raw:
        return "modelpress"
    return "olive-0.13"


def _as_mapping(value: Any, path: str, c: Collector) -> dict | None:
    if isinstance(value, dict):
        return value
    c.add(path, f"must be a mapping, found {type(value).__name__}")
    return None


def _unwrap(raw: dict, key: str, path: str) -> tuple[dict, str]:
    """Lift a nested `config`/`params` block (Olive 0.5 style) into its parent."""
    inner = raw.get(key)
    if isinstance(inner, dict):
        rest = {k: v for k, v in raw.items() if k != key}
        return {**inner, **rest}, f"{path}.{key}"
    return raw, path


# --- input model -----------------------------------------------------------------------------

def _input_model(raw: Any, base_dir: Path, c: Collector) -> InputModelConfig | None:
    path = "input_model"
    if raw is None:
        c.add(path, "required section is missing", "Add input_model with type HfModel and model_path.")
        return None
    if _as_mapping(raw, path, c) is None:
        return None
    typ = raw.get("type", "HfModel")
    if typ not in ("HfModel", "PyTorchModel"):
        c.add(f"{path}.type", f"model type {typ!r} is not supported",
              "modelpress takes a Hugging Face model folder: use type 'HfModel'.")
        return None
    flat, where = _unwrap({k: v for k, v in raw.items() if k != "type"}, "config", path)
    hf_path = f"{where}.hf_config"
    hf = flat.pop("hf_config", None) or {}
    if _as_mapping(hf, hf_path, c) is None:
        return None
    hf = dict(hf)
    load_kwargs = {}
    for key in ("load_kwargs", "model_loading_args", "from_pretrained_args"):
        src = flat.pop(key, None) if key == "load_kwargs" else hf.pop(key, None)
        if isinstance(src, dict):
            load_kwargs.update(src)
    model_path = flat.pop("model_path", None) or hf.pop("model_name", None)
    task = flat.pop("task", None) or hf.pop("task", None) or "text-generation"
    if isinstance(model_path, dict):
        c.add(f"{where}.model_path", f"model source {model_path.get('type', 'mapping')!r} is not supported",
              "modelpress loads models from a local folder only: download the model and set model_path to it.")
        return None
    if flat.pop("model_file_format", None) not in (None, "PyTorch.SafeTensors"):
        c.add(f"{where}.model_file_format", "only local Hugging Face folders are supported",
              "Remove model_file_format and point model_path at the folder.")
    c.unknown_keys(flat, ("model_path", "task", "load_kwargs"), where)
    c.unknown_keys(hf, ("model_name", "task", "model_loading_args", "from_pretrained_args"), hf_path)
    known_kwargs = ("trust_remote_code", "attn_implementation", "torch_dtype", "dtype")
    c.unknown_keys(load_kwargs, known_kwargs, f"{where}.load_kwargs")
    if model_path is None:
        c.add(f"{where}.model_path", "required key is missing", "Set it to a Hugging Face model folder.")
        return None
    if isinstance(model_path, str) and model_path.startswith(PACKAGE_PREFIX):
        model_path = _package_folder(model_path, f"{where}.model_path", c)
        if model_path is None:
            return None
    data = {"model_path": _resolve(model_path, base_dir), "task": task,
            "trust_remote_code": load_kwargs.get("trust_remote_code", False),
            "attn_implementation": load_kwargs.get("attn_implementation"),
            "torch_dtype": load_kwargs.get("torch_dtype", load_kwargs.get("dtype", "float32"))}
    model = c.validate(InputModelConfig, data, where)
    if model:
        _check_model_folder(model.model_path, f"{where}.model_path", c)
    return model


PACKAGE_PREFIX = "package:"


def _package_folder(value: str, path: str, c: Collector) -> str | None:
    """`package:NAME/sub/folder`: a model folder shipped inside an installed Python package (not imported)."""
    import importlib.util

    name, _, sub = value[len(PACKAGE_PREFIX):].partition("/")
    try:
        spec = importlib.util.find_spec(name) if name.isidentifier() else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        c.add(path, f"no installed Python package {name!r}",
              f"Install it (pip install {name.replace('_', '-')}) or give a folder path.")
        return None
    return str(Path(next(iter(spec.submodule_search_locations))) / sub)


def _check_model_folder(folder: Path, path: str, c: Collector) -> None:
    if not folder.is_dir():
        c.add(path, f"model folder not found: {folder}",
              "Point it at a local Hugging Face folder (modelpress create-tiny-model --out DIR makes one).")
        return
    if not (folder / "config.json").is_file():
        c.add(path, f"{folder} has no config.json", "A Hugging Face model folder needs config.json.")
    weights = [*folder.glob("*.safetensors"), *folder.glob("*.bin")]
    if not weights:
        c.add(path, f"{folder} has no weights (*.safetensors or *.bin)", "Save the model with save_pretrained.")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        c.add(path, f"{folder} has no tokenizer files", "Save the tokenizer into the folder with save_pretrained.")


def _resolve(value: Any, base_dir: Path) -> Any:
    if not isinstance(value, (str, Path)):
        return value
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


# --- data --------------------------------------------------------------------------------------

def _data_configs(raw: Any, base_dir: Path, c: Collector) -> dict[str, DataConfig]:
    if not isinstance(raw, list):
        c.add("data_configs", f"must be a list of data configs, found {type(raw).__name__}")
        return {}
    configs: dict[str, DataConfig] = {}
    for i, item in enumerate(raw):
        path = f"data_configs[{i}]"
        if _as_mapping(item, path, c) is None:
            continue
        config = _data_config(item, path, base_dir, c)
        if config and config.name in configs:
            c.add(f"{path}.name", f"duplicate data config name {config.name!r}", "Give each data config its own name.")
        elif config:
            configs[config.name] = config
    return configs


def _data_config(raw: dict, path: str, base_dir: Path, c: Collector) -> DataConfig | None:
    allowed = ("name", "type", "load_dataset_config", "pre_process_data_config",
               "dataloader_config", "post_process_data_config", "user_script", "script_dir")
    c.unknown_keys(raw, allowed, path)
    if raw.get("type", "HuggingfaceContainer") != "HuggingfaceContainer":
        c.add(f"{path}.type", f"data container {raw['type']!r} is not supported",
              "Use 'HuggingfaceContainer' with local files.")
    if "user_script" in raw:
        c.add(f"{path}.user_script", "data user scripts are not supported yet",
              "Describe the data with data_files and text_template instead.")
    load, load_path = _section(raw, "load_dataset_config", path, c)
    pre, pre_path = _section(raw, "pre_process_data_config", path, c)
    load_fields = _load_fields(load, load_path, base_dir, c)
    if load_fields is None:
        return None
    data = {**pre, **load_fields, "name": raw.get("name")}

    def where(key: str) -> str:
        return pre_path if key in pre else (load_path if key in load_fields else path)

    return c.validate(DataConfig, data, path, where)


def _section(raw: dict, key: str, path: str, c: Collector) -> tuple[dict, str]:
    section = raw.get(key) or {}
    if _as_mapping(section, f"{path}.{key}", c) is None:
        return {}, f"{path}.{key}"
    flat, where = _unwrap(dict(section), "params", f"{path}.{key}")
    flat.pop("type", None)
    return flat, where


def _load_fields(load: dict, path: str, base_dir: Path, c: Collector) -> dict | None:
    name = load.get("data_name")
    fmt = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet"}.get(name) if isinstance(name, str) else None
    if load.get("data_name") is None:
        c.add(f"{path}.data_name", "required key is missing", "Set it to json, csv or parquet.")
        return None
    if fmt is None:
        c.add(f"{path}.data_name", f"found {load['data_name']!r}; modelpress reads local files only",
              "Set data_name to json, csv or parquet and data_files to local paths.")
        return None
    files = load.get("data_files")
    if isinstance(files, dict):
        c.add(f"{path}.data_files", f"data source {files.get('type', 'mapping')!r} is not supported",
              "modelpress reads local files: download the data and list the file paths.")
        return None
    if files is None:
        c.add(f"{path}.data_files", "required key is missing", "List the local data files.")
        return None
    files = [files] if isinstance(files, str) else files
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        c.add(f"{path}.data_files", f"must be a path or a list of paths, found {files!r}")
        return None
    resolved = [_resolve(f, base_dir) for f in files]
    for i, file in enumerate(resolved):
        if not file.is_file():
            c.add(f"{path}.data_files[{i}]", f"file not found: {file}",
                  "Paths are relative to the config file's folder.")
    c.unknown_keys(load, ("data_name", "data_files", "split"), path)
    return {"data_files": resolved, "format": fmt, "split": load.get("split", "train")}


# --- passes ------------------------------------------------------------------------------------

def _passes(raw: Any, search: SearchConfig, base_dir: Path, c: Collector) -> list[PassConfig] | None:
    if _as_mapping(raw, "passes", c) is None:
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
            if _as_mapping(option, where, c) is not None:
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
    file = _resolve(script, base_dir) if isinstance(script, str) else None
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
    flat, where = _unwrap({k: v for k, v in spec.items() if k not in ("type", "user_script")}, "config", path)
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
    if raw is None or _as_mapping(raw, "systems", c) is None:
        return {}
    systems = {}
    for name, spec in raw.items():
        path = f"systems.{name}"
        if _as_mapping(spec, path, c) is None:
            continue
        flat, where = _unwrap(dict(spec), "config", path)
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
    if _as_mapping(engine, "engine", c) is None:
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
            data[key] = _resolve(raw[key], base_dir)
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
    if _as_mapping(value, path, c) is None:
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
    if _as_mapping(named, "evaluators", c) is None:
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
    if _as_mapping(body, path, c) is None:
        return None
    evaluator = c.validate(EvaluatorConfig, {"name": name, **body}, path)
    if evaluator is None:
        return None
    for i, metric in enumerate(evaluator.metrics):
        where = f"{path}.metrics[{i}]"
        _check_metric(metric, where, c)
        if metric.user_config is not None and metric.user_config.user_script is not None:
            script = _resolve(str(metric.user_config.user_script), base_dir)
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


def _check_search(passes: list[PassConfig], search: SearchConfig, evaluator: EvaluatorConfig | None,
                  data: dict, c: Collector) -> None:
    if evaluator is None:
        return
    for i, metric in enumerate(evaluator.metrics):
        _check_data_ref(metric.data_config, data, f"evaluator.metrics[{i}].data_config", c)
    if evaluator.baseline == "input_model":
        return
    names = [p.name for p in passes]
    if evaluator.baseline not in names:
        hint = did_you_mean(evaluator.baseline, names) or f"Passes: {', '.join(names)}."
        c.add("evaluator.baseline", f"no pass named {evaluator.baseline!r}", f"Use input_model or a pass name. {hint}")
        return
    upto = passes[: names.index(evaluator.baseline) + 1]
    varied = [p.name for p in upto if len(p.choices()) > 1]
    if varied:
        c.add("evaluator.baseline", f"the baseline {evaluator.baseline!r} comes after searched passes {varied}",
              "The baseline must be the same for every candidate: fix the values of the passes up to it.")


def _evaluation(raw: dict, engine_raw: dict, c: Collector) -> EvaluationConfig:
    data = raw.get("evaluation", {})
    if _as_mapping(data, "evaluation", c) is None:
        return EvaluationConfig()
    if "evaluate_input_model" in engine_raw:
        data = {**data, "evaluate_input_model": engine_raw["evaluate_input_model"]}
    return c.validate(EvaluationConfig, data, "evaluation") or EvaluationConfig()


# --- whole-workflow checks ---------------------------------------------------------------------------

def template_fields(template: str) -> list[str]:
    """Names of the `{fields}` in a text template, in order."""
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def template_parts(template: str) -> list[tuple]:
    """`string.Formatter().parse` of the template, without a trailing whitespace-only literal."""
    parts = list(string.Formatter().parse(template))
    if parts and parts[-1][1] is None and not parts[-1][0].strip():
        parts = parts[:-1]
    return parts


def completion_field(template: str | None) -> str | None:
    """The template's last field when the template ends with it (the text to generate)."""
    parts = template_parts(template) if template else []
    return parts[-1][1] if parts and parts[-1][1] else None


def _check_workflow(model, data, passes, engine, evaluation, c: Collector) -> None:
    for name, config in data.items():
        _check_template(name, config, c)
    kind, previous = HF, "input_model"
    for p in passes:
        choices = p.choices()  # the step as written, its alternatives and every searched value
        for option in choices:
            _check_choice(option, model, data, engine, kind, previous, c)
        kinds = {CATALOG[option.type].output_kind(kind) for option in choices}
        if len(kinds) > 1:
            c.add(f"passes.{p.name}.alternatives", f"the alternatives give different kinds of model "
                  f"({', '.join(sorted(kinds))}), so the next step cannot take every one",
                  "Make every alternative of one step give the same kind of model, or split them into steps.")
        if CATALOG[p.type].trains():
            _check_same_split(p, choices, c)
        kind, previous = CATALOG[p.type].output_kind(kind), p.name
    _check_data_ref(evaluation.data_config, data, "evaluation.data_config", c)
    _check_output_dirs(model, engine, c)


def _check_choice(p: PassConfig, model, data, engine, kind: str, previous: str, c: Collector) -> None:
    """The checks every concrete config of a step gets, so a search candidate cannot fail on a config mistake."""
    spec = CATALOG[p.type]
    if spec.trains():
        _check_task_data(model.task, data.get(p.params.train_data_config), f"passes.{p.name}", c)
        if getattr(p.params, "class_weight", None) and model.task != "text-classification":
            c.add(f"passes.{p.name}.class_weight", "class_weight weighs the classes of a text-classification "
                  "model, and this model generates text", "Remove class_weight, or set input_model.task to "
                  "'text-classification'.")
    if p.type == "ModelBuilder" and model.task == "text-classification":
        c.add(f"passes.{p.name}.type", "ModelBuilder builds generative (text-generation) models only",
              "For a classifier use OnnxConversion, then an ONNX quantization pass.")
    _check_kind(p, spec, kind, previous, c)
    for key, name in data_refs(p.params).items():
        _check_data_ref(name, data, f"passes.{p.name}.{key}", c)
    if p.type == "ModelBuilder":
        ep = p.params.execution_provider or engine.execution_provider
        if p.params.precision not in BUILDER_PRECISIONS[ep]:
            c.add(f"passes.{p.name}.precision", f"{p.params.precision} cannot run on the {ep} execution provider",
                  f"Allowed on {ep}: {', '.join(BUILDER_PRECISIONS[ep])}.")


SPLIT_PARAMS = ("train_data_config", "eval_data_config", "eval_dataset_size")  # and training_args.data_seed


def _check_same_split(p: PassConfig, choices: list[PassConfig], c: Collector) -> None:
    """Every choice of a training step must hold out the same rows: the candidates are all scored on them."""
    def split(option: PassConfig) -> tuple:
        return (*(getattr(option.params, k, None) for k in SPLIT_PARAMS), option.params.training_args.data_seed)

    if len({split(option) for option in choices}) > 1:
        c.add(f"passes.{p.name}", "the search choices of this training step split the data differently "
              f"({', '.join(SPLIT_PARAMS)}, training_args.data_seed), so candidates would be scored on rows "
              "that others trained on", "Give every alternative and searched value the same data settings.")


KIND_HINTS = {
    HF: "Put it after a pass that gives a Hugging Face folder (e.g. right after MergeAdapterWeights).",
    ONNX: "Add an OnnxConversion pass before it.",
}


def _check_kind(p: PassConfig, spec, kind: str, previous: str, c: Collector) -> None:
    if kind in spec.accepts:
        return
    if kind == HF_ADAPTER and HF in spec.accepts:
        c.add(f"passes.{p.name}", f"{p.type} needs a full model but gets an adapter from '{previous}'",
              "Add a MergeAdapterWeights pass before it.")
        return
    c.add(f"passes.{p.name}", f"{p.type} takes {' or '.join(spec.accepts)} models but gets {kind} from '{previous}'",
          KIND_HINTS.get(spec.accepts[0], "Reorder the passes."))


def _check_task_data(task: str, config: DataConfig | None, path: str, c: Collector) -> None:
    if config is None:
        return
    where = f"data_configs[{config.name}].label_col"
    if task == "text-classification" and not config.label_col:
        c.add(where, "a text-classification model trains on labels, and this data config names no label column",
              "Set label_col to the column that holds the class (e.g. 'tone'); text_template gives the input text.")
    if task == "text-generation" and config.label_col:
        c.add(where, "label_col is for text-classification models; this model generates text",
              "Remove label_col (the template's last field is what the model learns to generate), "
              "or set input_model.task to 'text-classification'.")


def _check_template(name: str, config: DataConfig, c: Collector) -> None:
    if not config.text_template and not config.text_cols:
        c.add(f"data_configs[{name}]", "neither text_template nor text_cols is set",
              "Set text_template, e.g. '### Text: {phrase}\\n### The tone is:\\n{tone}'.")
    if config.loss_on == "completion" and not config.label_col and not completion_field(config.text_template):
        c.add(f"data_configs[{name}].loss_on", "'completion' needs a text_template that ends with a {field}",
              "End the template with the field to predict, or set loss_on to 'all'.")
    if config.strategy == "join-sliding-window" and not config.stride:
        c.add(f"data_configs[{name}].stride", "join-sliding-window needs a stride", "Set stride, e.g. max_seq_len // 2.")


def _check_data_ref(name: str | None, data: dict, path: str, c: Collector) -> None:
    if name is not None and name not in data:
        hint = did_you_mean(name, data) or (f"Defined: {', '.join(data)}." if data else "Define it in data_configs.")
        c.add(path, f"no data config named {name!r}", hint)


def _check_output_dirs(model: InputModelConfig, engine: EngineConfig, c: Collector) -> None:
    source = model.model_path.resolve()
    for key in ("output_dir", "cache_dir"):
        target = getattr(engine, key).resolve()
        if target == source or source in target.parents:
            c.add(key, f"{target} is inside the input model folder {source}",
                  "Choose a folder outside the model folder, so the model is never modified.")
