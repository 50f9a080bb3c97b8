"""Models and datasets named by Hugging Face Hub id, resolved to a local snapshot folder.

Offline first: a repo already in the local Hugging Face cache is used as it is, without any
network call. Only when it is missing, and `HF_HUB_OFFLINE` is not set, is it downloaded by
`huggingface_hub`, which reads a token from `HF_TOKEN` or the `hf auth login` store itself:
modelpress never sees, logs or saves the token.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from modelpress.errors import ModelpressError
from modelpress.fsutil import read_json

log = logging.getLogger("modelpress")

# `name` or `org/name`, as the Hub spells repo ids (letters, digits, '-', '_', '.').
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")

# What a model snapshot needs: configs, safetensors weights, tokenizer files, chat templates.
# Pickled *.bin weights and ONNX exports that some repos also carry are never fetched. Weights are the
# names transformers loads (model.safetensors, or the model-0000N-of-0000M shards its index names): a
# pattern matches a whole path, so Mistral's consolidated.safetensors copy and fine-tune repos'
# checkpoint-*/model.safetensors stay on the Hub.
MODEL_FILES = ["*.json", "model*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


def is_hub_id(value: str) -> bool:
    """True when `value` has the shape of a Hub repo id (it may still not exist): huggingface_hub's own
    rules (no '--' or '..', no '.git' ending, at most 96 characters), and not a file name."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not _HUB_ID.match(value) or value.endswith((".json", ".gguf")):
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


# A tokenizer's files, one of which a model folder needs: a fast tokenizer's JSON, BPE's vocab.json, WordPiece's
# vocab.txt (BERT), a SentencePiece model (tokenizer.model, spiece.model, sentencepiece.bpe.model), tiktoken ranks.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "*.model", "*.tiktoken")


def has_tokenizer(folder: Path) -> bool:
    """Whether `folder` holds a tokenizer's files (TOKENIZER_FILES)."""
    return any(path.is_file() for pattern in TOKENIZER_FILES for path in folder.glob(pattern))  # a broken link: none


def model_patterns(trust_remote_code: bool, gguf_file: str | None) -> list[str]:
    """The files of a model repo that modelpress downloads, and asks the cache for: for a GGUF file, that file
    and the small config files beside it (the GGUF file holds the weights and the tokenizer, and a repo's other
    quantizations or safetensors weights are not read)."""
    code = ["*.py"] if trust_remote_code else []
    return ["*.json", "*.jinja", gguf_file, *code] if gguf_file else MODEL_FILES + code


CARD = "README.md"  # a dataset's card; its YAML `configs` names each subset's files


def dataset_patterns(data_files: list, data_dir: str | None) -> list[str] | None:
    """The files of a dataset repo to fetch: the named data files (or the data_dir) and the dataset card,
    which may name its subsets; None (the whole repo) when neither is given."""
    prefix = f"{data_dir.strip('/')}/" if data_dir else ""
    if data_files:  # datasets' ** also matches no folder at all, the download filter's needs one: both asked
        named = [prefix + str(f) for f in data_files]
        return [*named, *(f.replace("**/", "") for f in named if "**/" in f), CARD]
    return [f"{prefix}*", CARD] if data_dir else None


def subset_patterns(snapshot: Path | None, subset: str) -> list[str] | None:
    """What `datasets` reads to load `subset` from a local copy of a dataset whose card (README.md in
    `snapshot`) names it in its YAML `configs`: the subset's files (its data_files, under its data_dir), the
    first config's (datasets infers the file format from them), the folders of configs given by data_dir alone
    (it lists them), and the card. None (the whole repo) when there is no card, the card does not name the
    subset, or a config names no files at all."""
    from huggingface_hub.repocard import metadata_load

    if snapshot is None or not (snapshot / CARD).is_file():
        return None
    configs = [c for c in (metadata_load(snapshot / CARD) or {}).get("configs") or [] if isinstance(c, dict)]
    entry = next((c for c in configs if c.get("config_name") == subset), None)
    if entry is None and configs:  # a mistyped subset: not the whole repo (many GB) to learn it is wrong
        from modelpress.errors import DataError

        names = [str(c.get("config_name", "default")) for c in configs]
        raise DataError(f"subset {subset!r} is not one of the dataset's subsets ({', '.join(names)}), as its "
                        "card lists them. Set subset to one of them.")
    if entry is None:
        return None
    patterns = []
    for config in [entry, configs[0], *(c for c in configs if not c.get("data_files"))]:
        named = dataset_patterns(_card_paths(config.get("data_files")), config.get("data_dir"))
        if named is None:
            return None
        # huggingface_hub matches with fnmatch, where * also crosses folders but "a/**/b" needs one folder
        # between; datasets' "**" matches none too: dataset_patterns gives both forms
        patterns += named
    return list(dict.fromkeys(patterns))


