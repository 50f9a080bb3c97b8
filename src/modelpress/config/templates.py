"""Text templates: Python format strings over a row's columns, whose last field is the completion."""

from __future__ import annotations

import string

from modelpress.errors import DataError


def template_problem(template: str, plain_names: bool = True) -> str | None:
    """Why `template` cannot render rows (an unbalanced brace; with `plain_names`, a field that is not a plain
    column name: a chat column's template fills any column name, spaces included), or None."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:
        return f"not a valid template ({err}); write a literal brace as {{{{ or }}}}"
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        written = f"{{{field}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
        if not field.strip() or field.isdigit():
            return f"template field {written} has no column name; name the column it reads, as in {{phrase}}"
        if (not field.isidentifier() if plain_names else any(c in field for c in ".[")) or spec or conversion:
            return f"template field {written} must be a plain column name (no attributes, indexes or format specs)"
    return None


def template_fields(template: str) -> list[str]:
    """Names of the `{fields}` in a text template, in order."""
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def template_parts(template: str) -> list[tuple]:
    """`string.Formatter().parse` of the template, each field with all the literal text before it (the parser
    cuts literal text at every escaped `{{` or `}}`), and the text after the last field as one literal part,
    left out when it is only whitespace."""
    parts, pending = [], ""
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            pending += literal
        else:
            parts.append((pending + literal, field, spec, conversion))
            pending = ""
    if pending.strip():
        parts.append((pending, None, None, None))
    return parts


def role_template(spec: str) -> str:
    """A chat data config's `chat_columns` value as a text template: a bare column name means that column's value."""
    return spec if "{" in spec else "{" + spec + "}"


def number_text(value) -> str:
    """A value as text, a whole number read as a float (1.0, as datasets reads a column that also holds 1.5)
    written as the whole number it is."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def field_text(row: dict, field: str, where: str) -> str:
    """The row's text in column `field`, a number written as Python writes it (a rating, a year), but a whole
    number read as a float written as a whole number: datasets reads a column that mixes 4 and 4.5 as floats, so
    Olive's str.format trains "4.0" where the file says 4. A missing or null value, or a list, mapping or
    true/false, is a DataError naming the row."""
    value = row.get(field)
    if value is None:
        raise DataError(f"{where}: column {field!r} is missing or null. Fix or remove the row.")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return number_text(value)
    if not isinstance(value, str):
        raise DataError(f"{where}: column {field!r} is {type(value).__name__} ({value!r}), not text or a number. "
                        "Store it as a string.")
    return value


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
