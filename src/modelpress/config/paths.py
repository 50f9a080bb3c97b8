"""Paths a config names, read relative to the config file's folder, and the user scripts it points at."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelpress.config.collector import Collector
from modelpress.errors import ConfigError, Problem

# a user script's paths (a plugin pass's, a custom metric's): key, what it must be, how to fix a missing one
SCRIPT_PATHS = (("user_script", "file", "Give the path of the Python file, relative to the config file's folder."),
                ("script_dir", "folder", "Give the folder of the modules the script imports, relative to the config "
                 "file's folder, or remove it."))


def resolve_path(value: Any, base_dir: Path) -> Any:
    """A path relative to the config file's folder made absolute; other values unchanged."""
    if not isinstance(value, (str, Path)):
        return value
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # ~name of a user this machine does not have
        raise ConfigError([Problem(str(value), "names the home folder of a user this machine does not have",
                                   "Write the path in full, or relative to the config file's folder.")]) from None
    return path if path.is_absolute() else (base_dir / path).resolve()


def script_paths(spec: Mapping, base_dir: Path, where: str, c: Collector) -> dict[str, Path] | None:
    """`spec`'s user_script (a file) and script_dir (a folder), those it gives, resolved; each one missing is
    reported under `where` and makes the answer None."""
    found: dict[str, Path] = {}
    for key, kind, hint in SCRIPT_PATHS:
        value = spec.get(key)
        if value is None and key not in spec:
            continue
        path = resolve_path(str(value), base_dir) if isinstance(value, (str, Path)) else None
        if path is None or not (path.is_file() if kind == "file" else path.is_dir()):
            c.add(f"{where}.{key}", f"{kind} not found: {path or value!r}", hint)
        else:
            found[key] = path
    return found if len(found) == sum(key in spec for key, _, _ in SCRIPT_PATHS) else None
