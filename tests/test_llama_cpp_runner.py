"""GGUF models answered by llama.cpp itself (`modelpress.llama_cpp_runner`): evaluation and `generate`.

A tiny Llama with a SmolLM2-style tokenizer and chat template is exported to an f32 GGUF file by GgufExport; llama.cpp
(llama-cpp-python, which `make test` installs) must then answer and score it as PyTorch does on the source model,
reuse a shared prompt prefix without changing an answer, and grow its context for a long prompt. Without
llama-cpp-python a GGUF model is answered in PyTorch on its dequantized weights, and the run says so.
"""

from __future__ import annotations

import json
import logging

import pytest

from test_gguf import hf_model
from test_gguf_export import _fields
from test_gguf_hf import bpe_tokenizer, export, needs_llama_cpp, save, sentencepiece_tokenizer

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
SYSTEM = "You answer with one word, the tone of the phrase."
PHRASES = ["what a lovely day at the beach", "the storm scared me half to death", "I miss my old friends",
           "no way, they won the cup again", "quiet morning with coffee", "the exam results came back at last",
           "the dog ran off into the night", "twelve 12345 numbers, 3.14 and more"]
TRAINED_CONTEXT = 1024
LONG_TOKEN = "=" * 40  # longer than llama-cpp-python's 32-byte piece buffer


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(the source folder, the exported GGUF file, the tokenizer): a tiny Llama whose tokenizer has special chat
    tokens and a ChatML template, exported at f32."""
    root = tmp_path_factory.mktemp("llama-cpp-runner")
    tokenizer = bpe_tokenizer("smollm")
    tokenizer = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, bos_token="<s>",
                                    eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.add_tokens([LONG_TOKEN])
    tokenizer.chat_template = CHATML
    model = hf_model(tokenizer, "llama", True, max_position_embeddings=TRAINED_CONTEXT)
    source = save(model, tokenizer, root / "model")
    return source, export(root, source), tokenizer


def _prompt(tokenizer, phrase: str) -> str:
    return tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": phrase}],
                                         tokenize=False, add_generation_prompt=True)


def _examples(tokenizer, completions: list[str]):
    from modelpress.data import Example

    return [Example(prompt=_prompt(tokenizer, p), completion=c, source=f"row {i}", target=c + "<|im_end|>\n")
            for i, (p, c) in enumerate(zip(PHRASES, completions))]


def _runners(source, written):
    from modelpress.llama_cpp_runner import LlamaCppRunner
    from modelpress.models import ModelRef
    from modelpress.runners import TorchRunner

    return LlamaCppRunner(written), TorchRunner(ModelRef("hf", str(source), "source"))


def _clear_answers(torch_runner, prompts: list[str], steps: int) -> list[bool]:
    """Whether PyTorch's greedy answer to each prompt is clear of near ties: at each of its steps the top two logits
    differ by more than 1% of the largest one (where two kernels' rounding cannot choose otherwise)."""
    clear = []
    for prompt in prompts:
        ids = torch_runner._ids(prompt, False)
        ok = True
        for _ in range(steps):
            with torch.no_grad():
                logits = torch_runner.model(torch.tensor([ids])).logits[0, -1].float()
            top = logits.topk(2).values
            ok &= bool(top[0] - top[1] > 0.01 * logits.abs().max())
            ids = ids + [int(logits.argmax())]
        clear.append(ok)
    return clear


@needs_llama_cpp
def test_llama_cpp_answers_and_scores_as_pytorch_on_the_source_model(exported):
    """The tokens of a chat prompt (its special turn markers read as tokens), the greedy answers and the completion
    loss llama.cpp gives on the f32 export are PyTorch's on the Hugging Face model it came from."""
    source, written, tokenizer = exported
    ours, theirs = _runners(source, written)
    prompts = [_prompt(tokenizer, p) for p in PHRASES]
    for prompt in prompts:
        assert ours._plain_ids(prompt) == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ours.end_ids >= {tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    ours.add_stops({"<|im_end|>"})
    theirs.add_stops({"<|im_end|>"})
    answers, expected = ours.generate_batch(prompts, False, 6), theirs.generate_batch(prompts, False, 6)
    clear = _clear_answers(theirs, prompts, 6)
    assert sum(clear) >= 4, clear  # most answers are clear of near ties, so the comparison means something
    for a, b, is_clear in zip(answers, expected, clear):
        if is_clear:
            assert a == b
    assert all(count >= 1 for _, count in answers)
    examples = _examples(tokenizer, ["joy", "fear", "sadness", "surprise", "joy", "surprise", "fear", "joy"])
    loss, reference = ours.completion_loss(examples, False), theirs.completion_loss(examples, False)
    assert loss == pytest.approx(reference, rel=2e-3)
    assert ours.token_count("surprise") == len(tokenizer("surprise", add_special_tokens=False)["input_ids"])
    assert ours.runtime().startswith("llama.cpp (llama_cpp_python 0.") and ours.max_batch == 1


@needs_llama_cpp
def test_a_shared_prompt_prefix_is_reused_without_changing_answers_or_loss(exported):
    """Answers computed from the cache of the prompt before (the system prompt is not computed again) are those of
    each whole prompt alone; the loss taken from an answer's own steps, where the answer follows the completion,
    is the loss of the completion evaluated after the prompt."""
    source, written, tokenizer = exported
    ours, theirs = _runners(source, written)
    prompts = [_prompt(tokenizer, p) for p in PHRASES]
    clear = _clear_answers(theirs, prompts, 5)  # a reused prefix computes in other batch shapes: near ties may flip
    assert sum(clear) >= 4, clear
    batched = ours.generate_batch(prompts, False, 5)
    assert ours.shared_prefix_tokens > 10 * (len(prompts) - 1)
    alone = [ours.generate(p, False, 5) for p in prompts]
    assert [a for a, ok in zip(batched, clear) if ok] == [a for a, ok in zip(alone, clear) if ok]
    # completions a random model's answers: their first character and then a word it did not answer, and words it
    # did not answer at all (each scored after the prompt, where the answer no longer follows it)
    mixed = [t for t, _ in batched[:3]] + [t[:1] + " zebra" for t, _ in batched[3:5]] + ["zebra", "quiet", "joy"]
    examples = _examples(tokenizer, mixed)
    answers, total, count = ours.generate_scored(examples, False, 5)
    assert answers == batched
    assert total / count == pytest.approx(ours.completion_loss(examples, False), rel=1e-4)
    assert count == sum(len(ours._pair(ex, False)[1]) for ex in examples)
    # a completion that is the answer's own tokens and one more is scored from the answer's steps, which needs one
    # evaluation (the last token's), and gives the loss of the completion evaluated after the prompt
    for prompt in prompts[:4]:
        head = ours._ids(prompt, False)
        new, _, logits = ours._greedy(head, 5, reuse=True, reserve=6)
        tail = new + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
        evaluated = []
        real_eval, real_rows = ours._llm.eval, ours._eval_rows
        ours._llm.eval = lambda tokens: (evaluated.extend(tokens), real_eval(tokens))[1]
        ours._eval_rows = lambda tokens: (evaluated.extend(tokens), real_rows(tokens))[1]
        from_steps = ours._tail_nll(head, tail, new, logits)
        ours._llm.eval = real_eval
        del ours._eval_rows
        assert len(evaluated) == max(0, len(tail) - len(logits)) and len(new) >= 2
        after_prompt = ours._tail_nll(head, tail, [], [ours._prompt(head, len(tail), reuse=False)])
        assert from_steps == pytest.approx(after_prompt, rel=1e-5)


@needs_llama_cpp
def test_the_context_grows_for_a_long_prompt_and_stops_at_the_trained_one(exported):
    """A prompt longer than the first context opens a larger one (its answer as from a fresh runner); an answer is
    cut where the training context ends, and a prompt past it is refused with what to do."""
    from modelpress.errors import ModelpressError
    from modelpress.llama_cpp_runner import CONTEXT_STEP, LlamaCppRunner

    source, written, tokenizer = exported
    ours = LlamaCppRunner(written)
    short = _prompt(tokenizer, PHRASES[0])
    ours.generate_batch([short], False, 4)
    text = " ".join(PHRASES * 8)
    long = _prompt(tokenizer, text[:len(text) // 2])
    size = len(ours._ids(long, False))
    assert CONTEXT_STEP < size < TRAINED_CONTEXT - 8
    first = ours.generate_batch([long], False, 4)
    assert ours._context >= size + 4
    assert first == [LlamaCppRunner(written).generate(long, False, 4)]
    cut = len(text)
    while len(ours._ids(_prompt(tokenizer, text[:cut]), False)) > TRAINED_CONTEXT - 3:
        cut -= 1
    near_end = _prompt(tokenizer, text[:cut])
    room = TRAINED_CONTEXT - len(ours._ids(near_end, False))
    assert 0 < room < 8
    ours.prepare([near_end], False, 8)  # what evaluation calls before timing: the context grows now
    assert ours._context == TRAINED_CONTEXT
    opened = ours._llm
    answer, count = ours.generate(near_end, False, 8)
    assert ours._llm is opened and count <= room
    assert ours.generate_batch([near_end], False, 8) == [(answer, count)]
    with pytest.raises(ModelpressError, match=r"does not fit model.gguf's training context of 1024 tokens"):
        ours.generate(_prompt(tokenizer, text), False, 4)


def _tone_workflow(tmp_path, source) -> dict:
    rows = [{"phrase": p, "tone": t} for p, t in zip(PHRASES, ["joy", "fear", "sadness", "surprise"] * 2)]
    (tmp_path / "tone.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"input_model": {"type": "HfModel", "model_path": str(source)},
            "data_configs": [{"name": "tone",
                              "load_dataset_config": {"data_name": "json",
                                                      "data_files": [str(tmp_path / "tone.jsonl")]},
                              "pre_process_data_config": {"chat_template": True,
                                                          "chat_columns": {"user": "{phrase}", "assistant": "{tone}"},
                                                          "system_prompt": SYSTEM}}],
            "passes": {"gguf": {"type": "GgufExport", "outtype": "q8_0"}},
            "evaluation": {"data_config": "tone", "max_new_tokens": 3, "latency_samples": 3},
            "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")}


@needs_llama_cpp
def test_a_run_measures_its_gguf_output_in_llama_cpp_and_says_when_it_cannot(tmp_path, exported, monkeypatch,
                                                                              caplog):
    """A run's GGUF output is measured by llama.cpp, and the result and report say so; without llama-cpp-python
    the same run measures it again (the cached llama.cpp numbers are not reused) in PyTorch on the dequantized
    weights, with a warning, and the report says that."""
    from modelpress.config import normalize
    from modelpress.engine import run_workflow
    from modelpress.llama_cpp_runner import LlamaCppRunner

    source, _, tokenizer = exported
    raw = _tone_workflow(tmp_path, source)
    run_workflow(normalize(raw, tmp_path), show_progress=False)
    final = json.loads((tmp_path / "out" / "metrics.json").read_text())["models"]["final"]
    assert final["model_kind"] == "gguf" and final["runtime"].startswith("llama.cpp (llama_cpp_python")
    assert final["batch_size"] == 1 and final["examples"] == 8 and final["latency_ms"]["p50"] > 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["models"]["input"]["runtime"].startswith(
        "PyTorch ")
    written = tmp_path / "out" / "model" / "model.gguf"
    runner = LlamaCppRunner(written)
    runner.add_stops({"<|im_end|>"})
    prompts = [_prompt(tokenizer, p) for p in PHRASES]
    first = final["samples"][0]
    assert first["output"] == runner.generate(first["prompt"], False, 3)[0].split("<|im_end|>")[0]
    assert first["prompt"] in prompts
    assert "answered by llama.cpp" in (tmp_path / "out" / "report.html").read_text()

    monkeypatch.setattr("modelpress.llama_cpp_runner.llama_cpp_installed", lambda: False)
    monkeypatch.setattr("modelpress.runtime.library_version",
                        _without("llama_cpp", __import__("modelpress.runtime").runtime.library_version))
    from modelpress.runners import _say_dequantized

    _say_dequantized.cache_clear()
    with caplog.at_level(logging.WARNING, logger="modelpress"):
        run_workflow(normalize(raw, tmp_path), show_progress=False)
    history = json.loads((tmp_path / "out" / "run_history.json").read_text())["steps"]
    assert [s["cache"] for s in history if s["pass"] == "evaluate final"] == ["miss"]
    final = json.loads((tmp_path / "out" / "metrics.json").read_text())["models"]["final"]
    assert final["runtime"].startswith("PyTorch ")
    assert final["runtime"].endswith("on the GGUF file's weights dequantized")
    assert "llama-cpp-python is not installed" in caplog.text
    assert "a gguf model is measured in PyTorch" in (tmp_path / "out" / "report.html").read_text()


def _without(name: str, version_of):
    return lambda package: "missing" if package == name else version_of(package)


@needs_llama_cpp
def test_generate_streams_a_gguf_model_s_answer_from_llama_cpp(tmp_path, exported, monkeypatch):
    """`modelpress generate` on a GGUF folder answers through llama.cpp: with the prompt its card records (the
    evaluation's answer), through the chat template the file carries when no card says how prompts were built,
    or as given (--raw); without llama-cpp-python it says how to get it."""
    from modelpress.config import normalize
    from modelpress.engine import run_workflow
    from modelpress.errors import ModelpressError
    from modelpress.generate import generate
    from modelpress.llama_cpp_runner import LlamaCppRunner

    source, _, tokenizer = exported
    raw = _tone_workflow(tmp_path, source)
    raw["evaluation"] = {"enabled": False}
    run_workflow(normalize(raw, tmp_path), show_progress=False)
    folder = tmp_path / "out" / "model"
    runner = LlamaCppRunner(folder / "model.gguf")
    runner.add_stops({"<|im_end|>"})
    expected = runner.generate(_prompt(tokenizer, PHRASES[1]), False, 5)[0].split("<|im_end|>")[0]
    assert "".join(generate(folder, PHRASES[1], max_new_tokens=5)) == expected

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.gguf").symlink_to(folder / "model.gguf")
    user_turn = tokenizer.apply_chat_template([{"role": "user", "content": PHRASES[1]}], tokenize=False,
                                              add_generation_prompt=True)
    bare_answer = runner.generate(user_turn, False, 5)[0].split("<|im_end|>")[0]
    assert bare_answer != expected
    assert "".join(generate(bare, PHRASES[1], max_new_tokens=5)) == bare_answer  # the file's own ChatML template
    plain = runner.generate("the storm", False, 5)[0]
    assert "".join(generate(bare, "the storm", max_new_tokens=5, raw=True)) == plain

    with pytest.raises(ModelpressError, match=r"a GGUF model, which takes no adapter here"):
        "".join(generate(folder, PHRASES[1], use_adapter=False))
    monkeypatch.setattr("modelpress.llama_cpp_runner.llama_cpp_installed", lambda: False)
    with pytest.raises(ModelpressError, match=r"needs llama-cpp-python .*llama-cli -m"):
        "".join(generate(folder, PHRASES[1]))


@needs_llama_cpp
def test_a_token_longer_than_32_bytes_and_a_character_split_across_tokens_decode_whole(exported, tmp_path_factory):
    """A piece longer than llama-cpp-python's own 32-byte buffer is decoded whole; a character whose UTF-8 bytes
    are several byte-fallback tokens (a SentencePiece vocabulary) is streamed once, whole."""
    from modelpress.llama_cpp_runner import LlamaCppRunner

    _, written, tokenizer = exported
    ours = LlamaCppRunner(written)
    long_id = tokenizer.convert_tokens_to_ids(LONG_TOKEN)
    assert ours._plain_ids(LONG_TOKEN) == [long_id]
    assert ours.decode([long_id]) == LONG_TOKEN and "".join(ours.pieces([long_id])) == LONG_TOKEN

    spm = sentencepiece_tokenizer(str(tmp_path_factory.getbasetemp() / "spm"))
    root = tmp_path_factory.mktemp("spm-export")
    runner = LlamaCppRunner(export(root, save(hf_model(spm, "llama", False), spm, root / "model")))
    ids = spm("Ω🦊 ok", add_special_tokens=False)["input_ids"]
    assert len(ids) > 4  # byte fallback: several tokens for each of the two characters
    pieces = list(runner.pieces(ids))
    assert not any("\ufffd" in piece for piece in pieces)
    # SentencePiece's word marker before the first token is a space in llama.cpp's pieces; transformers drops it
    assert "".join(pieces) == " " + spm.decode(ids)


@needs_llama_cpp
@pytest.mark.parametrize("style", ["sentencepiece-bos", "qwen2-no-bos"])
def test_the_bos_training_put_first_is_the_one_llama_cpp_is_given(tmp_path_factory, style):
    """With the data config's special tokens on, a prompt starts with the BOS training put there: Llama 2's <s>;
    for a Qwen2-style tokenizer, which names no BOS while config.json has a bos_token_id (so the file has one, as
    llama.cpp's converter writes it too), none. The loss is then PyTorch's on the source model."""
    from modelpress.models import ModelRef
    from modelpress.runners import TorchRunner, make_runner

    root = tmp_path_factory.mktemp(style)
    if style == "sentencepiece-bos":
        tokenizer = sentencepiece_tokenizer(str(tmp_path_factory.getbasetemp() / "spm"))
        model = hf_model(tokenizer, "llama", False)
    else:
        base = bpe_tokenizer("qwen2")
        tokenizer = base.__class__(tokenizer_object=base.backend_tokenizer, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
        assert tokenizer.bos_token is None
        model = hf_model(tokenizer, "qwen2", True, bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    source = save(model, tokenizer, root / "model")
    written = export(root, source)
    file_bos = _fields(written).get("tokenizer.ggml.bos_token_id")
    ours, theirs = make_runner(ModelRef.load(written.parent)), TorchRunner(ModelRef("hf", str(source), "source"))
    prompt = "### Text: " + PHRASES[0] + "\n### Tone:\n"
    assert ours._ids(prompt, True) == theirs._ids(prompt, True)
    if style == "sentencepiece-bos":
        assert ours._ids(prompt, True)[0] == tokenizer.bos_token_id == file_bos
    else:
        assert file_bos is not None and ours._ids(prompt, True) == ours._ids(prompt, False)
    from modelpress.data import Example

    examples = [Example(prompt="### Text: " + p + "\n### Tone:\n", completion="joy", source="row", target="joy\n")
                for p in PHRASES]
    assert ours.completion_loss(examples, True) == pytest.approx(theirs.completion_loss(examples, True), rel=2e-3)



def test_a_llama_cpp_python_that_does_not_load_is_a_clear_error(monkeypatch, tmp_path):
    """llama-cpp-python installed but not loadable here (a library built for another CPU) is an error that says
    what to do, not a traceback, and not a silent switch to PyTorch under llama.cpp's cache key."""
    import sys

    from modelpress.errors import ModelpressError
    from modelpress.llama_cpp_runner import LlamaCppRunner

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # importing it raises ImportError
    with pytest.raises(ModelpressError, match=r"llama-cpp-python is installed but cannot be loaded .*reinstall"):
        LlamaCppRunner(tmp_path / "model.gguf")


@needs_llama_cpp
def test_lm_eval_requests_on_a_gguf_model_are_answered_by_llama_cpp_as_hflm_answers_the_source(exported, tmp_path):
    """An LMEvaluator on a GGUF output runs in llama.cpp (LlamaCppLM): loglikelihood, greedy flags, rolling
    loglikelihood and generate_until as lm-eval's own HFLM gives them on the Hugging Face model the f32 file came
    from; a task's choices reuse their shared context; local tasks score alike."""
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM
    from test_lmeval import _instances, write_tasks

    from modelpress.config.evaluator_schema import EvaluatorConfig
    from modelpress.lmeval import llama_cpp_lm_class, make_lm, run_tasks
    from modelpress.models import ModelRef, load_for_inference

    source, written, tokenizer = exported
    model, hf_tokenizer = load_for_inference(ModelRef("hf", source, "source"))
    hf = HFLM(pretrained=model, tokenizer=hf_tokenizer, batch_size=4, device="cpu")
    ref = ModelRef("gguf", written.parent, "gguf")
    settings = EvaluatorConfig(type="LMEvaluator", tasks=["tone_choice", "tone_generate"],
                               include_path=write_tasks(tmp_path / "tasks"), bootstrap_iters=0, batch_size=4)
    ours = make_lm(ref, settings)
    assert isinstance(ours, llama_cpp_lm_class())
    pairs = [("Phrase: I won the lottery!\nTone:", " joy"), ("Phrase: I won the lottery!\nTone:", " fear"),
             ("The little", " boy smiled"), ("", "hello there")]
    for (e_logp, e_greedy), (g_logp, g_greedy) in zip(hf.loglikelihood(_instances("loglikelihood", pairs)),
                                                      ours.loglikelihood(_instances("loglikelihood", pairs))):
        assert g_logp == pytest.approx(e_logp, rel=1e-4, abs=1e-3) and g_greedy == e_greedy  # the larger bound
    assert ours.runner.shared_prefix_tokens > 5  # the second choice reused the first one's context
    # a document longer than the model's context (1024 tokens): windows of the whole context, in several batches
    rolling = _instances("loglikelihood_rolling", [("the quick brown fox jumps over the lazy dog " * 3,),
                                                   (" ".join(PHRASES) * 30,)])
    assert len(tokenizer(rolling[1].args[0])["input_ids"]) > 2 * TRAINED_CONTEXT
    assert ours.max_length == TRAINED_CONTEXT
    for mine, theirs in zip(ours.loglikelihood_rolling(rolling), hf.loglikelihood_rolling(rolling)):
        assert mine == pytest.approx(theirs, rel=1e-4)
    texts = [("Once upon a time there was", {"until": ["\n"], "max_gen_toks": 6}),
             ("Phrase: I lost my keys.\nTone:", {"until": [".", "\n"], "max_gen_toks": 5})]
    assert ours.generate_until(_instances("generate_until", texts)) == hf.generate_until(
        _instances("generate_until", texts))
    assert run_tasks(ref, settings.tasks, settings) == pytest.approx(
        run_tasks(ModelRef("hf", source, "source"), settings.tasks, settings))


def test_the_report_says_which_gguf_models_llama_cpp_answered_and_which_pytorch_did():
    """Each runtime gets its own note: a run whose GGUF models ran in llama.cpp on one machine and in PyTorch on
    another (a Ray node without llama-cpp-python) does not label both alike."""
    from modelpress.report import gguf_note

    llama = {"model_kind": "gguf", "runtime": "llama.cpp (llama_cpp_python 0.3.36), 2 threads"}
    torch_ = {"model_kind": "gguf", "runtime": "PyTorch 2.13.0, on the GGUF file's weights dequantized"}
    assert "answered by llama.cpp" in gguf_note({"a": llama}, " ") and "PyTorch" not in gguf_note({"a": llama}, " ")
    assert "measured in PyTorch" in gguf_note({"a": torch_}, " ") and "llama.cpp's" in gguf_note({"a": torch_}, " ")
    both = gguf_note({"a": llama, "b": torch_}, "\n")
    assert "answered by llama.cpp" in both and "another gguf model is measured in PyTorch" in both
    assert gguf_note({"a": {"model_kind": "hf", "runtime": "PyTorch 2.13.0"}}, " ") == ""
