"""`data_configs`: each schema era's spelling of a data config, normalised into `DataConfig`.

- Olive 0.13: `load_dataset_config` + `pre_process_data_config` (keys flat);
- the seed's Olive 0.5/0.6: the same sections with their keys under `params`;
- the Phi-3 cookbook's older Olive 0.5: one `params_config` holding the load keys, with the
  pre-processing keys under `component_kwargs.pre_process_data`.
`data_name` is a file format (json, csv, parquet) for local files, or a Hub dataset id.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

from modelpress.config.collector import Collector, as_mapping, unwrap
from modelpress.config.olive_tables import INERT_DATA_KEYS
from modelpress.config.schema import DataConfig, split_name
from modelpress.config.paths import local_path, shadowing_folder

# keys by which a data config says where its text comes from; with none, an Olive config reads the column `text`
OWN_TEXT_KEYS = ("text_template", "text_cols", "input_cols", "chat_template", "use_chat_template", "chat_columns",
                 "label_col", "text_formatting_func")
FORMATS = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet"}
CONTAINER_KEYS = ("name", "type", "load_dataset_config", "pre_process_data_config", "dataloader_config",
                  "post_process_data_config", "user_script", "script_dir", "params_config")
LOAD_KEYS = ("data_name", "data_files", "split", "subset", "revision", "data_dir", "col_filters")
# datasets' packaged loaders other than the formats above: names, not Hub ids
OTHER_BUILDERS = ("text", "arrow", "pandas", "sql", "spark", "generator", "webdataset", "xml", "imagefolder",
                  "audiofolder", "videofolder", "pdffolder", "hdf5", "cache")
EXTENSIONS = {"json": (".json", ".jsonl"), "csv": (".csv",), "parquet": (".parquet",)}
# component_kwargs sections of the cookbook's layout, and the Olive 0.13 section each one is
COMPONENTS = {"load_dataset": "load_dataset_config", "pre_process_data": "pre_process_data_config",
              "post_process_data": "post_process_data_config", "dataloader": "dataloader_config"}


def data_configs(raw: Any, base_dir: Path, c: Collector, olive: bool = False) -> dict[str, DataConfig]:
    """Every data config by name; problems are collected with the key path the user wrote. In an Olive config
    (`olive`), rows with neither a template nor text columns are read from the column `text`, as Olive does."""
    if not isinstance(raw, list):
        c.add("data_configs", f"must be a list of data configs, found {type(raw).__name__}")
        return {}
    configs: dict[str, DataConfig] = {}
    for i, item in enumerate(raw):
        path = f"data_configs[{i}]"
        if as_mapping(item, path, c) is None:
            continue
        config = _data_config(item, path, base_dir, c, olive)
        if config is None and isinstance(item.get("name"), str):
            c.failed_data.add(item["name"])
        if config and config.name in configs:
            c.add(f"{path}.name", f"duplicate data config name {config.name!r}", "Give each data config its own name.")
        elif config:
            configs[config.name] = config
    return configs


# Olive sections modelpress reads nothing from, and what sets the same thing here
UNREAD_SECTIONS = {
    "dataloader_config": "batches are set where they are used: training_args.per_device_train_batch_size, "
                         "evaluation.batch_size, and a calibrating pass's own keys (calibration_samples)",
    "post_process_data_config": "labels come from the template's last field or label_col, as the task needs",
}


def _data_config(raw: dict, path: str, base_dir: Path, c: Collector, olive: bool = False) -> DataConfig | None:
    c.unknown_keys(raw, CONTAINER_KEYS, path)
    if raw.get("type", "HuggingfaceContainer") != "HuggingfaceContainer":
        c.add(f"{path}.type", f"data container {raw['type']!r} is not supported",
              "Use 'HuggingfaceContainer' with local files or a Hub dataset.")
    if "user_script" in raw:
        c.add(f"{path}.user_script", "data user scripts are not supported yet",
              "Describe the data with data_files and text_template or chat_template instead.")
    sections = _sections(raw, path, c)
    for key, instead in UNREAD_SECTIONS.items():
        if sections[key][0]:
            c.note(f"{sections[key][1]}: accepted and not used: {instead}.")
    for section, keys in INERT_DATA_KEYS.items():
        found, where = sections[section]
        for key in [k for k in found if k in keys and found[k] not in (None, False)]:
            c.warn(f"{where}.{key}: accepted and not used: {keys[key]}.")
        sections[section] = ({k: v for k, v in found.items() if k not in keys}, where)
    (load, load_path), (pre, pre_path) = sections["load_dataset_config"], sections["pre_process_data_config"]
    load_fields = _load_fields(load, load_path, base_dir, c)
    if load_fields is None:
        return None
    if load.get("col_filters") is not None:  # rows kept by column value, whatever the source
        load_fields["col_filters"] = load["col_filters"]
    data = {**pre, **load_fields, "name": raw.get("name")}
    if "chat_template" in data and "use_chat_template" in data:
        c.add(f"{pre_path}.use_chat_template", "chat_template is given too: the two spellings are one key",
              "Keep one of them.")
        return None
    # a chat template turned off (false) names no text: Olive's default text column holds
    if olive and not any(k in data and data[k] not in (None, False) for k in OWN_TEXT_KEYS):
        data["text_cols"] = ["text"]  # Olive's text-generation default (its TextGenParams.text_cols)
        c.note(f"{path}: no text_template, text_cols or chat template: each row's 'text' column is the text, as "
               "in Olive")

    def where(key: str) -> str:
        return pre_path if key in pre else (load_path if key in load_fields else path)

    config = c.validate(DataConfig, data, path, where)
    if config is not None and config.chat and config.add_special_tokens:
        # the template writes the model's own BOS and end-of-turn tokens: another pair would double them
        c.warn(f"{pre_path}.add_special_tokens: a chat template writes the model's own special tokens, so "
               "true is ignored for chat data (as in Olive); remove the key")
        config.add_special_tokens = False
    if config is not None and config.label_col and not config.text_template and len(config.text_cols or []) > 2:
        c.warn(f"{pre_path}.text_cols: a classifier's {len(config.text_cols)} text columns are joined by a space "
               "into one text (two are encoded as a sentence pair, as Olive does); a text_template can put "
               "separators between them")
    return config


def _sections(raw: dict, path: str, c: Collector) -> dict[str, tuple[dict, str]]:
    """(keys, path) of each Olive 0.13 section, read from whichever layout the config uses."""
    out = {name: _section(raw, name, path, c) for name in COMPONENTS.values()}
    legacy = raw.get("params_config")
    if legacy is None or as_mapping(legacy, f"{path}.params_config", c) is None:
        return out
    legacy = dict(legacy)
    components = legacy.pop("component_kwargs", None) or {}
    base = f"{path}.params_config"
    if as_mapping(components, f"{base}.component_kwargs", c) is None:
        components = {}
    c.unknown_keys(components, COMPONENTS, f"{base}.component_kwargs")
    load = {k: legacy.pop(k) for k in LOAD_KEYS if k in legacy}
    load.update(components.get("load_dataset") or {})
    out["load_dataset_config"] = ({**out["load_dataset_config"][0], **load}, base)
    pre = components.get("pre_process_data") or {}
    out["pre_process_data_config"] = ({**out["pre_process_data_config"][0], **legacy, **pre},
                                      f"{base}.component_kwargs.pre_process_data" if pre else base)
    return out


# Olive's component types (by section) whose keys modelpress reads as Olive does; another type (a dummy dataset,
# NER or audio pre-processing) would be read as plain text rows, so it is refused. None: any type (not read here).
COMPONENT_TYPES = {
    "load_dataset_config": ("huggingface_dataset",),
    "pre_process_data_config": ("huggingface_pre_process", "text_generation_huggingface_pre_process",
                                "pre_process"),
    "dataloader_config": None,
    "post_process_data_config": None,
}


def _section(raw: dict, key: str, path: str, c: Collector) -> tuple[dict, str]:
    section = raw.get(key) or {}
    if as_mapping(section, f"{path}.{key}", c) is None:
        return {}, f"{path}.{key}"
    typ = section.get("type")
    allowed = COMPONENT_TYPES[key]
    if typ is not None and allowed is not None and str(typ).lower() not in allowed:
        c.add(f"{path}.{key}.type", f"Olive's {typ!r} component is not supported: modelpress reads rows with "
              "datasets and renders them from text or chat templates",
              f"Use {' or '.join(allowed)}, or leave type out.")
    flat, where = unwrap(dict(section), "params", f"{path}.{key}", c)
    flat.pop("type", None)
    return flat, where


def _load_fields(load: dict, path: str, base_dir: Path, c: Collector) -> dict | None:
    from modelpress.hub import is_hub_id

    name = load.get("data_name")
    c.unknown_keys(load, LOAD_KEYS, path)
    if name is None:
        c.add(f"{path}.data_name", "required key is missing",
              "Set it to json, csv or parquet (local files), or to a Hugging Face Hub dataset id.")
        return None
    if isinstance(name, str) and name in FORMATS:
        return _local_files(load, FORMATS[name], path, base_dir, c)
    if isinstance(name, str) and name in OTHER_BUILDERS:
        c.add(f"{path}.data_name", f"datasets' {name!r} loader is not supported",
              "Save the rows as json, jsonl, csv or parquet and set data_name to that format.")
        return None
    folder = local_path(name, base_dir, f"{path}.data_name", c) if isinstance(name, str) else None
    if isinstance(name, str) and folder is None:  # a URL, or an unknown ~user: said
        return None
    if folder is not None and folder.is_dir():  # a local dataset folder, which datasets (and Olive) read first
        return _local_folder(load, folder, path, base_dir, c)
    if folder is not None and folder.is_file():  # it was taken for a Hub id, and the run went to look for it
        c.add(f"{path}.data_name", f"{name!r} is a local file, and data_name is a format or a Hub dataset id",
              f"Set data_name to the file's format ({', '.join(FORMATS)}) and list the file in data_files.")
        return None
    first = shadowing_folder(name, folder, base_dir) if folder is not None else None
    if first is not None:
        c.add(f"{path}.data_name", f"no local folder {folder}", f"It is read as a path because a folder {first!r} "
              f"is beside the config; for the Hub dataset {name!r}, move or rename that folder.")
        return None
    if isinstance(name, str) and is_hub_id(name):
        return _hub_dataset(load, name, path, c)
    c.add(f"{path}.data_name", f"found {name!r}: neither a file format nor a Hub dataset id",
          "Set data_name to json, csv or parquet with local data_files, or to a Hub id such as 'org/name'.")
    return None


def _files(load: dict, path: str, c: Collector) -> list[str] | None:
    files = load.get("data_files")
    if isinstance(files, dict) and "type" not in files:  # split -> files, as datasets reads it: the split's
        split = split_name(load.get("split"))[0]
        if split not in files:
            c.add(f"{path}.data_files", f"names the splits {', '.join(map(repr, files))}, and split is "
                  f"{load.get('split') or 'train'!r}", "Set split to one of them.")
            return None
        files = files[split]
    elif isinstance(files, dict):
        c.add(f"{path}.data_files", f"data source {files.get('type')!r} is not supported; modelpress "
              "reads local files and Hugging Face Hub datasets", "Download the data and list the file paths.")
        return None
    files = [] if files is None else [files] if isinstance(files, str) else files
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        c.add(f"{path}.data_files", f"must be a path or a list of paths, found {files!r}")
        return None
    return files


def _local_files(load: dict, fmt: str, path: str, base_dir: Path, c: Collector) -> dict | None:
    """The files, as datasets finds them: relative to data_dir when it is given (every file of the format
    there when data_files is not), glob patterns expanded."""
    files = _files(load, path, c)
    if files is None:
        return None
    data_dir = load.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        c.add(f"{path}.data_dir", f"must be a folder path, found {data_dir!r}")
        return None
    root = local_path(data_dir, base_dir, f"{path}.data_dir", c) if data_dir else base_dir
    if root is None:
        return None
    by_split = False
    if data_dir and not files:  # the split's files, found as datasets (and so Olive) finds them by their names
        found = _split_files(root, fmt)
        name = split_name(load.get("split"))[0]
        if not found:
            c.add(f"{path}.data_dir", f"holds no {'/'.join(EXTENSIONS[fmt])} file: {root}",
                  "List the files in data_files, or check the folder.")
            return None
        if name not in found:
            c.add(f"{path}.split", f"{root} holds files of the split(s) {', '.join(map(repr, found))}, not {name!r} "
                  "(datasets tells them by name: train*, validation*, test*)", "Set split to one of them.")
            return None
        files, by_split = found[name], True
    if not files:
        c.add(f"{path}.data_files", "required key is missing", "List the local data files.")
        return None
    resolved, known = [], len(c.problems)
    relative_to = "Paths are relative to " + ("data_dir." if data_dir else "the config file's folder.")
    for i, file in enumerate(files):
        if any(ch in file for ch in "*?["):
            pattern = local_path(file, root, f"{path}.data_files[{i}]", c)
            if pattern is None:
                continue
            pattern = str(pattern)
            matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True) if Path(m).is_file())
            if not matches:
                c.add(f"{path}.data_files[{i}]", f"no file matches {file!r} in {root}", relative_to)
            resolved += [m.resolve() for m in matches]
            continue
        local = local_path(file, root, f"{path}.data_files[{i}]", c)
        if local is None:
            continue
        resolved.append(local)
        if not resolved[-1].is_file():
            c.add(f"{path}.data_files[{i}]", f"file not found: {resolved[-1]}", relative_to)
    if len(c.problems) > known and not resolved:
        return None
    # a split -> files mapping (or a data_dir's split) is resolved to the split's files above: datasets names those
    # files' rows "train"; a slice (train[:50%]) applies to all of them at once
    cut = split_name(load.get("split"))[1]
    split = "train" + cut if isinstance(load.get("data_files"), dict) or by_split else load.get("split", "train")
    return {"data_files": resolved, "format": fmt, "split": split}


def _local_folder(load: dict, folder: Path, path: str, base_dir: Path, c: Collector) -> dict | None:
    """data_name naming a local folder of data files: read as datasets reads one, its format from its files."""
    data_dir = load.get("data_dir")
    root = folder / data_dir if isinstance(data_dir, str) else folder
    found = _files_by_split(root)  # listed once for the three formats
    formats = [fmt for fmt in EXTENSIONS if _of_format(found, fmt)]
    if len(formats) != 1:
        c.add(f"{path}.data_name", f"the folder {root} holds {'no' if not formats else ' and '.join(formats)} "
              "data files", "Name a folder of json/jsonl, csv or parquet files, or set data_name to the format "
              "and list data_files.")
        return None
    return _local_files({**load, "data_dir": str(root)}, formats[0], path, base_dir, c)


def _split_files(root: Path, fmt: str) -> dict[str, list[str]]:
    """{split: its files of this format} in a folder (subfolders too), as datasets assigns them by name."""
    return _of_format(_files_by_split(root), fmt)


def _files_by_split(root: Path) -> dict[str, list[str]]:
    """{split: its files} in a folder (subfolders too), as datasets assigns them by name."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    if not root.is_dir():
        return {}
    try:
        found = DataFilesDict.from_patterns(get_data_patterns(str(root)), str(root))
    except Exception:  # datasets' EmptyDatasetError: nothing in the folder
        return {}
    return {str(split): list(files) for split, files in found.items()}


