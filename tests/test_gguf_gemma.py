"""GgufExport of Gemma 3 text models (`modelpress.passes.gguf_gemma`): the configs llama.cpp's gemma3 would compute
otherwise than transformers are refused when read; older config.json spellings are read alike; a Gemma 3 GGUF file
as the input model is written back as it was. llama.cpp's own tokenization and logits of Gemma 3 exports are checked
with the other architectures' in tests/test_gguf_hf.py (cases gemma3, gemma3-rope)."""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import pytest

from test_gguf import LAYERS, hf_model
from test_gguf_hf import bpe_tokenizer, export, save

gguf = pytest.importorskip("gguf")
pytest.importorskip("torch")


@pytest.mark.parametrize("change, message", [
    ({"hidden_activation": "silu"}, r"hidden_activation is 'silu', and llama\.cpp's gemma3 computes gelu_pytorch_tanh"),
    ({"attn_logit_softcapping": 50.0}, r"soft-caps attention logits"),
    ({"query_pre_attn_scalar": 32}, r"query_pre_attn_scalar is 32, and llama\.cpp scales .* by 1/sqrt\(16\)"),
    ({"use_bidirectional_attention": True}, r"bidirectional"),
    ({"rope_parameters": {"sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
                          "full_attention": {"rope_type": "default", "rope_theta": 1e6}}},
     r"sliding layers' RoPE is 'linear'"),
    ({"rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                          "full_attention": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e6}}},
     r"its RoPE scaling is 'yarn', and GgufExport writes linear scaling on the full layers"),
])
def test_a_gemma3_config_llama_cpp_would_compute_otherwise_is_refused_when_read(tmp_path, change, message):
    """llama.cpp's gemma3 fixes choices a Gemma 3 config could make otherwise (activation, soft-capping, attention
    scale, causal attention, RoPE on the sliding layers, scaling on the full ones): such a config is refused when
    the config is read, before any training, naming the key."""
    from modelpress.errors import ConfigError

    tokenizer = bpe_tokenizer("gpt-2")
    folder = save(hf_model(tokenizer, "gemma3", True), tokenizer, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config.update(change)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"passes\.gguf\.type.*config\.json: .*" + message):
        export(tmp_path, folder)


def test_an_older_gemma3_config_s_rope_keys_are_read(tmp_path):
    """A config.json written before transformers 5 (rope_theta, rope_local_base_freq, rope_scaling) gives the same
    keys as transformers 5's rope_parameters by layer type."""
    from modelpress.passes.gguf_gemma import gemma_keys

    base = {"num_attention_heads": 4, "hidden_size": 64, "head_dim": 16, "max_position_embeddings": 256,
            "intermediate_size": 128, "num_hidden_layers": 6, "rms_norm_eps": 1e-6, "sliding_window": 512}
    old = {**base, "rope_theta": 1e6, "rope_local_base_freq": 20000.0,
           "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window_pattern": 6}
    new = {**base, "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                       "sliding_attention": {"rope_type": "default", "rope_theta": 20000.0}},
           "layer_types": ["sliding_attention"] * 5 + ["full_attention"]}
    assert gemma_keys(old, "gemma3") == gemma_keys(new, "gemma3")
    keys = gemma_keys(new, "gemma3")
    assert keys["gemma3.rope.freq_base"] == 1e6 and keys["gemma3.rope.freq_base_swa"] == 20000.0
    assert keys["gemma3.rope.scaling.factor"] == 8.0 and "gemma3.attention.sliding_window_pattern" not in keys


def test_a_gemma3_file_as_the_input_model_is_written_back_as_it_was(tmp_path):
    """A Gemma 3 GGUF file (this pass's own export of a tiny model) as the workflow's input: transformers' reader
    takes one off each norm, GgufExport adds it back, and the f32 export is the input file tensor for tensor."""
    tokenizer = bpe_tokenizer("gpt-2")
    model = hf_model(tokenizer, "gemma3", True, sliding_window=8, head_dim=256)  # the scale the reader assumes
    first = export(tmp_path / "hf", save(model, tokenizer, tmp_path / "model"))
    source = tmp_path / "input" / "tiny-gemma3.gguf"
    source.parent.mkdir()
    source.write_bytes(first.read_bytes())
    again = export(tmp_path / "gguf", source)
    before, after = gguf.GGUFReader(str(first)), gguf.GGUFReader(str(again))
    assert [t.name for t in after.tensors] == [t.name for t in before.tensors]
    norms = [t.name for t in before.tensors if t.name.endswith("norm.weight")]
    assert len(norms) == 1 + 6 * LAYERS  # the output norm; attention, q, k, post-attention, pre- and post-ffn norms
    for mine, theirs in zip(after.tensors, before.tensors):
        assert np.allclose(np.asarray(mine.data), np.asarray(theirs.data), atol=1e-6), mine.name


@pytest.mark.parametrize("config, why", [
    ({"head_dim": 128}, r"query_pre_attn_scalar is 256, and llama\.cpp scales this model's attention by 1/sqrt\(128\)"),
    ({"hidden_activation": None}, None),  # transformers' default: the GELU llama.cpp computes
    ({"num_hidden_layers": 62, "hidden_size": 5376, "num_attention_heads": 32, "head_dim": 128,
      "query_pre_attn_scalar": 168}, None),  # the 27B: 1/sqrt(hidden / heads), as llama.cpp scales it
    ({"num_hidden_layers": 62, "hidden_size": 5376, "num_attention_heads": 32, "head_dim": 128,
      "query_pre_attn_scalar": 128}, r"1/sqrt\(168\)"),
    ({"sliding_window": None}, r"sliding-attention layers and no sliding_window"),
    ({"attention_bias": True}, r"biases \(attention_bias\)"),
])
def test_a_gemma3_config_is_read_with_transformers_defaults(config, why):
    """The config check reads config.json, where a key may be left out: it takes Gemma3TextConfig's default, as the
    export (which reads the loaded config) does, so a config is refused when read or not at all."""
    from transformers import Gemma3TextConfig

    from modelpress.passes.gguf_gemma import gemma_unwritten

    raw = {"model_type": "gemma3_text", **config}
    found = gemma_unwritten(raw, "gemma3")
    assert (found is None) if why is None else re.search(why, found or ""), found
    if "sliding_window" not in config:  # the loaded config (what the export reads) gives the same answer
        given = {k: v for k, v in config.items() if v is not None}
        assert gemma_unwritten(Gemma3TextConfig(**given).to_dict(), "gemma3") == found


def test_a_split_at_spaces_without_gemma_s_normalizer_is_still_refused(tmp_path):
    """Gemma's pre-tokenizer splits at " " after its normalizer made every space "▁", which splits nothing; the same
    split over a text that keeps its spaces would split it, which llama.cpp's SentencePiece tokenizer does not."""
    from modelpress.passes.gguf_hf import _tokenizer_kind

    spec = {"model": {"type": "BPE", "byte_fallback": True}, "decoder": {"type": "Sequence"},
            "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
            "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious"}}
    assert _tokenizer_kind(spec, tmp_path / "tokenizer.json") == ("llama", "default")
    from modelpress.errors import ModelpressError

    for changed in ({**spec, "normalizer": None}, {**spec, "pre_tokenizer": {**spec["pre_tokenizer"], "invert": True}}):
        with pytest.raises(ModelpressError, match=r"pre-tokenizer \['Split'\] splits the text"):
            _tokenizer_kind(changed, tmp_path / "tokenizer.json")


