"""Batched evaluation: the same answers as one prompt at a time; answers cut at their stop text;
latency timed at batch 1 on a stated sample."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest

from modelpress.data import Example
from modelpress.evaluate import batches, cut_at_stop, evaluate, latency_picks, predict
from modelpress.models import ModelRef
from modelpress.passes.catalog import HF
from modelpress.prompt_cache import left_pad, right_pad
from modelpress.runner_base import Runner
from modelpress.runners import until_eos
from modelpress.scoring import loss_batches
from conftest import TONE_DATA

MAX_NEW = 8


def test_cut_at_stop_keeps_the_answer_before_the_closing_text():
    assert cut_at_stop("joy<|end|>\n<|user|>fear", "<|end|>") == "joy"
    assert cut_at_stop("joy\nfear", "") == "joy\nfear"
    assert cut_at_stop("joy", "<|end|>") == "joy"


def test_a_label_that_holds_its_closing_text_is_read_whole():
    """A template "A: {a}." with the label "3.5": the answer was cut at its first "." to "3" and counted wrong, and
    "." ended generation inside the label."""
    assert cut_at_stop("3.5.\nQ: next", ".", "3.5") == "3.5" and cut_at_stop("3.5", ".", "3.5") == "3.5"
    assert cut_at_stop("3.25.", ".", "3.5") == "3" and cut_at_stop("3.", ".", "3.5") == "3"  # others: the first stop
    assert cut_at_stop("3.5x.", ".", "3.5") == "3"  # the label, then other text: wrong, as for any other label
    from modelpress.evaluate import generation_stops

    rows = [Example("q", "3.5", "row 1", target="3.5."), Example("q", "4", "row 2", target="4."),
            Example("q", "joy", "row 3", target="joy<|end|>")]
    assert generation_stops(rows) == {"<|end|>"}  # "." would end an answer inside "3.5"


def test_a_stop_ends_generation_as_the_model_writes_it_after_an_answer():
    """A SentencePiece tokenizer encodes "." alone as "▁.", which a model never writes right after "joy": generation
    ran on to max_new_tokens, and latency timed tokens past the answer. The token "." becomes after a word ends it."""
    from modelpress.answer_ends import Ends

    vocab = {"▁.": 1, ".": 2, "▁a": 3, "▁joy": 4, "<|end|>": 5, "▁3": 6, "5": 7}

    class SentencePieceLike(Ends):  # a word marker before the first piece, as Llama 2's and Phi-3's tokenizers
        end_ids, eos_id = {0}, 0

        def _plain_ids(self, text):
            pieces = [p for p in text.replace("<|end|>", " <|end|> ").replace(".", " . ").split(" ") if p]
            return [vocab[p if p in ("<|end|>", ".") and i else "▁" + p if p != "<|end|>" else p]
                    for i, p in enumerate(pieces)]

    ends = SentencePieceLike()
    assert ends._plain_ids(".") == [1] and ends._plain_ids("joy.") == [4, 2]  # alone, and after a word
    ends.add_stops({".", "<|end|>"})
    assert ends.end_ids == {0, 1, 2, 5}


def test_padding_puts_every_row_at_one_width_with_masks_off_on_padding():
    ids, mask = left_pad([[5, 6, 7], [8]], pad=0)
    assert ids == [[5, 6, 7], [0, 0, 8]] and mask == [[1, 1, 1], [0, 0, 1]]
    assert right_pad([[5, 6, 7], [8]], pad=0) == [[5, 6, 7], [8, 0, 0]]


def test_until_eos_cuts_a_finished_row_where_it_would_have_stopped_alone():
    assert until_eos([4, 5, 0, 0, 0], {0}) == ([4, 5], 3)
    assert until_eos([4, 5, 6], {0}) == ([4, 5, 6], 3)


def test_batches_cover_every_example_once_shortest_prompts_first():
    examples = [Example("x" * n, "joy", f"row {n}") for n in (5, 1, 4, 2, 3)]
    groups = batches(examples, 2)
    assert groups == [[1, 3], [4, 2], [0]]


def test_latency_sample_spreads_over_the_examples():
    assert latency_picks(10, 4) == [0, 2, 5, 7]
    assert latency_picks(10, 64) == list(range(10))


class EchoRunner(Runner):
    """Answers each prompt with its own text and a chat end marker; records the batch sizes asked for."""

    library = "torch"

    def __init__(self):
        self.calls: list[int] = []
        self.stops: set[str] = set()
        self.prepared: list[tuple[int, list[str]]] = []  # (calls made before, the prompts about to be timed)

    def prepare(self, prompts, add_bos, max_new_tokens):
        self.prepared.append((len(self.calls), prompts))

    def add_stops(self, texts):
        self.stops |= texts

    def generate_batch(self, prompts, add_bos, max_new_tokens):
        self.calls.append(len(prompts))
        return [(p + "<|end|>\nnoise", 3) for p in prompts]

    def generate(self, prompt, add_bos, max_new_tokens):
        return self.generate_batch([prompt], add_bos, max_new_tokens)[0]

    def completion_loss(self, examples, add_bos):
        return 1.0

    def token_count(self, text):
        return len(text.split())  # a word a token


def test_evaluate_cuts_answers_at_the_stop_text_and_times_a_stated_sample(monkeypatch, tmp_path):
    runner = EchoRunner()
    monkeypatch.setattr("modelpress.evaluate.make_runner", lambda ref, trust: runner)
    labels = ["joy", "fear", "sadness"] * 10
    examples = [Example(label, label, f"row {i}", target=label + "<|end|>") for i, label in enumerate(labels)]
    assert examples[0].stop == "<|end|>"
    result = evaluate(ModelRef(HF, tmp_path, id="x"), examples, False, MAX_NEW, with_accuracy=True,
                      show_progress=False, batch_size=8, latency_samples=5)
    assert result["accuracy"] == 1.0  # without the cut, "joy<|end|>" would not match "joy"
    assert runner.stops == {"<|end|>"}  # told to the runner, which ends generation there when it is one token
    assert result["samples"][0]["output"] == "joy"
    assert result["latency_examples"] == 5 and result["examples"] == 30
    assert runner.calls[:4] == [8, 8, 8, 6]  # accuracy in batches, then latency one at a time
    assert set(runner.calls[4:]) == {1} and len(runner.calls[4:]) == 5 + 2  # 2 untimed warm-up answers
    # before any timed answer, the runner sets up for the timed prompts (llama.cpp sizes its context)
    assert runner.prepared == [(4, [examples[i].prompt for i in (0, 6, 12, 18, 24)])]
    assert result["runtime"].startswith("PyTorch ") and result["batch_size"] == 8
    assert (result["latency_warmup"], result["max_new_tokens"], result["mean_new_tokens"]) == (2, MAX_NEW, 3)
    assert result["labels_over_max_new_tokens"] == 0
    assert result["batch1_agreement"] == {"compared": 5, "same": 5}


def test_an_untimed_evaluation_answers_in_batches_only(monkeypatch, tmp_path):
    """An extra data config's evaluation (latency_samples 0) times nothing: no answer at batch 1, no latency."""
    runner = EchoRunner()
    monkeypatch.setattr("modelpress.evaluate.make_runner", lambda ref, trust: runner)
    examples = [Example(label, label, f"row {i}", target=label + "<|end|>") for i, label in enumerate(["joy"] * 10)]
    result = evaluate(ModelRef(HF, tmp_path, id="x"), examples, False, MAX_NEW, with_accuracy=True,
                      show_progress=False, batch_size=8, latency_samples=0)
    assert runner.calls == [8, 2] and runner.prepared == [] and result["accuracy"] == 1.0
    assert result["latency_examples"] == 0 and result["latency_ms"] is None and result["tokens_per_second"] is None
    assert "batch1_agreement" not in result


