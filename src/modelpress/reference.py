"""Generate docs/config-reference.md from the config models' own field declarations.

    python -m modelpress.reference > docs/config-reference.md

A test checks that the committed file matches, so the reference never goes stale.
"""

from __future__ import annotations

import sys

from pydantic import AliasChoices, BaseModel

from modelpress.config.schema import DataConfig, EngineConfig, EvaluationConfig, InputModelConfig
from modelpress.passes.catalog import CATALOG, TrainingArgs

SECTIONS = [
    ("input_model", InputModelConfig, "Olive 0.13 `load_kwargs` keys map onto these; the seed's `hf_config` too."),
    ("data_configs[] (load_dataset_config + pre_process_data_config)", DataConfig,
     "`data_name` maps to `format`; the seed's `params` nesting is accepted."),
    ("evaluation (modelpress)", EvaluationConfig, ""),
    ("engine keys (top level or in `engine`)", EngineConfig,
     "`execution_providers` and `log_severity_level` (0-4) map onto `execution_provider` and `log_level`."),
]


def _default(info) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        return "see below" if isinstance(info.default_factory, type) else "default"
    return f"`{info.default!r}`"


def _aliases(info) -> str:
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return ", ".join(f"`{a}`" for a in alias.choices[1:] if isinstance(a, str))
    return ""


def _fields(model: type[BaseModel]) -> list[str]:
    rows = ["| key | also accepted as | default | meaning |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        rows.append(f"| `{name}` | {_aliases(info)} | {_default(info)} | {info.description or ''} |")
    return rows


def reference() -> str:
    """The whole reference page as Markdown."""
    out = ["# Config reference", "", "Generated from the code by `python -m modelpress.reference`; do not edit.", ""]
    for title, model, note in SECTIONS:
        out += [f"## {title}", ""] + ([note, ""] if note else []) + _fields(model) + [""]
    out += ["## passes", "", "Each pass is `{\"type\": NAME, ...params}` (or params nested under `config`).", ""]
    for spec in CATALOG.values():
        extra = f" Needs `pip install 'modelpress[{spec.optional_package[1]}]'`." if spec.optional_package else ""
        out += [f"### {spec.name}", "", f"{spec.params.__doc__.strip()} Accepts {', '.join(spec.accepts)}; "
                f"produces {spec.produces}.{extra}", ""] + _fields(spec.params) + [""]
    out += ["### training_args (LoRA, QLoRA)", ""] + _fields(TrainingArgs) + [""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(reference())
