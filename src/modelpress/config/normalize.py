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

from modelpress.config.checks import check_hosts, check_workflow
from modelpress.config.collector import Collector, as_mapping, did_you_mean, nested_wins, unwrap
from modelpress.config.data_section import data_configs
from modelpress.config.engine_section import ENGINE_KEYS, engine, engine_section, search_section, systems_section
from modelpress.config.evaluator_section import evaluation_section, evaluator_section
from modelpress.config.olive_search import note_unsearched, olive_search
from modelpress.config.olive_tables import (
    EXTERNAL_DATA_KEYS,
    INERT_PASS_KEYS,
    INERT_TRAINING_KEYS,
    OLIVE_ONLY_PASSES,
    OLIVE_TRAINING_ARGS_DEFAULTS,
    OLIVE_TRAINING_DEFAULTS,
    RENAMED_PASS_KEYS,
    TARGETS,
    VALUE_FALLBACKS,
    VENDOR_PASSES,
)
from modelpress.config.schema import PassConfig, SearchConfig, WorkflowConfig
from modelpress.config.searched import searched_params
from modelpress.config.paths import script_paths
from modelpress.config.sources import input_model, kv_cache_asked
from modelpress.errors import ConfigError, Problem
from modelpress.passes.catalog import CATALOG, ONNX, ONNX_GENAI, LoHaParams, LoRAParams, QLoRAParams

TOP_KEYS = tuple(dict.fromkeys(("$schema", "input_model", "systems", "data_configs", "passes", "engine", "evaluation",
                                 "evaluators", *ENGINE_KEYS)))  # an Olive 0.13 config's engine keys sit at the top


def read_config_file(path: str | Path) -> Any:
    """Parse a JSON or YAML file; syntax errors name the line and column."""
    path = Path(path)
    if path.is_dir():
        configs = sorted(p.name for p in path.glob("*") if p.suffix in (".json", ".yaml", ".yml"))
        raise ConfigError([Problem(str(path), "is a folder, not a config file",
                                   f"Name the file in it{': ' + ', '.join(configs[:5]) if configs else ''}.")])
    if not path.is_file():
        raise ConfigError([Problem(str(path), "config file not found", "Check the config file's path.")])
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


def _nul_character(value: Any, where: str) -> str | None:
    """Where the first key or text value holding a NUL character is, or None."""
    if isinstance(value, str):
        return where if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        at = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key)
        if isinstance(key, str) and "\x00" in key:
            return at.replace("\x00", "\\u0000")
        found = _nul_character(item, at)
        if found is not None:
            return found
    return None


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


def normalize(raw: Any, base_dir: Path, source: Path | None = None, sources_here: bool = True) -> WorkflowConfig:
    """Normalise a parsed config (any supported schema) into a validated `WorkflowConfig`; `sources_here=False`
    (a Ray worker) leaves out the checks that the input model and Hub datasets are on this machine."""
    c = Collector(sources_here)
    if not isinstance(raw, dict):
        raise ConfigError([Problem("", f"the config must be a mapping of sections, found {type(raw).__name__}")],
                          str(source) if source else None)
    nul = _nul_character(raw, "")
    if nul is not None:  # no path, name or option holds one; the file system refuses it
        raise ConfigError([Problem(nul, "holds a NUL character (\\u0000), which no path, name or option can hold",
                                   "Remove it.")], str(source) if source else None)
    style = _detect_style(raw)
    c.unknown_keys(raw, TOP_KEYS, "")
    engine_raw, engine_path = engine_section(raw, c)
    systems = systems_section(raw.get("systems"), base_dir, c)
    model = input_model(raw.get("input_model"), base_dir, c)
    data = data_configs(raw.get("data_configs", []), base_dir, c, olive=style != "modelpress")
    search = search_section(engine_raw, engine_path, c)
    if style != "modelpress" and search.enabled:  # Olive's schema: its search behaves as Olive's does
        search = olive_search(search, engine_path, c)
    passes = _passes(raw.get("passes", {}), search, base_dir, c)
    if style != "modelpress" and search.enabled and passes:
        note_unsearched(passes, c)
    for p in passes or [] if style != "modelpress" else []:  # Olive's schema, which an Olive user reads as Olive
        if isinstance(p.params, LoRAParams):
            _note_olive_defaults(p.params, p.type, f"passes.{p.name}", c)
    if kv_cache_asked(raw.get("input_model"), style):
        _export_kv_cache(passes or [], c)
    engine_config = engine(engine_raw, engine_path, systems, base_dir, c)
    evaluation = evaluation_section(raw, engine_raw, c)
    evaluator = evaluator_section(raw, engine_raw, base_dir, c)
    if model and engine_config and passes is not None:
        check_workflow(model, data, passes, engine_config, evaluation, search, evaluator, c)
        check_hosts(passes, systems, engine_config.host, engine_config.target, c, bool(model.gguf_file))
    if c.problems:
        raise ConfigError(c.problems, str(source) if source else None)
    return WorkflowConfig(source=source, schema_style=style, input_model=model, data_configs=data,
                          passes=passes, evaluation=evaluation, evaluator=evaluator, search=search,
                          engine=engine_config, systems=systems, raw=raw, base_dir=base_dir, warnings=c.warnings,
                          notes=c.notes)


