"""Text templates: Python format strings over a row's columns, whose last field is the completion."""

from __future__ import annotations

import string


def template_fields(template: str) -> list[str]:
    """Names of the `{fields}` in a text template, in order."""
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def template_parts(template: str) -> list[tuple]:
    """`string.Formatter().parse` of the template, without a trailing whitespace-only literal."""
    parts = list(string.Formatter().parse(template))
    if parts and parts[-1][1] is None and not parts[-1][0].strip():
        parts = parts[:-1]
    return parts


def completion_split(template: str | None) -> tuple[str, str] | None:
    """(the template's last field, the literal text after it), or None when the template has no field.

    The last field is the completion (the text to generate); literal text after it, such as
    `<|end|>` in `<|user|>\n{phrase}<|end|>\n<|assistant|>\n{tone}<|end|>`, closes the answer: the
    model learns to write it, and evaluation reads the answer up to it.
    """
    parts = template_parts(template) if template else []
    if parts and parts[-1][1]:
        return parts[-1][1], ""
    if len(parts) >= 2 and parts[-2][1]:
        return parts[-2][1], parts[-1][0]
    return None


def completion_field(template: str | None) -> str | None:
    """The template's last field (the text to generate), or None."""
    split = completion_split(template)
    return split[0] if split else None
