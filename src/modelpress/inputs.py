"""The input model as a local Hugging Face folder, whatever the config named: folder, Hub id or GGUF file."""

from __future__ import annotations

from pathlib import Path

from modelpress.cache import file_sha
from modelpress.config.schema import InputModelConfig
from modelpress.errors import ModelpressError
from modelpress.gguf import converted_folder
from modelpress.hub import CODE_FILES, missing_model_files, model_patterns, remote_code_repos, snapshot


def resolve_input_folder(model: InputModelConfig, cache_root: Path) -> Path:
    """The folder every pass reads the input model from.

    A Hub id resolves to its snapshot in the Hugging Face cache (downloaded only when it is
    missing and HF_HUB_OFFLINE is unset); a GGUF file is converted once into a folder under
    `cache_root/inputs`, keyed by the file's content.
    """
    gguf_path = gguf_source(model)
    if gguf_path is None:
        return _folder(model)
    return converted_folder(gguf_path, cache_root, file_sha(gguf_path, cache_root / "content-ids.json"),
                            model.trust_remote_code)


def pin_hub_commit(model: InputModelConfig) -> InputModelConfig:
    """The input model at the commit its Hub snapshot is now (fetched first where missing and allowed); a local one
    as it is. A run resolves a branch or tag once: a pass that reads the repo again later (GgufExport, for the GGUF
    file's metadata) reads that commit, even if a download meanwhile moved the branch in the cache."""
    if not model.hub_id:
        return model
    return model.model_copy(update={"revision": _folder(model).name})  # snapshots/<commit>


def gguf_source(model: InputModelConfig) -> Path | None:
    """The GGUF file the input model is read from (None for a Hugging Face folder or Hub model)."""
    if not model.gguf_file:
        return None
    gguf_path = _folder(model) / model.gguf_file
    if not gguf_path.is_file():
        raise ModelpressError(f"GGUF file not found: {gguf_path}. Check model_path and gguf_file.")
    return gguf_path


def _folder(model: InputModelConfig) -> Path:
    if model.hub_id:
        folder = snapshot(model.hub_id, model.revision, "model", model_patterns(model.trust_remote_code,
                          model.gguf_file), missing_model_files(model.gguf_file, model.trust_remote_code),
                          key="input_model.model_path")
    else:
        folder = Path(model.model_path)
    if model.trust_remote_code and not model.gguf_file:  # code another repo lends: cached (or fetched) now, as
        for repo in remote_code_repos(folder):  # transformers reads it after the run went offline
            snapshot(repo, None, "model", CODE_FILES, key=f"input_model.model_path (its auto_map names {repo}'s code)")
    return folder


def describe_input(model, folder: Path, content: str, commit: str | None = None) -> dict:
    """What the run read as its input model, for run_history.json: where it came from, and for a Hub id the
    revision written and the `commit` its snapshot is (a branch or tag resolves to whichever commit the cache holds,
    which the config does not say)."""
    described = {"content_id": content, "folder": str(folder)}
    if model.hub_id:
        described.update(hub_id=model.hub_id, revision=model.revision, commit=commit)
    else:
        described["model_path"] = str(model.model_path)
    if model.gguf_file:
        described.update(gguf_file=model.gguf_file)
    return described