def _export_kv_cache(passes: list[PassConfig], c: Collector) -> None:
    """OnnxConversion exports a KV cache where the input model's task asks for one (Olive's "-with-past", its default
    task), unless the pass sets use_kv_cache itself."""
    for p in passes:
        for option in [p, *p.alternatives]:
            if option.type == "OnnxConversion" and "use_kv_cache" not in option.params.model_fields_set | set(
                    option.search_space):
                option.params.use_kv_cache = True
                c.note(f"passes.{p.name}.use_kv_cache: true, as the input model's task asks (text-generation-with-past, "
                       "Olive's default); set it to false for a graph without past key/values")


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
        if isinstance(spec.get("type"), str) and pass_type(spec["type"]) is None:  # "lora" is LoRA: none needed
            load_entry_points(spec["type"])
        return True
    typ = spec.get("type")
    builtin = pass_type(typ) if isinstance(typ, str) else None
    if builtin is not None and CATALOG[builtin].origin == "built-in":  # the script is not run
        c.add(f"{path}.user_script", f"the built-in pass {builtin} runs no user script (Olive's recipes name one "
              "for a data loader)", "Remove user_script; a pass that calibrates reads a data config (data_config).")
        return False
    found = script_paths(spec, base_dir, path, c)
    if found is None:
        return False
    file = found["user_script"]
    try:
        names = load_script(file, found.get("script_dir"))
    except PluginError as err:
        c.add(f"{path}.user_script", str(err), "Fix the script: it must define a subclass of modelpress.plugin.Pass.")
        return False
    if spec.get("type") not in names:
        c.add(f"{path}.type", f"{file.name} defines {', '.join(names)}, not {spec.get('type')!r}",
              "Set type to the name of one of the script's passes.")
        return False
    return True


SEARCHABLE_VALUES = "SEARCHABLE_VALUES"  # Olive's marker: search this param over its declared values
DEFAULT_VALUE = "DEFAULT_VALUE"  # Olive's marker: the param's default


def _takes_none(info) -> bool:
    return info.default is None or type(None) in typing.get_args(info.annotation)


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
        if value == DEFAULT_VALUE or (value is None and not _takes_none(info)):
            continue  # as in Olive, where null is the default of such params: the param's default
        if isinstance(value, dict) and value.get("olive_parameter_type") == "SearchParameter":
            if value.get("type") == "Categorical" and isinstance(value.get("support"), list) and value["support"]:
                space[name] = value["support"]  # Olive's written-out Categorical: its values are searched
            else:
                c.add(f"{where}.{key}", f"Olive's {value.get('type')!r} search parameter is not read here",
                      f"List the values to try, e.g. {key}: [a, b].")
            continue
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
    """Each searched value validated with some combination of the other searched keys' values that it goes with
    (an error names the value when it goes with none); coerced values returned. Which combinations go together is
    `searched_params`' to say."""
    out = {}
    for name, values in space.items():
        good = []
        for i, value in enumerate(values):
            trial = _first_valid(params_model, fixed, {**space, name: [value]})
            if trial is None:  # with no combination: the error of the first, naming this value
                trial = c.validate(params_model, {**fixed, **{k: v[0] for k, v in space.items()}, name: value},
                                   f"{where}.{name}[{i}]", lambda _key, i=i: f"{where}.{name}[{i}]")
            if trial is not None:
                good.append(getattr(trial, name))
        if len(good) != len(values):
            return None
        unique = [v for i, v in enumerate(good) if v not in good[:i]]  # 16 and 16.0 alike, once coerced
        if len(unique) < len(good):
            c.warn(f"{where}.{name}: {len(good) - len(unique)} repeated value(s) left out; each value is one "
                   f"candidate: {unique}")
        out[name] = unique
    return out


