"""What modelpress reads from an onnxruntime-genai folder to run it as training and evaluation expect: the pad
id batches use, the threads it computes on (within a Ray task's reservation), the BOS id a prompt starts with."""

from __future__ import annotations

import json
from pathlib import Path

from modelpress.genai_folder import free_pad_id, trained_bos


def _genai_folder(folder: Path, pad: int, template: str) -> Path:
    folder.mkdir()
    (folder / "genai_config.json").write_text(json.dumps(
        {"model": {"bos_token_id": 1, "eos_token_id": [2], "pad_token_id": pad, "vocab_size": 5}}))
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<file_sep>", "<not in vocab>"]
    (folder / "tokenizer.json").write_text(json.dumps(
        {"added_tokens": [{"id": i, "content": text, "special": True} for i, text in enumerate(specials)]
         + [{"id": 9, "content": "<not special>", "special": False}]}))
    (folder / "chat_template.jinja").write_text(template)
    return folder


def test_genai_pads_with_a_special_token_the_chat_template_never_writes(tmp_path):
    chat = "{{ '<|im_start|>' + message['content'] + '<|im_end|>' }}"
    # SmolLM2 pads with its turn end, which every chat prompt holds: the highest unused special token instead
    assert free_pad_id(_genai_folder(tmp_path / "a", 2, chat)) == 4
    assert free_pad_id(_genai_folder(tmp_path / "b", 0, chat)) == 0  # its own pad is free: kept
    # the template writes every spare special token: nothing better, so the pad stays (prompts then run alone)
    full = chat + "<|endoftext|><repo_name><file_sep>"
    assert free_pad_id(_genai_folder(tmp_path / "c", 2, full)) == 2


def test_genai_models_run_on_every_usable_core_unless_their_config_names_a_thread_count(tmp_path):
    import os

    from modelpress.genai_folder import genai_threads

    folder = _genai_folder(tmp_path / "a", 2, "")
    cores = len(os.sched_getaffinity(0))
    assert genai_threads(folder) == {"decoder": {"session_options": {"intra_op_num_threads": cores}}}
    config = json.loads((folder / "genai_config.json").read_text())
    config["model"]["decoder"] = {"session_options": {"intra_op_num_threads": 1}}
    (folder / "genai_config.json").write_text(json.dumps(config))
    assert genai_threads(folder) == {}  # the user's choice is kept


def test_a_thread_limit_reaches_torch_onnxruntime_and_genai_sessions_and_caps_a_models_own_count(
        tmp_path, monkeypatch):
    """A Ray task reserves CPUs that Ray does not pin: its sessions must not start a thread per core of the node,
    nor more threads than it reserved where a model's genai_config.json or a tuned ort_session.json names a count."""
    import onnxruntime as ort
    import torch

    from modelpress import runtime
    from modelpress.genai_folder import genai_threads, loss_session_options
    from modelpress.onnx_model import SESSION_FILE, SessionSettings, apply_settings, quiet_options, session_options
    from modelpress.passes.onnx_passes import candidates
    from modelpress.passes.onnx_specs import OrtSessionParamsTuningParams

    folder = _genai_folder(tmp_path / "a", 2, "")
    own = _genai_folder(tmp_path / "own", 2, "")
    config = json.loads((own / "genai_config.json").read_text())
    config["model"]["decoder"] = {"session_options": {"intra_op_num_threads": 3}}
    (own / "genai_config.json").write_text(json.dumps(config))
    tuned = tmp_path / "tuned"
    tuned.mkdir()

    def saved(intra, inter=0, mode="sequential"):
        (tuned / SESSION_FILE).write_text(json.dumps({"session_options": {
            "intra_op_num_threads": intra, "inter_op_num_threads": inter, "execution_mode": mode}}))
        options = session_options(tuned)
        return options.intra_op_num_threads, options.inter_op_num_threads

    # without a limit every count is the model's own, as before
    assert runtime.thread_limit() is None and session_options(tmp_path).intra_op_num_threads == 0
    assert saved(2, 3, "parallel") == (2, 3) and genai_threads(own) == {}
    assert loss_session_options(own).intra_op_num_threads == 3 and loss_session_options(folder).intra_op_num_threads == 0
    monkeypatch.setattr(runtime, "_thread_limit", None)  # restored after the test
    before = torch.get_num_threads()
    try:
        runtime.limit_threads(1)
        assert torch.get_num_threads() == 1 and runtime.compute_threads() == 1
        assert genai_threads(folder) == {"decoder": {"session_options": {"intra_op_num_threads": 1}}}
        assert genai_threads(own) == {"decoder": {"session_options": {"intra_op_num_threads": 1}}}
        assert quiet_options().intra_op_num_threads == 1
        assert [loss_session_options(f).intra_op_num_threads for f in (folder, own)] == [1, 1]  # genai loss session
        assert session_options(tmp_path).intra_op_num_threads == 1  # a plain ONNX model, no ort_session.json
        # a tuned count (0: onnxruntime's choice, a thread per core) is capped, inter-op threads too
        assert saved(0) == (1, 1) and saved(2, 4, "parallel") == (1, 1)
        # OrtSessionParamsTuning times what will run, and by default only counts the task may use
        assert apply_settings(ort.SessionOptions(), SessionSettings(intra_op_num_threads=2)).intra_op_num_threads == 1
        assert {c.intra_op_num_threads for c in candidates(OrtSessionParamsTuningParams())} == {1}
    finally:
        torch.set_num_threads(before)


