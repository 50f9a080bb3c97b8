"""What a measurement's cache key holds, and what a custom metric's function must return."""

from __future__ import annotations

import pytest

from conftest import tone_workflow
from modelpress.config.normalize import normalize
from modelpress.errors import ModelpressError


def _key(tmp_path, tiny_model, first: str, *parts, reads_default: bool = True) -> str:
    """The evaluation key of a quantize-only run whose two data configs come in either order."""
    from modelpress.context import DataPlan
    from modelpress.engine import Session, evaluation_key
    from modelpress.models import ModelRef
    from modelpress.passes.catalog import HF

    raw = tone_workflow(tiny_model, {"builder": {"type": "ModelBuilder"}})
    tone = raw["data_configs"][0]
    other = {**tone, "name": "other", "pre_process_data_config": {"text_template": "Q: {phrase}\nA: {tone}"}}
    raw["data_configs"] = [tone, other] if first == "tone" else [other, tone]
    config = normalize(raw, tmp_path)
    session = Session(config, None, DataPlan(config, tmp_path / "cache"), "cpu", None)
    return evaluation_key(session, "eval", ModelRef(HF, tiny_model, id="m"), *parts, reads_default=reads_default)


def test_a_run_that_trains_nothing_keys_its_evaluation_by_the_data_config_it_reads(tmp_path, tiny_model):
    """With nothing trained, the evaluation reads the first data config: swapping the configs' order changes what
    is measured, and so the key (the fingerprints alone are a mapping, whose order the key does not keep)."""
    assert _key(tmp_path, tiny_model, "tone") != _key(tmp_path, tiny_model, "other")


def test_a_custom_metric_that_returns_the_wrong_keys_names_them():
    from modelpress.config.evaluator_schema import Metric
    from modelpress.metrics import _custom_values

    metric = Metric.model_validate({"name": "c", "type": "custom", "sub_types": [
        {"name": "x", "higher_is_better": True}, {"name": "y", "higher_is_better": True}],
        "user_config": {"user_script": "m.py", "evaluate_func": "f"}})
    assert _custom_values(metric, {"x": 1, "y": 2.5}, "w") == {"c-x": 1.0, "c-y": 2.5}
    with pytest.raises(ModelpressError, match="w returned 'x', not 'y'. Return a value for every sub_type"):
        _custom_values(metric, {"x": 1}, "w")
    with pytest.raises(ModelpressError, match="returned one value, and the metric has 2 sub_types"):
        _custom_values(metric, 3.0, "w")
    with pytest.raises(ModelpressError, match="not a number"):
        _custom_values(metric, {"x": None, "y": 1}, "w")


def test_an_extra_data_config_says_how_many_of_its_rows_were_measured(tmp_path, tiny_model):
    from modelpress.context import DataPlan
    from modelpress.report import extra_data_rows

    raw = tone_workflow(tiny_model, {"builder": {"type": "ModelBuilder"}})
    raw["evaluation"] = {"max_examples": 5}
    config = normalize(raw, tmp_path)
    eval_set = DataPlan(config, tmp_path / "cache").eval_set("tone")
    assert len(eval_set.examples) == 5
    assert eval_set.description.startswith("the first 5 of ") and "distinct prompts of data config 'tone'" in \
        eval_set.description
    metrics = {"extra_data": {"tone": {"final": {"examples": 5, "eval_data": eval_set.description}}}}
    assert extra_data_rows(metrics)[0][0] == eval_set.description
    # a training pass's eval split capped by evaluation.max_examples says it measured its first rows
    raw = tone_workflow(tiny_model, {"lora": {"type": "LoRA", "train_data_config": "tone", "eval_dataset_size": 0.2}})
    raw["evaluation"] = {"max_examples": 5}
    split = DataPlan(normalize(raw, tmp_path), tmp_path / "cache").eval_set()
    assert len(split.examples) == 5 and split.description.startswith("the eval split of pass 'lora' (the first 5 of "
                                                                      "its ") and "distinct prompts)" in split.description
    whole = {"extra_data": {"x": {"final": {"examples": 72, "eval_data": "all rows of data config 'x'"}}}}
    assert extra_data_rows(whole)[0][0] == "all 72 rows of data config 'x'"