def _first_valid(params_model, fixed: dict, space: dict[str, list]):
    """The params of the first combination of `space`'s values that validates with `fixed`, or None."""
    import itertools

    from pydantic import ValidationError

    for values in itertools.product(*space.values()):
        try:
            return params_model.model_validate({**fixed, **dict(zip(space, values))})
        except ValidationError:
            continue
    return None


def pass_type(typ: str) -> str | None:
    """The catalog name of a pass type; Olive matches pass types case-insensitively, and so does modelpress."""
    return typ if typ in CATALOG else {name.lower(): name for name in CATALOG}.get(typ.lower())


def _refuse_pass(typ: object, path: str, c: Collector) -> None:
    supported = ", ".join(CATALOG)
    vendor = {name.lower(): (name, hw) for name, hw in VENDOR_PASSES.items()}
    olive = {name.lower(): name for name in OLIVE_ONLY_PASSES}
    if typ is None:
        c.add(f"{path}.type", "required key is missing", f"Supported passes: {supported}.")
    elif not isinstance(typ, str):
        c.add(f"{path}.type", f"must be a pass name, found {typ!r}", f"Supported passes: {supported}.")
    elif typ.lower() in vendor:
        name, hardware = vendor[typ.lower()]
        c.add(f"{path}.type", f"Olive's pass {name!r} is for {hardware}, which modelpress does not target",
              f"{TARGETS}: remove this pass, or run this recipe with Olive on that hardware.")
    elif typ.lower() in olive:
        name = olive[typ.lower()]
        c.add(f"{path}.type", f"Olive's pass {name!r} is not in modelpress",
              f"Use {OLIVE_ONLY_PASSES[name]}, or add it as a plugin pass (docs/plugins.md).")
    else:
        c.add(f"{path}.type", f"unknown pass type {typ!r}", did_you_mean(typ, CATALOG) or f"Supported passes: {supported}.")


def _drop_inert(flat: dict, typ: str, where: str, c: Collector) -> dict:
    """Olive keys of this pass that mean nothing here: taken out, each with a warning saying why."""
    inert = dict(INERT_PASS_KEYS.get(typ.lower(), {}))
    if {ONNX, ONNX_GENAI} & set(CATALOG[typ].accepts) or CATALOG[typ].produces == ONNX:
        inert.update(EXTERNAL_DATA_KEYS)
    for key in [k for k in flat if k in inert and k not in CATALOG[typ].params.model_fields]:
        c.warn(f"{where}.{key}: accepted and not used: {inert[key]}.")
        flat.pop(key)
    if isinstance(flat.get("training_args"), dict):
        flat["training_args"] = _training_args(dict(flat["training_args"]), f"{where}.training_args", c)
    for key, name in RENAMED_PASS_KEYS.get(typ.lower(), {}).items():
        if key in flat and name not in flat:
            flat[name] = flat.pop(key)
    for key, (values, replacement, why) in VALUE_FALLBACKS.get(typ.lower(), {}).items():
        if flat.get(key) in values:
            c.warn(f"{where}.{key}: {flat[key]!r} is read as {replacement!r}: {why}.")
            flat[key] = replacement
    return flat


def _training_args(args: dict, where: str, c: Collector) -> dict:
    """Olive's training_args: its nested extra_args read as training_args, and TrainingArguments keys that change
    nothing here taken out with a warning."""
    extra = args.pop("extra_args", None)
    if isinstance(extra, dict):
        args = nested_wins(extra, args, f"{where}.extra_args", c)
    elif extra is not None:
        c.add(f"{where}.extra_args", f"must be a mapping of TrainingArguments keys, found {type(extra).__name__}")
    for key in [k for k in args if k in INERT_TRAINING_KEYS]:
        c.warn(f"{where}.{key}: accepted and not used: {INERT_TRAINING_KEYS[key]}.")
        args.pop(key)
    if args.get("optim") in ("adamw_torch", "adamw_torch_fused"):  # what modelpress trains with
        args.pop("optim")
    elif args.get("optim") in ("paged_adamw_32bit", "adamw_hf"):  # QLoRA's default in Olive; the same update
        c.warn(f"{where}.optim: {args.pop('optim')!r} is read as torch's AdamW: the same update with 32-bit state, "
               "which is not paged to the CPU here.")
    elif "optim" in args:
        c.add(f"{where}.optim", f"found {args.pop('optim')!r}: modelpress trains with torch's AdamW",
              "Remove optim (or write adamw_torch); adam_beta1, adam_beta2, adam_epsilon and weight_decay set it.")
    return args


