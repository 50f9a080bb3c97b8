"""GgufExport: a model whose input was a GGUF file, written back as one.

The source files are written the way llama.cpp's converter writes a Llama (`test_gguf.write_llama_gguf`, code
independent of modelpress). An export of the converted folder, untrained, must give back the source's tensors
(F32: the same values; Q8_0 re-quantized from Q8_0 values: the same bytes) and its metadata; read back through
transformers' GGUF reader it must give the source model's logits. tests/test_smollm2.py checks the same against
a file llama.cpp itself wrote.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from conftest import TONE_DATA
from test_gguf import (HEADS, HIDDEN, KV_HEADS, SENTENCES, _logits, _permute, _source_model, add_bpe_tokenizer,
                       hf_model, model_writer, write_llama_gguf)

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tokenizer():
    from modelpress.tiny import default_corpus, train_tokenizer

    return train_tokenizer([line for line in default_corpus().splitlines() if line.strip()], 384)


def _workflow(tmp_path, source, passes: dict, data: bool = False) -> dict:
    raw = {"input_model": {"type": "HfModel", "model_path": str(source)}, "passes": passes,
           "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")}
    if data:
        raw["data_configs"] = [{
            "name": "tone", "load_dataset_config": {"data_name": "json", "data_files": [str(TONE_DATA)]},
            "pre_process_data_config": {"chat_template": "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}"
                                                         "</s>{% endfor %}{% if add_generation_prompt %}<assistant>"
                                                         "{% endif %}",
                                        "chat_columns": {"user": "{phrase}", "assistant": "{tone}"},
                                        "max_seq_len": 96}}]
    return raw


def _run(tmp_path, raw: dict):
    from modelpress.config import normalize
    from modelpress.engine import run_workflow

    run_workflow(normalize(raw, tmp_path), show_progress=False)
    return tmp_path / "out" / "model" / "model.gguf"


def _tensors(path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, np.asarray(t.data).copy()) for t in reader.tensors}


def _fields(path) -> dict:
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


@pytest.mark.parametrize("tie, float_type, outtype", [(False, "F32", "f32"), (True, "F32", "f32"),
                                                       (False, "Q8_0", "q8_0")], ids=["f32", "f32-tied", "q8_0"])
def test_an_untrained_export_gives_back_the_source_tensors_and_metadata(tmp_path, tokenizer, tie, float_type,
                                                                         outtype):
    (tmp_path / "models").mkdir()
    source = write_llama_gguf(_source_model(tokenizer, tie), tokenizer, tmp_path / "models" / "tiny.gguf",
                              float_type)
    written = _run(tmp_path, _workflow(tmp_path, source, {"gguf": {"type": "GgufExport", "outtype": outtype}}))

    expected, got = _tensors(source), _tensors(written)
    assert list(got) == list(expected)  # names, and the source's order
    for name, (kind, data) in expected.items():
        assert got[name][0] == kind, name
        assert np.array_equal(got[name][1], data), name  # Q and K permuted back as llama.cpp lays them out
    before, after = _fields(source), _fields(written)
    assert {k: v for k, v in after.items() if k != "general.quantization_version"} == before
    card = json.loads((written.parent / "modelpress_model.json").read_text())
    assert card["kind"] == "gguf"


def test_a_trained_export_reads_back_with_the_trained_logits_and_chat_template(tmp_path, tokenizer):
    """LoRA, merge, export: the file, read by transformers' GGUF reader, gives the merged model's logits (f32), and
    carries the chat template the model was trained with; the run evaluates it (in llama.cpp where it is installed)."""
    from transformers import AutoModelForCausalLM

    (tmp_path / "models").mkdir()
    source = write_llama_gguf(_source_model(tokenizer, False), tokenizer, tmp_path / "models" / "tiny.gguf")
    raw = _workflow(tmp_path, source, {
        "lora": {"type": "LoRA", "train_data_config": "tone", "r": 4, "target_modules": ["q_proj", "k_proj"],
                 "training_args": {"max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 0.05}},
        "merge": {"type": "MergeAdapterWeights"},
        "gguf": {"type": "GgufExport", "outtype": "f32"}}, data=True)
    raw["evaluation"] = {"max_examples": 8, "latency_samples": 2, "max_new_tokens": 2}
    written = _run(tmp_path, raw)

    history = json.loads((tmp_path / "out" / "run_history.json").read_text())
    merge_key = next(s["output_id"] for s in history["steps"] if s["type"] == "MergeAdapterWeights")
    merged_folder = tmp_path / "cache" / "passes" / merge_key / "model"
    merged = AutoModelForCausalLM.from_pretrained(merged_folder, dtype=torch.float32).eval()
    read = AutoModelForCausalLM.from_pretrained(written.parent, gguf_file=written.name, dtype=torch.float32).eval()
    ids = tokenizer(SENTENCES[0])["input_ids"]
    assert torch.allclose(_logits(read, ids), _logits(merged, ids), atol=1e-5, rtol=0)
    unchanged = _tensors(source)["blk.0.ffn_up.weight"][1]
    assert np.array_equal(_tensors(written)["blk.0.ffn_up.weight"][1], unchanged)  # not adapted: as it was
    assert not np.array_equal(_tensors(written)["blk.0.attn_q.weight"][1], _tensors(source)["blk.0.attn_q.weight"][1])
    template = raw["data_configs"][0]["pre_process_data_config"]["chat_template"]
    assert _fields(written)["tokenizer.chat_template"] == template
    final = json.loads((tmp_path / "out" / "metrics.json").read_text())["models"]["final"]
    assert final["examples"] == 8 and 0 <= final["accuracy"] <= 1 and final["latency_ms"]["p50"] > 0
    said = "answered by llama.cpp" if importlib.util.find_spec("llama_cpp") else "a gguf model is measured in PyTorch"
    assert said in (tmp_path / "out" / "report.html").read_text()


# the largest relative RMS error of a weight read back, per outtype (measured on this model: q4 0.10, q5 0.05, q8
# 0.006, bf16 0.003, f16 0.0003)
ERROR = {"q4_1": 0.15, "q4_0": 0.15, "q5_1": 0.08, "q5_0": 0.08, "bf16": 0.005, "f16": 0.001}


@pytest.mark.parametrize("outtype, block, edge", [("q4_1", "Q4_1", "Q8_0"), ("q4_0", "Q4_0", "Q8_0"),
                                                 ("q5_1", "Q5_1", "Q8_0"), ("q5_0", "Q5_0", "Q8_0"),
                                                 ("f16", "F16", "F16"), ("bf16", "BF16", "BF16")])
def test_each_outtype_writes_its_block_type_and_reads_back_close(tmp_path, tokenizer, outtype, block, edge):
    (tmp_path / "models").mkdir()
    source = write_llama_gguf(_source_model(tokenizer, False), tokenizer, tmp_path / "models" / "tiny.gguf")
    written = _run(tmp_path, _workflow(tmp_path, source, {"gguf": {"type": "GgufExport", "outtype": outtype}}))
    reader = gguf.GGUFReader(str(written))
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == block and kinds["blk.1.ffn_down.weight"] == block
    assert kinds["token_embd.weight"] == edge and kinds["output.weight"] == edge
    assert kinds["blk.0.attn_norm.weight"] == "F32"
    assert _fields(written)["general.file_type"] == getattr(gguf.LlamaFileType, f"MOSTLY_{outtype.upper()}")
    expected = _tensors(source)
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
        want = expected[tensor.name][1]
        error = np.sqrt(((values - want) ** 2).mean() / (want ** 2).mean())
        assert 0 <= error < (ERROR[outtype] if tensor.tensor_type.name == block else 0.01), (tensor.name, error)
        assert tensor.tensor_type.name == "F32" or outtype == "f16" or error > 0  # rounded, so its values moved


@pytest.mark.parametrize("sym, bits, block", [(False, 4, "Q4_1"), (True, 4, "Q4_0"), (True, 8, "Q8_0")])
def test_a_quantized_checkpoint_keeps_its_codes_in_llama_cpp_blocks(tmp_path, tokenizer, sym, bits, block):
    """Rtn's codes go into the block type of their grid whatever the outtype; read back, the file's weights are
    the checkpoint's (its scales and minimums rounded to float16, as llama.cpp stores them)."""
    from modelpress.quantized import dequantized_state

    (tmp_path / "models").mkdir()
    source = write_llama_gguf(_source_model(tokenizer, False), tokenizer, tmp_path / "models" / "tiny.gguf")
    written = _run(tmp_path, _workflow(tmp_path, source, {
        "rtn": {"type": "Rtn", "bits": bits, "sym": sym, "group_size": 32},
        "gguf": {"type": "GgufExport", "outtype": "f32"}}))
    history = json.loads((tmp_path / "out" / "run_history.json").read_text())
    rtn_key = next(s["output_id"] for s in history["steps"] if s["type"] == "Rtn")
    state = dequantized_state(tmp_path / "cache" / "passes" / rtn_key / "model")
    reader = gguf.GGUFReader(str(written))
    tensors = {t.name: t for t in reader.tensors}
    for hf, name in [("model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight"),
                     ("model.layers.1.self_attn.v_proj.weight", "blk.1.attn_v.weight"),
                     ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"),
                     ("model.layers.1.self_attn.k_proj.weight", "blk.1.attn_k.weight")]:
        tensor = tensors[name]
        assert tensor.tensor_type.name == block, name
        values = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
        expected = state[hf].float().numpy()
        if "attn_q" in name or "attn_k" in name:  # llama.cpp's row order, codes and scales alike
            expected = _permute(expected, HEADS, HEADS if "attn_q" in name else KV_HEADS)
        top = np.abs(expected).max()
        # float16 scales and minimums, as llama.cpp stores them: under a quarter of an 8-bit step (0.0078 * top)
        assert np.abs(values - expected).max() < 2e-3 * top, name
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    assert tensors["token_embd.weight"].tensor_type.name == "F32"  # not quantized: the outtype's
    assert _fields(written)["general.file_type"] == getattr(gguf.LlamaFileType, f"MOSTLY_{block}")


