"""GGUF input: a tiny Llama written to a .gguf file with the `gguf` package, converted, checked against its source.

The file is written the way llama.cpp's `convert_hf_to_gguf.py` writes a Llama (its `LlamaModel`
class): llama.cpp tensor names, Q and K rows permuted per head, a byte-level BPE vocabulary as
`tokenizer.ggml.*` metadata ("gpt2" model). transformers' GGUF loader
(`modeling_gguf_pytorch_utils.LlamaTensorProcessor`, `integrations/gguf/gguf_tokenizer_mapping.py`)
undoes exactly that, so a wrong layout on either side shows up as different logits or token ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import tone_workflow

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 128
RMS_EPS, ROPE_THETA, CONTEXT = 1e-5, 50000.0, 256  # not LlamaConfig's defaults, so the metadata must be read
# float32 end to end (the weights are f16-representable, so the F16 file is lossless too); measured: bit-identical.
# Leaving out the Q/K permutation moves the logits (scale ~3) by ~2.9.
ATOL = 1e-5
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Hello, world! 123 ünïcode",
             "x<|endoftext|>y <s> a tiny model knows no language"]


def _permute(w, n_head: int, n_head_kv: int):
    # llama.cpp convert_hf_to_gguf.py, LlamaModel.permute: rotary pairs (i, i + d/2) become adjacent rows.
    if n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def model_writer(path: Path, arch: str, cfg):
    """A GGUFWriter for `arch` holding the shape keys every llama.cpp converter writes from a transformers config."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}-test")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(RMS_EPS)
    return w