def test_answers_at_batch_1_that_differ_from_the_batched_ones_are_counted_and_said(monkeypatch, tmp_path, caplog):
    class Drifting(EchoRunner):  # as int4 kernels may round at batch 1 against a batch
        def generate(self, prompt, add_bos, max_new_tokens):
            return ("sadness<|end|>", 1) if prompt == "row 3" else super().generate(prompt, add_bos, max_new_tokens)

    monkeypatch.setattr("modelpress.evaluate.make_runner", lambda ref, trust: Drifting())
    examples = [Example(f"row {i}", "joy", f"row {i}", target="joy<|end|>") for i in range(8)]
    with caplog.at_level("WARNING", logger="modelpress"):
        result = evaluate(ModelRef(HF, tmp_path, id="x"), examples, False, MAX_NEW, with_accuracy=True,
                          show_progress=False, latency_samples=4)  # times rows 0, 2, 4, 6
    assert result["batch1_agreement"] == {"compared": 4, "same": 4}
    result = evaluate(ModelRef(HF, tmp_path, id="x"), examples, False, MAX_NEW, with_accuracy=True,
                      show_progress=False, latency_samples=8)
    assert result["batch1_agreement"] == {"compared": 8, "same": 7}
    assert "1 of the 8 answers timed at batch 1 differ from the batched answers" in caplog.text


def test_a_label_of_several_lines_or_over_max_new_tokens_is_not_half_matched(monkeypatch, tmp_path, caplog):
    """A two-line label matched by its first line alone counted wrong answers right; a label longer than an answer
    may be can never be matched, which is counted and said."""
    runner = EchoRunner()  # answers with the prompt's text
    monkeypatch.setattr("modelpress.evaluate.make_runner", lambda ref, trust: runner)
    long_label = " ".join(["word"] * (MAX_NEW + 1))
    examples = [Example(prompt, label, where, target=label + "<|end|>") for prompt, label, where in (
        ("ok\nyes", "ok\nyes", "right"), ("ok\nno", "ok\nyes", "half right"), (long_label, long_label, "too long"))]
    with caplog.at_level("WARNING", logger="modelpress"):
        result = evaluate(ModelRef(HF, tmp_path, id="x"), examples, False, MAX_NEW, with_accuracy=True,
                          show_progress=False, latency_samples=2)
    assert result["misses_total"] == 1 and result["misses"][0]["source"] == "half right"
    assert result["labels_over_max_new_tokens"] == 1
    assert f"1 of 3 rows have a label longer than max_new_tokens ({MAX_NEW})" in caplog.text


def test_evaluate_without_labels_answers_only_the_examples_it_shows(monkeypatch, tmp_path):
    runner = EchoRunner()
    monkeypatch.setattr("modelpress.evaluate.make_runner", lambda ref, trust: runner)
    examples = [Example(f"text {i}", "", f"row {i}") for i in range(30)]
    result = evaluate(ModelRef(HF, tmp_path, id="x"), examples, False, MAX_NEW, with_accuracy=False,
                      show_progress=False, batch_size=8, latency_samples=3)
    assert runner.calls[0] == 5 and len(result["samples"]) == 5 and "accuracy" not in result
    assert result["latency_examples"] == 3


# Batched generation against one prompt at a time, on the tiny Phi-3 (e2e: it loads and builds models).

@pytest.fixture(scope="module")
def tone_examples() -> list[Example]:
    """96 of the example's prompts: their lengths vary, so batches are padded."""
    rows = [json.loads(line) for line in TONE_DATA.read_text().splitlines()[:96]]
    return [Example(f"### Text: {r['phrase']}\n### The tone is:\n", r["tone"], f"row {i}")
            for i, r in enumerate(rows)]


