"""The public API for adding a pass without touching modelpress.

Subclass `Pass`, declare its parameters as a `Params` model (fields with descriptions, and
`searchable(...)` values for search; `output_neutral(...)` for one that changes only the log and is
left out of the cache key), and implement `run`. Then either name the file in the
config (`"user_script": "my_pass.py"` next to the pass's `type`), or ship it in a package
with an entry point in the group `modelpress.passes`:

    [project.entry-points."modelpress.passes"]
    MyPass = "my_package.module:MyPass"

A plugin pass gets the same validation, caching, search and report as a built-in one.
"""

from __future__ import annotations

from typing import ClassVar

from modelpress.models import ModelRef
from modelpress.passes.catalog import HF, HF_ADAPTER, ONNX, ONNX_GENAI, Field, Strict, output_neutral, searchable

__all__ = ["HF", "HF_ADAPTER", "ONNX", "ONNX_GENAI", "Field", "ModelRef", "Pass", "Strict", "output_neutral",
           "searchable"]


class Pass:
    """Base class of a plugin pass."""

    name: ClassVar[str | None] = None  # default: the class name
    summary: ClassVar[str] = ""
    Params: ClassVar[type[Strict]] = Strict
    accepts: ClassVar[tuple[str, ...]] = (HF,)
    produces: ClassVar[str] = HF
    needs_data: ClassVar[bool] = False
    version: ClassVar[str] = "1"  # bump when the pass gives different output for the same input

    def run(self, ctx, params):
        """Write the output model under `ctx.out` and return a `ModelRef` to it (or `ctx.model` unchanged)."""
        raise NotImplementedError(f"{type(self).__name__}.run")
