"""The HTML report: self-contained, with the measured numbers, the chart and the Pareto marks."""

from __future__ import annotations

import json
import math

import pytest

from modelpress.chart_layout import (FRAME, axis_range, box_hits_circle, boxes_overlap, chart_layout, line_points,
                                     nice_ticks, pareto_front)
from modelpress.html_report import build_html, render_report

METRICS = {"models": {
    "input": {"model_kind": "hf", "accuracy": 0.0, "completion_loss": 8.1, "latency_ms": {"p50": 17.2, "p90": 20.7},
              "tokens_per_second": 338, "size_mb": 12.1, "examples": 229, "eval_data": "split",
              "majority_baseline": 0.428},
    "final": {"model_kind": "onnx-genai", "accuracy": 0.843, "completion_loss": 0.186,
              "latency_ms": {"p50": 4.1, "p90": 5.6}, "tokens_per_second": 700, "size_mb": 3.8, "examples": 229},
}}
STEPS = [{"pass": "lora", "type": "LoRA", "cache": "miss", "seconds": 138.8, "peak_rss_mb": 870.0}]


def test_pareto_front_keeps_only_undominated_models():
    points = {"a": (0.9, 10.0), "b": (0.8, 5.0), "c": (0.7, 8.0), "d": (0.9, 12.0)}
    assert pareto_front(points) == {"a", "b"}


def test_report_holds_the_numbers_chart_and_config_without_network():
    page = build_html(METRICS, STEPS, {"passes": [{"name": "lora"}]})
    for text in ("0.843", "17.2", "138.8", "majority-class accuracy 0.428", "id='chart'", "point-final"):
        assert text in page, text
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    final = page.split("id='point-final'")[1].split(">")[0]
    assert "fill='#1f77b4'" in final  # faster and more accurate: on the frontier
    assert "fill='white'" in page.split("id='point-input'")[1].split(">")[0]


def test_report_shows_each_models_answers_by_expected_label_on_every_data_set():
    metrics = json.loads(json.dumps(METRICS))
    metrics["models"]["final"]["confusion"] = {"fear": {"fear": 7, "sadness": 2}, "sadness": {"sadness": 5}}
    metrics["extra_data"] = {"other_style": {"final": dict(metrics["models"]["final"], confusion={
        "fear": {"(other answer)": 3}, "sadness": {"fear": 1}})}}
    page = build_html(metrics, STEPS, {})
    section = page.split("<h2>Answers by expected label</h2>")[1]
    eval_table = section.split("id='confusion-0'")[1].split("</table>")[0]
    assert "<td>fear</td><td>7</td><td>2</td>" in eval_table and "<td>sadness</td><td>0</td><td>5</td>" in eval_table
    other = section.split("<h3>final on other_style</h3>")[1].split("</table>")[0]
    assert "(other answer)" in other and "<td>fear</td><td>0</td><td>0</td><td>3</td>" in other
    assert "Answers by expected label" not in build_html(METRICS, STEPS, {})  # no counts kept: no section