def test_a_gemma3_file_whose_keys_transformers_would_not_read_is_refused_as_input(tmp_path):
    """A Gemma 3 GGUF input with linear RoPE scaling (Gemma 3 4B and larger): transformers' GGUF reader leaves the
    scaling out of the model it converts, so the workflow would train another model than the file's: refused,
    naming the key, before any training."""
    from modelpress.errors import ModelpressError

    tokenizer = bpe_tokenizer("gpt-2")
    model = hf_model(tokenizer, "gemma3", True, {"rope_type": "linear", "factor": 2.0}, sliding_window=8,
                     head_dim=256, num_hidden_layers=6)
    first = export(tmp_path / "hf", save(model, tokenizer, tmp_path / "model"))
    source = tmp_path / "input" / "scaled-gemma3.gguf"
    source.parent.mkdir()
    source.write_bytes(first.read_bytes())
    with pytest.raises(ModelpressError, match=r"scaled-gemma3\.gguf: transformers' GGUF reader ignores "
                                              r"gemma3\.rope\.scaling\.type.*Start from the Hugging Face model"):
        export(tmp_path / "gguf", source)


GEMMA_CHAT = ("{{ bos_token }}{% for m in messages %}<start_of_turn>"
              "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
              "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_a_fine_tuned_gemma3_runs_in_llama_cpp_as_the_merged_model_in_pytorch(tmp_path, tmp_path_factory):
    """LoRA on a tiny Gemma 3 in Gemma's chat format, merge, GgufExport f32, evaluation: llama.cpp answers the file
    with the merged model's completion loss (PyTorch), within its float16 GELU table's difference."""
    from conftest import TONE_DATA
    from test_gguf_hf import gemma_tokenizer

    from modelpress.config import normalize
    from modelpress.engine import run_workflow

    tokenizer = gemma_tokenizer(str(tmp_path_factory.getbasetemp() / "spm"))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tokenizer.chat_template = GEMMA_CHAT
    folder = save(hf_model(tokenizer, "gemma3", True, sliding_window=8), tokenizer, tmp_path / "model")
    raw = {"input_model": {"type": "HfModel", "model_path": str(folder)},
           "data_configs": [{"name": "tone",
                             "load_dataset_config": {"data_name": "json", "data_files": [str(TONE_DATA)]},
                             "pre_process_data_config": {"chat_template": True, "max_seq_len": 96,
                                                         "chat_columns": {"user": "{phrase}", "assistant": "{tone}"}}}],
           "passes": {"lora": {"type": "LoRA", "train_data_config": "tone", "r": 4,
                               "target_modules": ["q_proj", "v_proj"], "eval_dataset_size": 0.1,
                               "training_args": {"max_steps": 3, "per_device_train_batch_size": 8,
                                                 "learning_rate": 0.01}},
                      "merge": {"type": "MergeAdapterWeights"}, "gguf": {"type": "GgufExport", "outtype": "f32"}},
           "evaluation": {"max_examples": 16, "latency_samples": 2, "max_new_tokens": 3,
                          "evaluate_passes": ["merge"]},
           "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")}
    run_workflow(normalize(raw, tmp_path), show_progress=False)
    models = json.loads((tmp_path / "out" / "metrics.json").read_text())["models"]
    merged, final = models["merge"], models["final"]
    assert abs(models["input"]["completion_loss"] - merged["completion_loss"]) > 0.01  # training moved the model
    assert final["runtime"].startswith("llama.cpp") and merged["runtime"].startswith("PyTorch")
    assert final["examples"] == merged["examples"] == 16
    assert final["completion_loss"] == pytest.approx(merged["completion_loss"], rel=1e-3)  # measured: 5e-5
    reader = gguf.GGUFReader(str(tmp_path / "out" / "model" / "model.gguf"))
    assert reader.fields["tokenizer.chat_template"].contents() == GEMMA_CHAT


