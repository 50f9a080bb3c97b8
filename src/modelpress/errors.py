"""Errors a user can act on.

Every error modelpress raises on purpose derives from `ModelpressError`; the CLI prints it
as one clear message (no traceback unless `--verbose`) and exits non-zero.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


@dataclass(frozen=True)
class Problem:
    """One problem in a config: where it is, what is wrong, and how to fix it."""

    path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        text = f"{self.path or '<config>'}: {self.message}"
        return f"{text}. {self.hint}" if self.hint else text


class ModelpressError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""


class ConfigError(ModelpressError):
    """A config has one or more problems; all of them are listed at once."""

    def __init__(self, problems: list[Problem], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        count = len(self.problems)
        lines = [f"{count} problem{'s' if count != 1 else ''}{where}:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class DamagedFileError(ModelpressError, ValueError):
    """A file modelpress wrote (or reads) that is not what it should be: unreadable JSON. A ValueError too, so a
    caller that treats a bad file as absent (a cache entry) still does."""


class DataError(ModelpressError):
    """The data cannot be read or does not fit the template."""


class MissingDependencyError(ModelpressError):
    """An optional dependency is needed for what the config asks."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the package '{package}', which is not installed. "
            f"Install it with: pip install 'modelpress[{extra}]'"
        )


def is_disk_full(err: BaseException) -> bool:
    """True for the errors a full disk (or a file-size quota) gives."""
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS
