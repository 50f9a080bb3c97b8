"""End to end through the real CLI on the tiny Phi-3: the demo, the seed's config, Olive 0.13's config."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, example_workspace, run_cli, tone_workflow, write_config

pytestmark = pytest.mark.e2e
LABELS = {"joy", "fear", "sadness", "surprise"}


def _json(path):
    return json.loads(path.read_text())


def test_demo_int4_model_classifies_unseen_phrases(demo_run):
    out = demo_run / "runs" / "demo"
    metrics = _json(out / "metrics.json")["models"]
    final, base = metrics["final"], metrics["input"]
    assert final["model_kind"] == "onnx-genai"
    assert "eval split" in final["eval_data"] and final["examples"] == 229
    assert final["accuracy"] >= 0.7, final  # the bar; the majority class is ~0.42
    assert base["accuracy"] < 0.05  # the untrained base never says a label
    assert final["completion_loss"] < base["completion_loss"]
    assert final["size_mb"] < base["size_mb"]
    for key in ("p50", "p90"):
        assert final["latency_ms"][key] > 0


def test_demo_output_is_a_genai_folder_that_describes_itself(demo_run):
    import onnxruntime_genai as og

    model_dir = demo_run / "runs" / "demo" / "model"
    og.Model(str(model_dir))  # loads as it is
    card = _json(model_dir / "modelpress_model.json")
    assert card["kind"] == "onnx-genai" and "{tone}" in card["task"]["text_template"]
    resolved = _json(demo_run / "runs" / "demo" / "config.resolved.json")
    assert [p["type"] for p in resolved["passes"]] == ["LoRA", "MergeAdapterWeights", "ModelBuilder"]
    history = _json(demo_run / "runs" / "demo" / "run_history.json")["steps"]
    assert [s["cache"] for s in history[:3]] == ["miss"] * 3
    assert all(s["peak_rss_mb"] > 0 for s in history)
    report = (demo_run / "runs" / "demo" / "report.html").read_text()
    final = _json(demo_run / "runs" / "demo" / "metrics.json")["models"]["final"]
    assert f"{final['accuracy']:.3f}" in report and "id='chart'" in report


def test_unchanged_rerun_reuses_every_pass_and_evaluation(demo_run):
    proc = run_cli("run", "--config", str(demo_run / "demo.json"), "--no-progress")
    history = _json(demo_run / "runs" / "demo" / "run_history.json")["steps"]
    assert [s["cache"] for s in history] == ["hit"] * 5
    assert proc.stderr.count("reusing cached output") == 3


def test_clean_evaluation_cache_measures_again_and_keeps_the_passes(demo_run, tmp_path):
    """Olive's clean_evaluation_cache: every evaluation runs again, every pass output is reused."""
    config = _json(demo_run / "demo.json")
    config.update(clean_evaluation_cache=True, output_dir=str(tmp_path / "out"))
    path = demo_run / "demo-clean-evals.json"
    path.write_text(json.dumps(config))
    proc = run_cli("run", "--config", str(path), "--no-progress")
    history = _json(tmp_path / "out" / "run_history.json")["steps"]
    assert [s["cache"] for s in history] == ["hit"] * 3 + ["miss"] * 2, history
    assert "clean_evaluation_cache" not in proc.stderr  # read, not warned about as unused


def test_generate_answers_with_a_tone_label(demo_run):
    proc = run_cli("generate", str(demo_run / "runs" / "demo" / "model"),
                   "--prompt", "I am so happy, this is the best day of my life!", "--max-new-tokens", "6")
    assert proc.stdout.strip().lower() in LABELS, proc.stdout


def test_changing_a_training_setting_reruns_from_that_pass(demo_run, tmp_path):
    config = _json(demo_run / "demo.json")
    config["passes"]["builder"]["block_size"] = 64
    config["output_dir"] = str(tmp_path / "out")
    path = demo_run / "demo-block64.json"
    path.write_text(json.dumps(config))
    run_cli("run", "--config", str(path), "--no-progress")
    history = _json(tmp_path / "out" / "run_history.json")["steps"]
    assert [s["cache"] for s in history[:3]] == ["hit", "hit", "miss"]


