"""Models and datasets named by Hugging Face Hub id, resolved to a local snapshot folder.

Offline first: a repo already in the local Hugging Face cache is used as it is, without any
network call. Only when it is missing, and `HF_HUB_OFFLINE` is not set, is it downloaded by
`huggingface_hub`, which reads a token from `HF_TOKEN` or the `hf auth login` store itself:
modelpress never sees, logs or saves the token.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from modelpress.errors import ModelpressError

log = logging.getLogger("modelpress")

# `name` or `org/name`, as the Hub spells repo ids (letters, digits, '-', '_', '.').
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")

# What a model snapshot needs: configs, safetensors weights, tokenizer files, chat templates.
# Pickled *.bin weights and ONNX exports that some repos also carry are never fetched.
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


def is_hub_id(value: str) -> bool:
    """True when `value` has the shape of a Hub repo id (it may still not exist)."""
    return bool(_HUB_ID.match(value)) and ".." not in value and not value.endswith((".json", ".gguf"))


def cache_root() -> Path:
    """The Hugging Face hub cache folder in force (HF_HUB_CACHE / HF_HOME)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_snapshot(repo_id: str, revision: str | None, repo_type: str = "model") -> Path | None:
    """The local snapshot folder of `repo_id` at `revision`, or None; never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        return None


def offline() -> bool:
    """True when HF_HUB_OFFLINE forbids downloads."""
    from huggingface_hub import is_offline_mode

    return is_offline_mode()


def fetch_hint(repo_id: str, revision: str | None, repo_type: str) -> str:
    """How to put a repo into the local cache."""
    kind = f" --repo-type {repo_type}" if repo_type != "model" else ""
    rev = f" --revision {revision}" if revision else ""
    return (f"On a machine with network run `hf download {repo_id}{kind}{rev}` and copy its cache folder "
            f"({cache_root()}) here, or unset HF_HUB_OFFLINE so modelpress can download it")


def snapshot(repo_id: str, revision: str | None, repo_type: str = "model",
             allow_patterns: list[str] | None = None) -> Path:
    """A local snapshot folder of `repo_id`: from the cache, else downloaded (unless offline)."""
    local = cached_snapshot(repo_id, revision, repo_type)
    what = f"{'dataset' if repo_type == 'dataset' else 'model'} {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    if local is not None:
        log.info("%s: using the local Hugging Face cache (%s)", what, local)
        return local
    if offline():
        raise ModelpressError(f"{what} is not in the local Hugging Face cache ({cache_root()}) and HF_HUB_OFFLINE "
                              f"is set, so it cannot be downloaded. {fetch_hint(repo_id, revision, repo_type)}.")
    return _download(repo_id, revision, repo_type, allow_patterns, what)


def _download(repo_id: str, revision: str | None, repo_type: str, allow_patterns: list[str] | None,
              what: str) -> Path:
    from huggingface_hub import snapshot_download

    log.info("%s: not in the local cache; downloading it into %s", what, cache_root())
    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns))
    except Exception as err:  # noqa: BLE001  huggingface_hub raises many kinds (HTTP, auth, not found, network)
        # The message names the repo and the kind of failure; huggingface_hub's messages carry no token.
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise ModelpressError(f"cannot download {what}: {type(err).__name__}: {first}. Check the id and revision; "
                              "for a gated or private repo set HF_TOKEN or run `hf auth login`. "
                              f"{fetch_hint(repo_id, revision, repo_type)}.") from None