@pytest.fixture(scope="module")
def eos_model(tiny_model, tone_examples, tmp_path_factory) -> Path:
    """The tiny Phi-3 made to end some answers early: its end-of-sequence row of the output layer is a
    copy (x1.05) of the token it generates most, so a batch mixes rows that finish at different steps."""
    import torch
    from safetensors.torch import load_file, save_file

    from modelpress.runners import TorchRunner

    runner = TorchRunner(ModelRef(HF, tiny_model, id="tiny"))
    common = Counter()
    for ex in tone_examples[:16]:
        ids = torch.tensor([runner._ids(ex.prompt, True)])
        with torch.inference_mode():
            out = runner.model.generate(input_ids=ids, max_new_tokens=MAX_NEW, do_sample=False,
                                        eos_token_id=runner.tokenizer.eos_token_id, pad_token_id=runner.pad)
        common.update(out[0, ids.shape[1]:].tolist())
    folder = tmp_path_factory.mktemp("eos") / "tiny-phi3"
    shutil.copytree(tiny_model, folder)
    weights = load_file(str(folder / "model.safetensors"))
    head = weights["lm_head.weight"]
    head[runner.tokenizer.eos_token_id] = head[common.most_common(1)[0][0]] * 1.05
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_loss_batches_group_short_sequences_under_a_token_budget():
    lengths = [30, 5, 600, 10, 3000, 20]
    groups = loss_batches(lengths, size=2, tokens=1200)
    assert groups == [[1, 3], [5, 0], [2], [4]]  # shortest first, 2 at most; 3000 > 1200 alone
    assert loss_batches([600, 600, 601], size=4, tokens=1200) == [[0, 1], [2]]  # 2 x 600 fits, 3 x 601 not
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))


def test_batched_completion_loss_equals_one_sequence_at_a_time(tiny_model, tone_examples):
    from modelpress.runners import TorchRunner

    runner = TorchRunner(ModelRef(HF, tiny_model, id="tiny"))
    examples = tone_examples[:40]
    assert len({len(runner._ids(ex.prompt, True)) for ex in examples}) > 3  # batches hold padding
    alone = runner.completion_loss(examples, True, batch_size=1)
    batched = runner.completion_loss(examples, True)
    assert batched == pytest.approx(alone, rel=1e-5)
    plain = [Example("", f"{ex.prompt}{ex.completion}", ex.source) for ex in examples[:8]]  # no prompt: text scored
    assert runner.completion_loss(plain, False) == pytest.approx(runner.completion_loss(plain, False, batch_size=1),
                                                                 rel=1e-5)


def _answers_batched_and_alone(runner, examples: list[Example]) -> tuple[list, list]:
    alone = [runner.generate(ex.prompt, True, MAX_NEW) for ex in examples]
    batched = [None] * len(examples)
    for batch in batches(examples, 16):
        for i, answer in zip(batch, runner.generate_batch([examples[i].prompt for i in batch], True, MAX_NEW)):
            batched[i] = answer
    return alone, batched


def _decode(runner, ids: list[int]) -> str:
    import numpy as np

    if hasattr(runner, "og"):
        return runner.tokenizer.decode(np.array(ids, dtype=np.int32))
    return runner.tokenizer.decode(ids, skip_special_tokens=True)


def _one_token_stop(runner, new: list[int]) -> tuple[int, str]:
    """(position, text) of a token the model generated after its first that decodes to a text encoding back to
    that one token: a stop text, as a chat template's end-of-turn marker is."""
    for k, token in enumerate(new[1:], start=1):
        if token in new[:k]:
            continue
        text = _decode(runner, [token])
        if text.strip() == text and text and runner._plain_ids(text) == [token]:
            return k, text
    raise AssertionError(f"no usable stop token among {new}")


def _torch_new_ids(runner, ids: list[int]) -> list[int]:
    import torch

    with torch.inference_mode():
        out = runner.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=MAX_NEW, do_sample=False,
                                    eos_token_id=sorted(runner.end_ids), pad_token_id=runner.pad)
    return out[0, len(ids):].tolist()


def _ends_at_stops(runner, tone_examples):
    """A runner's answers end at a one-token stop text it was told of (and at the end ids a generation config
    names); its completion loss scores that token after the completion, not the end of sequence."""
    ex = tone_examples[0]
    new = runner.generate_ids([runner._ids(ex.prompt, True)], MAX_NEW)[0] if hasattr(runner, "og") else \
        _torch_new_ids(runner, runner._ids(ex.prompt, True))
    k, stop = _one_token_stop(runner, new)
    plain = runner.generate(ex.prompt, True, MAX_NEW)
    runner.add_stops({stop})
    answer, count = runner.generate(ex.prompt, True, MAX_NEW)
    # the stop token is counted, as every runner counts the end token it generated
    assert plain[1] > count and answer == _decode(runner, new[:k]) and count == k + 1, (plain, answer, k)
    if hasattr(runner, "og"):  # genai itself stops at the stop token, not max_new_tokens later
        assert len(runner._generate([runner._ids(ex.prompt, True)], MAX_NEW)[0][0]) == k + 1
    closed = Example(ex.prompt, ex.completion, ex.source, target=ex.completion + stop)
    assert closed.stop == stop and runner._pair(closed, True)[1][-1] == new[k]
    assert runner._pair(ex, True)[1][-1] == runner.eos_id
    return closed


