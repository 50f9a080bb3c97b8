"""The HTML report: self-contained, with the measured numbers, the chart and the Pareto marks."""

from __future__ import annotations

import json

from modelpress.html_report import build_html, pareto_front, render_report

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


def test_report_command_rerenders_from_the_json_files(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    (tmp_path / "run_history.json").write_text(json.dumps({"steps": STEPS}))
    (tmp_path / "config.resolved.json").write_text("{}")
    assert "0.843" in render_report(tmp_path).read_text()
