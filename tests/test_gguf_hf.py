"""GgufExport of a model that never was a GGUF file: a Hugging Face folder written as llama.cpp's converter would.

What the file must do is what llama.cpp does with it: tokenize a text as the Hugging Face tokenizer does (the
pre-tokenizer name, merges, special tokens and BOS must all be right) and compute the source model's logits (tensor
names, the Q/K layout, the shape keys and RoPE scaling). llama.cpp itself (llama-cpp-python, which `make test`
installs) answers both. Each tokenizer is trained here on whole lines, so its merges cross the boundaries that the
pre-tokenizer under test draws (digits, contractions, spaces): a wrong pre-tokenizer name gives other tokens.
"""

from __future__ import annotations

import functools
import importlib.util
import json

import numpy as np
import pytest

from test_gguf import LAYERS, _logits, hf_model
from test_gguf_export import _fields

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed (it compiles llama.cpp from source)")

TEXT = ("The quick brown fox, 12345 jumps! I'LL say it's 3.14159...\n\n  \tHello   world  ünïcode 日本語 "
        "a1b22c333 don't WE'VE <|endoftext|>  end Ω🦊")  # the last two in no training line: bytes
EXTRA_LINES = ["12345 67890 3.14159 2024-12-07 a1b22c333 x99", "I'LL don't WE'VE it's they'd you're",
               "Hello   world\n\n  \tnew lines and  spaces", "ünïcode 日本語 punctuation!!! ??? ..."]


def _pre_tokenizer(name: str):
    from tokenizers import Regex, pre_tokenizers

    from modelpress.passes.gguf_hf import LLAMA3_SPLIT, QWEN2_SPLIT

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    split = {"llama-bpe": LLAMA3_SPLIT, "qwen2": QWEN2_SPLIT}.get(name)
    if split:
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if name == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    assert name == "gpt-2"
    return byte_level