def test_pytorch_answers_end_at_a_stop_token_and_the_generation_configs_end_ids(tiny_model, tone_examples, tmp_path):
    import torch

    from modelpress.runners import TorchRunner

    runner = TorchRunner(ModelRef(HF, tiny_model, id="tiny"))
    closed = _ends_at_stops(runner, tone_examples)
    head, tail = runner._pair(closed, True)
    with torch.inference_mode():
        logits = runner.model(input_ids=torch.tensor([head + tail])).logits[0].float()
    logp = torch.log_softmax(logits[len(head) - 1:-1], -1)
    expected = -sum(float(logp[i, t]) for i, t in enumerate(tail)) / len(tail)
    assert runner.completion_loss([closed], True) == pytest.approx(expected, rel=1e-5)
    # a generation config naming that token as an end of sequence (as Phi-3's names <|end|>) ends there too
    folder = tmp_path / "ends"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    stop_id = tail[-1]
    (folder / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": [config["eos_token_id"], stop_id]}))
    named = TorchRunner(ModelRef(HF, folder, id="ends"))
    assert named.end_ids == {config["eos_token_id"], stop_id}
    assert named.generate(closed.prompt, True, MAX_NEW) == runner.generate(closed.prompt, True, MAX_NEW)


def _builder_output(model: Path, out: Path, precision: str) -> Path:
    from modelpress.config.schema import InputModelConfig
    from modelpress.context import PassContext
    from modelpress.passes.catalog import ModelBuilderParams
    from modelpress.passes.model_builder import run_model_builder

    out.mkdir(parents=True)
    ctx = PassContext(ModelRef(HF, model, id="m"), out, InputModelConfig(model_path=model), "cpu", data=None,
                      show_progress=False)
    return run_model_builder(ctx, ModelBuilderParams(precision=precision)).path


@pytest.mark.e2e
def test_genai_answers_end_at_a_stop_token_and_score_it_as_pytorch_does(tiny_model, tone_examples, tmp_path):
    from modelpress.runners import GenaiRunner, TorchRunner

    runner = GenaiRunner(_builder_output(tiny_model, tmp_path / "fp32", "fp32"))
    closed = _ends_at_stops(runner, tone_examples)
    torch_runner = TorchRunner(ModelRef(HF, tiny_model, id="tiny"))
    assert runner.eos_id == torch_runner.eos_id  # the end of sequence the tokenizer config names, on both
    assert runner.completion_loss([closed], True) == pytest.approx(torch_runner.completion_loss([closed], True),
                                                                   rel=1e-4)


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["torch", "genai-fp32"])
def test_batched_generation_gives_the_same_answers_as_batch_1(kind, eos_model, tone_examples, tmp_path):
    from modelpress.runners import GenaiRunner, TorchRunner

    if kind == "torch":
        runner = TorchRunner(ModelRef(HF, eos_model, id="eos"))
    else:
        runner = GenaiRunner(_builder_output(eos_model, tmp_path / kind, kind.split("-")[1]))
    alone, batched = _answers_batched_and_alone(runner, tone_examples)
    lengths = Counter(count for _, count in alone)
    assert len(lengths) > 1, f"every answer has the same length {lengths}: the test would not mix finished rows"
    assert batched == alone  # text and token count of every answer
    # 40: more than genai takes at once (32), so the runner splits the batch
    assert predict(runner, tone_examples, True, MAX_NEW, batch_size=40) == [text for text, _ in alone]


@pytest.mark.e2e
def test_genai_batches_chat_prompts_that_hold_its_pad_token(eos_model, tone_examples, tmp_path):
    """A chat model that pads with its turn-end token (as SmolLM2 does) still answers in batches, as at batch 1."""
    from modelpress.runners import GenaiRunner

    folder = _builder_output(eos_model, tmp_path / "chat", "fp32")
    config = json.loads((folder / "genai_config.json").read_text())
    tokens = {t["content"]: t["id"] for t in json.loads((folder / "tokenizer.json").read_text())["added_tokens"]}
    end = tokens["</s>"]  # the turn end of this chat format, and (as in SmolLM2) the pad token
    config["model"]["pad_token_id"] = end
    (folder / "genai_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ '### ' + m['role'] + ': ' + m['content'] + '</s>\\n' }}{% endfor %}")
    chat = [Example(f"### user: {ex.prompt}</s>\n### assistant: ", ex.completion, ex.source) for ex in tone_examples]
    runner = GenaiRunner(folder)
    assert runner.pad != end and all(end in runner._ids(ex.prompt, True) for ex in chat)
    sizes = []
    generate = runner._generate
    runner._generate = lambda rows, new, keep_logits=False: sizes.append(len(rows)) or generate(rows, new, keep_logits)
    alone, batched = _answers_batched_and_alone(runner, chat)
    assert max(sizes) == 16, f"the chat prompts ran in batches of at most {max(sizes)}"
    assert batched == alone


@pytest.mark.e2e
def test_genai_batched_completion_loss_equals_one_sequence_at_a_time(eos_model, tone_examples, tmp_path):
    from modelpress.runners import GenaiRunner

    runner = GenaiRunner(_builder_output(eos_model, tmp_path / "loss", "fp32"))
    examples = tone_examples[:40]
    ids = sorted((runner._ids(ex.prompt, True) for ex in examples), key=len)
    rows = [ids[-1], ids[0], ids[len(ids) // 2]]
    assert len({len(r) for r in rows}) == 3  # two of the three rows are padded
    for row, alone in zip(rows, runner.logits_batch(rows)):  # each row's logits up to its own length
        assert abs(alone[:len(row)] - runner.logits(row)).max() < 1e-4
    assert runner.completion_loss(examples, True) == pytest.approx(
        runner.completion_loss(examples, True, batch_size=1), rel=1e-5)


# The int4 answers of a batch differ from batch 1 only where two tokens tie: on CPUs without AVX-512,
# onnxruntime's int4 MatMulNBits computes a single row with another kernel than a batch of rows (another
# order of sums, amplified by its int8 activation quantization). On the random tiny model, whose top
# logits are often near ties, a few answers then part at a near-tie step (on AVX-512 CPUs all agree).
NEAR_TIE = 0.05  # logit units; the first answer token's top-2 gap here: median 0.44, one in ten under 0.1


@pytest.mark.e2e
def test_batched_int4_answers_differ_from_batch_1_only_at_near_ties(eos_model, tone_examples, tmp_path):
    from modelpress.runners import GenaiRunner

    runner = GenaiRunner(_builder_output(eos_model, tmp_path / "int4", "int4"))
    rows = [runner._ids(ex.prompt, True) for ex in tone_examples]
    alone = [runner.generate_ids([row], MAX_NEW)[0] for row in rows]
    batched = [None] * len(rows)
    for batch in batches(tone_examples, 16):
        for i, new in zip(batch, runner.generate_ids([rows[i] for i in batch], MAX_NEW)):
            batched[i] = new
    assert len({len(a) for a in alone}) > 1, "every answer has the same length: no finished rows are mixed"
    parted = [i for i in range(len(rows)) if batched[i] != alone[i]]
    assert len(parted) <= len(rows) // 10, f"{len(parted)} of {len(rows)} int4 answers differ in a batch"
    end = min(runner.end_ids)  # a row that ended early has generated its end of sequence there
    for i in parted:
        a, b = alone[i] + [end] * MAX_NEW, batched[i] + [end] * MAX_NEW
        step = next(k for k in range(MAX_NEW) if a[k] != b[k])
        logits = runner.logits(rows[i] + alone[i][:step])[-1]
        gap = abs(float(logits[a[step]]) - float(logits[b[step]]))
        print(f"row {i}: parts at new token {step}, logit gap {gap:.4f}")
        assert gap < NEAR_TIE, f"row {i} parts at new token {step} where the two tokens' logits differ by {gap:.3f}"


def test_common_prefix_stops_before_the_last_token_and_under_the_minimum():
    from modelpress.prompt_cache import MIN_PREFIX, common_prefix

    head = list(range(100, 100 + MIN_PREFIX + 2))
    assert common_prefix([head + [1, 2], head + [3]]) == len(head)
    assert common_prefix([head + [1, 2], head + [3]], most=MIN_PREFIX) == MIN_PREFIX
    assert common_prefix([head, head + [3]]) == len(head) - 1  # a row keeps one token of its own
    assert common_prefix([head[:MIN_PREFIX - 1] + [1, 2], head[:MIN_PREFIX - 1] + [3, 4]]) == 0  # too short
    assert common_prefix([head + [1]]) == 0  # one row: nothing to share
    ids, mask = left_pad([[7, 8, 1, 2, 3], [7, 8, 4]], pad=0, shared=2)
    assert ids == [[7, 8, 1, 2, 3], [7, 8, 0, 0, 4]] and mask == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 1]]