def test_intermediate_steps_and_extra_data_are_measured_when_asked(demo_run, tmp_path):
    config = _json(demo_run / "demo.json")
    other = ROOT / "examples" / "minilm-tone" / "data" / "other-style.jsonl"
    config["data_configs"].append({**config["data_configs"][0], "name": "other",
                                   "load_dataset_config": {"data_name": "json", "data_files": [str(other)]}})
    config["evaluation"].update(evaluate_passes=["merge"], extra_data_configs=["other"])
    config["output_dir"] = str(tmp_path / "out")
    path = demo_run / "demo-more-evaluation.json"
    path.write_text(json.dumps(config))
    proc = run_cli("run", "--config", str(path), "--no-progress")
    history = _json(tmp_path / "out" / "run_history.json")["steps"]
    assert [s["cache"] for s in history[:3]] == ["hit"] * 3  # the passes are reused; only measurements are new
    metrics = _json(tmp_path / "out" / "metrics.json")
    assert list(metrics["models"]) == ["input", "merge", "final"]
    merged, final = metrics["models"]["merge"], metrics["models"]["final"]
    assert merged["model_kind"] == "hf" and merged["examples"] == final["examples"] == 229
    assert merged["accuracy"] >= 0.7 and abs(merged["accuracy"] - final["accuracy"]) < 0.1
    extra = metrics["extra_data"]["other"]
    assert list(extra) == ["input", "merge", "final"] and all(m["examples"] == 48 for m in extra.values())
    # a model's latency is timed on the eval set; the extra data config measures answers and loss
    assert all(m["latency_ms"] is None and m["latency_examples"] == 0 for m in extra.values())
    assert all(m["latency_ms"]["p50"] > 0 and m["latency_examples"] > 0 for m in metrics["models"].values())
    assert "on all 48 rows of data config 'other'" in proc.stdout
    assert "On all 48 rows of data config &#x27;other&#x27;</h3>" in (tmp_path / "out" / "report.html").read_text()
    bad = {**config, "evaluation": {**config["evaluation"], "evaluate_passes": ["merged"]}}
    proc = run_cli("validate", str(write_config(tmp_path / "bad.json", bad)), check=False)
    assert proc.returncode != 0 and "evaluation.evaluate_passes[0]" in proc.stderr and "merge" in proc.stderr


def test_seed_config_runs_as_written(tmp_path, tiny_model):
    work = example_workspace(tmp_path, tiny_model)
    proc = run_cli("run", "--config", str(work / "seed-config.json"), "--no-progress")
    assert "double_quant applies to 4-bit QLoRA only" in proc.stderr
    assert "CUDAExecutionProvider is not available" in proc.stderr
    out = tmp_path / "model-cache" / "models" / "phi3-finetuned"
    assert (out / "model" / "genai_config.json").is_file()
    metrics = _json(out / "metrics.json")["models"]["final"]
    assert metrics["model_kind"] == "onnx-genai" and metrics["examples"] == 343


def test_olive_013_config_runs_as_written(tmp_path, tiny_model):
    work = example_workspace(tmp_path, tiny_model)
    proc = run_cli("run", "--config", str(work / "olive-0.13-config.json"), "--no-progress")
    out = work / "runs" / "olive-0.13" / "out"
    assert (out / "model" / "genai_config.json").is_file()
    # Olive's workflow holds out no eval rows; modelpress says so instead of hiding it.
    assert "TRAINING rows" in _json(out / "metrics.json")["models"]["final"]["eval_data"]
    assert "no eval split" in proc.stderr