@functools.lru_cache(maxsize=None)
def bpe_tokenizer(pre: str, add_bos: bool = False):
    """A byte-level BPE tokenizer trained on whole lines (merges across words, digits and punctuation), then given
    the pre-tokenizer `pre` names in llama.cpp (and Llama 3's ignore_merges, and BOS added, where asked)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from modelpress.passes.gguf_hf import PRE_TOKENIZERS
    from modelpress.tiny import SPECIAL_TOKENS, default_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    lines = [line for line in default_corpus().splitlines() if line.strip()] + EXTRA_LINES * 20
    tok.train_from_iterator(lines, trainers.BpeTrainer(
        vocab_size=700, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.pre_tokenizer = _pre_tokenizer(pre)
    tok.model.ignore_merges = PRE_TOKENIZERS[pre][1]
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", 1)])
        assert tok.token_to_id("<s>") == 1
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<unk>")


@functools.lru_cache(maxsize=None)
def sentencepiece_tokenizer(folder: str):
    """A SentencePiece BPE model with byte fallback (as Llama 2's, Mistral's and Phi-3's), trained here, read by
    transformers from its tokenizer.model as a Hub folder of those models is (its tokenizer.json written from it)."""
    spm = pytest.importorskip("sentencepiece")
    from pathlib import Path

    from transformers import AutoTokenizer

    from modelpress.tiny import default_corpus

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    lines = [line for line in default_corpus().splitlines() if line.strip()] + EXTRA_LINES * 20
    (root / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(root / "corpus.txt"), model_prefix=str(root / "tokenizer"),
                                   vocab_size=500, model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    (root / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True}))
    tokenizer = AutoTokenizer.from_pretrained(root)
    assert tokenizer("Hello")["input_ids"][1:] == spm.SentencePieceProcessor(
        model_file=str(root / "tokenizer.model")).encode("Hello")  # transformers reads it as SentencePiece does
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@functools.lru_cache(maxsize=None)
def gemma_tokenizer(folder: str):
    """Gemma's tokenizer (transformers' GemmaTokenizer: BPE with byte fallback, spaces made "▁" by the normalizer, no
    space put before the text, a split at spaces that then splits nothing, BOS added) over the vocabulary and merges
    of `sentencepiece_tokenizer`."""
    from transformers import GemmaTokenizer

    model = json.loads(sentencepiece_tokenizer(folder).backend_tokenizer.to_str())["model"]
    return GemmaTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], unk_token="<unk>",
                          bos_token="<s>", eos_token="</s>", pad_token="</s>", mask_token="<unk>", add_bos_token=True)


def save(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def export(tmp_path, source, passes: dict | None = None, outtype: str = "f32"):
    from modelpress.config import normalize
    from modelpress.engine import run_workflow

    raw = {"input_model": {"type": "HfModel", "model_path": str(source)},
           "passes": {**(passes or {}), "gguf": {"type": "GgufExport", "outtype": outtype}},
           "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")}
    run_workflow(normalize(raw, tmp_path), show_progress=False)
    return tmp_path / "out" / "model" / "model.gguf"


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
CASES = {  # id: (architecture, pre-tokenizer (sentencepiece: llama.cpp's 'llama' model), BOS added, tied, RoPE
    #          scaling, passes before GgufExport)
    "llama2": ("llama", "sentencepiece", True, False, None, {}),
    "phi3-mini": ("phi3", "sentencepiece", True, False, None, {}),
    "llama3": ("llama", "llama-bpe", True, False, LLAMA3_ROPE, {}),
    "llama-linear-rope": ("llama", "gpt-2", False, False, {"rope_type": "linear", "factor": 2.0}, {}),
    "smollm2": ("llama", "smollm", False, True, None, {}),
    "qwen2": ("qwen2", "qwen2", False, True, None, {}),
    "qwen3": ("qwen3", "qwen2", False, True, None, {}),
    "phi3": ("phi3", "gpt-2", False, False, None, {}),
    "llama-codes-q4_1": ("llama", "gpt-2", False, False, None,
                         {"rtn": {"type": "Rtn", "bits": 4, "sym": False, "group_size": 32}}),
    "mistral": ("mistral", "sentencepiece", True, False, None, {}),
    "llama-head-dim": ("llama", "gpt-2", False, False, None, {}),       # heads of 32, not hidden / heads (16)
    "phi3-partial-rotary": ("phi3", "gpt-2", False, False, None, {}),  # RoPE on half of each head
    # a sliding window shorter than TEXT, a full-attention layer where llama.cpp's default pattern has none (its
    # pattern written), and, in the second, the sliding layers' own RoPE base and linear scaling on the full ones
    "gemma3": ("gemma3", "gemma", True, True, None, {}),
    "gemma3-rope": ("gemma3", "gemma", True, True, {"rope_type": "linear", "factor": 2.0}, {}),
    # its attention and final logits soft-capped (caps low enough to bite on a random model), 3 layers: its
    # alternating pattern, and a window shorter than TEXT
    "gemma2": ("gemma2", "gemma", True, True, None, {}),
}
EXTRA = {"llama-head-dim": {"head_dim": 32}, "phi3-partial-rotary": {"rope_parameters": {"partial_rotary_factor": 0.5}},
         "gemma3": {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]},
         "gemma3-rope": {"sliding_window": 8, "sliding_theta": 20000.0, "num_hidden_layers": 6},
         "gemma2": {"sliding_window": 8, "num_hidden_layers": 3, "attn_logit_softcapping": 2.0,
                    "final_logit_softcapping": 3.0}}


@needs_llama_cpp
@pytest.mark.parametrize("case", list(CASES))
def test_llama_cpp_tokenizes_and_computes_as_the_hugging_face_model(tmp_path, tmp_path_factory, case):
    """llama.cpp reads the export of each architecture, tokenizer and RoPE scaling as the Hugging Face tokenizer
    and model compute: the same token ids (BOS included where the tokenizer adds it) and logits."""
    from llama_cpp import Llama

    arch, pre, add_bos, tie, rope, passes = CASES[case]
    if pre == "gemma":
        tokenizer = gemma_tokenizer(str(tmp_path_factory.getbasetemp() / "spm"))
    elif pre == "sentencepiece":
        tokenizer = sentencepiece_tokenizer(str(tmp_path_factory.getbasetemp() / "spm"))
        assert json.loads(tokenizer.backend_tokenizer.to_str())["model"]["byte_fallback"]
    else:
        tokenizer = bpe_tokenizer(pre, add_bos)
    model = hf_model(tokenizer, arch, tie, rope, **EXTRA.get(case, {}))
    written = export(tmp_path, save(model, tokenizer, tmp_path / "model"), passes)
    assert not list((tmp_path / "model").glob("*.model"))  # transformers saves tokenizer.json alone
    fields = _fields(written)
    spm = pre in ("sentencepiece", "gemma")
    assert fields["tokenizer.ggml.model"] == ("llama" if spm else "gpt2")
    assert fields["tokenizer.ggml.pre"] == ("default" if spm else pre)
    assert fields["tokenizer.ggml.add_bos_token"] is add_bos
    if spm:  # Llama 2's tokenizer puts "▁" before the text; Gemma's does not
        assert fields["tokenizer.ggml.add_space_prefix"] is (pre == "sentencepiece")
    if arch == "gemma3":
        assert ("gemma3.attention.sliding_window_pattern" in fields) is (case == "gemma3")
        assert fields.get("gemma3.rope.freq_base_swa") == (20000.0 if case == "gemma3-rope" else None)
    types, kinds = fields["tokenizer.ggml.token_type"], gguf.TokenType
    if spm:  # <unk>, <s>, </s> (added, special), then the 256 byte tokens
        assert types[:4] == [kinds.CONTROL] * 3 + [kinds.BYTE] and types.count(kinds.BYTE) == 256
    else:
        assert types[tokenizer.convert_tokens_to_ids("<|endoftext|>")] == kinds.CONTROL
    assert ("rope_freqs.weight" in {t.name for t in gguf.GGUFReader(str(written)).tensors}) == bool(
        rope and rope["rope_type"] == "llama3")
    llm = Llama(model_path=str(written), n_ctx=128, n_threads=2, verbose=False, logits_all=True)
    ids = tokenizer(TEXT)["input_ids"]
    assert llm.tokenize(TEXT.encode(), add_bos=True, special=True) == ids
    assert len(ids) < 0.7 * len(TEXT.encode())  # merges were used
    assert llm.detokenize(ids).decode() == tokenizer.decode(ids, skip_special_tokens=True)
    llm.eval(ids)
    theirs = torch.tensor(np.array(llm.scores[: len(ids)]))
    if passes:  # a quantized checkpoint: its own weights, as transformers reads them back from the file
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(written.parent, gguf_file=written.name, dtype=torch.float32)
    ours = _logits(model.eval(), ids)
    error = (theirs - ours).abs().max().item() / ours.abs().max().item()
    # Q4_1 dot products take 8-bit activations in llama.cpp; its GELU (Gemma's) reads a float16 table of values
    # (ggml's GGML_GELU_FP16): measured 0.005 with 2 layers, 0.011 with 6, against 0.1-0.5 with a wrong RoPE base
    assert error < (0.05 if passes else 0.02 if arch.startswith("gemma") else 3e-3), error
    assert (theirs.argmax(-1) == ours.argmax(-1)).float().mean() > 0.9


@needs_llama_cpp
def test_phi3_longrope_is_read_by_llama_cpp_as_transformers_computes_it(tmp_path):
    """Phi-3's longrope (Phi-3 128k, Phi-3.5), with the attention factor transformers computes: within the original
    context both use the short factors; past it, the long ones. (llama.cpp chooses by its context size, which it
    rounds up to 256 tokens, transformers by the sequence's length: here a context of 256 holds the first case.)"""
    import math

    from llama_cpp import Llama

    tokenizer = bpe_tokenizer("gpt-2")
    rope = {"rope_type": "longrope", "long_factor": [1.0 + i for i in range(8)],
            "short_factor": [1.0 + i / 8 for i in range(8)], "original_max_position_embeddings": 256}
    model = hf_model(tokenizer, "phi3", False, rope, original_max_position_embeddings=256,
                     max_position_embeddings=1024)
    written = export(tmp_path, save(model, tokenizer, tmp_path / "model"))
    fields = _fields(written)
    assert fields["phi3.rope.scaling.attn_factor"] == pytest.approx(math.sqrt(1 + math.log(4) / math.log(256)))
    assert fields["phi3.rope.scaling.original_context_length"] == 256 and fields["phi3.context_length"] == 1024
    ids = tokenizer(" ".join([TEXT] * 8))["input_ids"]
    assert len(ids) > 300
    for length, n_ctx in ((200, 256), (300, 512)):  # within the original context, then past it
        llm = Llama(model_path=str(written), n_ctx=n_ctx, n_threads=2, verbose=False, logits_all=True)
        llm.eval(ids[:length])
        theirs = torch.tensor(np.array(llm.scores[:length]))
        ours = _logits(model, ids[:length])
        assert (theirs - ours).abs().max().item() / ours.abs().max().item() < 3e-3, length
    short, long = _logits(model, ids[:200]), _logits(model, ids[:300])[:200]
    assert (short - long).abs().max() > 0.1  # the two sets of factors give other logits


@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_each_pre_tokenizer_is_told_apart(pre):
    """The four pre-tokenizers split the test text differently (so the llama.cpp test above can tell a wrong name),
    and each is named from its tokenizer.json alone."""
    from modelpress.passes.gguf_hf import pre_tokenizer_name

    spec = json.loads(bpe_tokenizer(pre).backend_tokenizer.to_str())
    assert pre_tokenizer_name(spec) == pre
    ids = {name: bpe_tokenizer(name)(TEXT)["input_ids"] for name in ("gpt-2", "smollm", "llama-bpe", "qwen2")}
    assert sum(other == ids[pre] for other in ids.values()) == 1


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"])
def test_transformers_reads_the_export_back_to_the_source_logits(tmp_path, arch):
    """Without llama.cpp: transformers' GGUF reader gives back the source model's logits (f32), and the file holds
    each weight once (a tied head as the embedding)."""
    from transformers import AutoModelForCausalLM

    tokenizer = bpe_tokenizer("gpt-2")
    tie = arch in ("qwen2", "qwen3", "gemma2", "gemma3")
    # Gemma: heads of 256, every small Gemma's attention scale, which transformers' GGUF reader assumes
    model = hf_model(tokenizer, arch, tie, **({"sliding_window": 8, "head_dim": 256} if "gemma" in arch else {}))
    written = export(tmp_path, save(model, tokenizer, tmp_path / "model"))
    names = {t.name for t in gguf.GGUFReader(str(written)).tensors}
    assert ("output.weight" in names) is not tie and "token_embd.weight" in names
    read = AutoModelForCausalLM.from_pretrained(written.parent, gguf_file=written.name, dtype=torch.float32).eval()
    ids = tokenizer(TEXT)["input_ids"]
    assert torch.allclose(_logits(read, ids), _logits(model, ids), atol=1e-4, rtol=0)
    fields = _fields(written)
    assert fields[f"{arch}.block_count"] == LAYERS and fields["general.name"] == "model"
    assert len(fields["tokenizer.ggml.tokens"]) == len(tokenizer)


def test_ids_without_a_token_are_written_as_unused(tmp_path):
    """A config whose vocab_size exceeds the tokenizer's (embeddings padded for speed, as Qwen's are) gets an unused
    [PAD<id>] token for every id the tokenizer lacks, as llama.cpp's converter writes them."""
    tokenizer = bpe_tokenizer("qwen2")
    model = hf_model(tokenizer, "qwen2", True)
    model.resize_token_embeddings(len(tokenizer) + 12)
    written = export(tmp_path, save(model, tokenizer, tmp_path / "model"))
    fields = _fields(written)
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == len(tokenizer) + 12 and tokens[-1] == f"[PAD{len(tokenizer) + 11}]"
    assert types[-12:] == [gguf.TokenType.UNUSED] * 12 and types[0] == gguf.TokenType.CONTROL
    history = json.loads((tmp_path / "out" / "run_history.json").read_text())
    notes = next(s["notes"] for s in history["steps"] if s["type"] == "GgufExport")
    assert any("12 ids under the config's vocab_size" in n for n in notes), notes


def _with_tokenizer_json(folder, change) -> None:
    path = folder / "tokenizer.json"
    spec = json.loads(path.read_text())
    change(spec)
    path.write_text(json.dumps(spec))


@pytest.mark.parametrize("change, message", [
    (lambda s: s["model"].update(type="Unigram"), r"byte-level BPE tokenizers.*this one is Unigram"),
    (lambda s: s["pre_tokenizer"].update(add_prefix_space=True), r"knows gpt-2, smollm.*add_prefix_space"),
    (lambda s: s.update(normalizer={"type": "Lowercase"}), r"normalizer \['Lowercase'\] changes the text"),
    (lambda s: s["model"].update(merges=[]), r"no merges"),
], ids=["unigram", "unknown-pre-tokenizer", "lowercase", "no-merges"])
def test_a_tokenizer_llama_cpp_would_read_otherwise_is_refused(tmp_path, change, message):
    """Refused when the config is read (the input folder's tokenizer.json), or, for what only the gguf package
    reads (merges), when the pass runs; either way before anything is written, naming the file."""
    from modelpress.errors import ModelpressError

    tokenizer = bpe_tokenizer("gpt-2")
    folder = save(hf_model(tokenizer, "llama", False), tokenizer, tmp_path / "model")
    _with_tokenizer_json(folder, change)
    with pytest.raises(ModelpressError, match=r"tokenizer\.json.*" + message + r".*convert_hf_to_gguf\.py"):
        export(tmp_path, folder)


def test_a_sentencepiece_normalizer_beyond_its_spaces_is_refused(tmp_path_factory):
    from modelpress.errors import ModelpressError
    from modelpress.passes.gguf_hf import _tokenizer_kind

    tokenizer = sentencepiece_tokenizer(str(tmp_path_factory.getbasetemp() / "spm"))
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    assert _tokenizer_kind(spec, "tokenizer.json") == ("llama", "default")
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    assert _tokenizer_kind(spec, "tokenizer.json") == ("llama", "default")  # Llama 2's own normalizer
    spec["normalizer"]["normalizers"].append({"type": "NFKC"})
    with pytest.raises(ModelpressError, match=r"normalizer \['NFKC'\] changes the text beyond SentencePiece"):
        _tokenizer_kind(spec, "tokenizer.json")
    spec["normalizer"]["normalizers"].pop()
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [spec["pre_tokenizer"],
                                                                   {"type": "Digits", "individual_digits": True}]}
    with pytest.raises(ModelpressError, match=r"pre-tokenizer \['Digits'\] splits the text before BPE"):
        _tokenizer_kind(spec, "tokenizer.json")