SYSTEM = "### System: you name the tone of a phrase: joy, fear, sadness or surprise. Answer with one word.\n"


def test_a_shared_system_prompt_runs_once_with_the_same_answers_and_losses_as_batch_1(eos_model, tone_examples):
    """Prompts that open alike (a chat template's system prompt): the runner computes the common prefix
    once per batch; every answer and the completion loss equal the ones computed one prompt at a time."""
    from modelpress.runners import TorchRunner

    runner = TorchRunner(ModelRef(HF, eos_model, id="eos"))
    examples = [Example(SYSTEM + ex.prompt, ex.completion, ex.source) for ex in tone_examples[:48]]
    alone, batched = _answers_batched_and_alone(runner, examples)
    assert runner.shared_prefix_tokens > 0, "the batches did not share their prefix"
    assert len(Counter(count for _, count in alone)) > 1  # rows finish at different steps
    assert batched == alone
    runner.shared_prefix_tokens = 0
    batched_loss = runner.completion_loss(examples, True)
    assert runner.shared_prefix_tokens > 0
    assert batched_loss == pytest.approx(runner.completion_loss(examples, True, batch_size=1), rel=1e-5)
    assert batched_loss == pytest.approx(_plain_completion_loss(runner, examples), rel=1e-5)


def _plain_completion_loss(runner, examples) -> float:
    """Mean -log p of each completion token and the end of sequence, from one plain forward per example."""
    import torch

    total, count = 0.0, 0
    for ex in examples:
        head = runner._ids(ex.prompt, True)
        tail = runner.tokenizer(ex.completion, add_special_tokens=False)["input_ids"] + [runner.tokenizer.eos_token_id]
        with torch.inference_mode():
            logits = runner.model(input_ids=torch.tensor([head + tail])).logits[0].double()
        log_probs = torch.log_softmax(logits[len(head) - 1:len(head) - 1 + len(tail)], dim=-1)
        total -= float(log_probs[torch.arange(len(tail)), torch.tensor(tail)].sum())
        count += len(tail)
    return total / count


@pytest.mark.parametrize("share", [False, True], ids=["no-shared-prefix", "shared-system-prompt"])
def test_answers_and_loss_from_one_prompt_pass_equal_two_passes(eos_model, tone_examples, share, monkeypatch):
    """`generate_scored` runs each batch's prompts once for both the answers and the completion loss:
    every answer equals the batch-1 answer and the loss equals `completion_loss`'s."""
    from modelpress import prompt_cache
    from modelpress.evaluate import predict_scored
    from modelpress.runners import TorchRunner

    runner = TorchRunner(ModelRef(HF, eos_model, id="eos"))
    examples = [Example(SYSTEM + ex.prompt, ex.completion, ex.source) for ex in tone_examples[:48]]
    alone = [runner.generate(ex.prompt, True, MAX_NEW)[0] for ex in examples]
    assert len(Counter(alone)) > 1  # not one answer for everything
    if not share:
        monkeypatch.setattr(prompt_cache, "MIN_PREFIX", 10**9)
    runner.shared_prefix_tokens = 0
    answers, loss = predict_scored(runner, examples, True, MAX_NEW, 16)
    assert (runner.shared_prefix_tokens > 0) == share
    assert answers == alone
    assert loss == pytest.approx(runner.completion_loss(examples, True, batch_size=1), rel=1e-5)
    assert loss == pytest.approx(_plain_completion_loss(runner, examples), rel=1e-5)


def test_a_generation_config_naming_a_cache_implementation_is_evaluated(tiny_model, tone_examples, tmp_path):
    """generation_config.json asking for a "static" cache: the one-pass evaluation passes its own cache, which
    transformers refuses beside a cache_implementation, so every accuracy evaluation raised."""
    from modelpress.runners import TorchRunner

    folder = tmp_path / "static"
    shutil.copytree(tiny_model, folder)
    generation = folder / "generation_config.json"
    config = json.loads(generation.read_text()) if generation.is_file() else {}
    generation.write_text(json.dumps({**config, "cache_implementation": "static"}))
    runner = TorchRunner(ModelRef(HF, folder, id="static"))
    assert runner.model.generation_config.cache_implementation == "static"
    examples = [Example(SYSTEM + ex.prompt, ex.completion, ex.source) for ex in tone_examples[:4]]
    answers, total, count = runner.generate_scored(examples, True, MAX_NEW)
    plain = TorchRunner(ModelRef(HF, tiny_model, id="tiny"))
    assert answers == plain.generate_batch([ex.prompt for ex in examples], True, MAX_NEW)
    assert total / count == pytest.approx(plain.completion_loss(examples, True), rel=1e-5)