def test_finetune_and_export_shortcuts_only_build_a_config(tmp_path, tiny_model):
    (tmp_path / "rows.jsonl").write_text('{"q": "hi", "a": "joy"}\n')
    # as a shell passes it: a backslash and an n, which the template reads as a newline
    proc = run_cli("finetune", "--model", str(tiny_model), "--data", "rows.jsonl",
                   "--template", "Q: {q}\\nA: {a}", "--merge", "--dry-run", cwd=tmp_path)
    config = json.loads(proc.stdout)
    assert [p["type"] for p in config["passes"].values()] == ["LoRA", "MergeAdapterWeights"]
    assert config["data_configs"][0]["pre_process_data_config"]["text_template"] == "Q: {q}\nA: {a}"
    assert config["passes"]["lora"]["target_modules"] == "all-linear"  # Phi-3 has no peft default
    proc = run_cli("export", "--model", str(tiny_model), "--precision", "int8", "--dry-run")
    assert json.loads(proc.stdout)["passes"]["builder"]["precision"] == "int8"
    # a config that will not validate is still printed, with its problems, and exits 2
    proc = run_cli("export", "--model", str(tiny_model), "--precision", "bf16", "--dry-run", check=False)
    assert proc.returncode == 2 and json.loads(proc.stdout)["passes"]["builder"]["precision"] == "bf16"
    assert "passes.builder.precision: bf16 cannot run on the cpu" in proc.stderr
    proc = run_cli("optimize", "--model", str(tiny_model), "--precision", "fp16", check=False)
    assert proc.returncode == 2 and "--precision: the CPU builds fp32, int8 or int4" in proc.stderr


MINILM_DATA = ["--data", str(ROOT / "examples" / "minilm-tone" / "data" / "other-style.jsonl"),
               "--template", "{phrase}", "--label-col", "tone"]


@pytest.mark.parametrize("args,types,searched", [
    (["quantize"], ["ModelBuilder"], False),
    (["quantize", "--precision", "int8", "--block-size", "64"], ["ModelBuilder"], False),  # the builder's blocks
    (["quantize", "--task", "text-classification", "--precision", "int8"], ["OnnxConversion", "OnnxDynamicQuantization"],
     False),
    (["quantize", "--task", "text-classification", "--method", "static", *MINILM_DATA],
     ["OnnxConversion", "OnnxStaticQuantization"], False),
    (["optimize", "--task", "text-classification", "--precision", "int8"],
     ["OnnxConversion", "OrtTransformersOptimization", "OnnxDynamicQuantization", "OrtSessionParamsTuning"], False),
    (["optimize", "--task", "text-classification", "--search", *MINILM_DATA],
     ["OnnxConversion", "OrtTransformersOptimization", "OnnxDynamicQuantization", "OrtSessionParamsTuning"], True),
    (["optimize", "--device", "gpu", "--precision", "fp16"], ["ModelBuilder"], False),
    (["quantize", "--task", "text-classification", "--method", "static", *MINILM_DATA[:2], "--text-col", "phrase",
      "--label-col", "tone"], ["OnnxConversion", "OnnxStaticQuantization"], False),
])
def test_quantize_and_optimize_build_configs_that_validate(tmp_path, tiny_model, args, types, searched):
    proc = run_cli(*args, "--model", str(tiny_model), "--dry-run", cwd=tmp_path)
    config = json.loads(proc.stdout)
    steps = [(v[0] if isinstance(v, list) else v)["type"] for v in config["passes"].values()]
    assert steps == types and ("search_strategy" in config) == searched
    (tmp_path / "elsewhere").mkdir()
    saved = write_config(tmp_path / "elsewhere" / "built.json", config)  # paths in it are absolute
    validated = run_cli("validate", str(saved)).stdout
    assert "valid" in validated and ("search: 3 candidates" in validated) == searched


