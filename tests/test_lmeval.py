"""LMEvaluator: lm-evaluation-harness tasks (local YAML, local data, no network) on a Hugging Face model
through lm-eval's own HFLM, and on an onnxruntime-genai folder through modelpress's GenaiLM, with
both loglikelihood and generate_until requests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TONE_DATA
from hub_cache import OLIVE_CONFIGS as CONFIGS
from hub_cache import olive_workspace, run_offline
from modelpress.config.evaluator_schema import EvaluatorConfig
from modelpress.errors import ConfigError
from modelpress.models import ModelRef
from modelpress.passes.catalog import HF, ModelBuilderParams

pytest.importorskip("lm_eval")


def write_tasks(folder: Path, rows: int = 24) -> Path:
    """The tone tasks of tests/olive_configs/lm_eval_tasks with their data file made absolute."""
    folder.mkdir(parents=True, exist_ok=True)
    data = json.loads(TONE_DATA.read_text()) if TONE_DATA.read_text().lstrip().startswith("[") else [
        json.loads(line) for line in TONE_DATA.read_text().splitlines() if line.strip()]
    (folder / "tone.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data[:rows]))
    for task in (CONFIGS / "lm_eval_tasks").glob("*.yaml"):
        text = task.read_text().replace("lm_eval_tasks/tone.jsonl", str(folder / "tone.jsonl"))
        (folder / task.name).write_text(text)
    return folder


@pytest.fixture(scope="module")
def genai_fp32(tiny_model, tmp_path_factory) -> ModelRef:
    from test_parity import _ctx

    from modelpress.passes.model_builder import run_model_builder

    out = tmp_path_factory.mktemp("genai") / "fp32"
    return run_model_builder(_ctx(ModelRef(HF, tiny_model, id="base"), out, tiny_model),
                             ModelBuilderParams(precision="fp32"))


def _instances(kind: str, pairs):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(pairs)]


def test_genai_answers_loglikelihood_and_generate_requests_as_lm_evals_hflm_does(tiny_model, genai_fp32):
    from lm_eval.models.huggingface import HFLM

    from modelpress.lmeval import genai_lm_class
    from modelpress.models import load_for_inference

    model, tokenizer = load_for_inference(ModelRef(HF, tiny_model, id="base"))
    hf = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, device="cpu")
    genai = genai_lm_class()(genai_fp32.path, batch_size=4)
    pairs = [("Phrase: I won the lottery!\nTone:", " joy"), ("Phrase: The storm scared me.\nTone:", " fear"),
             ("The little", " boy smiled"), ("", "hello there")]
    expected = hf.loglikelihood(_instances("loglikelihood", pairs))
    got = genai.loglikelihood(_instances("loglikelihood", pairs))
    for (e_logp, e_greedy), (g_logp, g_greedy) in zip(expected, got):
        assert g_logp == pytest.approx(e_logp, abs=1e-3) and g_greedy == e_greedy
    texts = [("Once upon a time there was", {"until": ["\n"], "max_gen_toks": 6}),
             ("Phrase: I lost my keys.\nTone:", {"until": [".", "\n"], "max_gen_toks": 5})]
    assert genai.generate_until(_instances("generate_until", texts)) == hf.generate_until(
        _instances("generate_until", texts))
    rolling = _instances("loglikelihood_rolling", [("the quick brown fox jumps over the lazy dog",)])
    assert genai.loglikelihood_rolling(rolling)[0] == pytest.approx(hf.loglikelihood_rolling(rolling)[0], abs=1e-3)


def test_a_genai_prompt_is_cut_to_its_latest_tokens_and_a_budget_past_max_length_is_refused(tiny_model, genai_fp32):
    """max_gen_toks past max_length emptied the prompt (the slice -(max_length - steps) turned positive): the
    model answered from its BOS alone, scored without a word. lm-eval's HFLM refuses it too."""
    from lm_eval.models.huggingface import HFLM

    from modelpress.errors import ModelpressError
    from modelpress.lmeval import genai_lm_class
    from modelpress.models import load_for_inference

    model, tokenizer = load_for_inference(ModelRef(HF, tiny_model, id="base"))
    hf = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2, device="cpu", max_length=24)
    genai = genai_lm_class()(genai_fp32.path, batch_size=2, max_length=24)
    long = [("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen",
             {"until": ["\n"], "max_gen_toks": 6})]
    assert genai.generate_until(_instances("generate_until", long)) == hf.generate_until(
        _instances("generate_until", long))  # both keep the prompt's last 18 tokens
    with pytest.raises(ModelpressError, match="asks for up to 30 new tokens, which leaves no room for its prompt"):
        genai.generate_until(_instances("generate_until", [("Once upon a time", {"max_gen_toks": 30})]))


def test_local_tasks_run_on_an_hf_model_and_a_genai_model_alike(tiny_model, genai_fp32, tmp_path):
    from modelpress.lmeval import run_tasks

    settings = EvaluatorConfig(type="LMEvaluator", tasks=["tone_choice", "tone_generate"],
                               include_path=write_tasks(tmp_path / "tasks"), bootstrap_iters=0, batch_size=4)
    on_hf = run_tasks(ModelRef(HF, tiny_model, id="base"), settings.tasks, settings)
    on_genai = run_tasks(genai_fp32, settings.tasks, settings)
    assert set(on_hf) == {"tone_choice-acc", "tone_choice-acc_norm", "tone_generate-exact_match"}
    assert on_genai == pytest.approx(on_hf)  # the same fp32 weights: the same choices and generations


