"""Plain-text tables of what a run did and measured."""

from __future__ import annotations


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    body = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


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
    table = _table(["model", "kind", "accuracy", "loss", "p50 ms", "p90 ms", "tok/s", "size MiB"], rows)
    extra = "".join(f"\n\non all {count} rows of data config {name!r}:\n" + _table(EXTRA_HEADERS, rows)
                    for name, count, rows in extra_data_rows(metrics))
    return f"{steps}\n\n{table}{note}{extra}"


EXTRA_HEADERS = ["model", "kind", "accuracy", "answered with a label", "loss"]


def extra_data_rows(metrics: dict) -> list[tuple[str, int, list[list[str]]]]:
    """Per extra data config (evaluation.extra_data_configs): its name, row count and one row per model."""
    out = []
    for name, by_role in metrics.get("extra_data", {}).items():
        measured = {role: m for role, m in by_role.items() if m}
        rows = [[role, m.get("model_kind", "?"), _num(m.get("accuracy"), ".3f"),
                 _num(m.get("answered_with_a_label"), ".3f"), _num(m.get("completion_loss"), ".3f")]
                for role, m in measured.items()]
        count = next(iter(measured.values()))["examples"] if measured else 0
        out.append((name, count, rows))
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

