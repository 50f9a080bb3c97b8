"""A self-contained HTML report of a run (no network needed to view it).

It shows the measured models, a chart of accuracy against latency (marker area by size,
Pareto-optimal models filled), each step's time and memory, and the resolved config.
`modelpress report OUTPUT_DIR` re-renders it from the JSON files a run leaves.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from modelpress.fsutil import atomic_write_text, read_json

REPORT = "report.html"
WIDTH, HEIGHT, PAD = 560, 320, 48


def pareto_front(points: dict[str, tuple[float, float]]) -> set[str]:
    """Names of the points no other point beats: higher accuracy (first) and lower latency (second)."""
    front = set()
    for name, (acc, lat) in points.items():
        dominated = any(a >= acc and l <= lat and (a > acc or l < lat)
                        for other, (a, l) in points.items() if other != name)
        if not dominated:
            front.add(name)
    return front


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
        parts[name] = read_json(path) if path.is_file() else {}
    return write_report(output_dir, parts["metrics.json"], parts["run_history.json"].get("steps", []),
                        parts["config.resolved.json"])


def build_html(metrics: dict, steps: list[dict], config: dict) -> str:
    """The whole page as one string."""
    models = metrics.get("models", {})
    search = metrics.get("search")
    body = [
        "<h1>modelpress run report</h1>",
        _search_section(search) if search else "",
        _models_table(models),
        _chart(_search_points(search) if search else models),
        "<h2>Steps</h2>",
        _table(["step", "type", "cache", "seconds", "peak RSS MiB"],
               [[s["pass"], s["type"], s["cache"], _fmt(s.get("seconds"), ".1f"), _fmt(s.get("peak_rss_mb"), ".0f")]
                for s in steps], "steps"),
        "<h2>Resolved config</h2>",
        f"<pre id='config'>{html.escape(json.dumps(config, indent=2))}</pre>",
    ]
    style = ("body{font-family:sans-serif;margin:2em;max-width:90em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f3f3f3}"
             "td:first-child,#candidates td:nth-child(2){text-align:left}pre{background:#f7f7f7;padding:1em;overflow:auto}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>modelpress report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


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
    note = f"<p>Evaluated on {first.get('examples')} examples: {html.escape(str(first.get('eval_data', '')))}"
    if first.get("majority_baseline") is not None:
        note += f" (majority-class accuracy {first['majority_baseline']:.3f})"
    headers = ["model", "kind", "accuracy", "loss", "p50 ms", "p90 ms", "tok/s", "size MiB"]
    return "<h2>Models</h2>" + _table(headers, rows, "models") + note + "</p>"


def _search_points(search: dict) -> dict:
    """Candidates as chart points: {label: {"accuracy", "latency_ms", "size_mb", "pareto"}}."""
    points = {}
    for c in search["candidates"]:
        m = c["metrics"]
        acc = next((v for k, v in m.items() if k.endswith("accuracy_score")), None)
        lat = next((v for k, v in m.items() if k.split("-")[-1] in ("p50", "avg")), None)
        if c["status"] == "ok" and acc is not None and lat is not None:
            size = next((v for k, v in m.items() if k.endswith("size_on_disk")), None)
            points[f"#{c['id']}"] = {"accuracy": acc, "latency_ms": {"p50": lat}, "size_mb": size,
                                     "pareto": c.get("pareto", False)}
    return points


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
        rows.append([f"#{c['id']}", "; ".join(c["choice"]), *values, goals, mark.strip(), _fmt(c.get("seconds"), ".1f")])
    if search["best"]:
        verdict = f"<p id='verdict'>Best: candidate #{search['best']}, which meets every goal.</p>"
    elif search["closest"]:
        verdict = (f"<p id='verdict' style='color:#b00'><b>No candidate meets the goals.</b> Closest: candidate "
                   f"#{search['closest']}. The output model was not replaced.</p>")
    elif search["evaluated"]:
        verdict = "<p id='verdict' style='color:#b00'><b>Every candidate failed.</b></p>"
    else:
        verdict = ("<p id='verdict' style='color:#b00'><b>No candidate was evaluated</b>: the search budget ran "
                   "out first.</p>")
    goals = "".join(f"<li>{html.escape(g)}</li>" for g in search["goals"]) or "<li>none</li>"
    return (f"<h2>Search</h2><p>{search['evaluated']} of {search['space_size']} candidates, sampler "
            f"{html.escape(search['sampler'])}, {html.escape(search['execution_order'])}, "
            f"{search['seconds']:.1f} s, {search['failed']} failed. Ranked by "
            f"{html.escape(', '.join(keys[:len(search['ranked_metrics'])]) or 'nothing')}.</p>"
            f"<p>Goals:</p><ul id='goals'>{goals}</ul>{verdict}"
            + _table(["#", "choices", *keys, "meets goals", "", "seconds"], rows, "candidates"))


def _chart(models: dict) -> str:
    points = {role: (m["accuracy"], m["latency_ms"]["p50"]) for role, m in models.items() if "accuracy" in m}
    if not points:
        return "<p>No accuracy was measured, so there is no accuracy/latency chart.</p>"
    front = pareto_front(points)
    if any("pareto" in m for m in models.values()):  # search candidates: the frontier over every ranked metric
        front = {role for role, m in models.items() if m.get("pareto")}
    max_lat = max(lat for _, lat in points.values()) * 1.15 or 1.0
    max_size = max(models[r].get("size_mb") or 1 for r in points)

    def x(lat: float) -> float:
        return PAD + (WIDTH - 2 * PAD) * lat / max_lat

    import math

    accs = [acc for acc, _ in points.values()]
    low = max(0.0, math.floor((min(accs) - 0.05) * 10) / 10)
    high = min(1.0, math.ceil((max(accs) + 0.05) * 10) / 10)

    def y(acc: float) -> float:
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * (acc - low) / ((high - low) or 1.0)

    marks = []
    for role, (acc, lat) in points.items():
        radius = 5 + 15 * ((models[role].get("size_mb") or 1) / max_size) ** 0.5
        fill = "#1f77b4" if role in front else "white"
        marks.append(f"<circle id='point-{html.escape(role)}' cx='{x(lat):.1f}' cy='{y(acc):.1f}' r='{radius:.1f}' "
                     f"fill='{fill}' stroke='#1f77b4' stroke-width='2'><title>{html.escape(role)}: accuracy "
                     f"{acc:.3f}, p50 {lat:.1f} ms</title></circle>"
                     f"<text x='{x(lat) + radius + 4:.1f}' y='{y(acc) + 4:.1f}' font-size='12'>{html.escape(role)}"
                     f"</text>")
    axes = (f"<line x1='{PAD}' y1='{HEIGHT - PAD}' x2='{WIDTH - PAD}' y2='{HEIGHT - PAD}' stroke='black'/>"
            f"<line x1='{PAD}' y1='{PAD}' x2='{PAD}' y2='{HEIGHT - PAD}' stroke='black'/>"
            f"<text x='{WIDTH / 2}' y='{HEIGHT - 10}' text-anchor='middle' font-size='12'>p50 latency (ms)</text>"
            f"<text x='14' y='{HEIGHT / 2}' transform='rotate(-90 14 {HEIGHT / 2})' text-anchor='middle' "
            f"font-size='12'>accuracy</text>"
            f"<text x='{PAD - 6}' y='{y(high) + 4}' text-anchor='end' font-size='11'>{high:.1f}</text>"
            f"<text x='{PAD - 6}' y='{y(low) + 4}' text-anchor='end' font-size='11'>{low:.1f}</text>")
    ticks = (f"<text x='{PAD}' y='{HEIGHT - PAD + 28}' text-anchor='middle' font-size='11'>0</text>"
             f"<text x='{WIDTH - PAD}' y='{HEIGHT - PAD + 28}' text-anchor='middle' font-size='11'>"
             f"{max_lat:.1f}</text>")
    return (f"<h2>Accuracy vs latency</h2><svg id='chart' xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' "
            f"height='{HEIGHT}' role='img'>{axes}{''.join(marks)}{ticks}</svg>"
            "<p>Filled: on the Pareto frontier (no other model is both more accurate and faster). "
            "Marker area: size on disk.</p>")
