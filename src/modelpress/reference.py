"""Generate docs/config-reference.md from the config models' own field declarations.

    python -m modelpress.reference > docs/config-reference.md

A test checks that the committed file matches, so the reference never goes stale.
"""

from __future__ import annotations

import sys
from pathlib import PurePath

from pydantic import AliasChoices, BaseModel

from modelpress.config.evaluator_schema import CustomMetricConfig, EvaluatorConfig, Goal, Metric, SubMetric
from modelpress.config.schema import (
    DataConfig,
    EngineConfig,
    EvaluationConfig,
    InputModelConfig,
    RaySystemConfig,
    SearchConfig,
    SystemConfig,
    TaskResources,
)
from modelpress.passes.catalog import CATALOG, TrainingArgs
from modelpress.passes.spec_base import is_output_neutral

# internal fields that a config writes under another key: the reference shows the key a user writes
WRITTEN_AS = {
    InputModelConfig: {"hub_id": "model_path (a Hub id, org/name)", "torch_dtype": "load_kwargs.torch_dtype",
                       "trust_remote_code": "load_kwargs.trust_remote_code",
                       "attn_implementation": "load_kwargs.attn_implementation"},
    DataConfig: {"format": "data_name (a file format)", "hub_id": "data_name (a Hub id, org/name)"},
    EngineConfig: {"execution_provider": "execution_providers", "log_level": "log_severity_level"},
}
DEFAULT_AS = {EngineConfig: {"execution_provider": "`['CPUExecutionProvider']`", "log_level": "`1` (info)"}}

SECTIONS = [
    ("input_model", InputModelConfig, "Keys beside `type`; the seed's `hf_config` (`model_name`, "
     "`model_loading_args`, `from_pretrained_args`) is accepted too."),
    ("data_configs[] (load_dataset_config + pre_process_data_config)", DataConfig,
     "`data_name` through `data_dir` go in `load_dataset_config`, the rest in `pre_process_data_config`; the "
     "seed's `params` nesting is accepted."),
    ("evaluation (modelpress)", EvaluationConfig, ""),
    ("engine keys (top level or in `engine`)", EngineConfig,
     "`execution_providers` takes Olive's names (CPUExecutionProvider, ...), or comes from the host system's "
     "`accelerators`; `log_severity_level` is Olive's 0 (debug) to 4 (critical)."),
    ("systems.NAME", SystemConfig, "Olive's `accelerators[].execution_providers` give `execution_provider`; "
     "`host` (passes) and `target` (evaluations) name a system."),
    ("systems.NAME, type Ray (keys beside `type`, or in Olive's `config`)", RaySystemConfig, ""),
    ("systems.NAME.pass_resources.PASS", TaskResources, ""),
    ("search_strategy (top level or in `engine`)", SearchConfig,
     "`false` turns search off, `true` takes these defaults. Olive 0.5's `search_algorithm` (exhaustive, random, "
     "tpe) and `search_algorithm_config.num_samples` map onto `sampler` and `max_samples`. A pass parameter is "
     "searched when the config gives a list of values for it, or `\"SEARCHABLE_VALUES\"` (the pass's declared "
     "values, listed under each pass below); a list of whole configs for one pass makes them alternatives."),
    ("evaluators.NAME (chosen by `evaluator`)", EvaluatorConfig, ""),
    ("evaluators.NAME.metrics[]", Metric, ""),
    ("metrics[].sub_types[]", SubMetric,
     "Built-in sub-metrics: accuracy (accuracy_score, f1_score, precision, recall; macro over classes), perplexity "
     "(perplexity, loss), latency (avg, p50, p75, p90, p95, p99, p999, min, max; ms per example), throughput "
     "(avg, min, max, p50, p75, p90, p95, p99, p999; examples per second at batch 1, each from latency's mirror "
     "percentile), size_on_disk (size_on_disk in MiB, bytes in bytes; from the files, nothing "
     "run)."),
    ("sub_types[].goal", Goal, "Relative goals compare with the evaluator's `baseline` model."),
    ("metrics[].user_config (custom metrics)", CustomMetricConfig, ""),
]


def _default(info) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        return "see below" if isinstance(info.default_factory, type) else "default"
    return f"`{str(info.default)!r}`" if isinstance(info.default, PurePath) else f"`{info.default!r}`"


def _aliases(info) -> str:
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return ", ".join(f"`{a}`" for a in alias.choices[1:] if isinstance(a, str))
    return ""


def _fields(model: type[BaseModel]) -> list[str]:
    rows = ["| key | also accepted as | default | meaning |", "|---|---|---|---|"]
    written = WRITTEN_AS.get(model, {})
    for name, info in model.model_fields.items():
        note = " Not part of the cache key: changing it reuses cached results." if is_output_neutral(info) else ""
        key, _, what = written.get(name, name).partition(" ")
        default = DEFAULT_AS.get(model, {}).get(name) or _default(info)
        rows.append(f"| `{key}`{' ' + what if what else ''} | {_aliases(info)} | {default} | "
                    f"{info.description or ''}{note} |")
    return rows


def reference() -> str:
    """The whole reference page as Markdown."""
    out = ["# Config reference", "", "Generated from the code by `python -m modelpress.reference`; do not edit.", ""]
    for title, model, note in SECTIONS:
        out += [f"## {title}", ""] + ([note, ""] if note else []) + _fields(model) + [""]
    out += ["## passes", "", "Each pass is `{\"type\": NAME, ...params}` (or params nested under `config`).", ""]
    for spec in (s for s in CATALOG.values() if s.origin == "built-in"):  # plugins document themselves
        extra = f" Needs `pip install 'modelpress[{spec.optional_package[1]}]'`." if spec.optional_package else ""
        search = spec.search_space()
        searchable = "; ".join(f"`{k}`: {v}" for k, v in search.items())
        extra += f" Searched with SEARCHABLE_VALUES: {searchable}." if search else ""
        produces = "the same kind" if spec.produces == "same" else spec.produces
        out += [f"### {spec.name}", "", f"{(spec.params.__doc__ or spec.summary).strip()} Accepts "
                f"{', '.join(spec.accepts)}; produces {produces}.{extra}", ""] + _fields(spec.params) + [""]
    trained = ", ".join(spec.name for spec in CATALOG.values() if "training_args" in spec.params.model_fields)
    out += [f"### training_args ({trained})", ""] + _fields(TrainingArgs) + [""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(reference())
