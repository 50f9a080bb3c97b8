"""Data: reading local files, templating, strategies, loss masking and the eval split."""

from __future__ import annotations

import copy
import json

import pytest

from conftest import TONE_DATA
from modelpress.config.schema import DataConfig
from modelpress.data import IGNORE, Example, label_set, load_rows, pack, render, tokenize
from modelpress.data_split import distinct, split_examples
from modelpress.errors import DataError

TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"


def _config(path, fmt="json", **kw) -> DataConfig:
    return DataConfig(name="d", data_files=[path], format=fmt, text_template=kw.pop("text_template", TEMPLATE), **kw)


def _jsonl(tmp_path, rows, name="rows.json"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_cookbook_file_is_json_lines_named_json_and_reads_in_full():
    config = _config(TONE_DATA)
    rows = load_rows(config)
    assert len(rows) == 1464
    examples = render(config, rows)
    assert examples[0].prompt == "### Text: I'm thrilled to start my new job!\n### The tone is:\n"
    assert examples[0].completion == "joy"


def test_a_file_rewritten_with_its_old_mtime_is_read_anew(tmp_path):
    """cp -p, rsync -a and tar keep a file's mtime; datasets keys its Arrow copy by path and mtime, so the old rows
    came back from the cache while the fingerprint (and so every cache key) said the data had changed."""
    import os

    from modelpress.cache import content_id

    path = _jsonl(tmp_path, [{"phrase": "old words", "tone": "joy"}])
    config, cache = _config(path), tmp_path / "cache" / "datasets"
    assert load_rows(config, cache)[0][1]["phrase"] == "old words"
    before = os.stat(path)
    memo = tmp_path / "content-ids.json"
    first = content_id(path, memo)
    _jsonl(tmp_path, [{"phrase": "new words", "tone": "joy"}])  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size and os.stat(path).st_mtime_ns == before.st_mtime_ns
    assert load_rows(config, cache)[0][1]["phrase"] == "new words"
    assert content_id(path, memo) != first  # the remembered hash is not reused for the rewritten file
    [place] = cache.iterdir()
    assert len(list(place.iterdir())) == 1  # the Arrow copy of the old content is removed, not kept beside
    # without a cache folder (`modelpress evaluate`), as datasets' own cache is not used
    _jsonl(tmp_path, [{"phrase": "old words", "tone": "joy"}])
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert load_rows(config)[0][1]["phrase"] == "old words"
    _jsonl(tmp_path, [{"phrase": "new words", "tone": "joy"}])
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert load_rows(config)[0][1]["phrase"] == "new words"


def test_the_data_fingerprint_is_what_the_rows_are_made_of_not_where_they_sit(tmp_path):
    """Keys held the absolute data path and the config's name: a moved or copied project re-ran every pass."""
    from modelpress.data_files import data_fingerprint
    from modelpress.passes.spec_base import PassSpec, Strict

    rows = [{"phrase": "we won", "tone": "joy"}]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    here, there = _jsonl(tmp_path / "a", rows), _jsonl(tmp_path / "b", rows, name="copy.json")
    assert data_fingerprint(_config(here)) == data_fingerprint(
        DataConfig(name="renamed", data_files=[there], format="json", text_template=TEMPLATE))
    assert data_fingerprint(_config(here)) != data_fingerprint(_config(here, text_template="{phrase} -> {tone}"))
    _jsonl(tmp_path / "b", [{"phrase": "we lost", "tone": "sadness"}], name="copy.json")
    assert data_fingerprint(_config(here)) != data_fingerprint(_config(there))
    # a plugin script is keyed by its content too
    spec = lambda where: PassSpec("P", "", Strict, "m:f", ("hf",), "hf", False,  # noqa: E731
                                  origin=f"script {where}/p.py (sha256 ab12) (version 1)")
    assert spec("/home/a").origin_key() == spec("/srv/b c").origin_key() == "script (sha256 ab12) (version 1)"


def test_a_number_in_a_template_field_is_written_as_its_text(tmp_path):
    """A rating or a year in JSON or Parquet is a number: Olive's str.format writes it; it was refused."""
    path = _jsonl(tmp_path, [{"year": 1999, "score": 0.5, "stars": 4}, {"year": 2024, "score": 2.5, "stars": 2}])
    config = _config(path, text_template="{year}, scored {score}: {stars}")
    assert [(e.prompt, e.completion) for e in render(config, load_rows(config))] == [
        ("1999, scored 0.5: ", "4"), ("2024, scored 2.5: ", "2")]  # a column's type is datasets' (one per column)


def test_csv_and_parquet_read_like_json(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"phrase": ["a b", "c d"], "tone": ["joy", "fear"]})
    frame.to_csv(tmp_path / "rows.csv", index=False)
    frame.to_parquet(tmp_path / "rows.parquet")
    for fmt, name in (("csv", "rows.csv"), ("parquet", "rows.parquet")):
        examples = render(_config(tmp_path / name, fmt), load_rows(_config(tmp_path / name, fmt)))
        assert [e.completion for e in examples] == ["joy", "fear"]