def _of_format(found: dict[str, list[str]], fmt: str) -> dict[str, list[str]]:
    out = {split: sorted(f for f in files if Path(f).suffix.lower() in EXTENSIONS[fmt])
           for split, files in found.items()}
    return {split: files for split, files in out.items() if files}


def _hub_dataset(load: dict, name: str, path: str, c: Collector) -> dict | None:
    """A Hub dataset: validated without the network; says whether the local cache holds it."""
    files = _files(load, path, c)
    wrong = [key for key in ("revision", "subset", "data_dir", "split")
             if load.get(key) is not None and not isinstance(load[key], str)]
    for key in wrong:  # checked before the cache is asked, which reads them as text
        c.add(f"{path}.{key}", f"must be a string, found {type(load[key]).__name__} {load[key]!r}",
              f'Quote it: "{key}": "{load[key]}".')
    if files is None or wrong:
        return None
    revision = load.get("revision")
    if "split" not in load:  # a default that differs from Olive's could evaluate on training rows: said
        c.warn(f"{path}.split: not given, so modelpress reads the 'train' split of {name!r} (Olive reads "
               "'validation'); set split to the one meant")
    if c.sources_here:
        _say_if_cached(name, revision, files, load, path, c)
    split = load.get("split", "train")
    if isinstance(load.get("data_files"), dict):  # the split's files, which datasets reads as its "train"
        split = "train" + split_name(split)[1]
    return {"hub_id": name, "data_files": files, "revision": revision, "subset": load.get("subset"),
            "data_dir": load.get("data_dir"), "split": split}