# The pre_tokenizer and model flags of the released tokenizer.json files (as the models' Hub repositories have them),
# written out here rather than built from modelpress's own constants
LLAMA3_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
RELEASED = {
    "gpt-2": ({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}, False),
    "smollm": ({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}, False),
    "llama-bpe": ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}, True),
    "qwen2": ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX.replace("\\p{N}{1,3}", "\\p{N}")}, "behavior": "Isolated",
         "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}, False),
}


@pytest.mark.parametrize("name", list(RELEASED))
def test_the_released_tokenizers_pre_tokenizers_are_named(name):
    """GPT-2's, SmolLM2's, Llama 3's and Qwen2.5's pre_tokenizer (Qwen's with its NFC normalizer) get llama.cpp's
    names for them; Llama 3's split without its ignore_merges is another tokenizer, refused."""
    from modelpress.errors import ModelpressError
    from modelpress.passes.gguf_hf import _tokenizer_kind

    pre, ignore_merges = RELEASED[name]
    spec = {"model": {"type": "BPE", "ignore_merges": ignore_merges}, "decoder": {"type": "ByteLevel"},
            "pre_tokenizer": pre, "normalizer": {"type": "NFC"} if name == "qwen2" else None}
    assert _tokenizer_kind(json.loads(json.dumps(spec)), "tokenizer.json") == ("gpt2", name)
    if name == "llama-bpe":
        spec["model"]["ignore_merges"] = False
        with pytest.raises(ModelpressError, match="ignore_merges|knows gpt-2"):
            _tokenizer_kind(spec, "tokenizer.json")