def test_a_task_given_inline_as_olive_recipes_do_gives_the_same_result(tiny_model, tmp_path):
    import yaml

    from modelpress.lmeval import run_tasks

    folder = write_tasks(tmp_path / "tasks")
    by_name = EvaluatorConfig(type="LMEvaluator", tasks=["tone_choice"], include_path=folder, bootstrap_iters=0)
    inline = EvaluatorConfig(type="LMEvaluator", tasks=[yaml.safe_load((folder / "tone_choice.yaml").read_text())],
                             bootstrap_iters=0)
    assert inline.task_names() == ["tone_choice"]
    ref = ModelRef(HF, tiny_model, id="base")
    assert run_tasks(ref, inline.tasks, inline) == run_tasks(ref, by_name.tasks, by_name)


def test_an_unknown_task_is_one_clear_error(tiny_model, tmp_path):
    from modelpress.errors import ModelpressError
    from modelpress.lmeval import run_tasks

    settings = EvaluatorConfig(type="LMEvaluator", tasks=["tone_chioce"], include_path=write_tasks(tmp_path / "t"))
    with pytest.raises(ModelpressError, match="lm-eval knows no task 'tone_chioce'"):
        run_tasks(ModelRef(HF, tiny_model, id="base"), settings.tasks, settings)


@pytest.mark.e2e
def test_olive_lm_evaluator_config_measures_the_input_and_the_int4_model(tiny_model, tmp_path):
    work, home = olive_workspace(tmp_path, tiny_model, "lm-evaluator.json")
    write_tasks(work / "lm_eval_tasks")
    proc = run_offline(work, home, "run", "--config", "config.json", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((work / "models" / "lm-eval" / "metrics.json").read_text())
    text = json.dumps(metrics)
    for key in ("tone_choice-acc", "tone_generate-exact_match"):
        assert text.count(f'"{key}"') >= 2, key  # the input (HF) model and the int4 genai model
    assert "Running loglikelihood requests" not in proc.stderr  # lm-eval's bars stay off in a log
    assert "tone_choice-acc" in (work / "models" / "lm-eval" / "report.html").read_text()


def test_size_on_disk_among_an_lm_evaluators_tasks_is_the_models_size_as_in_olive(tiny_model, tmp_path):
    from conftest import tone_workflow
    from modelpress.config.normalize import normalize

    raw = tone_workflow(tiny_model, {}, evaluators={"lm": {"type": "LMEvaluator", "tasks": ["arc_easy",
                                                                                           "size_on_disk"]}},
                        evaluator="lm")
    evaluator = normalize(raw, tmp_path).evaluator
    assert evaluator.tasks == ["arc_easy"]
    assert [(m.name, m.type, [s.name for s in m.sub_types]) for m in evaluator.metrics] == [
        ("size_on_disk", "size_on_disk", ["bytes"]), ("arc_easy", "lm_eval", [])]
    assert evaluator.metrics[0].sub_types[0].priority == -1  # reported, not ranked: the tasks are the measure
    raw["evaluators"]["lm"]["tasks"] = ["arc_easy", "arc_easy"]  # one task named twice: measured once
    assert [m.name for m in normalize(raw, tmp_path).evaluator.metrics] == ["arc_easy"]


def test_an_lm_evaluator_after_a_plain_onnx_export_is_refused_by_validate(tiny_model, tmp_path):
    """lm-eval runs Hugging Face and genai models: a workflow ending in OnnxConversion is told so before any run."""
    from conftest import tone_workflow
    from modelpress.config.normalize import normalize

    raw = tone_workflow(tiny_model, {"export": {"type": "OnnxConversion"}},
                        evaluators={"lm": {"type": "LMEvaluator", "tasks": ["arc_easy"]}}, evaluator="lm")
    with pytest.raises(ConfigError, match=r"evaluator.metrics\[0\]: the lm_eval metric 'arc_easy' .* the last step "
                       "'export' gives a plain ONNX model"):
        normalize(raw, tmp_path)
    raw["passes"] = {"export": {"type": "ModelBuilder", "precision": "int4"}}
    normalize(raw, tmp_path)


def test_the_evaluators_device_is_where_the_model_runs(tiny_model):
    """HFLM runs a model object where it is: the device must be applied to the model, and one this machine lacks
    is a clear error."""
    from types import SimpleNamespace

    import torch

    from modelpress.errors import ModelpressError
    from modelpress.lmeval import make_lm

    ref = ModelRef(HF, tiny_model, id="base", task={"task": "text-generation"})
    lm = make_lm(ref, SimpleNamespace(batch_size=2, max_length=64, device="cpu"))
    assert lm.model.device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ModelpressError, match="device 'cuda' cannot run the model here"):
            make_lm(ref, SimpleNamespace(batch_size=2, max_length=64, device="cuda"))
        # Olive's spelling: "gpu" is CUDA where there is one, else the CPU (as Olive falls back)
        assert make_lm(ref, SimpleNamespace(batch_size=2, max_length=64, device="gpu")).model.device.type == "cpu"


def test_a_filtered_metric_is_also_found_under_the_bare_name_olive_reports():
    from modelpress.lmeval import metric_values

    results = {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.3, "exact_match_stderr,strict-match": 0.01,
                         "exact_match,flexible-extract": 0.5},
               "tone": {"acc,none": 0.7, "acc_stderr,none": 0.02}}
    assert metric_values(results) == {"gsm8k-exact_match_strict_match": 0.3, "gsm8k-exact_match_flexible_extract": 0.5,
                                      "gsm8k-exact_match": 0.3, "tone-acc": 0.7}  # Olive: the last filter, sorted
