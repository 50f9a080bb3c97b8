"""Collect every config problem with its key path, so a user sees all of them at once."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import AliasChoices, BaseModel, ValidationError

from modelpress.errors import Problem
from modelpress.redact import is_secret_key, looks_secret


def did_you_mean(name: str, options: Iterable[str]) -> str | None:
    """A 'Did you mean ...?' hint when `name` is close to one of `options`."""
    by_lower = {str(o).lower(): str(o) for o in options}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.6)
    return f"Did you mean '{by_lower[close[0]]}'?" if close else None


def accepted_keys(model: type[BaseModel]) -> list[str]:
    """Field names of `model` plus every alias it accepts."""
    keys = []
    for name, info in model.model_fields.items():
        keys.append(name)
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            keys += [a for a in alias.choices if isinstance(a, str) and a != name]
    return keys


def _submodel(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    for name, info in model.model_fields.items():
        if key == name or _aliases_of(info, key):
            return _model_in(info.annotation)
    return None


def _aliases_of(info, key: str) -> bool:
    alias = info.validation_alias
    return isinstance(alias, AliasChoices) and key in alias.choices


def _model_in(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, dict):  # the model of a list's items, or of a mapping's values
        args = typing.get_args(annotation)
        return _model_in(args[-1]) if args else None
    if isinstance(annotation, types.UnionType) or origin is typing.Union:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found:
                return found
    return None


class Collector:
    """Gathers problems and warnings while a config is normalised."""

    def __init__(self, sources_here: bool = True) -> None:
        # whether the input model and the Hub datasets are looked for on this machine: not on a Ray worker,
        # which gets the model from the storage and the dataset revisions the driver resolved
        self.sources_here = sources_here
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.notes: list[str] = []  # facts worth telling, not problems
        self.failed_data: set[str] = set()  # data configs given but refused (their problems said): not "missing"

    def add(self, path: str, message: str, hint: str | None = None) -> None:
        problem = Problem(path, message, hint)
        if problem not in self.problems:  # a check run over every search choice reports a mistake once
            self.problems.append(problem)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def note(self, message: str) -> None:
        self.notes.append(message)

    def unknown_keys(self, raw: dict, allowed: Iterable[str], path: str) -> None:
        """Report every key of `raw` that is not in `allowed`."""
        allowed = list(allowed)
        for key in raw:
            if key not in allowed:
                hint = did_you_mean(key, allowed) or f"Allowed keys: {', '.join(sorted(allowed))}."
                self.add(_join(path, key), f"unknown key '{key}'", hint)

    def validate(
        self, model: type[BaseModel], data: Any, path: str, where: Callable[[str], str] | None = None
    ) -> BaseModel | None:
        """Validate `data` against `model`; on failure record one problem per error and return None.

        `where(first_key)` gives the path prefix for an error on that key (configs that nest
        keys under `config` or `params` report the path the user actually wrote).
        """
        try:
            return model.model_validate(data)
        except ValidationError as err:
            for error in err.errors():
                loc = [str(part) for part in error["loc"]]
                prefix = where(loc[0]) if where and loc else path
                self.problems.append(_problem_from(model, error, loc, prefix))
            return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _dotted(prefix: str, loc: list[str]) -> str:
    """The path of an error as a config writes it: keys dotted, list positions in brackets (metrics[0].name)."""
    out = prefix
    for part in loc:
        out = f"{out}[{part}]" if part.isdigit() and out else _join(out, part)
    return out


def _problem_from(model: type[BaseModel], error: dict, loc: list[str], prefix: str) -> Problem:
    full = _dotted(prefix, loc)
    kind = error["type"]
    found = error.get("input")
    if "env_vars" in loc or any(is_secret_key(part) for part in loc) or looks_secret(found):
        found = _Hidden(found)  # an error message must not print a token
    if kind == "extra_forbidden":
        parent = model
        for part in loc[:-1]:
            # a list position or a mapping's key (overrides.lm_head) keeps the field's item model
            if parent is not None and part in accepted_keys(parent):
                parent = _submodel(parent, part)
        options = accepted_keys(parent) if parent else []
        if loc[-1] in options:  # an alias beside its field's other name: pydantic read the other, refused this one
            field = next(n for n, info in parent.model_fields.items() if n == loc[-1] or _aliases_of(info, loc[-1]))
            names = [field, *[a for a in getattr(parent.model_fields[field].validation_alias, "choices", ())
                              if isinstance(a, str) and a != field]]
            return Problem(full, f"'{loc[-1]}' is another name of a key also given ({' / '.join(names)})",
                           "Give it once.")
        hint = did_you_mean(loc[-1], options) or (
            f"Allowed keys: {', '.join(sorted(options))}." if options else None
        )
        return Problem(full, f"unknown key '{loc[-1]}'", hint)
    if kind == "missing":
        return Problem(full, "required key is missing")
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        options = [o.strip().strip("'") for o in expected.replace(" or ", ", ").split(",")]
        hint = did_you_mean(found, options) if isinstance(found, str) else None
        return Problem(full, f"found {found!r}; allowed: {expected}", hint)
    message = error["msg"].removeprefix("Value error, ")
    return Problem(full, f"{message}; found {found!r}")


def as_mapping(value: Any, path: str, c: Collector) -> dict | None:
    if isinstance(value, dict):
        return value
    c.add(path, f"must be a mapping, found {type(value).__name__}")
    return None


def unwrap(raw: dict, key: str, path: str, c: Collector) -> tuple[dict, str]:
    """Lift a nested `config`/`params` block (Olive 0.5 style) into its parent."""
    inner = raw.get(key)
    if isinstance(inner, dict):
        rest = {k: v for k, v in raw.items() if k != key}
        return nested_wins(inner, rest, f"{path}.{key}", c), f"{path}.{key}"
    return raw, path


def nested_wins(inner: dict, outer: dict, inner_path: str, c: Collector) -> dict:
    """`outer` with `inner` written over it: a key given in both takes the nested value and the other is ignored
    with a warning, as Olive's NestedConfig does (the outer one won here, so the run trained otherwise)."""
    both = sorted(k for k in set(inner) & set(outer) if inner[k] != outer[k])
    if both:
        c.warn(f"{inner_path}: {', '.join(both)} {'is' if len(both) == 1 else 'are'} given here and beside it; the "
               "value here is used and the other ignored, as in Olive.")
    return {**outer, **inner}


class _Hidden:
    """A wrong value that may hold a secret: its type is shown, not its text."""

    def __init__(self, value):
        self.kind = type(value).__name__

    def __repr__(self) -> str:
        return f"a {self.kind} (not shown: it may hold a secret)"