def test_the_loss_scores_the_closing_token_training_saw_with_a_sentencepiece_style_tokenizer():
    """A SentencePiece tokenizer encodes a text alone with a leading word marker: "\\n###" alone starts with it, and
    "joy\\n###" (what training tokenizes) has none after "joy". The loss scores what training put there."""
    from modelpress.answer_ends import Ends
    from modelpress.data import Example

    marker = 1

    class Toy(Ends):
        end_ids, eos_id = {2}, 2

        def _plain_ids(self, text):  # a character per token, and the word marker a text alone starts with
            return [marker] + [ord(c) for c in text]

        def _ids(self, prompt, add_bos):
            return self._plain_ids(prompt)

    ex = Example("Text: hi\nTone: ", "joy", "row 0", target="joy\n###")
    prompt, scored = Toy()._pair(ex, add_bos=False)
    # the answer as it follows the prompt, where no marker opens it, then the closing token training saw: not the
    # marker "\n###" alone starts with, nor the one "joy" alone starts with (a review: training took "joy" after the
    # prompt, the loss scored it alone)
    assert scored == [ord("j"), ord("o"), ord("y"), ord("\n")]


def test_a_measurement_that_names_its_data_config_is_keyed_without_the_default(tmp_path, tiny_model):
    """Reordering the data configs changes what the default evaluation reads, not what a named one reads."""
    assert _key(tmp_path, tiny_model, "tone", "other", reads_default=False) == \
        _key(tmp_path, tiny_model, "other", "other", reads_default=False)



def test_a_decoder_classifier_without_a_config_pad_token_reads_each_rows_last_real_token(tiny_model, tmp_path):
    """A decoder's classification head reads the token before the first padding, found by config.pad_token_id: a
    base that names none (Llama 3, Mistral) failed on batches (or read padding); it is the tokenizer's pad now."""
    import json
    import shutil

    import torch

    from modelpress.models import load_classifier, load_tokenizer

    folder = tmp_path / "no-pad"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["pad_token_id"] = None
    (folder / "config.json").write_text(json.dumps(config))
    model = load_classifier(folder, ["a", "b", "c"]).eval()
    pad = load_tokenizer(folder).pad_token_id
    assert model.config.pad_token_id == pad is not None
    short, long = [5, 9, 12], [5, 9, 12, 40, 41, 42]
    batch = torch.tensor([short + [pad] * 3, long])
    with torch.no_grad():
        together = model(input_ids=batch, attention_mask=(batch != pad).long()).logits
        alone = model(input_ids=torch.tensor([short])).logits
    assert torch.allclose(together[0], alone[0], atol=1e-5)


def test_only_an_extra_data_config_is_measured_untimed_and_keyed_apart(tmp_path, tiny_model, monkeypatch):
    """A metric that names its data config (metrics.py) is timed like the eval set; an extra data config
    (evaluation.extra_data_configs) is not, and its untimed result is cached under a key of its own, so neither is
    served the other's."""
    from modelpress.cache import PassCache
    from modelpress.context import DataPlan
    from modelpress.engine import Session
    from modelpress.models import ModelRef
    from modelpress.passes.catalog import HF

    raw = tone_workflow(tiny_model, {"builder": {"type": "ModelBuilder"}})
    raw["data_configs"].append({**raw["data_configs"][0], "name": "other"})
    config = normalize(raw, tmp_path)
    ref = ModelRef(HF, tiny_model, id="m")
    session = Session(config, PassCache(tmp_path / "cache"), DataPlan(config, tmp_path / "cache"), "cpu", ref)
    asked = []

    def measure(config, ref, eval_set, task, show_progress, timed=True):
        asked.append(timed)
        return {"timed": timed}

    monkeypatch.setattr("modelpress.evaluate.measure", measure)
    history: list = []
    assert session.measure(ref, "final", history, "other")["timed"] is True  # as a metric's data_config asks
    assert session.measure(ref, "final on other", history, "other", timed=False)["timed"] is False
    assert asked == [True, False] and history[0]["output_id"] != history[1]["output_id"]
    assert session.measure(ref, "final", history, "other")["timed"] is True and asked == [True, False]  # cached
    # the number of answers timed is no part of an untimed result's key
    session.config = session.config.model_copy(update={
        "evaluation": session.config.evaluation.model_copy(update={"latency_samples": 7})})
    assert session.measure(ref, "final on other", history, "other", timed=False) and asked == [True, False]
    session.measure(ref, "final", history, "other")
    assert asked == [True, False, True]