@pytest.mark.parametrize("config, why", [
    ({}, None),  # Gemma2Config's defaults: Gemma 2 2B
    ({"tie_word_embeddings": False}, r"head is not its embedding \(tie_word_embeddings false\)"),
    ({"attn_logit_softcapping": None}, r"does not soft-cap attention logits.*llama\.cpp's gemma2 always does"),
    ({"final_logit_softcapping": None}, r"does not soft-cap its final logits"),
    ({"num_hidden_layers": 46, "hidden_size": 4608, "num_attention_heads": 32, "head_dim": 128,
      "query_pre_attn_scalar": 144}, None),  # the 27B: 1/sqrt(hidden / heads)
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}},
     r"its RoPE scaling is 'linear', and GgufExport writes none for gemma2"),
])
def test_a_gemma2_config_is_written_only_as_llama_cpp_computes_it(config, why):
    """llama.cpp's gemma2 always soft-caps both logits, reads its head as the embedding, scales the 27B's attention by
    1/sqrt(hidden / heads) and has no RoPE scaling: a config otherwise is refused, with transformers' defaults for
    keys config.json leaves out, as the loaded config (what the export reads) has them."""
    from transformers import Gemma2Config

    from modelpress.passes.gguf_gemma import gemma_keys, gemma_unwritten

    found = gemma_unwritten({"model_type": "gemma2", **config}, "gemma2")
    assert (found is None) if why is None else re.search(why, found or ""), found
    assert gemma_unwritten(Gemma2Config(**config).to_dict(), "gemma2") == found
    if why is None:
        keys = gemma_keys(Gemma2Config(**config).to_dict(), "gemma2")
        assert keys["gemma2.attn_logit_softcapping"] == 50.0 and keys["gemma2.final_logit_softcapping"] == 30.0
        assert keys["gemma2.attention.sliding_window"] == 4096 and "gemma2.attention.sliding_window_pattern" not in keys