def test_rope_scaling_llama_cpp_lacks_is_refused_when_the_config_is_read(tmp_path):
    from modelpress.errors import ConfigError

    tokenizer = bpe_tokenizer("gpt-2")
    model = hf_model(tokenizer, "llama", False, {"rope_type": "yarn", "factor": 2.0,
                                                 "original_max_position_embeddings": 128})
    with pytest.raises(ConfigError, match=r"passes\.gguf\.type.*config\.json.*rope_type is 'yarn'.*"
                                          r"convert_hf_to_gguf\.py"):
        export(tmp_path, save(model, tokenizer, tmp_path / "model"))


def test_more_tokens_than_the_embedding_has_rows_is_refused(tmp_path):
    """A token added to the tokenizer without resizing the embedding (llama.cpp would not load the file): refused
    when the config is read, and by the pass (for a Hub model, read only then)."""
    from modelpress.errors import ConfigError, ModelpressError
    from modelpress.passes.gguf_hf import _tokenizer

    tokenizer = bpe_tokenizer("gpt-2")
    folder = save(hf_model(tokenizer, "llama", False), tokenizer, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": len(tokenizer) - 1}))
    message = rf"token ids up to {len(tokenizer) - 1}.*vocab_size is {len(tokenizer) - 1}.*resize_token_embeddings"
    with pytest.raises(ConfigError, match=r"passes\.gguf\.type.*tokenizer\.json has " + message):
        export(tmp_path, folder)
    with pytest.raises(ModelpressError, match=message):
        _tokenizer(folder, len(tokenizer) - 1, gguf)


def test_rotary_buffers_an_old_checkpoint_saved_are_left_out(tmp_path):
    """A checkpoint that stored each layer's rotary inv_freq buffer (older transformers did) exports without them,
    as llama.cpp's converter leaves them out; written, they would be tensors llama.cpp does not expect."""
    from safetensors.torch import load_file, save_file

    tokenizer = bpe_tokenizer("gpt-2")
    folder = save(hf_model(tokenizer, "llama", False), tokenizer, tmp_path / "model")
    state = load_file(folder / "model.safetensors")
    for i in range(LAYERS):
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    written = export(tmp_path, folder)
    names = {t.name for t in gguf.GGUFReader(str(written)).tensors}
    assert not any("rot" in n for n in names) and f"blk.{LAYERS - 1}.attn_q.weight" in names


def test_token_types_follow_llama_cpp_s_converter(tmp_path):
    """An added token marked special, or looking special (<|...|>) though not marked, is CONTROL; another added
    token is USER_DEFINED, with SentencePiece's space as a space; the BOS and EOS of a base vocabulary (no added
    token) are CONTROL, as llama.cpp reads special tokens."""
    from modelpress.passes.gguf_hf import _tokenizer

    tokenizer = bpe_tokenizer("gpt-2")
    folder = save(hf_model(tokenizer, "llama", False), tokenizer, tmp_path / "model")
    n = len(tokenizer)

    def change(spec):
        flags = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False}
        spec["added_tokens"] += [{"id": n, "content": "<|im_start|>", "special": False, **flags},
                                 {"id": n + 1, "content": "<｜User｜>", "special": False, **flags},
                                 {"id": n + 2, "content": "\u2581hello", "special": False, **flags},
                                 {"id": n + 3, "content": "<s>x", "special": False, **flags}]
    _with_tokenizer_json(folder, change)
    keys, _ = _tokenizer(folder, n + 4, gguf)
    tokens, types = keys["tokenizer.ggml.tokens"], keys["tokenizer.ggml.token_type"]
    assert types[n:] == [gguf.TokenType.CONTROL] * 2 + [gguf.TokenType.USER_DEFINED] * 2
    assert tokens[n + 2] == " hello"
    spm_folder = tmp_path / "spm"
    spm = sentencepiece_tokenizer(str(tmp_path / "spm-train"))
    spm.save_pretrained(spm_folder)
    _with_tokenizer_json(spm_folder, lambda spec: spec.update(added_tokens=[]))
    (spm_folder / "config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))  # as a model's has
    keys, _ = _tokenizer(spm_folder, len(spm), gguf)
    assert keys["tokenizer.ggml.token_type"][1:3] == [gguf.TokenType.CONTROL] * 2  # <s>, </s> of the base vocab
    assert keys["tokenizer.ggml.token_type"][3] == gguf.TokenType.BYTE


def test_a_list_of_named_chat_templates_is_written_as_such(tmp_path):
    """A tokenizer with named chat templates (a default and a tool-use one) gets the default as the file's chat
    template and the other under its name, cleaned as the gguf package's writer cleans it ("tool-use": tool_use)."""
    tokenizer = bpe_tokenizer("gpt-2")
    folder = save(hf_model(tokenizer, "llama", False), tokenizer, tmp_path / "model")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "default", "template": "{{ messages[0]['content'] }}"},
                               {"name": "tool-use", "template": "{{ tools }}"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in folder.glob("chat_template*"):
        extra.unlink()
    fields = _fields(export(tmp_path, folder))
    assert fields["tokenizer.chat_template"] == "{{ messages[0]['content'] }}"
    assert fields["tokenizer.chat_template.tool_use"] == "{{ tools }}"
    assert fields["tokenizer.chat_templates"] == ["tool_use"]


def test_a_model_type_it_does_not_write_is_refused_when_the_config_is_read(tmp_path):
    """A Hugging Face input of a model_type GgufExport does not write is a config error, before any pass runs; a
    Ray host is refused only for a GGUF input (whose file its workers are not given)."""
    from modelpress.config import normalize
    from modelpress.errors import ConfigError

    tokenizer = bpe_tokenizer("gpt-2")
    folder = save(hf_model(tokenizer, "qwen2", True), tokenizer, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    raw = {"input_model": {"type": "HfModel", "model_path": str(folder)},
           "passes": {"gguf": {"type": "GgufExport"}}, "output_dir": str(tmp_path / "out")}
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ConfigError, match=r"passes\.gguf\.type.*model_type llama, mistral.*'gpt2'"):
        normalize(raw, tmp_path)
    (folder / "config.json").write_text(json.dumps(config))
    raw.update(systems={"cluster": {"type": "Ray"}}, host="cluster")
    assert normalize(raw, tmp_path).passes[0].type == "GgufExport"


@pytest.mark.parametrize("metaspace, prefix", [({"prepend_scheme": "first"}, True),
                                              ({"prepend_scheme": "never"}, False),
                                              ({"add_prefix_space": False}, False), ({"add_prefix_space": True}, True)])
def test_a_sentencepiece_space_prefix_is_read_from_either_metaspace_spelling(metaspace, prefix):
    """tokenizers writes prepend_scheme; files written before it have add_prefix_space."""
    from modelpress.passes.gguf_hf import _sentencepiece_prefix

    spec = {"pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", **metaspace}}
    assert _sentencepiece_prefix(spec) is prefix