def test_one_token_prompts_take_the_two_pass_path_with_the_same_results(eos_model, tone_examples):
    from modelpress.runners import TorchRunner

    runner = TorchRunner(ModelRef(HF, eos_model, id="eos"))
    examples = [Example("a", "joy", "r1"), Example("b", "fear", "r2")]  # one prompt token each (no BOS)
    assert all(len(runner._ids(ex.prompt, False)) == 1 for ex in examples)
    answers, total, count = runner.generate_scored(examples, False, MAX_NEW)
    assert answers == runner.generate_batch([ex.prompt for ex in examples], False, MAX_NEW)
    assert total / count == pytest.approx(runner.completion_loss(examples, False), rel=1e-6)


@pytest.mark.e2e
@pytest.mark.parametrize("precision, rel", [("fp32", 1e-5), ("int4", 1e-3)])
def test_genai_scores_completions_its_answers_began_with_from_the_generation(precision, rel, eos_model, tone_examples,
                                                                             tmp_path):
    """genai's one pass: a row whose greedy answer began as its expected completion is scored from the logits
    its generation chose from, every other row in a second pass; the answers are generate_batch's and the
    loss completion_loss's (int4: the decoding steps' activations quantize apart from the full pass's)."""
    import numpy as np

    from modelpress.runners import GenaiRunner

    runner = GenaiRunner(_builder_output(eos_model, tmp_path / precision, precision))
    examples = tone_examples[:32]  # one genai batch, so generate_scored's batch is this one
    new, _ = runner._generate([runner._ids(ex.prompt, True) for ex in examples], MAX_NEW)
    ended = [until_eos(tokens, runner.end_ids) for tokens in new]
    own, kinds = [], Counter()
    for ex, tokens, (answer, count) in zip(examples, new, ended):
        # a third of the rows expect their whole answer and its end (when it ended), a third its first two
        # tokens (the model went on, the end was never generated), a third their label (not answered)
        kind = ("whole", "first two", "label")[len(own) % 3]
        wanted = answer if kind == "whole" and count == len(answer) + 1 else answer[:2]
        text = runner.tokenizer.decode(np.array(wanted, dtype=np.int32))
        if kind == "label" or not wanted or list(runner.tokenizer.encode(text)) != wanted:
            kind, text = "label", ex.completion
        kinds[kind] += 1
        own.append(Example(ex.prompt, text, ex.source))
    print(kinds)
    assert kinds["whole"] and kinds["first two"] and kinds["label"], kinds
    answers, total, count = runner.generate_scored(own, True, MAX_NEW)
    assert answers == runner.generate_batch([ex.prompt for ex in own], True, MAX_NEW)
    assert runner.rescored_rows == kinds["label"]  # the tiny random model never answers a tone word
    assert total / count == pytest.approx(runner.completion_loss(own, True), rel=rel)


def test_a_trained_classifier_reads_its_inputs_as_training_made_them(bert_folder):
    """The model card's task carries the training max_seq_len and special-token setting (LoRA pass); without them,
    an untrained classifier reads up to 512 tokens with its special tokens."""
    from modelpress.runners import TorchClassifierRunner

    text = "we finally won the finals after years of trying and everyone was cheering"
    untrained = TorchClassifierRunner(ModelRef(HF, bert_folder, id="b", task={"task": "text-classification"}))
    full = untrained._encode([text])["input_ids"][0]
    assert len(full) > 6 and full[0] == untrained.tokenizer.cls_token_id
    trained = TorchClassifierRunner(ModelRef(HF, bert_folder, id="b", task={
        "task": "text-classification", "max_seq_len": 6, "add_special_tokens": False}))
    assert trained._encode([text])["input_ids"][0] == untrained.tokenizer(text, add_special_tokens=False)["input_ids"][:6]


def test_a_classifiers_two_text_columns_are_read_as_a_sentence_pair_everywhere(bert_folder, bert_onnx):
    """Two text columns (Olive's input_cols, e.g. MRPC's sentence1 and sentence2) are encoded as the tokenizer's
    pair, separator and segment ids included, as Olive does: in training features and by both classifier
    runners, which agree with the model called on the tokenizer's own pair encoding."""
    import numpy as np
    import torch

    from modelpress.config.schema import DataConfig
    from modelpress.data import classification_features, render
    from modelpress.models import load_classifier
    from modelpress.runners import OnnxClassifierRunner, TorchClassifierRunner

    config = DataConfig(name="pairs", data_files=["x.json"], format="json", text_cols=["a", "b"], label_col="y",
                        add_special_tokens=True)
    rows = [("r1", {"a": "we won the final", "b": "everyone cheered", "y": "positive"}),
            ("r2", {"a": "the lights went out", "b": "then a scream", "y": "negative"})]
    examples = render(config, rows)
    torch_runner = TorchClassifierRunner(ModelRef(HF, bert_folder, id="b", task={"task": "text-classification"}))
    tokenizer = torch_runner.tokenizer
    pairs = tokenizer(["we won the final", "the lights went out"], ["everyone cheered", "then a scream"],
                      padding=True)
    assert pairs["token_type_ids"][0].count(1) > 1  # the second text is segment 1
    features = classification_features(examples, tokenizer, config, ["negative", "neutral", "positive"])
    assert [f["input_ids"] for f in features] == tokenizer(["we won the final", "the lights went out"],
                                                           ["everyone cheered", "then a scream"])["input_ids"]
    assert [f["token_type_ids"] for f in features] == tokenizer(
        ["we won the final", "the lights went out"], ["everyone cheered", "then a scream"])["token_type_ids"]
    with torch.inference_mode():
        expected = load_classifier(bert_folder).eval()(
            **{k: torch.tensor(v) for k, v in pairs.items()}).logits.numpy()
    prompts = [ex.prompt for ex in examples]
    np.testing.assert_allclose(torch_runner.class_logits_batch(prompts), expected, atol=1e-5)
    onnx_runner = OnnxClassifierRunner(ModelRef(bert_onnx.kind, bert_onnx.path, id="o",
                                                task={"task": "text-classification", "labels": ["negative",
                                                                                                "neutral",
                                                                                                "positive"]}))
    np.testing.assert_allclose(onnx_runner.class_logits_batch(prompts), expected, atol=1e-4)
    # a classifier brought fine-tuned (no training pass, so no labels on the card): the names its conversion kept
    unlabelled = OnnxClassifierRunner(ModelRef(bert_onnx.kind, bert_onnx.path, id="o",
                                               task={"task": "text-classification"}))
    assert unlabelled.labels == torch_runner.labels == ["negative", "neutral", "positive"]
    saved = (bert_onnx.path / "config.json").read_text()
    config = json.loads(saved)
    config["id2label"] = {str(i): f"LABEL_{i}" for i in range(3)}  # saved without names: GLUE's 0/1/2 labels
    try:
        (bert_onnx.path / "config.json").write_text(json.dumps(config))
        assert OnnxClassifierRunner(ModelRef(bert_onnx.kind, bert_onnx.path, id="o", task={
            "task": "text-classification"})).labels == ["0", "1", "2"]
    finally:
        (bert_onnx.path / "config.json").write_text(saved)
    zero_segments = load_classifier(bert_folder).eval()(input_ids=torch.tensor(pairs["input_ids"]),
                                                        attention_mask=torch.tensor(pairs["attention_mask"]))
    assert not np.allclose(zero_segments.logits.detach().numpy(), expected, atol=1e-4)  # the segments count