def write_llama_gguf(model, tokenizer, path: Path, float_type: str = "F32", extra: dict | None = None) -> Path:
    """Write `model` (LlamaForCausalLM) and `tokenizer` (byte-level BPE) as llama.cpp would, in F32, F16 or
    Q8_0 (gguf's own quantizer), with `extra` tensors ({llama.cpp name: array}) after the model's."""
    cfg = model.config
    w = model_writer(path, "llama", cfg)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                     "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[float_type])

    add_bpe_tokenizer(w, tokenizer, "gpt-2")

    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if not cfg.tie_word_embeddings:  # llama.cpp writes `output` only when it is not the embedding matrix
        names["lm_head.weight"] = "output.weight"
    hf_layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(cfg.num_hidden_layers):
        names.update({f"model.layers.{i}.{hf}.weight": f"blk.{i}.{ll}.weight" for hf, ll in hf_layer.items()})
    for hf, ll in names.items():
        data = state[hf]
        if ll.endswith("attn_q.weight"):
            data = _permute(data, cfg.num_attention_heads, cfg.num_attention_heads)
        elif ll.endswith("attn_k.weight"):
            data = _permute(data, cfg.num_attention_heads, cfg.num_key_value_heads)
        # llama.cpp keeps 1-D tensors (norms) in F32 whatever the file type
        if float_type == "Q8_0" and data.ndim > 1:
            w.add_tensor(ll, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            continue
        w.add_tensor(ll, data.astype("float16") if float_type == "F16" and data.ndim > 1 else data)
    for name, data in (extra or {}).items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def add_bpe_tokenizer(w, tokenizer, pre: str) -> None:
    """The tokenizer, as llama.cpp's `_set_vocab_gpt2` writes it: tokens in id order, CONTROL for special ones,
    "a b" merges."""
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    special = set(tokenizer.all_special_tokens)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_unk_token_id(tokenizer.unk_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def tokenizer():
    from modelpress.tiny import default_corpus, train_tokenizer

    return train_tokenizer([line for line in default_corpus().splitlines() if line.strip()], 384)


def shape_kwargs(tokenizer, tie: bool) -> dict:
    """The config of every tiny test model: this module's shape, not the config classes' defaults."""
    return dict(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=CONTEXT,
                rms_norm_eps=RMS_EPS, rope_theta=ROPE_THETA, tie_word_embeddings=tie,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, initializer_range=0.1)


def hf_model(tokenizer, arch: str, tie: bool, rope: dict | None = None, **extra):
    """A tiny model of `arch` in this module's shape (llama, mistral: grouped K/V heads; qwen2: q, k, v biases;
    qwen3: q and k norms, heads of 128, every Qwen3's, which transformers' GGUF reader assumes; phi3: fused qkv and
    gate_up), norms and biases away from their initial values; `extra` config keys on top."""
    import transformers

    name = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "phi3": "Phi3",
            "gemma2": "Gemma2", "gemma3": "Gemma3"}[arch]
    kwargs = {**shape_kwargs(tokenizer, tie), **({"head_dim": 128} if arch == "qwen3" else {}), **extra}
    kwargs.pop("rope_theta")
    kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": ROPE_THETA, **(rope or {}),
                                 **kwargs.pop("rope_parameters", {})}
    if arch == "phi3":
        kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]
    if arch == "gemma3":  # RoPE by layer type
        full = kwargs.pop("rope_parameters")
        kwargs["rope_parameters"] = {"full_attention": full, "sliding_attention": {
            "rope_type": "default", "rope_theta": kwargs.pop("sliding_theta", 10000.0)}}
    if arch in ("gemma2", "gemma3"):  # heads of this module's size, and the attention scale they imply
        kwargs.setdefault("head_dim", HIDDEN // HEADS)
        kwargs.setdefault("query_pre_attn_scalar", kwargs["head_dim"])
    config = getattr(transformers, "Gemma3TextConfig" if arch == "gemma3" else f"{name}Config")(**kwargs)
    torch.manual_seed(2)
    model = getattr(transformers, f"{name}ForCausalLM")(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    return model


def _source_model(tokenizer, tie: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape_kwargs(tokenizer, tie))
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())  # f16-representable, so the F16 case can be held to the F32 tolerance
            if p.ndim == 1:  # norms start at 1.0: give them values so a misplaced norm shows
                p.uniform_(0.5, 1.5).copy_(p.half().float())
    return model


def _logits(model, ids: list[int]):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("tie, float_type", [(False, "F32"), (True, "F32"), (False, "F16")],
                         ids=["f32", "f32-tied", "f16"])
def test_gguf_file_converts_to_a_folder_with_the_source_logits_and_tokens(tmp_path, tokenizer, tie, float_type):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelpress.gguf import write_hf_folder

    source = _source_model(tokenizer, tie)
    path = write_llama_gguf(source, tokenizer, tmp_path / "tiny.gguf", float_type)
    out = tmp_path / "hf"
    write_hf_folder(path, out)

    names = {p.name for p in out.iterdir()}
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= names, names
    assert any(n.endswith(".safetensors") for n in names), names
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is tie
    assert (config["num_key_value_heads"], config["num_hidden_layers"]) == (KV_HEADS, LAYERS)
    assert config["rms_norm_eps"] == pytest.approx(RMS_EPS, rel=1e-6) and config["rope_parameters"]["rope_theta"] == ROPE_THETA

    converted = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    converted_tok = AutoTokenizer.from_pretrained(out)
    for text in SENTENCES:
        ids = tokenizer(text)["input_ids"]
        assert converted_tok(text)["input_ids"] == ids, text
        assert converted_tok.decode(ids) == text
        expected, got = _logits(source, ids), _logits(converted, ids)
        assert torch.allclose(got, expected, atol=ATOL, rtol=0), (text, (got - expected).abs().max().item())
    assert converted_tok.eos_token == tokenizer.eos_token and converted_tok.bos_token == tokenizer.bos_token


def test_a_conversion_reads_the_file_header_once(tmp_path, tokenizer, monkeypatch):
    """transformers reads the config, the tokenizer and the weights through a GGUFReader each (seconds apiece for
    a real vocabulary): a conversion shares one, and leaves the gguf module as it found it."""
    import gguf

    from modelpress.gguf import write_hf_folder

    path = write_llama_gguf(_source_model(tokenizer, False), tokenizer, tmp_path / "tiny.gguf", "F32")
    real, opened = gguf.GGUFReader, []

    def counted(*args, **kwargs):
        opened.append(str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", counted)
    write_hf_folder(path, tmp_path / "hf")
    assert len(opened) == 1 and gguf.GGUFReader is counted
    assert (tmp_path / "hf" / "config.json").is_file()


def test_a_quantized_gguf_file_converts_with_dense_weights_asked_for(tmp_path, tokenizer, monkeypatch):
    """A Q8_0 file (gguf's own quantizer) converts with its logits close to the source. The conversion asks
    transformers for dense weights: for the architectures its new GGUF path loads (Qwen3.5, LFM2), a machine
    that can fetch a GGUF matmul kernel would otherwise get packed layers a plain model cannot load."""
    import transformers.modeling_utils as modeling
    from transformers import AutoModelForCausalLM

    from modelpress.gguf import write_hf_folder

    asked = []
    original = modeling.get_hf_quantizer

    def spy(config, quantization_config, *args, **kwargs):
        asked.append(quantization_config)
        return original(config, quantization_config, *args, **kwargs)

    monkeypatch.setattr(modeling, "get_hf_quantizer", spy)
    source = _source_model(tokenizer, tie=False)
    path = write_llama_gguf(source, tokenizer, tmp_path / "tiny-q8.gguf", "Q8_0")
    write_hf_folder(path, tmp_path / "hf")
    assert [getattr(q, "dequantize", None) for q in asked] == [True]
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = tokenizer(SENTENCES[0])["input_ids"]
    expected, got = _logits(source, ids), _logits(converted, ids)
    assert 0 < (got - expected).abs().max().item() < 0.05 * expected.abs().max().item()  # 8-bit blocks: close


def test_gguf_is_converted_once_and_the_folder_reused(tmp_path, tokenizer, monkeypatch):
    import modelpress.gguf as mgguf
    from modelpress.config import normalize
    from modelpress.inputs import resolve_input_folder

    (tmp_path / "models").mkdir()  # outside the output and cache folders, as normalize requires
    path = write_llama_gguf(_source_model(tokenizer, False), tokenizer, tmp_path / "models" / "tiny.gguf")
    raw = tone_workflow(tmp_path, {})
    raw["input_model"] = {"type": "HfModel", "model_path": str(path)}
    model = normalize(raw, base_dir=tmp_path).input_model
    assert model.gguf_file == "tiny.gguf" and Path(model.model_path) == path.parent

    cache = tmp_path / "cache"
    first = resolve_input_folder(model, cache)
    assert first.parent == cache / "inputs" and first.name.startswith("gguf-")
    assert "gguf_file" not in json.loads((first / mgguf.SOURCE_NOTE).read_text())  # the key holds content only
    stamp = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}

    def fail(*_args, **_kwargs):
        raise AssertionError("converted a second time")

    monkeypatch.setattr(mgguf, "write_hf_folder", fail)
    assert resolve_input_folder(model, cache) == first
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == stamp
    # a CACHE_VERSION bump (a pass's output changed) reuses the conversion: it re-converted the whole model
    import modelpress.cache as mcache

    monkeypatch.setattr(mcache, "CACHE_VERSION", mcache.CACHE_VERSION + 1)
    assert resolve_input_folder(model, cache) == first


def test_two_runs_convert_a_gguf_file_once_and_a_new_converter_converts_again(tmp_path, tokenizer, monkeypatch):
    """Two threads (as two runs on one cache) ask for the same file: one converts, the other waits on the lock
    and takes its folder. Another transformers version converts into a folder of its own."""
    import threading

    import modelpress.gguf as mgguf

    path = write_llama_gguf(_source_model(tokenizer, False), tokenizer, tmp_path / "tiny.gguf")
    real, calls = mgguf.write_hf_folder, []

    def counted(*args, **kwargs):
        calls.append(threading.get_ident())
        real(*args, **kwargs)

    monkeypatch.setattr(mgguf, "write_hf_folder", counted)
    cache, found = tmp_path / "cache", []
    threads = [threading.Thread(target=lambda: found.append(mgguf.converted_folder(path, cache, "id-1")))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(found) == 2 and found[0] == found[1]
    assert (found[0] / mgguf.SOURCE_NOTE).is_file()
    monkeypatch.setattr(mgguf, "_converter_versions", lambda: "transformers==0.0.0")
    other = mgguf.converted_folder(path, cache, "id-1")
    assert other != found[0] and len(calls) == 2


def test_missing_gguf_file_is_a_config_error(tmp_path):
    from modelpress.config import normalize
    from modelpress.errors import ConfigError

    raw = tone_workflow(tmp_path, {})
    raw["input_model"] = {"type": "HfModel", "model_path": str(tmp_path / "absent.gguf")}
    with pytest.raises(ConfigError, match="GGUF file not found"):
        normalize(raw, base_dir=tmp_path)


def test_a_gguf_file_converts_from_its_own_metadata_whatever_lies_beside_it(tmp_path, tokenizer):
    """transformers prefers a tokenizer.json or generation_config.json in the GGUF's folder to the file's own
    metadata (a review: another model's files in a shared downloads folder went into the conversion)."""
    from transformers import AutoTokenizer, GenerationConfig

    from modelpress.gguf import write_hf_folder

    path = write_llama_gguf(_source_model(tokenizer, False), tokenizer, tmp_path / "tiny.gguf")
    (tmp_path / "tokenizer.json").write_text('{"not": "this model\'s tokenizer"}')
    GenerationConfig(eos_token_id=4242, bos_token_id=4241).save_pretrained(tmp_path)
    out = tmp_path / "hf"
    write_hf_folder(path, out)
    converted = AutoTokenizer.from_pretrained(out)
    assert converted(SENTENCES[0])["input_ids"] == tokenizer(SENTENCES[0])["input_ids"]
    assert GenerationConfig.from_pretrained(out).eos_token_id == tokenizer.eos_token_id


def test_a_truncated_gguf_file_is_one_clear_error(tmp_path, tokenizer):
    """...and a failed conversion leaves the gguf module as it found it: the next file converts, read afresh."""
    import gguf

    from modelpress.errors import ModelpressError
    from modelpress.gguf import write_hf_folder

    originals = gguf.GGUFReader, gguf.get_tensor_name_map
    path = write_llama_gguf(_source_model(tokenizer, False), tokenizer, tmp_path / "tiny.gguf")
    data = path.read_bytes()
    for length in (40, 300, len(data) // 2):  # in the header, in the metadata, in the tensors
        cut = tmp_path / f"cut-{length}.gguf"
        cut.write_bytes(data[:length])
        with pytest.raises(ModelpressError, match="cannot read this GGUF file .* download it again"):
            write_hf_folder(cut, tmp_path / f"out-{length}")
        assert (gguf.GGUFReader, gguf.get_tensor_name_map) == originals
    cut.write_bytes(data)  # the same name, now whole: not the half file's reader
    write_hf_folder(cut, tmp_path / "out-whole")
    assert (tmp_path / "out-whole" / "config.json").is_file()


def test_while_a_file_converts_another_thread_reads_gguf_files_afresh(tmp_path, tokenizer, monkeypatch):
    """The shared reader belongs to the converting thread: another thread's reader of the same file is its own (a
    file rewritten meanwhile is read as it is now)."""
    import threading

    import gguf

    from modelpress import gguf as mgguf

    path = write_llama_gguf(_source_model(tokenizer, False), tokenizer, tmp_path / "tiny.gguf", "F32")
    readers = []
    with mgguf._read_once():
        readers += [gguf.GGUFReader(path), gguf.GGUFReader(str(path))]
        other = threading.Thread(target=lambda: readers.append(gguf.GGUFReader(path)))
        other.start()
        other.join()
    assert readers[0] is readers[1] and readers[2] is not readers[0]
    assert isinstance(gguf.GGUFReader(path), gguf.GGUFReader)  # the class itself again
