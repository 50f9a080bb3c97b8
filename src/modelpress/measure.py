"""`modelpress evaluate`: measure a model folder that modelpress produced on a new data file.

The prompt template and BOS setting saved beside the model (`modelpress_model.json`) turn
each row into the same prompt the model was trained on; the template's last field is the label.
"""

from __future__ import annotations

from pathlib import Path

from modelpress.chat import ChatFormat
from modelpress.cli_args import data_format
from modelpress.config.templates import completion_field, template_problem
from modelpress.config.schema import DataConfig
from modelpress.data import load_rows, render
from modelpress.data_split import distinct
from modelpress.errors import ConfigError, ModelpressError, Problem
from modelpress.evaluate import BATCH_SIZE, LATENCY_SAMPLES, evaluate
from modelpress.models import MODEL_CARD, ModelRef
from modelpress.report import confusion_text, misses_text

def evaluate_folder(model_dir: Path, data_files: list[Path], template: str | None = None,
                    max_new_tokens: int | None = None, max_examples: int | None = None, show_progress: bool = True,
                    batch_size: int | None = None, latency_samples: int | None = None,
                    trust_remote_code: bool = False) -> dict:
    """Metrics of the model in `model_dir` on the distinct prompts of `data_files`, as the run that made it measured
    (one row per prompt; its answer length, batch size and latency sample, which its card keeps, unless given)."""
    if not (model_dir / MODEL_CARD).is_file():
        raise ModelpressError(f"{model_dir} has no {MODEL_CARD}: point evaluate at the 'model' folder of a "
                              "modelpress run (or the folder of one of its cache entries)")
    ref = ModelRef.load(model_dir)
    task = ref.task or {}
    chat = None if template else task.get("chat")  # --template overrides the trained chat format
    template = template or task.get("text_template")
    label_col = task.get("label_col")
    if not (template or chat) and not (label_col and task.get("text_cols")):
        raise ConfigError([Problem("--template", f"{model_dir} does not say which text template it was trained with",
                                   "Pass --template, e.g. '### Text: {phrase}\\n### The tone is:\\n{tone}'.")])
    problem = template_problem(template) if template else None
    if problem:
        raise ConfigError([Problem("--template", problem)])
    fmt = data_format(data_files)
    chat_fields = {"chat_template": chat["template"], "chat_columns": chat.get("columns"),
                   "message_col": chat.get("message_col") or "messages",
                   "system_prompt": chat.get("system_prompt")} if chat else {"text_template": template}
    config = DataConfig(name="evaluate", data_files=data_files, format=fmt, text_cols=task.get("text_cols"),
                        label_col=label_col, add_special_tokens=task.get("add_bos", False), **chat_fields)
    chat_format = ChatFormat.from_card(chat) if chat else None
    rows = render(config, load_rows(config), chat_format)
    unique = distinct(rows)  # a run measures each distinct prompt once
    examples = unique[:max_examples]
    label = label_col or completion_field(template) or ("assistant" if chat else None)
    max_new_tokens = max_new_tokens or task.get("max_new_tokens") or 8
    batch_size = batch_size or task.get("batch_size") or BATCH_SIZE
    latency_samples = latency_samples or task.get("latency_samples") or LATENCY_SAMPLES
    result = evaluate(ref, examples, config.add_special_tokens, max_new_tokens, with_accuracy=label is not None,
                      show_progress=show_progress, trust_remote_code=trust_remote_code, batch_size=batch_size,
                      latency_samples=latency_samples)
    result.update({"model": str(model_dir), "model_kind": ref.kind, "data": [str(p) for p in data_files],
                   "label_column": label, "rows": len(rows), "distinct_rows": len(unique),
                   "max_new_tokens": max_new_tokens})
    return result


def format_result(result: dict) -> str:
    """A short human-readable report of `evaluate_folder`'s result."""
    rows, unique = result.get("rows", result["examples"]), result.get("distinct_rows", result["examples"])
    distinct = "" if rows == unique else f" (the distinct prompts of {rows} rows)"
    if unique > result["examples"]:  # --max-examples
        distinct = f" (the first {result['examples']} of {unique} distinct prompts in {rows} rows)"
    lines = [f"{result['model']} ({result['model_kind']}) on {result['examples']} rows of "
             f"{', '.join(result['data'])}{distinct}"]
    if result.get("runtime"):
        lines.append(f"answered by       {result['runtime']}")
    if "accuracy" in result:
        lines.append(f"accuracy          {result['accuracy']:.3f}  (majority class {result['majority_baseline']:.3f})")
        lines += [f"  recall {label:<10} {value:.3f}" for label, value in result["per_class_recall"].items()]
        if result.get("confusion"):
            lines.append(confusion_text(result))
        if result.get("misses"):
            lines.append(misses_text(result))
    lines.append(f"completion loss   {result['completion_loss']:.3f}")
    lines.append(f"latency ms        p50 {result['latency_ms']['p50']:.1f}  p90 {result['latency_ms']['p90']:.1f}"
                 f"  (batch 1, {result['latency_examples']} examples)")
    if result.get("tokens_per_second"):
        lines.append(f"tokens/s          {result['tokens_per_second']:.0f}")
    lines.append(f"examples/s        {result['throughput']:.1f}")
    return "\n".join(lines)


def result_json(result: dict) -> str:
    """The result as strict JSON: a value that is not a finite number (a loss over no scored token) is null."""
    from modelpress.fsutil import json_text

    return json_text(result).rstrip("\n")