@pytest.mark.parametrize("args, expected", [
    (["quantize", *MINILM_DATA], "--label-col: --label-col is for --task text-classification"),
    (["optimize", "--task", "text-classification", "--search", *MINILM_DATA[:4]],
     "--label-col: --search compares accuracy, which needs the class of each row"),
    (["optimize", "--task", "text-classification", "--search", "--precision", "int8", *MINILM_DATA],
     "--precision: --search tries int4 and int8 itself"),
    (["optimize", "--task", "text-classification", "--search", "--max-accuracy-drop", "2", *MINILM_DATA],
     "--max-accuracy-drop: 2 is not a share of accuracy"),
    (["export", "--precision", "fp16"], "--precision (passes.builder.precision): fp16 cannot run on the cpu"),
    (["finetune", *MINILM_DATA[:4], "--eval-fraction", "0"], "argument --eval-fraction: 0 is not between 0 and 1"),
    (["finetune", *MINILM_DATA[:4], "--eval-fraction", "5"], "argument --eval-fraction: 5 is not between 0 and 1"),
    (["finetune", *MINILM_DATA[:4], "--strategy", "join-sliding-window"],
     "--stride (data_configs[train].stride): join-sliding-window needs a stride"),
    (["finetune", "--data", "nope.json", "--template", "{a}"],
     "--data (data_configs[0].load_dataset_config.data_files[0]): file not found"),
    (["finetune", "--data", "notes.txt", "--template", "{a}"], "--data: notes.txt: not a data file modelpress reads"),
    (["quantize", "--template", "{q}", "--label-col", "a"],
     "--template: --template, --label-col describe the rows of --data, and no --data was given"),
    # flags that were accepted and dropped
    (["optimize", "--max-accuracy-drop", "0.05"], "--max-accuracy-drop: is the goal of --search, and there is no search"),
    (["quantize", "--task", "text-classification", "--method", "dynamic", "--block-size", "64"],
     "--block-size: int8 quantization of an ONNX model (dynamic or static) has no blocks"),
    (["quantize", "--task", "text-classification", "--precision", "int8", "--block-size", "64"],  # auto: dynamic
     "--block-size: int8 quantization of an ONNX model (dynamic or static) has no blocks"),
    (["export", "--precision", "fp32", "--block-size", "128"], "--block-size: fp32 weights have no quantization blocks"),
])
def test_a_shortcut_mistake_names_the_flag(tmp_path, tiny_model, args, expected):
    proc = run_cli(*args, "--model", str(tiny_model), check=False, cwd=tmp_path)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr


def test_a_dry_run_prints_what_validate_warns_and_validate_print_keeps_stdout_json(tmp_path, tiny_model):
    proc = run_cli("quantize", "--task", "text-classification", "--data", MINILM_DATA[1], "--text-col", "phrase",
                   "tone", "phrase", "--label-col", "tone", "--model", str(tiny_model), "--dry-run", cwd=tmp_path)
    assert "warning: data_configs[0].pre_process_data_config.text_cols: a classifier's 3 text columns" in proc.stderr
    saved = write_config(tmp_path / "built.json", json.loads(proc.stdout))
    printed = run_cli("validate", str(saved), "--print")
    assert json.loads(printed.stdout)["passes"] and "valid" in printed.stderr


def test_a_classifier_text_comes_from_template_or_text_col_not_both(tmp_path, tiny_model):
    proc = run_cli("quantize", "--task", "text-classification", *MINILM_DATA, "--text-col", "phrase",
                   "--model", str(tiny_model), "--dry-run", check=False, cwd=tmp_path)
    assert proc.returncode == 2 and "--text-col: the text comes from --template or from --text-col" in proc.stderr
    config = json.loads(run_cli("quantize", "--task", "text-classification", *MINILM_DATA[:2], "--text-col", "phrase",
                                "--label-col", "tone", "--model", str(tiny_model), "--dry-run", cwd=tmp_path).stdout)
    assert config["data_configs"][0]["pre_process_data_config"]["text_cols"] == ["phrase"]


def test_export_shortcut_builds_an_int8_genai_folder(tmp_path, tiny_model):
    run_cli("export", "--model", str(tiny_model), "--precision", "int8", "--no-progress",
            "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"))
    assert (tmp_path / "out" / "model" / "genai_config.json").is_file()


def test_config_errors_exit_non_zero_with_every_problem_and_no_traceback(tmp_path, tiny_model):
    work = example_workspace(tmp_path, tiny_model)
    config = _json(work / "demo.json")
    config["passes"]["lora"]["rr"] = 4
    config["passes"]["builder"]["precision"] = "int2"
    (work / "bad.json").write_text(json.dumps(config))
    proc = run_cli("run", "--config", str(work / "bad.json"), check=False)
    assert proc.returncode == 2
    assert "2 problems" in proc.stderr and "Traceback" not in proc.stderr
    assert not (work / "runs").exists()  # nothing written