def test_a_grid_llama_cpp_lacks_is_requantized_and_said(tmp_path, tokenizer):
    (tmp_path / "models").mkdir()
    source = write_llama_gguf(_source_model(tokenizer, False), tokenizer, tmp_path / "models" / "tiny.gguf")
    written = _run(tmp_path, _workflow(tmp_path, source, {
        "rtn": {"type": "Rtn", "bits": 8, "sym": False, "group_size": 32},
        "gguf": {"type": "GgufExport", "outtype": "q8_0"}}))
    assert {t.tensor_type.name for t in gguf.GGUFReader(str(written)).tensors} == {"Q8_0", "F32"}
    history = json.loads((tmp_path / "out" / "run_history.json").read_text())
    notes = next(s["notes"] for s in history["steps"] if s["type"] == "GgufExport")
    assert any("grid llama.cpp does not store" in note and "8-bit, asymmetric" in note for note in notes), notes


def write_plain_gguf(model, tokenizer, path, arch: str):
    """`model` as llama.cpp's Qwen2Model, Qwen3Model or Phi3MiniModel write it (F32): llama.cpp names, no
    permutation (Phi-3's fused qkv and gate_up matrices as they are)."""
    cfg = model.config
    w = model_writer(path, arch, cfg)
    if arch == "qwen3":
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    if arch == "phi3":
        w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    add_bpe_tokenizer(w, tokenizer, "qwen2" if arch != "phi3" else "gpt-2")
    layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if not cfg.tie_word_embeddings:
        names["lm_head.weight"] = "output.weight"
    for i in range(cfg.num_hidden_layers):
        for hf, ll in layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{ll}.weight"
            names[f"model.layers.{i}.{hf}.bias"] = f"blk.{i}.{ll}.bias"
    for hf, data in model.state_dict().items():
        if hf in names:
            w.add_tensor(names[hf], data.detach().float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "phi3"])
