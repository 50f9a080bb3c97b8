"""A self-contained HTML report of a run (no network needed to view it).

It shows the measured models, a chart of accuracy against latency (marker area by size,
Pareto-optimal models filled), each step's time and memory, and the resolved config.
`modelpress report OUTPUT_DIR` re-renders it from the JSON files a run leaves.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from modelpress.chart_layout import FONT, FRAME, HEIGHT, PARETO_FILL, WIDTH, Axis, Mark, chart_layout, finite
from modelpress.errors import ModelpressError
from modelpress.fsutil import atomic_write_text, read_json
from modelpress.report import EXTRA_HEADERS, answer_lengths, confusion_table, extra_data_rows, gguf_note, miss_rows

REPORT = "report.html"



def write_report(output_dir: Path, metrics: dict, steps: list[dict], config: dict) -> Path:
    """Write `output_dir/report.html` from a run's metrics, steps and resolved config."""
    path = Path(output_dir) / REPORT
    atomic_write_text(path, build_html(metrics, steps, config))
    return path


def render_report(output_dir: Path) -> Path:
    """Re-render `output_dir/report.html` from the JSON files a run left there."""
    output_dir = Path(output_dir)
    parts = {}
    for name in ("metrics.json", "run_history.json", "config.resolved.json"):
        path = output_dir / name
        try:
            parts[name] = read_json(path) if path.is_file() else {}
        except ValueError as err:  # a file cut short or edited by hand
            raise ModelpressError(f"{path} is not valid JSON ({err}); the report cannot be drawn from it. "
                                  "Run the workflow again to write it anew.") from None
        if not isinstance(parts[name], dict):
            raise ModelpressError(f"{path} holds a {type(parts[name]).__name__}, not the mapping a run writes; the "
                                  "report cannot be drawn from it. Run the workflow again to write it anew.")
    try:
        return write_report(output_dir, parts["metrics.json"], parts["run_history.json"].get("steps", []),
                            parts["config.resolved.json"])
    except (KeyError, TypeError, AttributeError) as err:  # a file of an older or hand-edited shape
        raise ModelpressError(f"{output_dir}: the run's JSON files lack what the report draws ({type(err).__name__}: "
                              f"{err}); they were edited or written by another version. Run the workflow again to "
                              "write them anew.") from None