def test_report_command_rerenders_from_the_json_files(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    (tmp_path / "run_history.json").write_text(json.dumps({"steps": STEPS}))
    (tmp_path / "config.resolved.json").write_text("{}")
    assert "0.843" in render_report(tmp_path).read_text()


# The search example's six candidates (README, "Search"): 1.67-2.05 ms, accuracies 0.821-0.843, several
# within 0.01 of each other; then six between 5.0 and 6.0 ms, three of them almost on top of each other,
# which once sat on a 0-6.9 ms axis and covered each other.
README_SEARCH = {"#1": (0.8428, 2.032, True), "#2": (0.8297, 2.048, False), "#3": (0.821, 1.806, False),
                 "#4": (0.8297, 1.865, True), "#5": (0.821, 1.668, True), "#6": (0.8253, 1.792, True)}
FIVE_TO_SIX_MS = {"#1": (0.830, 5.02, False), "#2": (0.831, 5.05, False), "#3": (0.829, 5.04, False),
                  "#4": (0.840, 5.50, True), "#5": (0.800, 5.98, False), "#6": (0.842, 5.51, True)}
SIZES = [3.1, 3.0, 2.9, 5.6, 5.5, 5.4]


def _points(candidates: dict, sizes: list | None = None) -> dict:
    """Chart points as the report builds them from search candidates."""
    return {name: {"accuracy": acc, "latency_ms": {"p50": lat, "p90": lat}, "size_mb": sizes[i] if sizes else None,
                   "pareto": pareto} for i, (name, (acc, lat, pareto)) in enumerate(candidates.items())}


def _assert_axis_fits(axis, values):
    low, high = min(values), max(values)
    step = axis.ticks[1] - axis.ticks[0]
    assert len(axis.ticks) >= 3, axis.ticks
    assert axis.ticks[0] - step < low and axis.ticks[-1] + step > high, (axis.ticks, low, high)  # ticks span the data
    assert axis.lo <= low and high <= axis.hi
    assert (high - low) / (axis.hi - axis.lo) > 0.8, (axis.lo, axis.hi)  # the data fill most of the axis


def _assert_nothing_hidden(marks):
    labelled = [m for m in marks if m.box is not None]
    for i, a in enumerate(labelled):
        assert FRAME[0] <= a.box[0] and a.box[2] <= FRAME[2] and FRAME[1] <= a.box[1] and a.box[3] <= FRAME[3]
        for b in labelled[i + 1:]:
            assert not boxes_overlap(a.box, b.box), (a.name, a.box, b.name, b.box)
        for other in marks:
            if other is not a:
                assert not box_hits_circle(a.box, other.x, other.y, other.radius), (a.name, other.name)
                for x, y in line_points(a.leader) if a.leader else []:
                    assert math.hypot(x - other.x, y - other.y) >= other.radius, (a.name, other.name)
    assert all(m.box is not None or m.key for m in marks)  # every model is named on the chart or in its key
    for i, a in enumerate(marks):  # no marker drawn on another's spot (big ones are drawn first, small ones over)
        for b in marks[i + 1:]:
            assert math.hypot(a.x - b.x, a.y - b.y) >= 4, (a.name, b.name)


@pytest.mark.parametrize("candidates", [README_SEARCH, FIVE_TO_SIX_MS], ids=["readme-search", "5-6ms"])
@pytest.mark.parametrize("sizes", [None, SIZES], ids=["no-sizes", "sizes"])
def test_chart_axes_fit_the_data_and_no_label_hides_anything(candidates, sizes):
    marks, x_axis, y_axis = chart_layout(_points(candidates, sizes))
    _assert_axis_fits(x_axis, [lat for _, lat, _ in candidates.values()])
    _assert_axis_fits(y_axis, [acc for acc, _, _ in candidates.values()])
    _assert_nothing_hidden(marks)
    assert all(m.box is not None for m in marks)  # six candidates leave room for every label


def test_five_to_six_ms_no_longer_starts_at_zero():
    _, x_axis, _ = chart_layout(_points(FIVE_TO_SIX_MS))
    assert 4.8 < x_axis.lo < 5.0 and 6.0 < x_axis.hi < 6.2
    assert x_axis.ticks[0] == 5.0 and x_axis.ticks[-1] == 6.0


def test_axis_starts_at_zero_only_when_the_data_come_close_to_it():
    assert axis_range([0.02, 0.9], 560, 20)[0] < 0 < axis_range([0.5, 0.9], 560, 20)[0]
    lo, hi = axis_range([3.0], 560, 20)  # one value: a window around it, not a zero-width axis
    assert lo < 3.0 < hi


@pytest.mark.parametrize("lo, hi, target, ticks, decimals", [
    (4.8, 6.2, 6, [5.0, 5.25, 5.5, 5.75, 6.0], 2),
    (0.0, 1.0, 5, [0.0, 0.25, 0.5, 0.75, 1.0], 2),
    (3.3, 18.0, 6, [5.0, 7.5, 10.0, 12.5, 15.0, 17.5], 1),
    (0.8192, 0.8446, 5, [0.82, 0.825, 0.83, 0.835, 0.84], 3),
    (10.0, 95.0, 5, [20.0, 40.0, 60.0, 80.0], 0),
    (-3.0, 152.0, 6, [0.0, 25.0, 50.0, 75.0, 100.0, 125.0, 150.0], 0),
])
def test_nice_ticks_are_round_and_inside_the_range(lo, hi, target, ticks, decimals):
    assert nice_ticks(lo, hi, target) == (ticks, decimals)


def test_markers_that_share_a_spot_are_set_on_a_ring_and_each_is_named():
    models = {f"evaluate model {i}": {"accuracy": 0.5, "latency_ms": {"p50": 3.0, "p90": 3.0}, "size_mb": 1.0 + i}
              for i in range(8)}
    marks, _, _ = chart_layout(models)
    _assert_nothing_hidden(marks)
    for i, a in enumerate(marks):
        assert all(math.hypot(a.x - b.x, a.y - b.y) >= a.radius + b.radius for b in marks[i + 1:])


def test_crowded_markers_fall_back_to_lettered_labels_and_a_key():
    models = {f"evaluate model {i}": {"accuracy": 0.5 + 0.004 * i, "latency_ms": {"p50": 3.0 + 0.01 * i, "p90": 3.0},
                                      "size_mb": 1.0 + i} for i in range(30)}
    marks, _, _ = chart_layout(models)
    _assert_nothing_hidden(marks)
    keyed = [m for m in marks if m.key]
    assert keyed  # thirty long names cannot all sit along one short line
    page = build_html({"models": models}, [], {})
    key = page.split("id='chart-key'")[1].split("</table>")[0]
    assert all(m.name in key for m in keyed)


def test_models_of_equal_accuracy_and_latency_get_markers_of_their_own():
    """A model measured twice, or two steps that change nothing: one marker used to cover the other whole."""
    models = {name: {"accuracy": 0.8, "latency_ms": {"p50": 12.0, "p90": 13.0}, "size_mb": 100.0}
              for name in ("merged", "final")}
    models["input"] = {"accuracy": 0.2, "latency_ms": {"p50": 30.0, "p90": 31.0}, "size_mb": 400.0}
    marks, _, _ = chart_layout(models)
    a, b = (m for m in marks if m.name in ("merged", "final"))
    assert math.hypot(a.x - b.x, a.y - b.y) >= a.radius + b.radius
    _assert_nothing_hidden(marks)


@pytest.mark.parametrize("accuracy", [0.0, 1.0, 0.5])
def test_one_accuracy_gets_a_window_inside_what_accuracy_can_be(accuracy):
    """Every model at accuracy 0 (an untrained base and a failed final) drew an axis from -1 to 1."""
    models = {name: {"accuracy": accuracy, "latency_ms": {"p50": lat, "p90": lat}} for name, lat in
              (("input", 30.0), ("final", 10.0))}
    marks, _, y_axis = chart_layout(models)
    assert -0.1 < y_axis.lo <= accuracy <= y_axis.hi < 1.1
    assert all(0 <= t <= 1 for t in y_axis.ticks) and len(y_axis.ticks) >= 2
    assert all(FRAME[1] < m.y < FRAME[3] for m in marks)


def test_report_numbers_from_a_shared_run_folder_are_escaped():
    """`modelpress report DIR` renders whatever metrics.json a folder holds: its counts are text on the page."""
    metrics = json.loads(json.dumps(METRICS))
    metrics["models"]["final"].update(examples="<script>x</script>", latency_examples="<img src=y>")
    metrics["models"]["input"].update(examples="<script>x</script>", latency_examples="<img src=y>")
    page = build_html(metrics, STEPS, {})
    assert "<script>x" not in page and "<img src=y>" not in page and "&lt;script&gt;x" in page


def test_small_markers_are_drawn_over_big_ones():
    page = build_html({"models": _points(FIVE_TO_SIX_MS, SIZES)}, [], {})
    radii = [float(part.split("r='")[1].split("'")[0]) for part in page.split("<circle")[1:]]
    assert radii == sorted(radii, reverse=True) and radii[0] > radii[-1]


def test_report_lists_each_models_wrong_answers_with_the_rows_own_text():
    metrics = json.loads(json.dumps(METRICS))
    metrics["models"]["final"].update(misses_total=2, misses_prompt={"head": "<s>user\n", "tail": ".</s>"}, misses=[
        {"source": "data.json row 7", "label": "fear", "output": "sadness", "prompt": "A <b>noise</b>"},
        {"source": "data.json row 9", "label": "joy", "output": "fear", "prompt": "Hooray"}])
    page = build_html(metrics, STEPS, {})
    section = page.split("<h2>Wrong answers</h2>")[1]
    assert "final: 2 wrong, first 2 shown" in section
    assert "<td>data.json row 7</td><td>fear</td><td>sadness</td><td>A &lt;b&gt;noise&lt;/b&gt;</td>" in section
    assert "Every prompt: <code>&#x27;&lt;s&gt;user\\n&#x27;</code> + the text shown + <code>&#x27;.&lt;/s&gt;&#x27;" in section
    assert "Wrong answers" not in build_html(METRICS, STEPS, {})  # nothing kept: no section


def test_report_from_a_damaged_metrics_file_is_one_clear_error(tmp_path):
    from modelpress.errors import ModelpressError
    from modelpress.html_report import render_report

    (tmp_path / "metrics.json").write_text('{"models": {"final": ')  # cut short
    with pytest.raises(ModelpressError, match="metrics.json is not valid JSON"):
        render_report(tmp_path)


def _search(candidates: list[dict], chart_axes: dict | None, ranked=("acc-accuracy_score", "latency-p50")) -> dict:
    search = {"ranked_metrics": [{"metric": k, "higher_is_better": "accuracy" in k} for k in ranked],
              "goals": [], "candidates": candidates, "evaluated": len(candidates), "failed": 0, "seconds": 1.0,
              "sampler": "sequential", "execution_order": "joint", "space_size": len(candidates), "best": 1,
              "closest": None, "pareto": [], "baseline": {}}
    if chart_axes is not None:
        search["chart_axes"] = chart_axes
    return search


def test_search_chart_plots_the_latency_metric_by_its_type_not_by_a_name_ending():
    """Throughput's `avg` (examples/s) once stood on the axis labelled p50 latency."""
    from modelpress.config.evaluator_schema import EvaluatorConfig
    from modelpress.search import chart_axes

    evaluator = EvaluatorConfig.model_validate({"metrics": [
        {"name": "acc", "type": "accuracy", "sub_types": [{"name": "accuracy_score", "priority": 1}]},
        {"name": "tp", "type": "throughput", "sub_types": [{"name": "avg"}]},
        {"name": "lat", "type": "latency", "sub_types": [{"name": "avg"}, {"name": "p90", "priority": 2}]}]})
    axes = chart_axes(evaluator)
    assert axes == {"accuracy": "acc-accuracy_score", "latency": "lat-avg", "latency_stat": "avg"}
    candidates = [{"id": i, "status": "ok", "pareto": True, "best": i == 1, "choice": [], "goals_met": True, "violations": {},
                   "metrics": {"acc-accuracy_score": acc, "tp-avg": 500.0, "lat-avg": ms, "lat-p90": ms + 1}}
                  for i, (acc, ms) in enumerate([(0.8, 2.0), (0.7, 1.5)], start=1)]
    page = build_html({"models": METRICS["models"], "search": _search(candidates, axes)}, STEPS, {})
    chart = page.split("id='chart'")[1].split("</svg>")[0]
    assert "avg latency (ms)" in chart and "p50 latency" not in chart
    assert "#1: accuracy 0.800, avg 2.00 ms" in chart and "500" not in chart.split("<title>")[1]
    assert "Pareto frontier of the ranked metrics (acc-accuracy_score, latency-p50)" in page


def test_a_candidate_without_a_finite_accuracy_is_left_off_the_chart_not_a_crash():
    candidates = [{"id": i, "status": "ok", "pareto": False, "best": False, "choice": [], "goals_met": False, "violations": {"x": 1.0},
                   "metrics": {"acc-accuracy_score": acc, "latency-p50": 2.0 + i}}
                  for i, acc in enumerate([float("nan"), 0.75, float("inf")], start=1)]
    axes = {"accuracy": "acc-accuracy_score", "latency": "latency-p50", "latency_stat": "p50"}
    chart = build_html({"models": {}, "search": _search(candidates, axes)}, STEPS, {}).split("id='chart'")[1]
    assert "point-#2" in chart and "point-#1" not in chart and "point-#3" not in chart
    nothing = build_html({"models": {}, "search": _search(candidates[:1], axes)}, STEPS, {})
    assert "no accuracy/latency chart" in nothing


def test_metrics_json_is_standard_json_with_null_for_numbers_that_are_not_finite():
    from modelpress.fsutil import json_text

    text = json_text({"perplexity": math.inf, "throughput": math.nan, "violations": {"a": -math.inf},
                      "ok": [1.5, (2.0, math.nan)]})
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"perplexity": None, "throughput": None, "violations": {"a": None},
                                "ok": [1.5, [2.0, None]]}


def test_a_number_not_measured_shows_as_a_dash_in_the_run_and_in_the_re_rendered_report():
    """A run's own tables got 'nan'/'inf' where `modelpress report`, reading metrics.json's nulls, showed '-'."""
    from modelpress.html_report import _fmt
    from modelpress.report import _num

    for show in (_fmt, _num):
        assert [show(v, ".4g") for v in (math.nan, math.inf, None, 0.5)] == ["-", "-", "-", "0.5"]


def test_the_report_says_what_latency_timed_and_where_answers_alone_differ():
    from modelpress.report import answer_lengths

    timed = {"latency_warmup": 2, "max_new_tokens": 8}
    models = {"input": {**timed, "mean_new_tokens": 8.0, "batch1_agreement": {"compared": 64, "same": 64}},
              "final": {**timed, "mean_new_tokens": 2.0, "batch1_agreement": {"compared": 64, "same": 61}}}
    assert answer_lengths(models) == (" (after 2 untimed; each until its answer ends, at most 8 new tokens; tokens per "
                                      "timed answer: input 8.0, final 2.0); answers alone that differ from the "
                                      "batched ones accuracy counts: final 3 of 64")
    assert answer_lengths({"final": {"examples": 5}}) == ""  # metrics written before these were kept