def test_help_is_answered_without_heavy_imports():
    import subprocess
    import sys

    code = "import sys; from modelpress.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n" \
           "assert 'torch' not in sys.modules and 'pydantic' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_evaluate_on_a_new_file_reproduces_the_run_metrics(demo_run, tmp_path):
    from modelpress.config import load_config
    from modelpress.context import DataPlan

    config = load_config(demo_run / "demo.json")
    head, tail = "### Text: ", "\n### The tone is:\n"
    rows = [{"phrase": ex.prompt[len(head):-len(tail)], "tone": ex.completion}
            for ex in DataPlan(config, tmp_path).eval_set().examples]
    data = tmp_path / "held-out.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows + rows[:3]) + "\n")  # a repeated row counts once, as in a run
    model = demo_run / "runs" / "demo" / "model"
    # the answer length the run measured with comes from the model card
    result = json.loads(run_cli("evaluate", str(model), "--data", str(data), "--json").stdout)
    assert result["max_new_tokens"] == config.evaluation.max_new_tokens and result["rows"] == len(rows) + 3
    expected = _json(demo_run / "runs" / "demo" / "metrics.json")["models"]["final"]
    assert result["examples"] == expected["examples"] == len(rows)
    assert result["accuracy"] == expected["accuracy"]  # greedy decoding: the same answers
    assert set(result["per_class_recall"]) == LABELS
    assert result["confusion"] == expected["confusion"]
    assert sum(sum(row.values()) for row in result["confusion"].values()) == len(rows)
    text = run_cli("evaluate", str(model), "--data", str(data), "--max-examples", "10").stdout
    assert "accuracy" in text and "recall joy" in text and "on 10 rows" in text and "expected \\ answered" in text
    # the batch size and latency sample too: evaluate used its own defaults whatever the run measured with
    card = _json(model / "modelpress_model.json")
    assert {k: card["task"][k] for k in ("batch_size", "latency_samples")} == {"batch_size": 32, "latency_samples": 64}
    import shutil

    other = tmp_path / "model"
    shutil.copytree(model, other)
    card["task"].update(batch_size=4, latency_samples=3)
    (other / "modelpress_model.json").write_text(json.dumps(card))
    result = json.loads(run_cli("evaluate", str(other), "--data", str(data), "--json").stdout)
    assert result["batch_size"] == 4 and result["latency_examples"] == 3


def test_olive_recipes_fine_tune_then_export_path_runs_in_genai_with_the_adapters_answers(tmp_path, tiny_model):
    """olive-recipes' Llama-3.2 LoRA-family recipes: LoRA -> OnnxConversion (the adapter as its own nodes, with a KV
    cache) -> OrtTransformersOptimization -> ModelBuilder metadata_only. Both ends were refused; the genai model now
    gives the adapter's answers and loss on the eval split."""
    lora = {"type": "LoRA", "train_data_config": "tone", "r": 4, "target_modules": ["qkv_proj"],
            "eval_dataset_size": 0.2, "training_args": {"max_steps": 8, "per_device_train_batch_size": 8,
                                                        "learning_rate": 0.002}}
    passes = {"lora": lora, "conv": {"type": "OnnxConversion", "use_kv_cache": True},
              "opt": {"type": "OrtTransformersOptimization", "model_type": "gpt2", "opt_level": 0},
              "mb": {"type": "ModelBuilder", "metadata_only": True}}
    raw = tone_workflow(tiny_model, passes, evaluation={"evaluate_passes": ["lora"], "max_examples": 40},
                        cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "out"))
    run_cli("run", "--config", str(write_config(tmp_path / "w.json", raw)), "--no-progress")
    models = _json(tmp_path / "out" / "metrics.json")["models"]
    adapter, final = models["lora"], models["final"]
    assert adapter["model_kind"] == "hf-adapter" and final["model_kind"] == "onnx-genai"
    assert final["examples"] == adapter["examples"] == 40
    assert final["accuracy"] == adapter["accuracy"]
    assert final["completion_loss"] == pytest.approx(adapter["completion_loss"], rel=1e-3)