def _say_if_cached(name: str, revision: str | None, files: list[str], load: dict, path: str, c: Collector) -> None:
    """A note when the local cache holds the Hub dataset or it can be downloaded; an error when it can do neither."""
    from modelpress.errors import DataError
    from modelpress.hub import cached_snapshot, dataset_files, dataset_missing, fetch_hint, offline, offline_said

    rev = f" at revision {revision!r}" if revision else ""
    try:
        patterns = dataset_files(name, revision, files, load.get("data_dir"), load.get("subset"), fetch=False)
    except DataError as err:  # the cached card does not name the subset
        c.add(f"{path}.subset", str(err))
        return
    local = cached_snapshot(name, revision, "dataset", patterns, judged=offline("dataset") and patterns is not None)
    check = dataset_missing(patterns)
    lacking = check(local) if local is not None and check is not None else []
    if local is not None and not lacking:
        c.note(f"{path}.data_name: Hub dataset {name!r}{rev} is in the local Hugging Face cache.")
    elif lacking and offline("dataset"):
        c.add(f"{path}.data_name", f"Hub dataset {name!r}{rev} is in the local Hugging Face cache without "
              f"{', '.join(lacking)}, and {offline_said('dataset')}",
              fetch_hint(name, revision, "dataset", patterns) + ".")
    elif offline("dataset"):
        c.add(f"{path}.data_name", f"Hub dataset {name!r}{rev} is not in the local Hugging Face cache and "
              f"{offline_said('dataset')}", fetch_hint(name, revision, "dataset", patterns) + ".")
    else:
        c.note(f"{path}.data_name: Hub dataset {name!r}{rev} is not in the local Hugging Face cache; "
               "`modelpress run` will download it.")
