"""The concrete params of a searched pass: each combination of its searched values, validated whole."""

from __future__ import annotations

import itertools

from pydantic import ValidationError

from modelpress.passes.spec_base import Strict


def searched_params(params: Strict, space: dict[str, list]) -> tuple[list[Strict], list[tuple[dict, str]]]:
    """`params` with each combination of the searched values, each validated whole (when the config is read each
    value is checked to go with some combination of the others); and the combinations refused, each with the first
    reason."""
    if len(space) < 2:  # one searched key: each value was validated when the config was read
        names = list(space)
        return [params.model_copy(update={names[0]: v}) for v in space[names[0]]] if names else [params], []
    good, refused = [], []
    base = params.model_dump()
    for values in itertools.product(*space.values()):
        combo = dict(zip(space, values))
        try:
            good.append(type(params).model_validate({**base, **combo}))
        except ValidationError as err:
            refused.append((combo, err.errors()[0]["msg"].removeprefix("Value error, ")))
    return good, refused