def test_pytorch_answers_are_plain_greedy_whatever_the_generation_config_asks(tiny_model, tone_examples, tmp_path):
    """transformers fills every generate() setting not passed from generation_config.json: a repetition penalty
    or n-gram blocking there (Qwen2.5 ships one) changed PyTorch's answers, which the ONNX runners never apply.
    Clearing the minimum length warns nothing (passing min_length and min_new_tokens both printed a warning a
    batch)."""
    from modelpress.runners import TorchRunner

    folder = tmp_path / "penalised"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(repetition_penalty=5.0, no_repeat_ngram_size=1, min_new_tokens=6)
    (folder / "generation_config.json").write_text(json.dumps(config))
    prompts = [ex.prompt for ex in tone_examples[:8]]
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # transformers' logger does not propagate
    logging.getLogger("transformers").addHandler(handler)
    try:
        plain = TorchRunner(ModelRef(HF, tiny_model, id="plain")).generate_batch(prompts, True, MAX_NEW)
        assert TorchRunner(ModelRef(HF, folder, id="penalised")).generate_batch(prompts, True, MAX_NEW) == plain
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not [line for line in said if "seem to have been set" in line]


@pytest.mark.e2e
def test_genai_answers_are_plain_greedy_whatever_genai_config_asks(tiny_model, tone_examples, tmp_path):
    """onnxruntime-genai fills the search options not passed from genai_config.json's "search" section: a
    repetition penalty or n-gram blocking there changed the answers evaluation scores."""
    from modelpress.runners import GenaiRunner

    plain = _builder_output(tiny_model, tmp_path / "fp32", "fp32")
    folder = tmp_path / "penalised"
    shutil.copytree(plain, folder)
    config = json.loads((folder / "genai_config.json").read_text())
    config["search"].update(repetition_penalty=5.0, no_repeat_ngram_size=1, min_length=40)
    (folder / "genai_config.json").write_text(json.dumps(config))
    prompts = [ex.prompt for ex in tone_examples[:8]]
    assert GenaiRunner(folder).generate_batch(prompts, True, MAX_NEW) == \
        GenaiRunner(plain).generate_batch(prompts, True, MAX_NEW)


def test_genai_ids_for_more_rows_than_genai_takes_at_once(eos_model, tone_examples, tmp_path):
    """lm-eval's generate_until hands the runner its own batch size; genai 0.18 refuses more than 32 rows."""
    from modelpress.runners import GENAI_MAX_BATCH, GenaiRunner

    runner = GenaiRunner(_builder_output(eos_model, tmp_path / "fp32", "fp32"))
    rows = [runner._ids(ex.prompt, True) for ex in tone_examples[:GENAI_MAX_BATCH + 8]]
    got = runner.generate_ids(rows, 4)
    assert len(got) == len(rows) and got[GENAI_MAX_BATCH:] == runner.generate_ids(rows[GENAI_MAX_BATCH:], 4)


def test_genai_rows_near_the_context_length_generate_to_it_and_longer_ones_are_one_clear_error(eos_model, tmp_path):
    """A prompt close to context_length generates up to it (it asked genai for max_length past the context and
    failed); one that fills the context, or a scored row longer than it, is an error naming the limit (onnxruntime
    failed inside the batch)."""
    from modelpress.errors import ModelpressError
    from modelpress.runners import GenaiRunner

    runner = GenaiRunner(_builder_output(eos_model, tmp_path / "fp32", "fp32"))
    context = runner.context
    assert context and context <= 4096
    near = [[5 + i % 20 for i in range(context - 3)]]
    [new] = runner.generate_ids(near, 8)
    assert len(new) <= 3
    short = [5, 6, 7, 8, 9]
    alone = runner.generate_ids([short], 8)
    together = runner.generate_ids([short, near[0]], 8)  # the long row runs alone: the short answer is not cut
    assert together[0] == alone[0] and together[1] == new
    with pytest.raises(ModelpressError, match=f"prompt of {context} tokens does not fit the model's context of "
                                              f"{context} tokens"):
        runner.generate_ids([[5] * context], 4)
    with pytest.raises(ModelpressError, match="prompt and completion of"):
        runner.logits_batch([[5] * (context + 1)])