def test_the_config_check_reads_the_folder_s_files_without_raising(tmp_path):
    """unwritten_folder answers (reason, fix) for each problem, and None for a writable folder: Phi-3's older
    RoPE names (su, read by transformers as longrope), an input that is already a quantized checkpoint where
    GgufExport reads it, a missing tokenizer.json (re-save it), a value of another shape (no traceback)."""
    from modelpress.passes.gguf_hf import unwritten_folder

    tokenizer = bpe_tokenizer("gpt-2")
    folder = save(hf_model(tokenizer, "phi3", False), tokenizer, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    assert unwritten_folder(folder) is None

    def with_config(**changes):
        (folder / "config.json").write_text(json.dumps({**config, **changes}))

    with_config(rope_parameters=None, rope_scaling={"type": "su", "long_factor": [1.0] * 8, "short_factor": [1.0] * 8})
    assert unwritten_folder(folder) is None
    with_config(rope_parameters=None, rope_scaling={"type": "dynamic", "factor": 2.0})
    assert "rope_type is 'dynamic'" in unwritten_folder(folder)[0]
    with_config(quantization_config={"quant_method": "gptq"})
    assert unwritten_folder(folder) is None
    why, fix = unwritten_folder(folder, first=True)
    assert "quantization_config" in why and "Gptq or Rtn before GgufExport" in fix
    with_config(rope_parameters={"rope_type": ["x"]})
    why, fix = unwritten_folder(folder)
    assert "unexpected shape" in why and "save_pretrained" in fix
    with_config()
    (folder / "tokenizer.json").unlink()
    why, fix = unwritten_folder(folder)
    assert "no tokenizer.json" in why and "save_pretrained(folder)" in fix
    (folder / "config.json").write_text("{")
    assert "not readable JSON" in unwritten_folder(folder)[0]


@needs_llama_cpp
def test_k_quants_are_made_by_llama_cpp_s_own_quantizer(tmp_path):
    """outtype q4_k_m: an f16 export quantized by llama.cpp (llama-cpp-python's llama_model_quantize), with its
    Q4_K_M mixture (Q6_K for some matrices) on rows of 256 values; llama.cpp computes the file's logits as
    transformers reads them back, and only model.gguf is left in the output."""
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    tokenizer = bpe_tokenizer("gpt-2")
    model = hf_model(tokenizer, "llama", False, hidden_size=256, intermediate_size=512)
    written = export(tmp_path, save(model, tokenizer, tmp_path / "model"), outtype="q4_k_m")
    assert sorted(p.name for p in written.parent.iterdir()) == ["model.gguf", "modelpress_model.json"]
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(written)).tensors}
    assert {"Q4_K", "Q6_K", "F32"} <= types, types
    assert _fields(written)["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_K_M
    history = json.loads((tmp_path / "out" / "run_history.json").read_text())
    notes = next(s["notes"] for s in history["steps"] if s["type"] == "GgufExport")
    assert any("quantized to Q4_K_M by llama.cpp's quantizer" in n for n in notes), notes
    assert any("tensors Q4_K" in n for n in notes), notes
    ids = tokenizer(TEXT)["input_ids"]
    llm = Llama(model_path=str(written), n_ctx=128, n_threads=2, verbose=False, logits_all=True)
    llm.eval(ids)
    theirs = torch.tensor(np.array(llm.scores[: len(ids)]))
    read = AutoModelForCausalLM.from_pretrained(written.parent, gguf_file=written.name, dtype=torch.float32).eval()
    ours = _logits(read, ids)
    # llama.cpp multiplies K-quant blocks with 8-bit activations (Q8_K): measured 0.069 of the largest logit here,
    # 0.064 for q6_k and 0.046 for the gguf package's q4_1 on this model, against 0.56 between Q4_K_M and float
    assert (theirs - ours).abs().max().item() / ours.abs().max().item() < 0.1
    assert (theirs.argmax(-1) == ours.argmax(-1)).float().mean() > 0.85


def test_k_quants_are_refused_where_llama_cpp_cannot_make_them(tmp_path, monkeypatch):
    """When the config is read: a K-quant of a quantized checkpoint (its codes are kept, and llama.cpp quantizes
    float weights), or without llama-cpp-python."""
    import importlib.util

    from modelpress.config import normalize
    from modelpress.errors import ConfigError

    tokenizer = bpe_tokenizer("gpt-2")
    folder = save(hf_model(tokenizer, "llama", False), tokenizer, tmp_path / "model")
    raw = {"input_model": {"type": "HfModel", "model_path": str(folder)},
           "passes": {"rtn": {"type": "Rtn", "bits": 4, "group_size": 32},
                      "gguf": {"type": "GgufExport", "outtype": "q4_k_m"}}, "output_dir": str(tmp_path / "out")}
    with pytest.raises(ConfigError, match=r"passes\.gguf\.outtype.*'rtn' gives a quantized checkpoint.*Use outtype "
                                          r"q8_0"):
        normalize(raw, tmp_path)
    del raw["passes"]["rtn"]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(ConfigError, match=r"passes\.gguf\.outtype.*llama-cpp-python is not installed.*pip install"):
        normalize(raw, tmp_path)


def test_a_model_named_by_hub_id_is_exported_from_its_cached_snapshot(tmp_path, monkeypatch):
    """A Hub model (here from a local Hugging Face cache the test builds, offline) is exported from its snapshot,
    and the file is named after its id."""
    from huggingface_hub import constants

    from hub_cache import add_repo, folder_files
    from modelpress.config import normalize
    from modelpress.engine import run_workflow

    tokenizer = bpe_tokenizer("qwen2")
    folder = save(hf_model(tokenizer, "qwen2", True), tokenizer, tmp_path / "model")
    add_repo(tmp_path / "hub", "acme/tiny-qwen2", folder_files(folder), "3" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    raw = {"input_model": {"type": "HfModel", "model_path": "acme/tiny-qwen2"},
           "passes": {"gguf": {"type": "GgufExport", "outtype": "q8_0"}},
           "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")}
    run_workflow(normalize(raw, tmp_path), show_progress=False)
    fields = _fields(tmp_path / "out" / "model" / "model.gguf")
    assert fields["general.name"] == "acme/tiny-qwen2" and fields["tokenizer.ggml.pre"] == "qwen2"
    assert fields["general.architecture"] == "qwen2" and fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0

