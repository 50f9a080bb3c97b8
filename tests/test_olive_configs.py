"""Olive-style LLM configs (tests/olive_configs/, written for this project in the shape of Microsoft's
olive-recipes) are accepted with their Olive meaning; keys that mean nothing here are warned about,
and passes for hardware modelpress does not target get one clear refusal."""

from __future__ import annotations

import json

import pytest

from modelpress.config.normalize import load_config, normalize
from modelpress.config.olive_tables import INERT_ENGINE_KEYS, TARGETS, VENDOR_EPS, VENDOR_PASSES
from modelpress.errors import ConfigError

from hub_cache import OLIVE_CONFIGS as CONFIGS
from hub_cache import PHI3, add_repo, folder_files


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory, tiny_model):
    """A Hugging Face home whose hub cache holds the tiny Phi-3 as microsoft/Phi-3-mini-4k-instruct."""
    home = tmp_path_factory.mktemp("hf")
    add_repo(home / "hub", PHI3, folder_files(tiny_model), "4" * 40)
    return home


@pytest.fixture(autouse=True)
def hub_cache(hf_home, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _config(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.json")), ids=lambda p: p.stem)
def test_every_olive_config_here_validates(path):
    config = load_config(path)
    assert config.input_model.hub_id == PHI3
    assert config.passes, "a config with no passes proves nothing"


def test_engine_keys_olive_has_and_modelpress_does_not_use_are_each_warned_about():
    raw = _config("engine-and-systems.json")
    config = load_config(CONFIGS / "engine-and-systems.json")
    used = [key for key in raw if key in INERT_ENGINE_KEYS]
    assert len(used) >= 5
    for key in used:
        assert sum(w.startswith(f"{key}: accepted and not used") for w in config.warnings) == 1, key
    for key in ("use_dynamo_exporter", "save_metadata_for_token_generation", "torch_dtype"):
        assert any(w.startswith(f"passes.conversion.{key}: accepted and not used") for w in config.warnings), key
    assert any("PythonEnvironment" in w for w in config.warnings)
    assert any(w.startswith("input_model.io_config: accepted and not used") for w in config.warnings)


def test_pass_and_model_types_are_matched_case_insensitively_as_olive_does():
    config = load_config(CONFIGS / "engine-and-systems.json")
    assert [p.type for p in config.passes] == ["OnnxConversion", "OrtTransformersOptimization"]
    fusion = config.passes[1].params.optimization_options
    assert fusion.enable_attention is True and fusion.enable_skip_layer_norm is False
    assert config.passes[1].params.force_fp16_inputs == {"GroupQueryAttention": [3, 4]}


def test_fusion_and_float16_options_reach_onnxruntime():
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    from modelpress.passes.onnx_passes import _float16_options, _fusion_options

    params = load_config(CONFIGS / "engine-and-systems.json").passes[1].params
    options = _fusion_options(params, "gpt2")
    assert options.enable_skip_layer_norm is False and options.use_multi_head_attention is True
    fp16 = _float16_options(params)
    assert "SkipLayerNormalization" in fp16["op_block_list"]
    assert set(DEFAULT_OP_BLOCK_LIST) <= set(fp16["op_block_list"])
    assert fp16["force_fp16_inputs"] == {"GroupQueryAttention": [3, 4]}


def test_model_builder_options_reach_the_builder_in_its_own_spelling():
    from modelpress.passes.model_builder import builder_options

    params = load_config(CONFIGS / "model-builder-options.json").passes[0].params
    assert params.accuracy_level == 4  # Olive's int4_accuracy_level, given inside extra_options
    assert params.include_hidden_states is False and params.exclude_embeds is False  # lifted likewise
    assert params.extra_options == {"filename": "model.onnx"}  # the builder's own option, passed as written
    assert params.search == {"max_length": 2048, "min_length": 0}
    options = builder_options(params)
    for expected in ("block_size=32", "accuracy_level=4", "algo_config=k_quant_mixed",
                     "op_types_to_quantize=MatMul/Gather", "enable_cuda_graph=false",
                     "include_hidden_states=false", "exclude_embeds=false", "filename=model.onnx"):
        assert expected in options, expected
    assert not any(o.startswith("config_only") for o in options)


def test_nodes_the_builder_keeps_in_float_are_one_list_from_both_places():
    """int4_nodes_to_exclude beside extra_options' nodes_to_exclude became two options, and the builder keeps only
    the last: the LM head named in the first was quantized."""
    from modelpress.passes.catalog import ModelBuilderParams
    from modelpress.passes.model_builder import builder_options

    params = ModelBuilderParams.model_validate({
        "precision": "int4", "int4_nodes_to_exclude": ["/lm_head/MatMul"],
        "extra_options": {"nodes_to_exclude": "/model/embed_tokens/Gather,/lm_head/MatMul"}})
    options = [o for o in builder_options(params) if o.startswith("nodes_to_exclude=")]
    assert options == ["nodes_to_exclude=/lm_head/MatMul,/model/embed_tokens/Gather"]


def test_a_builder_parameter_in_extra_options_wins_over_the_same_beside_it_as_in_olive():
    from modelpress.passes.catalog import ModelBuilderParams

    both = {"precision": "int4", "int4_block_size": 32, "extra_options": {"int4_block_size": 128}}
    assert ModelBuilderParams.model_validate(both).block_size == 128  # Olive: extra_args.update(extra_options)
    assert ModelBuilderParams.model_validate({**both, "extra_options": {}}).block_size == 32


def test_static_quantization_reads_olive_type_names_and_excluded_op_types(tmp_path):
    from modelpress.passes.onnx_passes import _quant_kwargs

    params = load_config(CONFIGS / "static-quantization.json").passes[1].params
    assert (params.weight_type, params.activation_type) == ("QInt8", "QUInt16")
    (tmp_path / "model.onnx").write_bytes(b"")
    params = params.model_copy(update={"op_types_to_quantize": None, "op_types_to_exclude": ["Gemm"]})
    kwargs = _quant_kwargs(params, tmp_path)
    assert "MatMul" in kwargs["op_types_to_quantize"] and "Gemm" not in kwargs["op_types_to_quantize"]


def _with_pass(spec: dict) -> dict:
    raw = _config("model-builder-options.json")
    raw["passes"] = {"vendor": spec, **raw["passes"]}
    return raw


@pytest.mark.parametrize("vendor", ["QuarkQuantizationVitisAI", "OpenVINOConversion", "QairtGenAIBuilder",
                                    "EPContextBinaryGenerator", "NVModelOptQuantization"])
def test_a_vendor_pass_gets_one_refusal_naming_it_and_its_hardware(vendor):
    with pytest.raises(ConfigError) as err:
        normalize(_with_pass({"type": vendor.lower(), "some_option": 1}), base_dir=CONFIGS)
    assert len(err.value.problems) == 1
    problem = err.value.problems[0]
    assert problem.path == "passes.vendor.type"
    assert vendor in problem.message and VENDOR_PASSES[vendor] in problem.message
    assert TARGETS in problem.hint


def test_a_vendor_execution_provider_is_refused_with_its_hardware():
    raw = _config("model-builder-options.json")
    raw["systems"]["local_system"]["accelerators"][0]["execution_providers"] = ["QNNExecutionProvider"]
    with pytest.raises(ConfigError) as err:
        normalize(raw, base_dir=CONFIGS)
    [problem] = err.value.problems
    assert VENDOR_EPS["QNNExecutionProvider"] in problem.message and TARGETS in problem.hint


def _with_data(raw: dict) -> dict:
    """`raw` with the tone rows as its data: a metric that runs the model needs rows to run it on."""
    data = _config("lora-adapters.json")["data_configs"]
    data[0]["load_dataset_config"]["data_files"] = str(CONFIGS / "lm_eval_tasks" / "tone.jsonl")
    return {**raw, "data_configs": data}


def test_olive_sub_metric_names_and_throughput_statistics():
    from modelpress.evaluate import latency_report
    from modelpress.metrics import _measured

    raw = _with_data(_config("model-builder-options.json"))
    raw["evaluators"] = {"e": {"metrics": [
        {"name": "acc", "type": "accuracy", "sub_types": [{"name": "accuracy", "priority": 1}, {"name": "f1"}]},
        {"name": "tp", "type": "throughput", "sub_types": [{"name": "avg"}, {"name": "max"}, {"name": "min"},
                                                           {"name": "p90"}, {"name": "p999"}]},
        {"name": "lat", "type": "latency", "sub_types": [{"name": "p75"}, {"name": "p999"}]}]}}
    config = normalize(raw, base_dir=CONFIGS)
    assert [s.name for s in config.evaluator.metrics[0].sub_types] == ["accuracy_score", "f1_score"]
    result = {"throughput": 9.0, "latency_ms": latency_report([0.001 * ms for ms in range(50, 201)])}
    assert _measured(result, "throughput", "max") == pytest.approx(20.0)
    assert _measured(result, "throughput", "min") == pytest.approx(5.0)
    assert _measured(result, "throughput", "p50") == pytest.approx(1000 / 125)
    assert _measured(result, "throughput", "avg") == 9.0
    # Olive's percentiles: a latency's as measured, a throughput's (examples/s) from latency's mirror percentile
    assert _measured(result, "latency", "p75") == pytest.approx(162.5)
    assert _measured(result, "latency", "p999") == pytest.approx(199.85)
    assert _measured(result, "throughput", "p90") == pytest.approx(1000 / 65)
    assert _measured(result, "throughput", "p999") == pytest.approx(1000 / 50.15)


def test_olive_accuracy_sub_types_modelpress_does_not_compute_say_what_to_use_instead():
    raw = _with_data(_config("model-builder-options.json"))
    raw["evaluators"] = {"e": {"metrics": [{"name": "acc", "type": "accuracy", "sub_types": [
        {"name": "perplexity"}, {"name": "auroc"}]}]}}
    with pytest.raises(ConfigError) as err:
        normalize(raw, base_dir=CONFIGS)
    first, second = err.value.problems
    assert first.path.endswith("sub_types[0].name") and '"type": "perplexity"' in first.hint
    assert second.path.endswith("sub_types[1].name") and "custom metric" in second.hint


def test_olive_session_tuning_numbers_read_as_onnxruntime_enum_names():
    from modelpress.passes.onnx_specs import OrtSessionParamsTuningParams

    params = OrtSessionParamsTuningParams(opt_level_list=[99, 3, 1], execution_mode_list=0)
    assert params.opt_level_list == ["all", "layout", "basic"] and params.execution_mode_list == ["sequential"]
    with pytest.raises(ValueError, match="opt_level_list"):
        OrtSessionParamsTuningParams(opt_level_list=[7])


def test_a_builder_on_an_unmerged_adapter_is_valid_and_says_what_it_builds(tmp_path):
    raw = _config("lora-adapters.json")
    assert not any("unmerged adapter" in w for w in load_config(CONFIGS / "lora-adapters.json").warnings)
    del raw["passes"]["e"]  # no ExtractAdapters: the LoRA MatMuls stay in the graph, which is worth a word
    raw["data_configs"][0]["load_dataset_config"]["data_files"] = str(CONFIGS / "lm_eval_tasks" / "tone.jsonl")
    (tmp_path / "c.json").write_text(json.dumps(raw))
    warnings = load_config(tmp_path / "c.json").warnings
    assert any("passes.m: ModelBuilder gets an unmerged adapter from 'l'" in w and "MergeAdapterWeights" in w
               for w in warnings), warnings


def test_an_input_model_dtype_modelpress_does_not_read_is_warned_about():
    config = load_config(CONFIGS / "model-builder-options.json")
    assert any(w.startswith("input_model.load_kwargs.torch_dtype: 'float16' is accepted and not used")
               for w in config.warnings)