def test_genai_reads_a_prompt_that_ends_with_its_pad_id_and_batches_one_that_holds_it(eos_model, tmp_path):
    """onnxruntime-genai 0.18 drops a pad id that ends a row, even at batch 1, and reads one inside a prompt as a
    token (measured). A prompt ending with it runs on a handle that pads otherwise, in the caller's order; a
    prompt holding it inside still runs in a batch (it ran alone)."""
    import numpy as np

    from modelpress.runners import GenaiRunner

    runner = GenaiRunner(_builder_output(eos_model, tmp_path / "fp32", "fp32"))
    pad = runner.pad
    rows = [[5, 6, 7, 8], [5, 6, 7, pad], [5, pad, 7, 8], [9, 10, 11, pad]]
    expected = [int(np.argmax(runner.logits_batch([row])[0][-1])) for row in rows]  # onnxruntime, no padding
    sizes = []
    generate = runner._generate
    runner._generate = lambda r, new, keep_logits=0: sizes.append(len(r)) or generate(r, new, keep_logits)
    got = runner.generate_ids(rows, 1)
    assert [new[0] if new else None for new in got] == expected
    assert sorted(sizes) == [2, 2]  # the two ending with the pad id together, the others together
    # the handle that pads otherwise is opened once and kept (each batch-1 answer timed a model load)
    other = runner._other_pad
    assert other is not None and runner._handle([rows[1]]) is other and other[2] != pad
    for row in rows:  # and the logits genai chose from are onnxruntime's, not only their argmax
        _, steps = runner._generate([row], 1, keep_logits=1)
        np.testing.assert_allclose(steps[0][0], runner.logits_batch([row])[0][-1], atol=1e-4)
    _, steps = generate([rows[0]], 4, keep_logits=2)  # only the steps a completion is scored over are kept
    assert steps.shape[0] == 2


def test_generate_reads_a_raw_prompt_that_ends_with_the_pad_token(eos_model, tmp_path):
    import numpy as np

    from modelpress.generate import generate
    from modelpress.runners import GenaiRunner

    folder = _builder_output(eos_model, tmp_path / "fp32", "fp32")
    pad = json.loads((folder / "genai_config.json").read_text())["model"]["pad_token_id"]
    text = next(t["content"] for t in json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
                if t["id"] == pad)
    runner = GenaiRunner(folder)
    ids = runner._plain_ids("we won " + text)
    assert ids[-1] == pad
    first = int(np.argmax(runner.logits_batch([ids])[0][-1]))
    assert "".join(generate(folder, "we won " + text, max_new_tokens=1, raw=True)) == \
        runner.tokenizer.decode(np.array([first], dtype=np.int32))


def test_a_classifier_brought_fine_tuned_keeps_its_head_for_its_classes_and_gets_a_new_one_for_others(
        bert_folder, caplog):
    """Its trained head was relabelled in the data's sorted order (its classes scrambled), and a head of another
    size stopped the load (transformers asks for ignore_mismatched_sizes)."""
    import torch

    from modelpress.models import load_classifier

    ids = torch.tensor([[101, 2057, 2180, 102]])
    with torch.inference_mode():
        own = load_classifier(bert_folder)(input_ids=ids).logits[0]  # negative, neutral, positive
        model = load_classifier(bert_folder, ["Positive", "negative", "neutral"])
        assert torch.allclose(model(input_ids=ids).logits[0], own[[2, 0, 1]])
        assert model.config.id2label == {0: "Positive", 1: "negative", 2: "neutral"}
        other = load_classifier(bert_folder, ["fear", "joy", "sadness", "surprise"])
        assert other(input_ids=ids).logits.shape == (1, 4)
    assert "its head classifies negative, neutral, positive and the data's labels are fear, joy" in caplog.text


def test_a_classifier_saved_without_class_names_keeps_its_head_for_integer_labels(tmp_path):
    """LABEL_0 ... LABEL_11 against labels 0 ... 11, which sort as text (0, 1, 10, 11, 2, ...): row 10 of the head
    became the class "2"."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from modelpress.models import load_classifier

    torch.manual_seed(0)
    folder = tmp_path / "twelve"
    BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64, num_labels=12)
                                  ).eval().save_pretrained(str(folder))
    ids = torch.tensor([[1, 5, 9, 2]])
    labels = sorted(str(i) for i in range(12))
    with torch.inference_mode():
        own = load_classifier(folder)(input_ids=ids).logits[0]
        ordered = load_classifier(folder, labels)(input_ids=ids).logits[0]
    assert torch.allclose(ordered, own[[int(label) for label in labels]])


def test_a_classifiers_rows_are_cut_to_the_tokenizers_length_whatever_max_seq_len_says(bert_folder):
    """max_seq_len defaults to 1024 and BERT has 512 positions: a long review overran the position table in
    training, calibration and evaluation."""
    from modelpress.data import encode_texts
    from modelpress.runners import TorchClassifierRunner

    runner = TorchClassifierRunner(ModelRef(HF, bert_folder, id="b", task={
        "task": "text-classification", "max_seq_len": 1024, "add_special_tokens": True}))
    runner.tokenizer.model_max_length = 96  # the tiny BERT has 128 positions
    long = " ".join(["cheering"] * 300)
    assert len(encode_texts(runner.tokenizer, [long], truncation=True, max_length=1024)["input_ids"][0]) == 96
    assert runner.class_logits_batch([long, "short"]).shape == (2, 3)


def test_a_classifiers_loss_reads_labels_as_accuracy_does(bert_folder, caplog):
    """Data labelled "Positive " against a card's "positive": accuracy matched them and the loss skipped every row
    (NaN)."""
    from modelpress.data import Example
    from modelpress.runners import TorchClassifierRunner

    runner = TorchClassifierRunner(ModelRef(HF, bert_folder, id="b", task={
        "task": "text-classification", "labels": ["negative", "neutral", "positive"]}))
    texts = ["what a lovely day", "this is awful"]
    plain = runner.completion_loss([Example(t, label, "") for t, label in zip(texts, ["positive", "negative"])], True)
    written = runner.completion_loss([Example(t, label, "") for t, label in zip(texts, ["Positive ", "NEGATIVE"])], True)
    assert plain == pytest.approx(written) and plain > 0
    assert "does not have" not in caplog.text
    mixed = runner.completion_loss([Example(t, label, "") for t, label in zip(texts, ["positive", "sarcasm"])], True)
    assert mixed > 0 and "1 of 2 rows have a label this classifier does not have (sarcasm)" in caplog.text