def build_html(metrics: dict, steps: list[dict], config: dict) -> str:
    """The whole page as one string."""
    models = metrics.get("models", {})
    search = metrics.get("search")
    body = [
        "<h1>modelpress run report</h1>",
        _search_section(search) if search else "",
        _models_table(models),
        *(f"<h3>On {html.escape(what)}</h3>" + _table(EXTRA_HEADERS, rows, "extra-data")
          for what, rows in extra_data_rows(metrics)),
        _confusion_section(metrics),
        _misses_section(metrics),
        _search_chart(search) if search else _chart(models),
        "<h2>Steps</h2>",
        _table(["step", "type", "cache", "seconds", "peak RSS MiB"],
               [[s["pass"], s["type"], s["cache"], _fmt(s.get("seconds"), ".1f"), _fmt(s.get("peak_rss_mb"), ".0f")]
                for s in steps], "steps"),
        "<h2>Resolved config</h2>",
        f"<pre id='config'>{html.escape(json.dumps(config, indent=2))}</pre>",
    ]
    style = ("body{font-family:sans-serif;margin:2em;max-width:90em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f3f3f3}"
             "td:first-child,#candidates td:nth-child(2),table[id^=misses] td{text-align:left}"
             "table[id^=misses] td:nth-child(4){white-space:pre-wrap}table[id^=misses] th{text-align:left}"
             "pre{background:#f7f7f7;padding:1em;overflow:auto}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>modelpress report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def _confusion_section(metrics: dict) -> str:
    """Each evaluated model's answers by expected label, on the eval data and on each extra data config."""
    found = [(role + where, table) for where, by_role in _evaluated_sets(metrics) for role, result in by_role.items()
             if result and (table := confusion_table(result))]
    tables = [f"<h3>{html.escape(name)}</h3>" + _table(*table, f"confusion-{i}")
              for i, (name, table) in enumerate(found)]
    return "<h2>Answers by expected label</h2>" + "".join(tables) if tables else ""


MISSES_SHOWN = 50  # wrong answers listed per model and data set


def _misses_section(metrics: dict) -> str:
    """Each evaluated model's wrong answers, folded away: where the row came from, its label, the answer and
    the prompt's own part."""
    parts = []
    for where, by_role in _evaluated_sets(metrics):
        for role, result in by_role.items():
            rows, head, tail, folder = miss_rows(result or {})
            if not rows:
                continue
            total = result.get("misses_total", len(rows))
            shared = (f"<p>Every prompt: <code>{html.escape(repr(head))}</code> + the text shown + "
                      f"<code>{html.escape(repr(tail))}</code></p>" if head or tail else "")
            shared += f"<p>Files in <code>{html.escape(folder)}</code></p>" if folder else ""
            parts.append(f"<details><summary>{html.escape(role + where)}: {total} wrong, first "
                         f"{min(len(rows), MISSES_SHOWN)} shown</summary>{shared}"
                         + _table(["row", "expected", "answered", "prompt"], rows[:MISSES_SHOWN],
                                  f"misses-{len(parts)}") + "</details>")
    return "<h2>Wrong answers</h2>" + "".join(parts) if parts else ""


def _evaluated_sets(metrics: dict) -> list[tuple[str, dict]]:
    """(" on NAME" or "", {role: result}) for the eval data and each extra data config."""
    return [("", metrics.get("models", {}))] + [(f" on {name}", by_role)
                                                 for name, by_role in metrics.get("extra_data", {}).items()]


def _fmt(value, spec: str) -> str:
    """A number as the report shows it; not measured (None, NaN, infinite; null in metrics.json) is '-'."""
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _table(headers: list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table id='{table_id}'><tr>{head}</tr>{body}</table>"


def _models_table(models: dict) -> str:
    if not models:
        return "<p>No evaluation in this run.</p>"
    first = next(iter(models.values()))
    rows = [[role, m.get("model_kind", ""), _fmt(m.get("accuracy"), ".3f"), _fmt(m.get("completion_loss"), ".3f"),
             _fmt(m["latency_ms"]["p50"], ".1f"), _fmt(m["latency_ms"]["p90"], ".1f"),
             _fmt(m.get("tokens_per_second"), ".0f"), _fmt(m.get("size_mb"), ".1f")] for role, m in models.items()]
    note = (f"<p>Evaluated on {html.escape(str(first.get('examples')))} examples: "
            f"{html.escape(str(first.get('eval_data', '')))}")
    if first.get("majority_baseline") is not None:
        note += f" (majority-class accuracy {first['majority_baseline']:.3f})"
    if first.get("latency_examples") is not None:
        note += (f". Latency and tok/s: one example at a time, on {html.escape(str(first['latency_examples']))} "
                 "of them"
                 f"{html.escape(answer_lengths(models))}.")
    note += html.escape(gguf_note(models, " Note: "))
    headers = ["model", "kind", "accuracy", "loss", "p50 ms", "p90 ms", "tok/s", "size MiB"]
    return "<h2>Models</h2>" + _table(headers, rows, "models") + note + "</p>"


def _search_axes(search: dict) -> tuple[str | None, str | None, str]:
    """(accuracy key, latency key, the latency statistic's name) the search chart plots: those the search saved
    by metric type, or, in a metrics.json written before it did, the built-in metrics' default names."""
    axes = search.get("chart_axes")
    if axes:
        return axes["accuracy"], axes["latency"], axes["latency_stat"]
    keys = sorted({k for c in search["candidates"] for k in c["metrics"]})
    acc = next((k for k in keys if k.endswith("-accuracy_score")), None)
    return acc, ("latency-p50" if "latency-p50" in keys else None), "p50"


def _search_points(search: dict, acc_key: str | None, lat_key: str | None) -> dict:
    """Candidates as chart points: {label: {"accuracy", "latency_ms", "size_mb", "pareto"}}; a candidate whose
    accuracy or latency was not measured, or is not a finite number, is left out."""
    points = {}
    for c in search["candidates"]:
        m = c["metrics"]
        acc, lat = m.get(acc_key), m.get(lat_key)
        if c["status"] == "ok" and finite(acc) and finite(lat):
            size = next((v for k, v in m.items() if k.endswith("size_on_disk")), None)
            points[f"#{c['id']}"] = {"accuracy": acc, "latency_ms": {"p50": lat}, "size_mb": size,
                                     "pareto": c.get("pareto", False)}
    return points


def _search_chart(search: dict) -> str:
    acc_key, lat_key, stat = _search_axes(search)
    ranked = ", ".join(m["metric"] for m in search["ranked_metrics"]) or "none"
    return _chart(_search_points(search, acc_key, lat_key), stat,
                  f"Filled: on the Pareto frontier of the ranked metrics ({ranked}): no other candidate is at least "
                  "as good on every one and better on one, among those that meet the goals when any does.")


def _search_section(search: dict) -> str:
    keys = [m["metric"] for m in search["ranked_metrics"]]
    keys += [k for k in sorted({k for c in search["candidates"] for k in c["metrics"]}) if k not in keys]
    rows = []
    for c in search["candidates"]:
        values = [_fmt(c["metrics"].get(k), ".4g") for k in keys]
        if c["status"] != "ok":
            goals = "failed: " + c.get("error", "")
        else:
            goals = "yes" if c["goals_met"] else "no: " + ", ".join(c["violations"])
        mark = ("best " if c.get("best") else "") + ("pareto" if c.get("pareto") else "")
        rows.append([f"#{c['id']}", "; ".join(c["choice"]), *values, goals, mark.strip(),
                     _fmt(c.get("seconds"), ".1f")])
    if search["best"]:
        verdict = f"<p id='verdict'>Best: candidate #{html.escape(str(search['best']))}, which meets every goal.</p>"
    elif search["closest"]:
        verdict = (f"<p id='verdict' style='color:#b00'><b>No candidate meets the goals.</b> Closest: candidate "
                   f"#{html.escape(str(search['closest']))}. The output model was not replaced.</p>")
    elif search["evaluated"]:
        verdict = "<p id='verdict' style='color:#b00'><b>Every candidate failed.</b></p>"
    else:
        verdict = ("<p id='verdict' style='color:#b00'><b>No candidate was evaluated</b>: the search budget ran "
                   "out first.</p>")
    goals = "".join(f"<li>{html.escape(g)}</li>" for g in search["goals"]) or "<li>none</li>"
    counts = {k: html.escape(str(search[k])) for k in ("evaluated", "space_size", "failed")}
    return (f"<h2>Search</h2><p>{counts['evaluated']} of {counts['space_size']} candidates, sampler "
            f"{html.escape(search['sampler'])}, {html.escape(search['execution_order'])}, "
            f"{_fmt(search['seconds'], '.1f')} s, {counts['failed']} failed. Ranked by "
            f"{html.escape(', '.join(keys[:len(search['ranked_metrics'])]) or 'nothing')}.</p>"
            f"<p>Goals:</p><ul id='goals'>{goals}</ul>{verdict}"
            + _table(["#", "choices", *keys, "meets goals", "", "seconds"], rows, "candidates"))


def _chart(models: dict, stat: str = "p50",
           caption: str = "Filled: on the Pareto frontier (no other model is at least as accurate and as fast, and "
                           "better on one).") -> str:
    """The accuracy/latency chart; `stat` names the latency statistic plotted (p50 unless a search ranks another)."""
    marks, x_axis, y_axis = chart_layout(models)
    if not marks:
        return "<p>No accuracy and latency were measured together, so there is no accuracy/latency chart.</p>"
    svg = (f"<svg id='chart' xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' role='img' "
           f"font-family='sans-serif'>{_grid(x_axis, y_axis, stat)}{_markers(marks, stat)}{_labels(marks)}</svg>")
    sized = " Larger markers: larger on disk." if any(m.get("size_mb") for m in models.values()) else ""
    return ("<h2>Accuracy vs latency</h2>" + svg + _chart_key(marks, stat) +
            f"<p>{html.escape(caption)}{sized} Hover a marker for its numbers.</p>")


def _grid(x_axis: Axis, y_axis: Axis, stat: str) -> str:
    left, top, right, bottom = FRAME
    parts = []
    for t in x_axis.ticks:
        x = x_axis.px(t)
        parts.append(f"<line x1='{x:.1f}' y1='{top}' x2='{x:.1f}' y2='{bottom}' stroke='#e6e6e6'/>"
                     f"<text class='tick' x='{x:.1f}' y='{bottom + 16}' text-anchor='middle' font-size='11'>"
                     f"{t:.{x_axis.decimals}f}</text>")
    for t in y_axis.ticks:
        y = y_axis.px(t)
        parts.append(f"<line x1='{left}' y1='{y:.1f}' x2='{right}' y2='{y:.1f}' stroke='#e6e6e6'/>"
                     f"<text class='tick' x='{left - 6}' y='{y + 4:.1f}' text-anchor='end' font-size='11'>"
                     f"{t:.{y_axis.decimals}f}</text>")
    mid_y = (top + bottom) / 2
    parts.append(f"<line x1='{left}' y1='{bottom}' x2='{right}' y2='{bottom}' stroke='black'/>"
                 f"<line x1='{left}' y1='{top}' x2='{left}' y2='{bottom}' stroke='black'/>"
                 f"<text x='{(left + right) / 2}' y='{HEIGHT - 8}' text-anchor='middle' font-size='12'>"
                 f"{html.escape(stat)} latency (ms)</text><text x='14' y='{mid_y}' transform='rotate(-90 14 {mid_y})' "
                 f"text-anchor='middle' font-size='12'>accuracy</text>")
    return "".join(parts)


def _markers(marks: list[Mark], stat: str) -> str:
    # Big markers first, so a small one is never buried under a big one. Multiply blending, where markers
    # overlap, lets the one beneath show through (as a translucent fill would), while a marker standing
    # alone keeps its exact colour: the caption's "filled" blue reads the same everywhere.
    parts = []
    for m in sorted(marks, key=lambda m: -m.radius):
        fill = PARETO_FILL if m.pareto else "white"
        parts.append(f"<circle id='point-{html.escape(m.name)}' fill='{fill}' cx='{m.x:.1f}' cy='{m.y:.1f}' "
                     f"r='{m.radius:.1f}' stroke='{PARETO_FILL}' stroke-width='1.5' "
                     f"style='mix-blend-mode:multiply'><title>{html.escape(m.name)}: accuracy {m.accuracy:.3f}, "
                     f"{html.escape(stat)} {m.latency:.2f} ms</title></circle>")
    return "".join(parts)


def _labels(marks: list[Mark]) -> str:
    lines = "".join(f"<line class='leader' x1='{m.leader[0]:.1f}' y1='{m.leader[1]:.1f}' x2='{m.leader[2]:.1f}' "
                    f"y2='{m.leader[3]:.1f}' stroke='#888'/>" for m in marks if m.leader)
    return lines + "".join(f"<text class='label' x='{m.box[0] + 1:.1f}' y='{m.box[3] - 4:.1f}' font-size='{FONT}'>"
                           f"{html.escape(m.text)}</text>" for m in marks if m.box is not None)


def _chart_key(marks: list[Mark], stat: str) -> str:
    """The names that did not fit beside their markers, under the letter that stands for each."""
    keyed = sorted((m for m in marks if m.key), key=lambda m: m.key)
    if not keyed:
        return ""
    rows = [[m.key if m.box else "- (no room)", m.name, f"{m.accuracy:.3f}", f"{m.latency:.2f}"] for m in keyed]
    return _table(["mark", "model", "accuracy", f"{stat} ms"], rows, "chart-key")