def _pass(name: str, spec: dict, path: str, base_dir: Path, c: Collector) -> PassConfig | None:
    if not _load_plugins(spec, path, base_dir, c):
        return None
    typ = spec.get("type")
    typ = pass_type(typ) if isinstance(typ, str) else None
    if typ is None:
        _refuse_pass(spec.get("type"), path, c)
        return None
    host = spec.get("host")
    if host is not None and not isinstance(host, str):
        c.add(f"{path}.host", f"found {type(host).__name__} {host!r}: host names a system",
              "Define the system under `systems` (a name, then its type and settings) and give its name here.")
        host = None
    if spec.get("evaluator") is not None:  # Olive's RunPassConfig field: this pass's output measured by it
        c.warn(f"{path}.evaluator: accepted and not used: a search measures every candidate, whatever its last "
               "pass, with the workflow's evaluator (engine.evaluator).")
    scripted = ("user_script", "script_dir") if "user_script" in spec else ("user_script",)
    flat, where = unwrap({k: v for k, v in spec.items() if k not in ("type", "host", "evaluator", *scripted)},
                         "config", path, c)
    flat = _drop_inert(flat, typ, where, c)
    params_model = CATALOG[typ].params
    flat, space = _split_search(flat, params_model, CATALOG[typ], where, c)
    # the step's params: the first combination of searched values that goes together (else the first's errors)
    params = _first_valid(params_model, flat, space) if space else None
    params = params or c.validate(params_model, {**flat, **{k: v[0] for k, v in space.items()}}, where)
    if params is None:
        return None
    space = _validated_space(params_model, flat, space, where, c)
    if space is None:
        return None
    good, refused = searched_params(params, space)
    if refused:
        shown = ", ".join(f"{k}={v!r}" for k, v in refused[0][0].items())
        total = len(good) + len(refused)  # the first combination is `params`, valid: some always remain
        c.warn(f"{where}: {len(refused)} of {total} combinations of the searched values do not go together and are "
               f"left out of the search, as Olive prunes them (for one, {shown}: {refused[0][1]})")
    if isinstance(params, LoRAParams) and not isinstance(params, QLoRAParams):
        _warn_4bit_options(params, typ, path, c)
    if isinstance(params, LoHaParams) and "lora_dropout" in params.model_fields_set:
        c.warn(f"{path}.lora_dropout: a {typ} adapter has no LoRA dropout, and ignores it (as Olive does); its own "
               "are rank_dropout and module_dropout")
    return PassConfig(name=name, type=typ, params=params, search_space=space, host=host)


def _note_olive_defaults(params: LoRAParams, typ: str, path: str, c: Collector) -> None:
    """An Olive config that leaves out a training key Olive gives another default: what it trains with here."""
    args = params.training_args
    left = [(k, getattr(params, k), v) for k, v in OLIVE_TRAINING_DEFAULTS.items() if k not in params.model_fields_set]
    olive_schedule = args.lr_scheduler_type if "lr_scheduler_type" in args.model_fields_set else \
        OLIVE_TRAINING_ARGS_DEFAULTS["lr_scheduler_type"]
    left += [(f"training_args.{k}", getattr(args, k), v) for k, v in OLIVE_TRAINING_ARGS_DEFAULTS.items()
             if k not in args.model_fields_set and not (k == "num_train_epochs" and args.max_steps > 0)
             and not (k == "warmup_ratio" and olive_schedule == "constant")]  # Olive's constant reads no warmup
    if "eval_strategy" not in args.model_fields_set and (params.eval_dataset_size or params.eval_data_config):
        left.append(("training_args.eval_strategy", args.eval_strategy, "steps"))
    if isinstance(params, QLoRAParams) and "target_modules" not in params.model_fields_set:
        left.append(("target_modules", "peft's default for the model", "every 4-bit linear layer"))
    if left:
        c.note(f"{path}: keys left out take modelpress's defaults where Olive 0.13's differ: "
               + ", ".join(f"{k} {here} (Olive: {olive})" for k, here, olive in left)
               + f". Write them in the {typ} pass to train as Olive does.")


def _warn_4bit_options(params: LoRAParams, typ: str, path: str, c: Collector) -> None:
    used = [k for k in ("double_quant", "quant_type", "compute_dtype") if getattr(params, k) is not None]
    if used:
        one = len(used) == 1
        c.warn(f"{path}: {', '.join(used)} {'applies' if one else 'apply'} to 4-bit QLoRA only; this {typ} pass "
               f"trains the full-precision base and ignores {'it' if one else 'them'} (use type 'QLoRA' to train on "
               "a 4-bit base).")