def test_a_gemma2_file_with_soft_caps_transformers_would_not_read_is_refused_as_input(tmp_path):
    """transformers' GGUF reader takes Gemma 2's soft-caps at 50 and 30 whatever the file says: a file with others
    is refused as the workflow's input, naming the values."""
    from modelpress.errors import ModelpressError

    tokenizer = bpe_tokenizer("gpt-2")
    model = hf_model(tokenizer, "gemma2", True, sliding_window=8, head_dim=256, attn_logit_softcapping=20.0)
    first = export(tmp_path / "hf", save(model, tokenizer, tmp_path / "model"))
    source = tmp_path / "input" / "capped-gemma2.gguf"
    source.parent.mkdir()
    source.write_bytes(first.read_bytes())
    with pytest.raises(ModelpressError,
                       match=r"ignores gemma2\.attn_logit_softcapping 20\.0 \(the reader takes 50\.0\)"):
        export(tmp_path / "gguf", source)


def test_a_gemma_output_pytorch_would_misread_asks_for_llama_cpp(tmp_path, monkeypatch):
    """A Gemma 3 export with linear RoPE scaling (4B and larger) is evaluated only where llama.cpp runs it: without
    llama-cpp-python, reading it in PyTorch (whose GGUF reader drops the scaling) is refused, saying what to install."""
    from modelpress.errors import ModelpressError
    from modelpress.models import ModelRef
    from modelpress.runners import make_runner

    tokenizer = bpe_tokenizer("gpt-2")
    model = hf_model(tokenizer, "gemma3", True, {"rope_type": "linear", "factor": 2.0}, sliding_window=8,
                     head_dim=256, num_hidden_layers=6)
    written = export(tmp_path, save(model, tokenizer, tmp_path / "model"))
    monkeypatch.setattr("modelpress.llama_cpp_runner.llama_cpp_installed", lambda: False)
    with pytest.raises(ModelpressError, match=r"ignores gemma3\.rope\.scaling\.type.*evaluate it in llama\.cpp itself"
                                              r".*modelpress\[llama-cpp\]"):
        make_runner(ModelRef.load(written.parent))


def test_a_ray_node_refuses_to_answer_with_other_libraries_than_the_driver_keyed():
    """The driver keys a GGUF model's evaluation by its llama-cpp-python; a node without it (or with another)
    would answer in PyTorch under that key: the node refuses, naming both versions."""
    from modelpress.errors import ModelpressError
    from modelpress.runtime import library_versions
    from modelpress.systems.ray_tasks import same_answering_libraries

    same_answering_libraries(library_versions(("llama_cpp",)))  # the same here: answered
    same_answering_libraries({})  # a model kind no other library answers
    with pytest.raises(ModelpressError, match=r"llama_cpp .* here, 9\.9\.9 on the driver.*every node"):
        same_answering_libraries({"llama_cpp": "9.9.9"})
