"""argparse types the commands share: numbers above 0, fractions, non-empty names, and templates typed in a shell;
and the one format of a command's --data files."""

from __future__ import annotations

import argparse
import re


def positive_int(text: str) -> int:
    """An argparse type: a whole number above 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not above 0")
    return value


def non_empty(text: str) -> str:
    """An argparse type: a name or path that is not blank (an empty path would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give a name or a path")
    return text


def fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{value:g} is not between 0 and 1 (a share of the rows)")
    return value


def template_text(text: str) -> str:
    """A template typed in a shell: \\n and \\t as a newline and a tab, and \\\\ as one backslash, as a config file's
    JSON string reads them; any other backslash is kept as typed."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def data_format(files: list) -> str:
    """The datasets format of the --data files, which must share one (a usage error, exit 2, otherwise)."""
    from modelpress.data import format_of  # imported here: `modelpress --help` must stay light
    from modelpress.errors import ConfigError, Problem

    formats = {format_of(f) for f in files}
    if None in formats:
        raise ConfigError([Problem("--data", f"{next(f for f in files if format_of(f) is None)}: not a data file "
                                   "modelpress reads", "Give .json, .jsonl, .csv or .parquet files.")])
    if len(formats) > 1:
        raise ConfigError([Problem("--data", f"the files are of {len(formats)} formats ({', '.join(sorted(formats))})",
                                   "Give files of one format.")])
    return formats.pop()
