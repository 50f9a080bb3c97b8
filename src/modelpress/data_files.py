"""The bytes of local data files: the fingerprint that keys what a data config holds, and where datasets keeps
its Arrow copy of a file."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from pathlib import Path

from modelpress.config.schema import DataConfig
from modelpress.errors import DataError
from modelpress.fsutil import file_sha256


def data_fingerprint(config: DataConfig, hub_folder: Path | None = None, chat: dict | None = None) -> str:
    """A hash of the data config, its chat template and the bytes of its files: changes whenever the data does.

    A Hub dataset is named by its snapshot folder, which is its commit hash.
    """
    # what the rows are made of, not where the config or its files sit: a moved or copied project reuses its cache
    local = hub_folder is None
    # a Hub dataset's revision is read as the commit it names (the snapshot folder below): "main" and that commit's
    # hash give one fingerprint
    digest = hashlib.sha256(config.model_dump_json(exclude={"name", "data_files"} if local else {"name", "revision"})
                            .encode())
    digest.update(repr(sorted((chat or {}).items())).encode())
    if not local:
        digest.update(Path(hub_folder).name.encode())
        return digest.hexdigest()
    for path in config.data_files:
        digest.update(content_sha(path).encode())
    return digest.hexdigest()


def content_sha(path: Path) -> str:
    """A data file's SHA-256, hashed once per process while the file stays as it is (size, times, inode)."""
    stat = os.stat(path)
    return _sha(str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


@functools.lru_cache(maxsize=256)
def _sha(path: str, *_stat) -> str:
    return file_sha256(Path(path))


def arrow_folder(cache_dir: Path, path: Path) -> Path:
    """Where datasets keeps its Arrow copy of a local file: under the file's path and content, the copies of the
    file's earlier contents removed (datasets keys a copy by path and mtime only, so a file rewritten with its old
    mtime was read as it was)."""
    place = cache_dir / hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:12]
    folder = place / content_sha(path)[:16]
    for old in place.glob("*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def filtered_rows(config: DataConfig, rows: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The rows whose columns equal every col_filters value (Olive's load_dataset filter)."""
    missing = [col for col in config.col_filters if col not in rows[0][1]]
    if missing:
        raise DataError(f"data config {config.name!r}: col_filters names {', '.join(map(repr, missing))}, which "
                        f"{rows[0][0]} lacks (its columns: {', '.join(rows[0][1])})")
    kept = [(where, row) for where, row in rows if all(row.get(c) == v for c, v in config.col_filters.items())]
    if not kept:
        raise DataError(f"data config {config.name!r}: no row has {config.col_filters} (col_filters)")
    return kept
