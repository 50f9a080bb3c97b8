"""A local Hugging Face cache built by the tests, in the layout `huggingface_hub` reads.

`<cache>/<type>s--org--name/refs/<branch>` holds a commit hash; `snapshots/<commit>/<file>` are
symlinks to `blobs/<sha256>`, as `hf download` leaves them. Nothing here touches a network.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def add_repo(cache: Path, repo_id: str, files: dict[str, bytes], commit: str, repo_type: str = "model",
             branch: str | None = "main", not_fetched: dict[str, bytes] | None = None) -> Path:
    """Put `files` into the cache as `repo_id` at `commit` (and point `branch` at it); returns the snapshot.

    With `not_fetched`, the repo also holds those files, which the download left out (allow_patterns):
    the cache then keeps the repo's whole file list, written by huggingface_hub's own tree cache, as a
    real `snapshot_download` does, and huggingface_hub checks later cache lookups against it.
    """
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    if not_fetched is not None:
        from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache

        listing = {**files, **not_fetched}
        write_tree_cache(str(repo), commit, {name: TreeCacheEntry(size=len(data), blob_id=hashlib.sha1(data).hexdigest())
                                             for name, data in listing.items()})
    snapshot = repo / "snapshots" / commit
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if branch:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / branch).write_text(commit)
    return snapshot


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file of a local model folder, by relative name."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hub_env(home: Path) -> dict[str, str]:
    """The environment of a process that must use only the cache under `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


PHI3 = "microsoft/Phi-3-mini-4k-instruct"
OLIVE_CONFIGS = Path(__file__).parent / "olive_configs"


def olive_workspace(tmp: Path, tiny_model: Path, config: str) -> tuple[Path, Path]:
    """(work folder, HF home): tests/olive_configs/`config` copied to work/config.json, and a Hugging Face
    cache that serves the tiny Phi-3 as microsoft/Phi-3-mini-4k-instruct."""
    import shutil

    home = tmp / "hf"
    add_repo(home / "hub", PHI3, folder_files(tiny_model), "5" * 40)
    work = tmp / "work"
    work.mkdir()
    shutil.copy(OLIVE_CONFIGS / config, work / "config.json")
    return work, home


def run_offline(work: Path, home: Path, *args: str):
    """`modelpress ARGS` in `work`, offline, with only the cache under `home`."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "modelpress", *args], cwd=work, capture_output=True, text=True,
                          env=hub_env(home))
