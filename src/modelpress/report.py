"""Plain-text tables of what a run did and measured."""

from __future__ import annotations

import math
import os

from modelpress.passes.spec_base import GGUF
from modelpress.runner_base import RUNTIME_NAMES


def answer_lengths(models: dict) -> str:
    """What a latency figure times: answers of up to max_new_tokens, each until it ends (so a model that answers in
    fewer tokens is faster for that alone): the tokens a timed answer had on average, per model."""
    means = [(role, m["mean_new_tokens"]) for role, m in models.items() if m.get("mean_new_tokens") is not None]
    if not means:  # metrics written before these were kept
        return ""
    first = next(iter(models.values()))
    apart = [f"{role} {m['batch1_agreement']['compared'] - m['batch1_agreement']['same']} of "
             f"{m['batch1_agreement']['compared']}" for role, m in models.items()
             if m.get("batch1_agreement") and m["batch1_agreement"]["same"] < m["batch1_agreement"]["compared"]]
    return (f" (after {first.get('latency_warmup', 0)} untimed; each until its answer ends, at most "
            f"{first.get('max_new_tokens')} new tokens; tokens per timed answer: "
            + ", ".join(f"{role} {mean:.1f}" for role, mean in means) + ")"
            + ("; answers alone that differ from the batched ones accuracy counts: " + ", ".join(apart)
               if apart else ""))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    body = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def _num(value, fmt: str) -> str:
    """Not measured (None, NaN, infinite; null in metrics.json) is '-', as the re-rendered report shows it."""
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)


def summary_table(history: list[dict], metrics: dict) -> str:
    """The run history, then one row of metrics per measured model."""
    steps = _table(["step", "type", "cache", "seconds", "peak RSS MiB"],
                   [[h["pass"], h["type"], h["cache"], _num(h["seconds"], ".1f"), _num(h["peak_rss_mb"], ".0f")]
                    for h in history])
    models = metrics.get("models", {})
    if not models:
        return steps
    rows = []
    for role, m in models.items():
        rows.append([role, m.get("model_kind", "?"), _num(m.get("accuracy"), ".3f"),
                     _num(m.get("completion_loss"), ".3f"), _num(m["latency_ms"]["p50"], ".1f"),
                     _num(m["latency_ms"]["p90"], ".1f"), _num(m.get("tokens_per_second"), ".0f"),
                     _num(m.get("size_mb"), ".1f")])
    first = next(iter(models.values()))
    note = f"\nevaluated on {first['examples']} examples: {first.get('eval_data', '')}"
    if first.get("majority_baseline") is not None:
        note += f" (majority-class accuracy {first['majority_baseline']:.3f})"
    if first.get("latency_examples") is not None:  # metrics written before latency was sampled have none
        note += f"\nlatency, tok/s: one example at a time, on {first['latency_examples']} of them"
        note += answer_lengths(models)
    note += gguf_note(models, "\n")
    table = _table(["model", "kind", "accuracy", "loss", "p50 ms", "p90 ms", "tok/s", "size MiB"], rows)
    extra = "".join(f"\n\non {what}:\n" + _table(EXTRA_HEADERS, rows) for what, rows in extra_data_rows(metrics))
    return f"{steps}\n\n{table}{note}{extra}"


EXTRA_HEADERS = ["model", "kind", "accuracy", "answered with a label", "loss"]


def gguf_note(models: dict, lead: str) -> str:
    """What a GGUF model's numbers are (`lead` + the note), or "" when no model is one."""
    runtimes = {m.get("runtime") or "" for m in models.values() if m.get("model_kind") == GGUF}
    llama = sorted(r for r in runtimes if r.startswith(RUNTIME_NAMES["llama_cpp"]))
    notes = [f"{lead}a gguf model is answered by {' and '.join(llama)}, on the file's own quantized blocks, one "
             "prompt at a time: accuracy, loss, latency and tok/s are llama.cpp's"] if llama else []
    if len(llama) < len(runtimes):  # some answered in PyTorch (llama-cpp-python missing where they ran)
        notes.append(f"{lead}{'another' if llama else 'a'} gguf model is measured in PyTorch on its weights "
                     "dequantized to float32 (transformers' GGUF reader; llama-cpp-python was not installed): accuracy "
                     "and loss are those of the file's weights, latency and tok/s PyTorch's, not llama.cpp's")
    return "".join(notes)


def extra_data_rows(metrics: dict) -> list[tuple[str, list[list[str]]]]:
    """Per extra data config (evaluation.extra_data_configs): what was measured ("all 72 rows of data config 'x'",
    or the first N distinct prompts under max_examples) and one row per model."""
    out = []
    for name, by_role in metrics.get("extra_data", {}).items():
        measured = {role: m for role, m in by_role.items() if m}
        rows = [[role, m.get("model_kind", "?"), _num(m.get("accuracy"), ".3f"),
                 _num(m.get("answered_with_a_label"), ".3f"), _num(m.get("completion_loss"), ".3f")]
                for role, m in measured.items()]
        first = next(iter(measured.values()), {})
        what = first.get("eval_data") or f"data config {name!r}"
        if what.startswith("all rows of"):
            what = what.replace("all rows of", f"all {first.get('examples', 0)} rows of", 1)
        out.append((what, rows))
    return out


MAX_REPORTED = 6  # metric columns shown when none is ranked