@pytest.mark.parametrize("rows, message", [
    ([{"phrase": "ok", "tone": "joy"}, {"phrase": None, "tone": "joy"}], "row 2: column 'phrase' is missing or null"),
    ([{"phrase": "ok", "tone": "joy"}, {"tone": "joy"}], "row 2: column 'phrase' is missing or null"),
    ([{"phrase": "ok", "tone": [3]}], "row 1: column 'tone' is list ([3]), not text or a number"),
    ([{"phrase": "ok", "tone": True}], "row 1: column 'tone' is bool"),
    ([{"text": "ok", "tone": "joy"}], "names column(s) ['phrase'] that the data lacks"),
])
def test_bad_rows_name_the_file_and_row(tmp_path, rows, message):
    path = _jsonl(tmp_path, rows)
    config = _config(path)
    with pytest.raises(DataError) as info:
        render(config, load_rows(config))
    assert message in str(info.value) and "rows.json" in str(info.value)


def test_non_utf8_and_empty_files_are_clear_errors(tmp_path):
    bad = tmp_path / "latin1.json"
    bad.write_bytes('{"phrase": "caf\xe9", "tone": "joy"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="latin1.json"):
        render(_config(bad), load_rows(_config(bad)))
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.json"):
        load_rows(_config(empty))


def test_eval_split_never_puts_a_phrase_on_both_sides():
    config = _config(TONE_DATA)
    examples = render(config, load_rows(config))
    train, held = split_examples(examples, 0.2, seed=42)
    assert not {e.prompt for e in train} & {e.prompt for e in held}
    assert len(held) == round(0.2 * len({e.prompt for e in examples}))
    assert split_examples(examples, 0.2, seed=42) == (train, held)  # deterministic


def test_rows_whose_prompt_is_only_the_templates_text_are_told_apart_by_their_text(tmp_path):
    """`### Text: {text}`: every row's prompt is the template's literal text, so the prompt cannot tell rows apart
    (the split saw one distinct row and refused any eval_dataset_size); their text does, and a repeated text
    stays on one side."""
    rows = [{"text": f"line number {i}"} for i in range(10)] + [{"text": "line number 3"}]
    config = _config(_jsonl(tmp_path, rows), text_template="### Text: {text}")
    examples = render(config, load_rows(config))
    assert {e.prompt for e in examples} == {"### Text: "}
    train, held = split_examples(examples, 0.2, seed=0)
    assert len(held) == 2 and {e.completion for e in train + held} == {r["text"] for r in rows}
    assert not {e.completion for e in train} & {e.completion for e in held}
    assert len(distinct(examples)) == 10


def test_eval_split_that_leaves_nothing_is_an_error():
    examples = [Example(f"p{i}", "x", "") for i in range(3)]
    with pytest.raises(DataError, match="leaves no rows"):
        split_examples(examples, 0.01, seed=0)


class FakeTokenizer:
    """Character-level tokenizer: enough to check packing and masking exactly."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __call__(self, texts, add_special_tokens=False):
        if isinstance(texts, str):
            return {"input_ids": [ord(c) for c in texts]}
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


EXAMPLES = [Example("ab", "X", ""), Example("cd", "Y", "")]


def test_completion_loss_masks_the_prompt_and_keeps_label_and_eos():
    config = DataConfig(name="d", data_files=[TONE_DATA], format="json", text_template=TEMPLATE,
                        loss_on="completion")
    (ids, labels), _ = tokenize(EXAMPLES, FakeTokenizer(), config)
    assert ids == [1, ord("a"), ord("b"), ord("X"), 2]
    assert labels == [IGNORE, IGNORE, IGNORE, ord("X"), 2]


def test_an_answer_is_trained_as_it_follows_its_prompt_with_a_sentencepiece_tokenizer(tmp_path):
    """A SentencePiece tokenizer (Llama 2, Mistral, Phi-3) gives a text alone a leading word marker: "joy" alone is
    "▁joy", after "...is:\n" it is "joy". Training takes the answer's tokens from the prompt and answer tokenized
    together, as TRL does and as inference continues the prompt (a review: it trained "▁joy")."""
    from test_gguf_hf import sentencepiece_tokenizer

    tokenizer = sentencepiece_tokenizer(str(tmp_path / "sp"))
    config = DataConfig(name="d", data_files=[TONE_DATA], format="json", text_template="Text: {phrase}\nTone:\n{tone}",
                        loss_on="completion")
    example = Example("Text: I am happy\nTone:\n", "joy", "row 0")
    [(ids, labels)] = tokenize([example], tokenizer, config)
    whole = tokenizer("Text: I am happy\nTone:\njoy")["input_ids"]
    assert ids == whole + [tokenizer.eos_token_id]
    trained = [t for t in labels if t != IGNORE]
    assert trained == whole[len(tokenizer("Text: I am happy\nTone:\n")["input_ids"]):] + [tokenizer.eos_token_id]
    alone = tokenizer("joy", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(alone)[0].startswith("▁") and trained[:-1] != alone  # what it was


def test_line_by_line_pads_to_max_len_only_when_asked():
    config = DataConfig(name="d", data_files=[TONE_DATA], format="json", text_template=TEMPLATE,
                        strategy="line-by-line", max_seq_len=8, pad_to_max_len=True)
    features = pack(tokenize(EXAMPLES, FakeTokenizer(), config), config, [], pad_id=0)
    assert [len(f["input_ids"]) for f in features] == [8, 8]
    assert features[0]["attention_mask"] == [1] * 5 + [0] * 3
    assert features[0]["labels"][5:] == [IGNORE] * 3


def test_join_packs_rows_into_full_windows_and_drops_the_remainder():
    config = DataConfig(name="d", data_files=[TONE_DATA], format="json", text_template=TEMPLATE,
                        strategy="join", max_seq_len=4, add_special_tokens=False, use_attention_mask=False)
    features = pack(tokenize(EXAMPLES * 3, FakeTokenizer(), config), config, [ord("|")], pad_id=0)
    stream = [c for ex in EXAMPLES * 3 for c in [ord(x) for x in ex.prompt + ex.completion] + [ord("|")]]
    assert [f["input_ids"] for f in features] == [stream[i:i + 4] for i in range(0, len(stream) - 3, 4)]
    assert "attention_mask" not in features[0]


def test_join_puts_the_joiner_after_each_rows_eos_as_olive_does():
    """Olive joins "{bos} row {eos} {joiner} {bos} row {eos} ..." when special tokens are added (the joiner was
    left out then)."""
    config = DataConfig(name="d", data_files=[TONE_DATA], format="json", text_template=TEMPLATE,
                        strategy="join", max_seq_len=6, add_special_tokens=True, use_attention_mask=False)
    features = pack(tokenize(EXAMPLES * 2, FakeTokenizer(), config), config, [ord("|")], pad_id=0)
    stream = [c for f in features for c in f["input_ids"]]
    assert stream[:12] == [1, ord("a"), ord("b"), ord("X"), 2, ord("|"), 1, ord("c"), ord("d"), ord("Y"), 2, ord("|")]


def test_packing_says_what_it_leaves_out(caplog):
    join = DataConfig(name="d", data_files=[TONE_DATA], format="json", text_template=TEMPLATE,
                      strategy="join", max_seq_len=4, add_special_tokens=False)
    with caplog.at_level("INFO", logger="modelpress"):
        pack(tokenize(EXAMPLES * 3, FakeTokenizer(), join), join, [ord("|")], pad_id=0)  # 24 tokens: 0 left
        assert "left out" not in caplog.text
        pack(tokenize(EXAMPLES * 3 + EXAMPLES[:1], FakeTokenizer(), join), join, [], pad_id=0)  # 21 tokens
    assert "the last 1 of 21 tokens fill no whole 4-token window" in caplog.text
    # line by line: a row whose first max_seq_len tokens are all prompt has nothing to learn
    long = [Example("abcdefgh", "X", ""), Example("ab", "Y", "")]
    lines = DataConfig(name="d", data_files=[TONE_DATA], format="json", text_template=TEMPLATE,
                       strategy="line-by-line", max_seq_len=6, loss_on="completion")
    features = pack(tokenize(long, FakeTokenizer(), lines), lines, [], pad_id=0)
    assert [f["input_ids"][1:3] for f in features] == [[ord("a"), ord("b")]] and len(features) == 1
    assert "1 of 2 rows have nothing to learn in their first 6 tokens" in caplog.text
    assert "longer than max_seq_len" not in caplog.text  # the left-out row is said once
    # a row cut inside its answer keeps some of it: said, not silent
    cut = [Example("abcd", "XYZ", ""), Example("ab", "Y", "")]
    caplog.clear()
    with caplog.at_level("INFO", logger="modelpress"):
        features = pack(tokenize(cut, FakeTokenizer(), lines), lines, [], pad_id=0)  # BOS abcd X | YZ EOS cut
    assert len(features) == 2 and "1 of 2 rows are longer than max_seq_len (6) and lose the end" in caplog.text


def test_padding_is_not_counted_as_training_tokens_and_an_eval_split_is_not_capped():
    from modelpress.data import real_tokens

    config = DataConfig(name="d", data_files=[TONE_DATA], format="json", text_template=TEMPLATE,
                        strategy="line-by-line", max_seq_len=8, pad_to_max_len=True, use_attention_mask=False,
                        max_samples=1)
    sequences = tokenize(EXAMPLES, FakeTokenizer(), config)
    [feature] = pack(sequences, config, [], pad_id=0)
    assert len(feature["input_ids"]) == 8 and real_tokens(feature, 0) == 5  # BOS a b X EOS, then 3 pads
    assert len(pack(sequences, config, [], pad_id=0, capped=False)) == 2  # max_samples caps training rows only


def test_sliding_window_masks_the_overlap_so_each_token_is_learned_once():
    config = DataConfig(name="d", data_files=[TONE_DATA], format="json", text_template=TEMPLATE,
                        strategy="join-sliding-window", max_seq_len=4, stride=2, add_special_tokens=False)
    features = pack(tokenize(EXAMPLES, FakeTokenizer(), config), config, [], pad_id=0)
    assert features[0]["labels"] == features[0]["input_ids"]
    assert features[1]["labels"][:2] == [IGNORE, IGNORE]
    assert features[1]["input_ids"][:2] == features[0]["input_ids"][2:]


def test_quantizer_calibration_leaves_out_the_eval_split(tiny_model, tmp_path):
    """GPTQ, the mixed-precision choice and static quantization calibrate on a data config's rows; when a
    training pass holds out an eval split of it, those rows stay out, so the split measures unseen rows."""
    from conftest import tone_workflow
    from modelpress.config.normalize import normalize
    from modelpress.context import DataPlan

    lora = {"type": "LoRA", "train_data_config": "tone", "eval_dataset_size": 0.2}
    plan = DataPlan(normalize(tone_workflow(tiny_model, {"lora": lora}), base_dir=tmp_path), tmp_path / "cache")
    held = {ex.prompt for ex in plan.eval_set().examples}
    calibration = plan.calibration_examples("tone")
    assert held and calibration
    assert not held & {ex.prompt for ex in calibration}
    assert len(calibration) + sum(ex.prompt in held for ex in plan.examples("tone")) == len(plan.examples("tone"))
    plain = DataPlan(normalize(tone_workflow(tiny_model, {}), base_dir=tmp_path), tmp_path / "cache2")
    assert plain.calibration_examples("tone") == plain.examples("tone")  # no split: every row


def test_an_evaluation_that_names_the_training_data_reads_its_eval_split(tiny_model, tmp_path):
    """evaluation.data_config naming the data a pass trains on (with eval_dataset_size) measured every row, the
    trained ones included; it reads the held-out split, as the default does."""
    from conftest import tone_workflow
    from modelpress.config.normalize import normalize
    from modelpress.context import DataPlan

    lora = {"type": "LoRA", "train_data_config": "tone", "eval_dataset_size": 0.2}
    default = DataPlan(normalize(tone_workflow(tiny_model, {"lora": lora}), base_dir=tmp_path), tmp_path / "c1")
    named = DataPlan(normalize(tone_workflow(tiny_model, {"lora": lora}, evaluation={"data_config": "tone"}),
                               base_dir=tmp_path), tmp_path / "c2")
    assert [e.prompt for e in named.eval_set().examples] == [e.prompt for e in default.eval_set().examples]
    assert named.eval_set().description == "the eval split of pass 'lora'"
    assert len(named.eval_set().examples) < len(named.examples("tone")) / 2


def test_an_evaluation_reads_at_most_its_data_configs_max_samples_rows_as_olive_does(tiny_model, tmp_path):
    from conftest import tone_workflow
    from modelpress.config.normalize import normalize
    from modelpress.context import DataPlan

    raw = tone_workflow(tiny_model, {})
    raw["data_configs"][0]["pre_process_data_config"]["max_samples"] = 7
    assert len(DataPlan(normalize(raw, base_dir=tmp_path), tmp_path / "c1").eval_set().examples) == 7
    raw["evaluation"] = {"max_examples": 5}  # the smaller of the two
    assert len(DataPlan(normalize(raw, base_dir=tmp_path), tmp_path / "c2").eval_set().examples) == 5
    # a training pass's eval split is not cut by the cap on its training sequences
    raw = tone_workflow(tiny_model, {"lora": {"type": "LoRA", "train_data_config": "tone", "eval_dataset_size": 0.3}})
    split = DataPlan(normalize(raw, base_dir=tmp_path), tmp_path / "c3").eval_set().examples
    raw["data_configs"][0]["pre_process_data_config"]["max_samples"] = 4
    assert DataPlan(normalize(raw, base_dir=tmp_path), tmp_path / "c4").eval_set().examples == split
    # a pass's eval_data_config is read as a data config of its own: its max_samples caps it
    val = copy.deepcopy(raw["data_configs"][0])
    val.update(name="val")
    val["pre_process_data_config"]["max_samples"] = 6
    raw["data_configs"].append(val)
    raw["passes"]["lora"] = {"type": "LoRA", "train_data_config": "tone", "eval_data_config": "val"}
    assert len(DataPlan(normalize(raw, base_dir=tmp_path), tmp_path / "c5").eval_set().examples) == 6


def test_escaped_braces_after_the_answer_field_keep_the_prompt_answer_split(tmp_path):
    """`string.Formatter` cuts literal text at every `{{`: the text after the answer came back in pieces."""
    from modelpress.config.templates import completion_split

    template = 'Input: {phrase}\nOutput: {{"tone": "{tone}"}}\n<|end|>'
    assert completion_split(template) == ("tone", '"}\n<|end|>')
    config = _config(_jsonl(tmp_path, [{"phrase": "We won!", "tone": "joy"}]), text_template=template)
    [ex] = render(config, load_rows(config))
    assert ex.prompt == 'Input: We won!\nOutput: {"tone": "' and ex.completion == "joy"
    assert ex.prompt + ex.target == template.format(phrase="We won!", tone="joy")
    assert config.answer_column == "tone"


def test_an_empty_answer_is_refused_not_learnt(tmp_path):
    config = _config(_jsonl(tmp_path, [{"phrase": "a", "tone": "joy"}, {"phrase": "b", "tone": ""}]))
    with pytest.raises(DataError, match="row 2: column 'tone', the answer the template ends with, is empty"):
        render(config, load_rows(config))
    labels = _config(_jsonl(tmp_path, [{"phrase": "a", "tone": " "}], "labels.json"), label_col="tone",
                     text_template="{phrase}")
    with pytest.raises(DataError, match="label column 'tone' is ' '"):
        render(labels, load_rows(labels))
    empty_text = _config(_jsonl(tmp_path, [{"phrase": " ", "tone": "joy"}], "texts.json"), label_col="tone",
                         text_template="{phrase}")
    with pytest.raises(DataError, match=r"row 1: the text to classify \(phrase\) is empty"):
        render(empty_text, load_rows(empty_text))  # a classifier's evaluation read the label in its place


def test_a_csv_is_read_as_text_as_it_is_written(tmp_path):
    """pandas' guesses once made a rating column int ("store it as a string"), a label column with an empty
    cell float ("1.0"), and the phrases "NA" or "null" missing."""
    path = tmp_path / "rows.csv"
    path.write_text("phrase,rating,tone\nNA,007,joy\nnull,5,fear\n,1,sadness\n", encoding="utf-8")
    rows = [row for _, row in load_rows(_config(path, "csv"))]
    assert rows == [{"phrase": "NA", "rating": "007", "tone": "joy"}, {"phrase": "null", "rating": "5", "tone": "fear"},
                    {"phrase": "", "rating": "1", "tone": "sadness"}]
    rated = _config(path, "csv", text_template="{phrase} ({rating})\n{tone}")
    assert [ex.prompt for ex in render(rated, load_rows(rated))] == ["NA (007)\n", "null (5)\n", " (1)\n"]
    labels = tmp_path / "labels.csv"
    labels.write_text("phrase,label\na,1\nb,\n", encoding="utf-8")
    config = _config(labels, "csv", text_template="{phrase}", label_col="label")
    with pytest.raises(DataError, match="row 2: label column 'label' is ''"):
        render(config, load_rows(config))
    header_only = tmp_path / "none-yet.csv"
    header_only.write_text("phrase,label\n", encoding="utf-8")  # a table of no rows beside one with rows
    both = _config(path, "csv", text_template="{phrase}\n{tone}")
    both.data_files.append(header_only)
    assert len(load_rows(both)) == 3
    with pytest.raises(DataError, match="the files hold no rows"):
        load_rows(_config(header_only, "csv", text_template="{phrase}\n{label}"))


def test_a_label_written_1_in_one_file_and_1_0_in_another_is_one_class(tmp_path):
    """datasets reads each file's types apart: a file of whole labels gives 1, one with 1.0 gives the float."""
    whole = _jsonl(tmp_path, [{"phrase": "a", "label": 1}, {"phrase": "b", "label": 0}], "whole.json")
    floats = tmp_path / "floats.json"
    floats.write_text('{"phrase": "c", "label": 1.0}\n{"phrase": "d", "label": 0.5}\n', encoding="utf-8")
    config = DataConfig(name="d", data_files=[whole, floats], format="json", text_template="{phrase}",
                        label_col="label")
    assert label_set(render(config, load_rows(config))) == ["0", "0.5", "1"]


def test_chat_columns_may_name_any_column_and_an_unbalanced_brace_is_refused(tmp_path):
    from pydantic import ValidationError

    from modelpress.config.schema import DataConfig

    common = {"name": "d", "data_files": [str(tmp_path / "x.json")], "chat_template": True}
    ok = DataConfig(**common, chat_columns={"user": "Review Text", "assistant": "{user-label}"})
    assert ok.chat_columns["user"] == "Review Text"  # rendered through format_map: any name is a key
    with pytest.raises(ValidationError, match="user: not a valid template"):
        DataConfig(**common, chat_columns={"user": "Q: {q", "assistant": "{label}"})


def test_a_classifiers_input_that_holds_its_label_is_refused(tiny_model, tmp_path):
    """The worked example's template with label_col tone made every input end with its own label: accuracy near 1.0
    that measured nothing. A generative model's template holds its answer by design: not refused for it."""
    from conftest import tone_workflow
    from modelpress.config.normalize import normalize
    from modelpress.errors import ConfigError

    raw = tone_workflow(tiny_model, {"lora": {"type": "LoRA", "train_data_config": "tone"}})
    raw["input_model"]["task"] = "text-classification"
    raw["data_configs"][0]["pre_process_data_config"] = {"text_template": TEMPLATE, "label_col": "tone"}
    with pytest.raises(ConfigError, match=r"data_configs\[tone\].text_template: the classifier's input holds "
                                          "label_col 'tone'"):
        normalize(raw, base_dir=tmp_path)
    raw["data_configs"][0]["pre_process_data_config"] = {"text_cols": ["phrase", "tone"], "label_col": "tone"}
    with pytest.raises(ConfigError, match=r"data_configs\[tone\].text_cols: the classifier's input holds"):
        normalize(raw, base_dir=tmp_path)
    raw["data_configs"][0]["pre_process_data_config"] = {"text_template": "Review: {phrase}", "label_col": "tone"}
    assert normalize(raw, base_dir=tmp_path).data_configs["tone"].label_col == "tone"
    assert normalize(tone_workflow(tiny_model, {}), base_dir=tmp_path)  # a generative template ends with its answer


def test_max_samples_caps_a_classifiers_training_rows_as_it_caps_a_language_models(bert_folder, tmp_path):
    """A text classifier's features took every row: max_samples was read on the causal-LM path only."""
    from transformers import AutoTokenizer

    from conftest import tone_workflow
    from modelpress.config.normalize import normalize
    from modelpress.context import DataPlan

    raw = tone_workflow(bert_folder, {})
    raw["input_model"]["task"] = "text-classification"
    raw["data_configs"][0]["pre_process_data_config"] = {"text_cols": ["phrase"], "label_col": "tone",
                                                         "max_samples": 9}
    plan = DataPlan(normalize(raw, base_dir=tmp_path), tmp_path / "c")
    examples = plan.examples("tone")
    tokenizer = AutoTokenizer.from_pretrained(bert_folder)
    labels = label_set(examples)
    assert len(plan.features(examples, "tone", tokenizer, labels)) == 9
    assert len(plan.features(examples, "tone", tokenizer, labels, capped=False)) == len(examples) > 9


def _plan_rows(tmp_path, model, load: dict) -> list[str]:
    from conftest import tone_workflow
    from modelpress.config.normalize import normalize
    from modelpress.context import DataPlan

    raw = tone_workflow(model, {})
    raw["data_configs"][0]["load_dataset_config"] = load
    raw["data_configs"][0]["pre_process_data_config"] = {"text_template": "{phrase}"}
    plan = DataPlan(normalize(raw, base_dir=tmp_path), tmp_path / "cache")
    return [ex.completion for ex in plan.examples("tone")]


def test_a_data_dir_is_read_by_split_as_datasets_reads_it(tmp_path, tiny_model):
    """data_dir with train/validation/test files and no data_files: every file was read as 'train' (test rows
    trained on), and split 'validation' was refused."""
    from modelpress.errors import ConfigError

    def rows(**load):
        return sorted(_plan_rows(tmp_path, tiny_model, {"data_name": "json", **load}))

    folder = tmp_path / "dd"
    (folder / "more").mkdir(parents=True)
    for name, phrase in (("train.jsonl", "t1"), ("more/train-2.jsonl", "t2"), ("validation.jsonl", "v1"),
                         ("test.jsonl", "x1")):
        _jsonl(folder, [{"phrase": phrase}], name)
    assert rows(data_dir="dd", split="train") == ["t1", "t2"]
    assert rows(data_dir="dd", split="validation") == ["v1"]
    assert rows(data_name="dd", split="test") == ["x1"]  # a local folder as data_name (it was taken for a Hub id)
    with pytest.raises(ConfigError, match=r"holds files of the split\(s\) 'train', 'validation', 'test', not 'dev'"):
        rows(data_dir="dd", split="dev")


def test_a_split_slice_takes_its_part_of_all_the_files_at_once(tmp_path, tiny_model):
    """split 'train[:2]' over two files gave two rows of each, as if each file were the split."""
    def rows(files, split):
        return _plan_rows(tmp_path, tiny_model, {"data_name": "json", "data_files": files, "split": split})

    for name, phrases in (("a.jsonl", ["a1", "a2", "a3"]), ("b.jsonl", ["b1", "b2", "b3"])):
        _jsonl(tmp_path, [{"phrase": p} for p in phrases], name)
    files = ["a.jsonl", "b.jsonl"]
    assert rows(files, "train[:2]") == ["a1", "a2"]
    assert rows(files, "train[:50%]") == ["a1", "a2", "a3"]
    assert rows(files, "train[4:]") == ["b2", "b3"]
    assert rows({"train": ["a.jsonl"], "validation": ["b.jsonl"]}, "validation[1:]") == ["b2", "b3"]


def test_a_row_that_does_not_parse_is_named_with_the_parsers_own_message(tmp_path, tiny_model):
    from modelpress.errors import DataError

    (tmp_path / "bad.jsonl").write_text('{"phrase": "a"}\n{"phrase": "b"}\n{"phrase" "c"}\n')
    with pytest.raises(DataError) as err:
        _plan_rows(tmp_path, tiny_model, {"data_name": "json", "data_files": ["bad.jsonl"]})
    assert "An error occurred while generating the dataset" not in str(err.value), err.value
    assert "bad.jsonl" in str(err.value)


def test_a_whole_number_in_a_column_of_floats_is_written_as_the_file_writes_it(tmp_path):
    """datasets reads a column that mixes 4 and 4.5 as floats: the answer 4 was trained and compared as "4.0", which
    another file holding only whole numbers writes "4"."""
    path = _jsonl(tmp_path, [{"q": "a", "n": 4}, {"q": "b", "n": 4.5}])
    config = _config(path, text_template="Q: {q}\nA: {n}")
    examples = render(config, load_rows(config, tmp_path / "cache"))
    assert [ex.completion for ex in examples] == ["4", "4.5"]


def test_a_classifiers_eval_split_keeps_every_held_out_label_among_the_trained(caplog):
    """A class of one row that the split held out stopped the run ("labels ['anger'] do not occur in the training
    data"): the split caused it, not the data. That row is trained instead, with a warning."""
    rows = [Example(f"text {i}", "joy" if i % 2 else "fear", f"row {i}") for i in range(40)]
    rows.append(Example("a furious text", "anger", "row 40"))
    seeds = [seed for seed in range(50) if "anger" in {ex.completion for ex in split_examples(rows, 0.2, seed)[1]}]
    assert seeds  # a seed that held the one anger row out, as the plain split does
    with caplog.at_level("WARNING", logger="modelpress"):
        train, held = split_examples(rows, 0.2, seeds[0], classes=True)
    assert "anger" in {ex.completion for ex in train} and "anger" not in {ex.completion for ex in held}
    assert {ex.completion for ex in held} <= {ex.completion for ex in train} and len(train) + len(held) == 41
    assert "the eval split held every row of the labels anger: those rows are trained instead (1 prompts)" in caplog.text
    # rows all of their own label leave no row to hold out: said, not an empty eval split
    alone = [Example(f"text {i}", f"label {i}", f"row {i}") for i in range(5)]
    with pytest.raises(DataError, match="holds out only rows whose labels no training row has"):
        split_examples(alone, 0.4, 0, classes=True)


def test_an_eval_data_config_that_shares_prompts_with_the_training_rows_is_said(tiny_model, tmp_path, caplog):
    """Two data configs over one file (split train[:80%] and train[80%:]) slice rows, not distinct prompts: the
    cookbook file repeats phrases, so the eval loss partly measured recall of trained rows, unsaid."""
    from conftest import tone_workflow
    from modelpress.config.normalize import normalize
    from modelpress.context import DataPlan

    raw = tone_workflow(tiny_model, {})
    val = copy.deepcopy(raw["data_configs"][0])
    raw["data_configs"][0]["load_dataset_config"]["split"] = "train[:80%]"
    val.update(name="val")
    val["load_dataset_config"]["split"] = "train[80%:]"
    raw["data_configs"].append(val)
    raw["passes"] = {"lora": {"type": "LoRA", "train_data_config": "tone", "eval_data_config": "val"}}
    config = normalize(raw, base_dir=tmp_path)
    with caplog.at_level("WARNING", logger="modelpress"):
        train, evaluation = DataPlan(config, tmp_path / "c").training_examples(config.passes[0].params)
    assert train and evaluation
    assert "eval data config 'val': " in caplog.text and "are asked by training rows of 'tone' too" in caplog.text