def test_qwen_and_phi3_files_round_trip(tmp_path, tokenizer, arch):
    """A Qwen2, Qwen3 or Phi-3 file, which transformers reads back to its model's logits, exports to the same
    tensors."""
    from transformers import AutoModelForCausalLM

    (tmp_path / "models").mkdir()
    model = hf_model(tokenizer, arch, arch != "phi3")  # Phi-3 untied, as the seed's
    source = write_plain_gguf(model, tokenizer, tmp_path / "models" / "tiny.gguf", arch)
    read = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32).eval()
    ids = tokenizer(SENTENCES[0])["input_ids"]
    assert torch.allclose(_logits(read, ids), _logits(model, ids), atol=1e-5, rtol=0)  # the writer is right
    written = _run(tmp_path, _workflow(tmp_path, source, {"gguf": {"type": "GgufExport", "outtype": "f32"}}))
    expected, got = _tensors(source), _tensors(written)
    assert sorted(got) == sorted(expected) and any(n.endswith((".bias", "_norm.weight", "qkv.weight")) for n in got)
    for name, (kind, data) in expected.items():
        assert got[name][0] == kind and np.array_equal(got[name][1], data), name
    assert {k: v for k, v in _fields(written).items() if k != "general.quantization_version"} == _fields(source)


def test_rope_frequency_tensors_are_carried_from_the_input_file(tmp_path, tokenizer):
    """Llama 3.1's rope_freqs (and Phi-3's rope factors) come from a config's rope scaling, not from weights: the
    export copies them from the input file."""
    (tmp_path / "models").mkdir()
    freqs = np.linspace(1.0, 8.0, HIDDEN // HEADS // 2, dtype=np.float32)
    source = write_llama_gguf(_source_model(tokenizer, False), tokenizer, tmp_path / "models" / "tiny.gguf",
                              extra={"rope_freqs.weight": freqs})
    written = _run(tmp_path, _workflow(tmp_path, source, {"gguf": {"type": "GgufExport", "outtype": "q8_0"}}))
    got = _tensors(written)
    assert list(got) == list(_tensors(source)) and got["rope_freqs.weight"][0] == "F32"
    assert np.array_equal(got["rope_freqs.weight"][1], freqs)


def test_metadata_the_gguf_package_cannot_write(tmp_path, monkeypatch, caplog):
    """An empty array (llama.cpp's C++ writer makes them; the gguf package's reader gives it no item type) is left
    out with a note; an array of arrays (read back flattened) is one clear error."""
    from types import SimpleNamespace

    from modelpress.errors import ModelpressError
    from modelpress.passes.gguf_export import _describe_source, _write

    kinds = gguf.GGUFValueType

    def field(types, values):
        return SimpleNamespace(types=types, data=list(range(len(values))), contents=lambda: values)

    fields = {"general.architecture": field([kinds.STRING], "llama"), "general.name": field([kinds.STRING], "tiny"),
              "general.tags": field([kinds.ARRAY], [])}
    monkeypatch.setattr(gguf, "GGUFReader", lambda path: SimpleNamespace(fields=fields, tensors=[]))
    with caplog.at_level("WARNING", logger="modelpress"):
        file = _describe_source(tmp_path / "in.gguf", gguf)
    assert any("general.tags is an empty array" in note and "left out" in note for note in file.notes), file.notes
    assert "general.tags is an empty array" in caplog.text
    _write(tmp_path / "a.gguf", file, [], {}, "q8_0", None, gguf)
    monkeypatch.undo()
    assert _fields(tmp_path / "a.gguf")["general.name"] == "tiny" and "general.tags" not in _fields(tmp_path / "a.gguf")
    fields["x.nested"] = field([kinds.ARRAY, kinds.ARRAY, kinds.INT32], [1, 2, 3])
    monkeypatch.setattr(gguf, "GGUFReader", lambda path: SimpleNamespace(fields=fields, tensors=[]))
    with pytest.raises(ModelpressError, match="x.nested is an array of arrays"):
        _describe_source(tmp_path / "in.gguf", gguf)


def test_a_gguf_file_named_by_hub_id_is_read_as_config_without_the_network(tmp_path, tokenizer, monkeypatch):
    """The architecture check reads a local file's header; a Hub file (here in a local Hugging Face cache, offline)
    is checked by the pass, which reads it, and the config is read without touching it."""
    from huggingface_hub import constants

    from hub_cache import add_repo
    from modelpress.config import normalize

    source = write_llama_gguf(_source_model(tokenizer, False), tokenizer, tmp_path / "tiny.gguf")
    add_repo(tmp_path / "hub", "acme/tiny-GGUF", {"tiny.gguf": source.read_bytes()}, "1" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    raw = _workflow(tmp_path, "acme/tiny-GGUF", {"gguf": {"type": "GgufExport"}})
    raw["input_model"]["gguf_file"] = "tiny.gguf"
    config = normalize(raw, tmp_path)
    assert config.input_model.hub_id == "acme/tiny-GGUF" and config.passes[0].type == "GgufExport"


def test_what_cannot_be_written_is_refused_when_the_config_is_read(tmp_path, tokenizer, monkeypatch):
    """An architecture GgufExport does not write (read from the local file's header), a classifier, and a Ray host
    (whose workers are not given the input file) are config errors, before any training."""
    import modelpress.passes.gguf_spec as spec
    from modelpress.config import normalize
    from modelpress.errors import ConfigError

    (tmp_path / "models").mkdir()
    source = write_llama_gguf(_source_model(tokenizer, False), tokenizer, tmp_path / "models" / "tiny.gguf")
    raw = _workflow(tmp_path, source, {"gguf": {"type": "GgufExport"}})
    normalize(raw, tmp_path)  # llama: written
    monkeypatch.setattr(spec, "ARCHITECTURES", {"qwen2": "Qwen2"})
    with pytest.raises(ConfigError, match=r"passes\.gguf\.type.*tiny\.gguf: GgufExport writes the architectures "
                                          r"qwen2 \(Qwen2\), and this file's is 'llama'"):
        normalize(raw, tmp_path)
    monkeypatch.undo()
    raw["input_model"]["task"] = "text-classification"
    with pytest.raises(ConfigError, match=r"passes\.gguf\.type.*text-classification"):
        normalize(raw, tmp_path)
    raw = _workflow(tmp_path, source, {"gguf": {"type": "GgufExport"}})
    raw.update(systems={"cluster": {"type": "Ray"}, "here": {"type": "LocalSystem"}}, host="cluster")
    with pytest.raises(ConfigError, match=r"passes\.gguf\.host.*Ray system 'cluster'.*LocalSystem"):
        normalize(raw, tmp_path)
    raw["passes"]["gguf"]["host"] = "here"
    normalize(raw, tmp_path)


def test_a_head_quantized_apart_from_a_tied_embedding_is_written_as_output(tmp_path, tokenizer):
    """The input file ties its head to the embedding (no output tensor); Rtn of the head unties them, so the file
    gets an output tensor (llama.cpp reads the embedding only where there is none) and reads back untied."""
    from transformers import AutoModelForCausalLM

    from modelpress.models import load_causal_lm

    (tmp_path / "models").mkdir()
    source = write_llama_gguf(_source_model(tokenizer, True), tokenizer, tmp_path / "models" / "tiny.gguf")
    assert "output.weight" not in _tensors(source)
    written = _run(tmp_path, _workflow(tmp_path, source, {
        "rtn": {"type": "Rtn", "bits": 4, "sym": False, "group_size": 64, "lm_head": True},
        "gguf": {"type": "GgufExport", "outtype": "f32"}}))
    kinds = {name: kind for name, (kind, _) in _tensors(written).items()}
    assert kinds["output.weight"] == "Q4_1" and kinds["token_embd.weight"] == "F32"
    assert kinds["blk.0.attn_q.weight"] == "Q4_1"  # groups of 64: two blocks of 32 share a scale and minimum
    history = json.loads((tmp_path / "out" / "run_history.json").read_text())
    rtn_key = next(s["output_id"] for s in history["steps"] if s["type"] == "Rtn")
    quantized = load_causal_lm(tmp_path / "cache" / "passes" / rtn_key / "model").eval()
    read = AutoModelForCausalLM.from_pretrained(written.parent, gguf_file=written.name, dtype=torch.float32).eval()
    assert read.config.tie_word_embeddings is False
    ids = tokenizer(SENTENCES[0])["input_ids"]
    expected, got = _logits(quantized, ids), _logits(read, ids)
    assert (got - expected).abs().max().item() < 1e-2 * expected.abs().max().item()  # float16 scales only


def test_a_model_whose_weights_differ_from_the_file_is_refused(tmp_path, tokenizer, monkeypatch):
    """The export writes the input file's tensors: a folder missing one (or holding another) names it."""
    import modelpress.passes.gguf_export as export
    from modelpress.errors import ModelpressError

    (tmp_path / "models").mkdir()
    source = write_llama_gguf(_source_model(tokenizer, False), tokenizer, tmp_path / "models" / "tiny.gguf")
    real = export._float_weights

    def without_one(folder):
        found = real(folder)
        found.pop("model.layers.1.mlp.up_proj.weight")
        return found

    monkeypatch.setattr(export, "_float_weights", without_one)
    with pytest.raises(ModelpressError, match=r"no weight for blk\.1\.ffn_up\.weight"):
        _run(tmp_path, _workflow(tmp_path, source, {"gguf": {"type": "GgufExport"}}))
    monkeypatch.setattr(export, "_float_weights", real)
    # a file the config check could not read (a Hub file): the pass says it
    import modelpress.gguf as mgguf
    import modelpress.passes.gguf_spec as spec

    monkeypatch.setattr(mgguf, "file_architecture", lambda path: None)
    monkeypatch.setattr(spec, "ARCHITECTURES", {"qwen2": "Qwen2"})
    with pytest.raises(ModelpressError, match=r"tiny\.gguf: GgufExport writes the architectures qwen2.*is 'llama'"):
        _run(tmp_path, _workflow(tmp_path, source, {"gguf": {"type": "GgufExport"}}))


def _rtn(bits: int, sym: bool) -> dict:
    return {"rtn": {"type": "Rtn", "bits": bits, "sym": sym, "group_size": 32}}


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed (it compiles llama.cpp from source)")
@pytest.mark.parametrize("arch, passes", [("llama", {}), ("qwen2", {}), ("qwen3", {}), ("phi3", {}),
                                          ("llama", _rtn(4, False)), ("llama", _rtn(4, True)),
                                          ("llama", _rtn(8, True))],
                         ids=["f32", "qwen2-f32", "qwen3-f32", "phi3-f32", "codes-q4_1", "codes-q4_0", "codes-q8_0"])
def test_llama_cpp_reads_the_export_as_transformers_does(tmp_path, tokenizer, arch, passes):
    """llama.cpp itself (llama-cpp-python) computes the file's logits as transformers' GGUF reader does: the names,
    the Q/K layout and the blocks built from a checkpoint's codes are llama.cpp's own."""
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    (tmp_path / "models").mkdir()
    path = tmp_path / "models" / "tiny.gguf"
    model = _source_model(tokenizer, False) if arch == "llama" else hf_model(tokenizer, arch, arch != "phi3")
    source = write_llama_gguf(model, tokenizer, path) if arch == "llama" else write_plain_gguf(model, tokenizer,
                                                                                               path, arch)
    written = _run(tmp_path, _workflow(tmp_path, source, {**passes, "gguf": {"type": "GgufExport",
                                                                               "outtype": "f32"}}))
    ids = tokenizer(SENTENCES[0])["input_ids"]
    llm = Llama(model_path=str(written), n_ctx=128, n_threads=2, verbose=False, logits_all=True)
    llm.eval(ids)
    theirs = torch.tensor(np.array(llm.scores[: len(ids)]))
    read = AutoModelForCausalLM.from_pretrained(written.parent, gguf_file=written.name, dtype=torch.float32).eval()
    ours = _logits(read, ids)
    error = (theirs - ours).abs().max().item() / ours.abs().max().item()
    assert error < (2e-3 if not passes else 0.05), error  # Q4_1 dot products take 8-bit activations in llama.cpp
    assert (theirs.argmax(-1) == ours.argmax(-1)).float().mean() > 0.9


def test_generate_from_a_gguf_folder_says_what_it_needs_and_what_it_cannot_read(tmp_path, monkeypatch):
    """Without llama-cpp-python, `generate` on a GGUF folder says how to get it or where else to run the file; with
    it, a file llama.cpp cannot load is an error that names the file."""
    from modelpress.errors import ModelpressError
    from modelpress.generate import generate

    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    if importlib.util.find_spec("llama_cpp"):
        with pytest.raises(ModelpressError, match=r"model\.gguf: llama\.cpp cannot load it"):
            next(generate(tmp_path, "hello"))
    monkeypatch.setattr("modelpress.llama_cpp_runner.llama_cpp_installed", lambda: False)
    with pytest.raises(ModelpressError, match=r"is a GGUF file .*needs llama-cpp-python .*llama-cli -m .*model\.gguf"):
        next(generate(tmp_path, "hello"))


def test_a_run_reusing_the_export_reports_its_notes(tmp_path, tokenizer):
    """The notes a pass reported (here: what GgufExport wrote) are kept in its cache entry and reported again by a
    run that reuses it, so a cached export still says what it holds."""
    (tmp_path / "models").mkdir()
    source = write_llama_gguf(_source_model(tokenizer, False), tokenizer, tmp_path / "models" / "tiny.gguf")
    raw = _workflow(tmp_path, source, {"gguf": {"type": "GgufExport", "outtype": "q8_0"}})
    rows = []
    for _ in range(2):
        _run(tmp_path, raw)
        history = json.loads((tmp_path / "out" / "run_history.json").read_text())
        rows.append(next(s for s in history["steps"] if s["type"] == "GgufExport"))
    assert [row["cache"] for row in rows] == ["miss", "hit"]
    assert rows[1]["notes"] == rows[0]["notes"] and any("wrote model.gguf" in n for n in rows[0]["notes"])
