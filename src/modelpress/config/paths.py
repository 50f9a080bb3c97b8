"""Paths a config names, read relative to the config file's folder, and the user scripts it points at."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelpress.config.collector import Collector
from modelpress.errors import ConfigError, Problem
from modelpress.redact import redact_text

# a user script's paths (a plugin pass's, a custom metric's): key, what it must be, how to fix a missing one
SCRIPT_PATHS = (("user_script", "file", "Give the path of the Python file, relative to the config file's folder."),
                ("script_dir", "folder", "Give the folder of the modules the script imports, relative to the config "
                 "file's folder, or remove it."))


URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")  # s3://, https://, sftp://user:password@host


def resolve_path(value: Any, base_dir: Path, key: str = "") -> Any:
    """A path relative to the config file's folder made absolute; other values unchanged. A URL, which this key
    does not read (Path would fold its `//` and carry any password in it into messages and saved configs), and
    the home folder of an unknown user are a ConfigError under `key`."""
    if not isinstance(value, (str, Path)):
        return value
    if isinstance(value, str) and URL.match(value):
        raise ConfigError([Problem(key or redact_text(value), f"{redact_text(value)} is a URL, and this key takes a "
                                   "local path", "Copy the files to a local folder (or a shared one) and give its "
                                   "path; only a Ray system's storage takes a URL.")])
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # ~name of a user this machine does not have
        raise ConfigError([Problem(key or str(value), f"{value} names the home folder of a user this machine does "
                                   "not have", "Write the path in full, or relative to the config file's "
                                   "folder.")]) from None
    return path if path.is_absolute() else (base_dir / path).resolve()


def shadowing_folder(value: str, local: Path, base_dir: Path) -> str | None:
    """The folder beside the config that makes `value`, shaped as a Hub id (org/name) and naming no local path, a
    local path all the same (its first part): model_path and data_name are read as paths then, and the Hub id
    is not looked for. None when there is no such folder."""
    from modelpress.hub import is_hub_id

    first = Path(value).parts[0] if Path(value).parts else ""
    if first and not local.exists() and is_hub_id(value) and not Path(value).is_absolute() \
            and not value.startswith(".") and (base_dir / first).is_dir():
        return first
    return None


def local_path(value: Any, base_dir: Path, key: str, c: Collector) -> Any:
    """resolve_path, with its problem reported to `c` (so every other problem is found too); None then."""
    try:
        return resolve_path(value, base_dir, key)
    except ConfigError as err:
        c.problems.extend(err.problems)
        return None


def script_paths(spec: Mapping, base_dir: Path, where: str, c: Collector) -> dict[str, Path] | None:
    """`spec`'s user_script (a file) and script_dir (a folder), those it gives, resolved; each one missing is
    reported under `where` and makes the answer None."""
    found: dict[str, Path] = {}
    for key, kind, hint in SCRIPT_PATHS:
        value = spec.get(key)
        if value is None:  # not given (Olive writes script_dir: null)
            continue
        if not isinstance(value, (str, Path)):
            c.add(f"{where}.{key}", f"must be a path, found {value!r}", hint)
            continue
        path = local_path(str(value), base_dir, f"{where}.{key}", c)
        if path is not None and not (path.is_file() if kind == "file" else path.is_dir()):
            c.add(f"{where}.{key}", f"{kind} not found: {path}", hint)
        elif path is not None:
            found[key] = path
    return found if len(found) == sum(spec.get(key) is not None for key, _, _ in SCRIPT_PATHS) else None