def dataset_missing(patterns: list[str] | None) -> Callable[[Path], list[str]] | None:
    """The check a cached dataset snapshot must pass (see `snapshot`'s `missing`): each file named without a
    wildcard is there, and each pattern (with or without its `**/`) matches a file. None for the whole repo.
    datasets' own downloads (`load_dataset` of a Hub id) fill the same cache file by file and leave no list of
    the repo's files, by which huggingface_hub would call such a snapshot incomplete."""
    if patterns is None:
        return None
    groups: dict[str, list[str]] = {}
    for pattern in patterns:
        if pattern != CARD:  # a dataset needs no card
            groups.setdefault(pattern.replace("**/", ""), []).append(pattern)

    def missing(folder: Path) -> list[str]:
        from fnmatch import fnmatch

        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        return [group[0] for group in groups.values()
                if not any(fnmatch(f, pattern) for pattern in group for f in files)]
    return missing


def _card_paths(files) -> list[str]:
    """A card's `data_files`: a path, a list of paths, or a list of {split, path} (path: one or a list)."""
    paths = []
    for item in files if isinstance(files, list) else [files] if files else []:
        path = item.get("path") if isinstance(item, dict) else item
        paths += [path] if isinstance(path, str) else list(path or [])
    return paths


def dataset_files(repo_id: str, revision: str | None, data_files: list, data_dir: str | None, subset: str | None,
                  key: str = "", fetch: bool = True) -> list[str] | None:
    """What to fetch of a Hub dataset (see `dataset_patterns`); for a `subset` named without files, those its
    card names, from the card alone (fetched first unless `fetch` is false: then only a cached card is read)."""
    patterns = dataset_patterns(data_files, data_dir)
    if patterns is not None or not subset:
        return patterns
    # offline, only a cached card: fetching it would fail, and the hint then names the whole repo (as validate's)
    card = snapshot(repo_id, revision, "dataset", [CARD], key=key) if fetch and not offline("dataset") else \
        cached_snapshot(repo_id, revision, "dataset", [CARD])
    return subset_patterns(card, subset)


def missing_model_files(gguf_file: str | None, trust_remote_code: bool = False) -> Callable[[Path], list[str]]:
    """A check of a model snapshot: the files it lacks that loading needs (the GGUF file, or the config, every
    safetensors shard its index names and a tokenizer; with trust_remote_code, the modules its auto_map names).
    A cache filled by another tool (a single-file download, transformers' own loading) may hold only some."""
    def missing(folder: Path) -> list[str]:
        if gguf_file:
            return [] if (folder / gguf_file).is_file() else [gguf_file]
        lacking = [] if (folder / "config.json").is_file() else ["config.json"]
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(read_json(index).get("weight_map", {}).values()))
            lacking += [shard for shard in shards if not (folder / shard).is_file()]
        elif not any(p.is_file() for p in folder.glob("model*.safetensors")):  # MODEL_FILES' (a broken link: none)
            lacking.append("model*.safetensors")
        if not has_tokenizer(folder):
            lacking.append(f"a tokenizer ({' or '.join(TOKENIZER_FILES)})")
        if trust_remote_code and not lacking:
            lacking += [f for f in remote_code_files(folder / "config.json") if not (folder / f).is_file()]
        return lacking
    return missing


def remote_code_files(config_file: Path) -> list[str]:
    """The Python files a model's config.json maps its classes to (`auto_map`, this repo's own modules)."""
    refs = [r for r in _auto_map_refs(config_file) if "--" not in r]  # "other/repo--module.Class": another repo's
    return sorted({r.rsplit(".", 1)[0] + ".py" for r in refs if "." in r})


CODE_FILES = ["*.py", "*.json"]  # what modelpress fetches of a repo that only lends a model its code


def remote_code_repos(folder: Path) -> list[str]:
    """The other repos whose code a model's config.json or tokenizer_config.json maps classes to
    ("org/repo--module.Class"): transformers loads those classes from that repo, not from the model's folder."""
    refs = [r for name in ("config.json", "tokenizer_config.json") for r in _auto_map_refs(folder / name)]
    return sorted({r.split("--", 1)[0] for r in refs if "--" in r})


def _auto_map_refs(config_file: Path) -> list[str]:
    auto_map = (read_json(config_file).get("auto_map") or {}) if config_file.is_file() else {}
    return [r for value in auto_map.values() for r in (value if isinstance(value, list) else [value])
            if isinstance(r, str)]