def search_table(search: dict) -> str:
    """One row per candidate: its choices, the ranked and goal metrics, goals met, Pareto, best."""
    ranked = [m["metric"] for m in search["ranked_metrics"]]
    keys = ranked + [k for k in search.get("goal_metrics", []) if k not in ranked]
    if not keys:  # nothing ranked (an LMEvaluator's tasks report only): show what was measured
        measured = next((c["metrics"] for c in search["candidates"] if c["status"] == "ok"), {})
        keys = [k for k, v in measured.items() if isinstance(v, (int, float))][:MAX_REPORTED]
    rows = []
    baseline = search.get("baseline") or {}
    if baseline.get("metrics") and keys:
        rows.append(["base", f"the {baseline.get('model', 'input')} model",
                     *[_num(baseline["metrics"].get(k), ".4g") for k in keys], "", ""])
    for c in search["candidates"]:
        flags = ("BEST " if c.get("best") else "") + ("pareto" if c.get("pareto") else "")
        values = [_num(c["metrics"].get(k), ".4g") if c["status"] == "ok" else "-" for k in keys]
        status = ("meets goals" if c["goals_met"] else "misses " + ", ".join(c["violations"])) if c["status"] == "ok" \
            else "FAILED: " + c["error"][:60]
        rows.append([str(c["id"]), "; ".join(c["choice"]), *values, status, flags.strip()])
    table = _table(["#", "choices", *keys, "goals", ""], rows)
    lines = [f"search: {search['evaluated']} of {search['space_size']} candidates ({search['sampler']}, "
             f"{search['execution_order']}) in {search['seconds']:.1f} s; {search['failed']} failed", table]
    if search["goals"]:
        lines.append("goals: " + "; ".join(search["goals"]))
    if search["best"]:
        lines.append(f"best: candidate {search['best']} (meets every goal; ranked by {', '.join(ranked) or 'id'})")
    elif search["closest"]:
        lines.append(f"NO CANDIDATE MEETS THE GOALS. Closest: candidate {search['closest']}. "
                     "Relax the goals or widen the search; the output model was not replaced.")
    elif search["evaluated"]:
        lines.append("NO CANDIDATE COULD BE MEASURED: every candidate failed (see the errors above).")
    else:
        lines.append("NO CANDIDATE WAS EVALUATED: the search budget (max_time, max_iter or max_samples) ran out "
                     "first. Raise it; the output model was not replaced.")
    return "\n".join(lines)


def confusion_table(result: dict) -> tuple[list[str], list[list[str]]] | None:
    """An evaluation's confusion counts as (headers, rows): one row per expected label, one column per
    expected label and one for other answers if any; None when the evaluation has none (no labels, or
    metrics written before they were kept)."""
    confusion = result.get("confusion")
    if not confusion:
        return None
    given = {a for row in confusion.values() for a in row}
    answers = [*confusion, *sorted(given - set(confusion))]  # every expected label, then any other answer
    rows = [[label, *(str(row.get(a, 0)) for a in answers)] for label, row in confusion.items()]
    return ["expected \\ answered", *answers], rows


def confusion_text(result: dict) -> str:
    """`confusion_table` as plain text ("" when there is none)."""
    table = confusion_table(result)
    return _table(*table) if table else ""


def miss_rows(result: dict) -> tuple[list[list[str]], str, str, str]:
    """An evaluation's wrong answers as rows (file and row, expected, answered, the prompt's own part), with the
    text every prompt of the eval set starts and ends with and the folder their files share (each row names
    its file from there)."""
    misses = result.get("misses") or []
    shared = result.get("misses_prompt") or {}
    folder, sources = short_sources([m["source"] for m in misses])
    rows = [[where, m["label"], m["output"].strip(), m["prompt"]] for m, where in zip(misses, sources)]
    return rows, shared.get("head", ""), shared.get("tail", ""), folder


def short_sources(sources: list[str]) -> tuple[str, list[str]]:
    """("the folder every "FILE row N" source's file is in", each source with its file named from there);
    ("", the sources) when they are not all of that form or share no folder."""
    parts = [source.rpartition(" row ") for source in sources]
    # a Hub dataset's rows are named by its snapshot folder (a commit hash, no file suffix): kept whole
    if not parts or not all(sep and row.isdigit() and os.path.splitext(path)[1] for path, sep, row in parts):
        return "", list(sources)
    try:
        folder = os.path.commonpath([os.path.dirname(path) for path, _, _ in parts])
    except ValueError:  # absolute and relative paths mixed
        return "", list(sources)
    if not folder:
        return "", list(sources)
    return folder, [f"{os.path.relpath(path, folder)} row {row}" for path, _, row in parts]


MISS_TEXT_CHARS = 200  # of each wrong answer's prompt text, printed


def misses_text(result: dict, shown: int = 10) -> str:
    """The first `shown` wrong answers as plain text, each prompt's own text cut to MISS_TEXT_CHARS ("" when
    none were kept)."""
    rows, head, tail, folder = miss_rows(result)
    if not rows:
        return ""
    total = result.get("misses_total", len(rows))
    lines = [f"wrong answers ({min(shown, len(rows))} of {total}; all kept ones in --json):"]
    lines += [f"  {where}: expected {label!r}, answered {answer!r}: {_cut(text.strip(), MISS_TEXT_CHARS)!r}"
              for where, label, answer, text in rows[:shown]]
    if folder:
        lines.append(f"  (files in {folder})")
    if head or tail:
        lines.append(f"  (each prompt between {head!r} and {tail!r})")
    return "\n".join(lines)


def _cut(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[:chars] + "..."