def test_a_prompt_starts_with_the_bos_the_tokenizer_names_not_the_one_genai_copies_from_config_json(tmp_path):
    """Qwen2's tokenizer has no BOS (training adds none), yet the genai builder writes config.json's bos_token_id."""
    folder = _genai_folder(tmp_path / "a", 2, "")
    ids = {"<s>": [7], "<|endoftext|>": [0], "two tokens": [3, 4]}
    encode = ids.__getitem__
    assert trained_bos(tmp_path / "none", encode, 1) == 1  # no tokenizer config: genai's
    assert trained_bos(tmp_path / "none", encode, -1) is None
    config = folder / "tokenizer_config.json"
    for named, expected in ((None, None), ("<s>", 7), ({"content": "<|endoftext|>"}, 0), ("two tokens", 1)):
        config.write_text(json.dumps({"bos_token": named, "eos_token": "<|endoftext|>"}))
        assert trained_bos(folder, encode, 1) == expected, named
    config.write_text(json.dumps({"eos_token": "<|endoftext|>"}))  # transformers 4 kept it in another file
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": {"content": "<s>"}}))
    assert trained_bos(folder, encode, 1) == 7


def test_a_genai_folder_that_names_a_native_library_is_refused_before_onnxruntime_genai_opens_it(tmp_path):
    """onnxruntime-genai loads a session's custom_ops_library: a downloaded folder could run its own code through
    `generate` or `evaluate`, which modelpress never does unasked."""
    import pytest

    from modelpress.errors import ModelpressError
    from modelpress.genai_folder import open_model

    folder = _genai_folder(tmp_path / "a", 2, "")
    config = json.loads((folder / "genai_config.json").read_text())
    config["model"]["decoder"] = {"session_options": {"custom_ops_library": "libops.so", "provider_options": []}}
    (folder / "genai_config.json").write_text(json.dumps(config))

    class NeverOpened:
        def Config(self, path):  # noqa: N802 (onnxruntime-genai's name)
            raise AssertionError("the folder was handed to onnxruntime-genai")

    with pytest.raises(ModelpressError, match=r"names a native library to load \(custom_ops_library: libops.so\)"):
        open_model(NeverOpened(), folder)


def test_an_export_of_a_model_modelpress_trained_keeps_how_it_was_prompted(tiny_model, tmp_path):
    """`modelpress export` (or quantize without data) of a fine-tuned model wrote a card with no template: the input
    folder's own card was never read, so `generate` sent the raw text and `evaluate` refused the folder."""
    import shutil

    from conftest import tone_workflow
    from modelpress.config.normalize import normalize
    from modelpress.engine import run_workflow
    from modelpress.generate import prompt_and_stop
    from modelpress.models import MODEL_CARD, ModelRef
    from modelpress.passes.catalog import HF

    template = "### Text: {phrase}\n### The tone is:\n{tone}"
    trained = tmp_path / "trained"
    shutil.copytree(tiny_model, trained)
    ModelRef(HF, trained, id="t", task={"task": "text-generation", "text_template": template, "add_bos": True,
                                        "data_config": "tone"}).save()
    raw = tone_workflow(trained, {"b": {"type": "ModelBuilder", "precision": "int4"}},
                        evaluation={"enabled": False}, output_dir=str(tmp_path / "out"),
                        cache_dir=str(tmp_path / "cache"))
    raw.pop("data_configs")
    run_workflow(normalize(raw, tmp_path), show_progress=False)
    card = json.loads((tmp_path / "out" / "model" / MODEL_CARD).read_text())
    assert card["task"]["text_template"] == template and card["task"]["add_bos"] is True
    assert prompt_and_stop(card, "We won!") == ("### Text: We won!\n### The tone is:\n", "")