def cache_root() -> Path:
    """The Hugging Face hub cache folder in force (HF_HUB_CACHE / HF_HOME)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_snapshot(repo_id: str, revision: str | None, repo_type: str = "model",
                    allow_patterns: list[str] | None = None, judged: bool = False) -> Path | None:
    """The local snapshot folder of `repo_id` at `revision`, or None; never touches the network.

    `allow_patterns` must be those the repo was (or would be) downloaded with: huggingface_hub
    remembers a downloaded repo's whole file list and calls a snapshot incomplete when a listed file
    outside the patterns (a README, pickled weights) is not on disk.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, local_files_only=True,
                                      allow_patterns=allow_patterns))
    except (LocalEntryNotFoundError, FileNotFoundError) as err:
        # huggingface_hub's "incomplete" counts every file of the patterns the repo lists (merges.txt beside a
        # tokenizer.json); with `judged`, the caller checks the files it reads itself (missing_model_files)
        folder = getattr(err, "snapshot_path", None)
        return Path(folder) if judged and folder and Path(folder).is_dir() else None


def offline(repo_type: str = "model") -> bool:
    """True when HF_HUB_OFFLINE forbids downloads (for a dataset, HF_DATASETS_OFFLINE too, as datasets reads it)."""
    from huggingface_hub import is_offline_mode

    datasets_off = _true(os.environ.get("HF_DATASETS_OFFLINE"))
    return is_offline_mode() or (repo_type == "dataset" and datasets_off)


def offline_switches(repo_type: str = "model") -> list[str]:
    """The variables that keep downloads off here, as a user would unset them, read as the libraries read them:
    huggingface_hub takes TRANSFORMERS_OFFLINE where HF_HUB_OFFLINE is unset, datasets its own switch first;
    HF_HUB_OFFLINE where none is on (a library set it)."""
    # with HF_HUB_OFFLINE on, TRANSFORMERS_OFFLINE on too keeps the hub offline once the first is unset: both named
    on = [name for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if _true(os.environ.get(name))]
    if on and not _true(os.environ.get("HF_HUB_OFFLINE")) and os.environ.get("HF_HUB_OFFLINE"):
        on = []  # HF_HUB_OFFLINE=0 given: huggingface_hub does not read TRANSFORMERS_OFFLINE
    if repo_type == "dataset" and _true(os.environ.get("HF_DATASETS_OFFLINE")):
        on.append("HF_DATASETS_OFFLINE")
    return on or ["HF_HUB_OFFLINE"]


def _true(value: str | None) -> bool:
    return (value or "").upper() in ("1", "ON", "YES", "TRUE")


def offline_said(repo_type: str = "model") -> str:
    """"HF_HUB_OFFLINE is set", "HF_HUB_OFFLINE and HF_DATASETS_OFFLINE are set": why nothing can be downloaded."""
    names = offline_switches(repo_type)
    return " and ".join(names) + (" are set" if len(names) > 1 else " is set")


def go_offline() -> Callable[[], None]:
    """Until the returned function is called, nothing in this process may reach a hub: HF_HUB_OFFLINE and
    HF_DATASETS_OFFLINE are set, and the constants that huggingface_hub and datasets read from them once,
    when first imported. The returned function puts back what was there."""
    env = {name: os.environ.get(name) for name in OFFLINE_ENV}
    before = [(module, name, getattr(sys.modules[module], name)) for module, name in _offline_constants()]
    os.environ.update({name: "1" for name in env})
    for module, name, _ in before:
        setattr(sys.modules[module], name, True)

    def restore() -> None:
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        saved = {(module, name): value for module, name, value in before}
        for module, name in _offline_constants():  # a library first imported meanwhile read the switches as on
            setattr(sys.modules[module], name, saved.get((module, name), _switch_read_from_env(module)))
    return restore


OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")  # the switches a run sets while it is offline
# The modules that read the offline switches once, when imported, and the constants they keep them in.
_OFFLINE_SWITCHES = (("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
                     ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")))


def _switch_read_from_env(module: str) -> bool:
    """What the module computes from the environment when imported (huggingface_hub 2.x, datasets 4.x)."""
    hub = _true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))
    own = os.environ.get("HF_DATASETS_OFFLINE") if module == "datasets.config" else None
    return hub if own is None else _true(own)


def _offline_constants() -> list[tuple[str, str]]:
    return [(module, name) for module, names in _OFFLINE_SWITCHES
            if module in sys.modules for name in names if hasattr(sys.modules[module], name)]


def fetch_hint(repo_id: str, revision: str | None, repo_type: str, patterns: list[str] | None = None) -> str:
    """How to put a repo into the local cache: the files modelpress reads (`patterns`), not the whole repo,
    which may hold many GGUF quantizations or pickled copies of the weights."""
    kind = f" --repo-type {repo_type}" if repo_type != "model" else ""
    rev = f" --revision {revision}" if revision else ""
    files = " --include " + " ".join(f'"{p}"' for p in patterns) if patterns else ""
    return (f"On a machine with network run `hf download {repo_id}{kind}{rev}{files}` and copy its cache folder "
            f"({cache_root()}) here, or unset {' and '.join(offline_switches(repo_type))} so modelpress can "
            "download it")


def snapshot(repo_id: str, revision: str | None, repo_type: str = "model", allow_patterns: list[str] | None = None,
             missing: Callable[[Path], list[str]] | None = None, key: str = "") -> Path:
    """A local snapshot folder of `repo_id`: from the cache, else downloaded (unless offline).

    `missing` names the files a cached snapshot lacks that are needed (a partial cache left by another
    tool): they are downloaded, or offline, reported. `key` is the config key that named the repo.
    """
    # offline, a snapshot huggingface_hub calls incomplete is judged by the files modelpress reads; online, the
    # download fetches what it lacks (tokenizer_config.json, a chat template: files the check does not ask for)
    local = cached_snapshot(repo_id, revision, repo_type, allow_patterns,
                            judged=missing is not None and offline(repo_type))
    what = f"{'dataset' if repo_type == 'dataset' else 'model'} {repo_id!r}" + \
        (f" at revision {revision!r}" if revision else "")
    where = f"{key}: " if key else ""
    lacking = missing(local) if local is not None and missing is not None else []
    if local is not None and not lacking:
        log.info("%s: using the local Hugging Face cache (%s)", what, local)
        return local
    if offline(repo_type):
        held = (f"is in the local Hugging Face cache ({local}) without {', '.join(lacking)}" if lacking else
                f"is not in the local Hugging Face cache ({cache_root()})")
        raise ModelpressError(f"{where}{what} {held} and {offline_said(repo_type)}, so it cannot be "
                              "downloaded. "
                              f"{fetch_hint(repo_id, revision, repo_type, allow_patterns)}.")
    folder = _download(repo_id, revision, repo_type, allow_patterns, what, where)
    lacking = missing(folder) if missing is not None else []
    if lacking:
        why = _what_the_repo_is(repo_id, revision, repo_type) or (
            " The repo has no safetensors weights: modelpress never loads pickled *.bin weights, which can run "
            "code when read. Pick a revision or a repo that ships safetensors, or convert the weights."
            if "model*.safetensors" in lacking else " Check the repo's files and the revision.")
        raise ModelpressError(f"{where}{what} was downloaded ({folder}) but lacks {', '.join(lacking)}.{why}")
    return folder


def _what_the_repo_is(repo_id: str, revision: str | None, repo_type: str) -> str | None:
    """Online, when a repo lacks a model's files: what it holds instead, said as the fix (GGUF files: name one as
    gguf_file; a PEFT adapter: name its base). None when it cannot be told."""
    if repo_type != "model":
        return None
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=1)
    try:  # at most 10 s: the listing only improves the message, and huggingface_hub's client has no timeout
        files = pool.submit(_repo_files, repo_id, revision).result(timeout=10)
    except Exception:  # noqa: BLE001
        return None
    finally:
        pool.shutdown(wait=False)
    ggufs = sorted(f for f in files if f.endswith(".gguf"))
    if ggufs:
        shown = ", ".join(ggufs[:4]) + (f" and {len(ggufs) - 4} more" if len(ggufs) > 4 else "")
        return (f" The repo holds GGUF files ({shown}): name one with input_model gguf_file (model_path stays "
                f"{repo_id!r}), and modelpress fetches and converts that file alone.")
    if "adapter_config.json" in files:
        return (" The repo is a PEFT adapter, not a model: give its base model as model_path, and merge the adapter "
                "into it first (peft's merge_and_unload) or train one in this workflow.")
    return None


def _download(repo_id: str, revision: str | None, repo_type: str, allow_patterns: list[str] | None,
              what: str, where: str) -> Path:
    from huggingface_hub import snapshot_download

    log.info("%s: not in the local cache; downloading it into %s", what, cache_root())
    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns))
    except Exception as err:  # noqa: BLE001  huggingface_hub raises many kinds (HTTP, auth, not found, network)
        # The message names the repo and the kind of failure; huggingface_hub's messages carry no token.
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise ModelpressError(f"{where}cannot download {what}: {type(err).__name__}: {first}. It was read as a "
                              "Hugging Face Hub id because no local path of that name exists; check the id and "
                              "revision, or the path if you meant a local one. For a gated or private repo set "
                              "HF_TOKEN or run `hf auth login`. "
                              f"{fetch_hint(repo_id, revision, repo_type, allow_patterns)}.") from None


def _repo_files(repo_id: str, revision: str | None) -> list[str]:
    """The repo's file list, from the Hub (one request)."""
    from huggingface_hub import list_repo_files

    return list_repo_files(repo_id, revision=revision)
