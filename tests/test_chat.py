"""Chat data: rows rendered through a chat template, with the loss on the assistant turns only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from modelpress.chat import ChatFormat
from modelpress.config.schema import DataConfig
from modelpress.data import IGNORE, render, tokenize
from modelpress.errors import DataError

# ChatML, as SmolLM2 and Qwen write it; its default system prompt is added when a conversation has none.
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


def _config(**pre) -> DataConfig:
    return DataConfig(name="chat", data_files=["x.json"], format="json", chat_template=CHATML, **pre)


def _rows(*rows):
    return [(f"f row {i + 1}", row) for i, row in enumerate(rows)]


def _trained_text(tokenizer, ids, labels) -> str:
    """The text of the tokens the loss is on (labels not ignored), in order."""
    return tokenizer.decode([i for i, label in zip(ids, labels) if label != IGNORE])


def test_chat_columns_render_like_apply_chat_template_and_train_on_the_answer_only(tokenizer):
    config = _config(chat_columns={"user": "Tone of: {phrase}", "assistant": "{tone}"})
    assert config.loss_on == "completion" and config.add_special_tokens is False  # chat defaults
    [ex] = render(config, _rows({"phrase": "We won!", "tone": "joy"}), ChatFormat(CHATML))
    messages = [{"role": "user", "content": "Tone of: We won!"}, {"role": "assistant", "content": "joy"}]
    assert ex.prompt == tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert ex.prompt + ex.target == tokenizer.apply_chat_template(messages, tokenize=False)
    assert ex.completion == "joy" and ex.target == "joy<|im_end|>\n" and ex.stop == "<|im_end|>"
    [(ids, labels)] = tokenize([ex], tokenizer, config)
    assert ids == tokenizer(ex.prompt + ex.target, add_special_tokens=False)["input_ids"]
    head = len(tokenizer(ex.prompt, add_special_tokens=False)["input_ids"])
    # token by token: every prompt token is masked, every answer token (and the end marker) is trained
    assert labels[:head] == [IGNORE] * head and labels[head:] == ids[head:]
    assert _trained_text(tokenizer, ids, labels) == "joy<|im_end|>\n"


def test_a_messages_column_trains_every_assistant_turn_and_masks_the_rest(tokenizer):
    config = _config()
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Tone of 'we won'?"},
             {"role": "assistant", "content": "joy"}]
    [ex] = render(config, _rows({"messages": turns}), ChatFormat(CHATML))
    assert ex.completion == "joy"
    assert ex.prompt == tokenizer.apply_chat_template(turns[:-1], tokenize=False, add_generation_prompt=True)
    [(ids, labels)] = tokenize([ex], tokenizer, config)
    assert ids == tokenizer(tokenizer.apply_chat_template(turns, tokenize=False), add_special_tokens=False)["input_ids"]
    assert _trained_text(tokenizer, ids, labels) == "Hello<|im_end|>\njoy<|im_end|>\n"
    everything = _config(loss_on="all")
    [(_, all_labels)] = tokenize(render(everything, _rows({"messages": turns}), ChatFormat(CHATML)), tokenizer,
                                 everything)
    assert all_labels == ids


def test_a_multi_turn_prompt_is_tokenized_as_inference_reads_it(tokenizer):
    """A template that joins role and content with ': ' puts a piece boundary between a space and the answer's
    first word; byte-level BPE merges the two ("Ġthe") when the prompt is read whole, as inference reads it."""
    plain = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
             "{% if add_generation_prompt %}assistant: {% endif %}")
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "the end"},
             {"role": "user", "content": "Tone of 'we won'?"}, {"role": "assistant", "content": "joy"}]
    config = DataConfig(name="chat", data_files=["x.json"], format="json", chat_template=plain)
    [ex] = render(config, _rows({"messages": turns}), ChatFormat(plain))
    by_piece = [t for text, _ in ex.turns for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    whole = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
    assert by_piece != whole  # the case this is about: pieces tokenize apart
    [(ids, labels)] = tokenize([ex], tokenizer, config)
    assert ids[:len(whole)] == whole
    learnt = tokenizer.decode([i for i, label in zip(ids[:len(whole)], labels) if label != IGNORE])
    assert learnt.strip() == "the end"  # the earlier answer, with the space its first token carries


def test_a_file_mixing_role_content_and_sharegpt_turns_reads_both(tokenizer):
    """`datasets` reads such a file with all four keys in every turn, the other pair null."""
    row = {"messages": [{"role": None, "content": None, "from": "human", "value": "We won!"},
                        {"role": "assistant", "content": "joy", "from": None, "value": None}]}
    [ex] = render(_config(), _rows(row), ChatFormat(CHATML))
    assert ex.prompt.endswith("<|im_start|>user\nWe won!<|im_end|>\n<|im_start|>assistant\n")
    assert ex.completion == "joy"


def test_sharegpt_turns_and_a_system_prompt(tokenizer):
    config = _config(system_prompt="Name the tone.")
    row = {"messages": [{"from": "human", "value": "We won!"}, {"from": "gpt", "value": "joy"}]}
    [ex] = render(config, _rows(row), ChatFormat(CHATML))
    assert ex.prompt.startswith("<|im_start|>system\nName the tone.<|im_end|>\n<|im_start|>user\nWe won!")
    assert ex.completion == "joy"


@pytest.mark.parametrize("row, message", [
    ({"messages": [{"role": "user", "content": "Hi"}]}, "must end with an assistant turn"),
    ({"messages": "not a list"}, "must hold a non-empty list of messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "needs a role"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "joy", "weight": 0},
                   {"role": "user", "content": "Again"}, {"role": "assistant", "content": "joy"}]},
     r"messages\[1\] asks not to be trained on \(weight: 0\)"),  # Axolotl's switch, not read: refused, not ignored
    ({"messages": [{"role": "user", "content": "Hi", "train": False}, {"role": "assistant", "content": "joy"}]},
     r"messages\[0\] asks not to be trained on \(train: false\)"),
])
def test_bad_conversations_name_the_row(row, message):
    with pytest.raises(DataError, match=message) as err:
        render(_config(), _rows(row), ChatFormat(CHATML))
    assert "f row 1" in str(err.value)


STRICT = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
          "{% endif %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}")


@pytest.mark.parametrize("template, row, message", [
    (STRICT, {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "a"},
                           {"role": "assistant", "content": "b"}]}, "System role not supported"),  # Gemma 2's refusal
    ("{% for m in messages %}{{ m['content'] }", {"messages": [{"role": "user", "content": "a"},
                                                              {"role": "assistant", "content": "b"}]}, "cannot render"),
    ("{% for m in messages %}{{ m['content'] }}{% endfor %}", {"messages": [{"role": "user", "content": "a"},
                                                                           {"role": "assistant", "content": ""}]},
     "no text"),
])
def test_a_template_that_cannot_render_a_row_names_the_row_and_why(template, row, message):
    with pytest.raises(DataError, match=message) as err:
        render(_config(), _rows(row), ChatFormat(template))
    assert str(err.value).startswith("f row 1: ")


def test_a_tokenizer_with_several_named_templates_uses_the_default_or_the_one_named(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    def saved(templates: dict, name: str) -> Path:
        tok.chat_template = templates
        tok.save_pretrained(tmp_path / name)
        shutil.copy(Path(tiny_model) / "config.json", tmp_path / name / "config.json")
        return tmp_path / name

    folder = saved({"default": CHATML, "tool_use": STRICT}, "a")
    assert ChatFormat.from_model(folder).template == CHATML
    assert ChatFormat.from_model(folder, "tool_use").template == STRICT
    assert ChatFormat.from_model(folder, "{{ 'own' }}").template == "{{ 'own' }}"  # a template string is used as given
    with pytest.raises(DataError, match=r"chat_template 'chatml' is neither a Jinja template .* named templates "
                                        r"\(default, tool_use\)"):  # Axolotl's name for a template: not Jinja
        ChatFormat.from_model(folder, "chatml")
    with pytest.raises(DataError, match="several chat templates \\(rag, tool_use\\)"):
        ChatFormat.from_model(saved({"tool_use": STRICT, "rag": CHATML}, "b"))


THINK_DROPPING = ("{% for m in messages %}{% set c = m['content'] %}{% if m['role'] == 'assistant' and not loop.last %}"
                  "{% set c = c.split('</think>')[-1] %}{% endif %}{{ m['role'] }}: {{ c }}\n{% endfor %}"
                  "{% if add_generation_prompt %}assistant: {% endif %}")  # as Qwen3's template treats earlier turns


def test_a_template_that_rewrites_earlier_turns_trains_the_last_turn_only(tokenizer, caplog):
    """Qwen3 and DeepSeek-R1 drop an earlier answer's think block: that answer cannot be located, so the
    conversation trains its last answer only (it was refused, and the hint, loss_on: all, trained every token)."""
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>x</think>b"},
             {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    config = _config()
    with caplog.at_level("WARNING", logger="modelpress"):
        examples = render(config, _rows({"messages": turns}, {"messages": turns}), ChatFormat(THINK_DROPPING))
    assert caplog.text.count("only the last assistant turn is trained") == 1
    ex = examples[0]
    assert ex.prompt == "user: a\nassistant: b\nuser: c\nassistant: " and ex.completion == "d"
    assert not any(trained for _, trained in ex.turns)
    [(ids, labels)] = tokenize([ex], tokenizer, config)
    assert _trained_text(tokenizer, ids, labels).strip() == "d"


# DeepSeek-R1-Distill's way: earlier answers lose their think block, and the generation prompt opens a think block
# that a rendered answer does not have
R1 = ("{% for m in messages %}{% if m['role'] == 'user' %}<|User|>{{ m['content'] }}{% else %}"
      "{% set c = m['content'] %}{% if '</think>' in c %}{% set c = c.split('</think>')[-1] %}{% endif %}"
      "<|Assistant|>{{ c }}<|end|>{% endif %}{% endfor %}{% if add_generation_prompt %}<|Assistant|><think>\n"
      "{% endif %}")


def test_a_generation_prompt_that_opens_the_answer_otherwise_trains_after_the_prompt_inference_writes(tokenizer):
    """DeepSeek-R1-Distill's generation prompt ends with "<think>\n", which its rendered answer lacks: every row,
    a single turn too, was refused as a template that "rewrites earlier turns". The answer now follows the prompt as
    inference writes it (generate's too), and only the answer and its end are trained."""
    from modelpress.generate import prompt_and_stop

    columns = {"user": "{q}", "assistant": "{a}"}
    [ex] = render(_config(chat_columns=columns), _rows({"q": "hi", "a": "joy"}), ChatFormat(R1))
    assert (ex.prompt, ex.completion, ex.stop) == ("<|User|>hi<|Assistant|><think>\n", "joy", "<|end|>")
    [(ids, labels)] = tokenize([ex], tokenizer, _config(chat_columns=columns))
    assert _trained_text(tokenizer, ids, labels) == "joy<|end|>"
    card = {"task": {"chat": {"template": R1, "special_tokens": {}, "columns": columns}}}
    assert prompt_and_stop(card, "hi") == (ex.prompt, ex.stop)
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "<think>x</think>b"},
             {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    [multi] = render(_config(), _rows({"messages": turns}), ChatFormat(R1))  # earlier turns: context
    # an answer that starts as the generation prompt goes on ("<" after the assistant tag) is kept whole
    [tagged] = render(_config(chat_columns=columns), _rows({"q": "hi", "a": "<b>bold</b>"}), ChatFormat(R1))
    assert (tagged.prompt, tagged.completion, tagged.target) == (ex.prompt, "<b>bold</b>", "<b>bold</b><|end|>")
    assert (multi.prompt, multi.completion) == ("<|User|>a<|Assistant|>b<|end|><|User|>c<|Assistant|><think>\n", "d")


def test_a_template_whose_last_turn_cannot_be_located_is_refused():
    counting = ("{{ messages | length }}\n{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant: {% endif %}")  # its first line changes with every turn
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
             {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    with pytest.raises(DataError, match="growing prefix.*Give a template that renders turns one after another"):
        render(_config(), _rows({"messages": turns}), ChatFormat(counting))


def test_generate_sends_new_text_with_the_system_message_every_row_opened_with(tokenizer):
    """A messages column whose rows carry their own (shared) system message: the card records it, so generate's
    prompt is the training prompt; the template would otherwise put its own default system prompt there."""
    from modelpress.chat import system_prompt_of
    from modelpress.generate import chat_prompt_for

    rows = [{"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": phrase},
                          {"role": "assistant", "content": "joy"}]} for phrase in ("We won!", "Yay")]
    examples = render(_config(), _rows(*rows), ChatFormat(CHATML))
    system, other = system_prompt_of([ex.history for ex in examples], None)
    assert (system, other) == ("Be terse.", 0)
    chat = {"template": CHATML, "special_tokens": {}, "columns": None, "system_prompt": system}
    assert chat_prompt_for(chat, "We won!") == examples[0].prompt
    assert system_prompt_of([ex.history for ex in examples], "Name the tone.") == ("Name the tone.", 2)  # overridden
    mixed = examples + render(_config(), _rows({"messages": rows[0]["messages"][1:]}), ChatFormat(CHATML))
    assert system_prompt_of([ex.history for ex in mixed], None) == (None, 2)


def test_blanks_before_an_answer_do_not_end_the_training_prompt(tokenizer):
    from modelpress.generate import chat_prompt_for

    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  yo"}]}
    [ex] = render(_config(), _rows(row), ChatFormat(CHATML))
    assert ex.prompt == chat_prompt_for({"template": CHATML, "special_tokens": {}}, "hi")
    assert ex.completion == "yo" and ex.target == "yo<|im_end|>\n"


def test_generate_sends_the_text_as_it_is_when_the_user_turn_had_two_columns(caplog):
    from modelpress.generate import chat_prompt_for

    chat = {"template": CHATML, "special_tokens": {}, "columns": {"user": "{phrase} ({context})", "assistant": "tone"}}
    with caplog.at_level("WARNING", logger="modelpress"):
        prompt = chat_prompt_for(chat, "We won!")
    assert "<|im_start|>user\nWe won!<|im_end|>" in prompt  # not "We won! (We won!)"
    assert "built from 2 columns (context, phrase)" in caplog.text


def test_generate_builds_the_prompt_the_model_was_trained_on(tokenizer):
    from modelpress.generate import prompt_and_stop, prompt_for

    config = _config(chat_columns={"user": "Tone of: {phrase}", "assistant": "{tone}"}, system_prompt="Be brief.")
    [ex] = render(config, _rows({"phrase": "We won!", "tone": "joy"}), ChatFormat(CHATML))
    card = {"task": {"chat": {"template": CHATML, "special_tokens": {}, "columns": config.chat_columns,
                              "system_prompt": "Be brief."}}}
    assert prompt_and_stop(card, "We won!") == (ex.prompt, ex.stop) and ex.stop == "<|im_end|>"
    # a system turn the columns fill from each row has no value at generation: it is left out, and the text
    # goes to the user turn only (it once filled every turn)
    columns = {"system": "persona", "user": "Tone of: {phrase}", "assistant": "{tone}"}
    card["task"]["chat"].update(columns=columns, system_prompt=None)
    [ex] = render(_config(chat_columns=columns), _rows({"persona": "We won!", "phrase": "We won!", "tone": "joy"}),
                  ChatFormat(CHATML))
    prompt = prompt_for(card, "We won!")
    user_turn = "<|im_start|>user\nTone of: We won!<|im_end|>\n<|im_start|>assistant\n"
    assert prompt.count("We won!") == 1 and prompt.endswith(user_turn) and ex.prompt.endswith(user_turn)


# Qwen3's way with the last answer: an empty think block before it, which the generation prompt (enable_thinking
# unset) leaves out; and Llama 3's and Gemma's: the content trimmed.
THINKING = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
            "{% if message['role'] == 'assistant' and loop.last %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
            "{{ message['content'] + '<|im_end|>\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TRIMMING = ("{% for message in messages %}{{ '<|start|>' + message['role'] + '\n\n' + message['content'] | trim "
            "+ '<|eot|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start|>assistant\n\n' }}{% endif %}")


@pytest.mark.parametrize("template, lead, stop", [(THINKING, "<think>\n\n</think>\n\n", "<|im_end|>"),
                                                 (TRIMMING, "", "<|eot|>")])
def test_a_template_that_opens_or_trims_the_answer_trains_and_prompts_as_it_renders(tokenizer, template, lead, stop):
    """The text a template opens an answer with belongs to the prompt (the model is asked after it, as generate
    asks it), and the answer is compared as the template writes it: the stop was lost and every answer read as
    wrong (Qwen3's '<think>'), or a trimmed newline was scored as trained."""
    from modelpress.generate import prompt_and_stop

    columns = {"user": "{q}", "assistant": "{a}"}
    [ex] = render(_config(chat_columns=columns), _rows({"q": "hi", "a": "positive\n"}), ChatFormat(template))
    assert ex.prompt.endswith("assistant\n" + ("\n" if template == TRIMMING else "") + lead)
    assert (ex.completion, ex.stop) == ("positive", stop) and ex.target == "positive" + ex.closing
    [(ids, labels)] = tokenize([ex], tokenizer, _config(chat_columns=columns))
    assert _trained_text(tokenizer, ids, labels).startswith("positive")  # the think block is prompt, not answer
    card = {"task": {"chat": {"template": template, "special_tokens": {}, "columns": columns}}}
    assert prompt_and_stop(card, "hi") == (ex.prompt, ex.stop)
    # a short answer is looked for after the lead, not inside it ("k" is in "<think>")
    [short] = render(_config(chat_columns=columns), _rows({"q": "hi", "a": "k"}), ChatFormat(template))
    assert (short.prompt, short.completion, short.stop) == (ex.prompt, "k", stop)
    # a template that rewrites the answer (Qwen3 moves a think block out of it): trained as it renders it
    rewriting = template.replace("message['content']", "message['content'] | upper")
    [kept] = render(_config(chat_columns=columns), _rows({"q": "hi", "a": "positive"}), ChatFormat(rewriting))
    assert kept.completion == "positive" and "POSITIVE" in kept.target and not kept.prompt.endswith("POSITIVE")
    if lead:  # a template that rewrites answers only, after its lead (Qwen3 and an answer holding a think block)
        answers_only = template.replace("{{ message['content'] + '<|im_end|>\n' }}",
                                        "{{ message['content'] | replace('positive', 'POSITIVE') + '<|im_end|>\n' }}")
        assert answers_only != template
        [rewritten] = render(_config(chat_columns=columns), _rows({"q": "hi", "a": "positive"}), ChatFormat(answers_only))
        assert rewritten.prompt == ex.prompt and rewritten.target.startswith("POSITIVE")  # the lead stays prompt
    # an answer with a leading blank the template keeps (Qwen3 strips only newlines): the blank goes to the prompt
    [spaced] = render(_config(chat_columns=columns), _rows({"q": "hi", "a": " positive"}), ChatFormat(template))
    assert (spaced.completion, spaced.stop) == ("positive", stop) and spaced.prompt.startswith(ex.prompt)


def test_a_template_that_writes_today_s_date_writes_one_fixed_day():
    """Llama 3's system header holds strftime_now's date: rows rendered on one day differed from the prompts
    evaluated or generated on the next, under one data fingerprint."""
    dated = ("{%- if not date_string is defined %}{%- if strftime_now is defined %}"
             "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = 'unset' %}{%- endif %}"
             "{%- endif %}Today Date: {{ date_string }} ({{ strftime_now('%A %-d %B %y, %m') }})\n"
             "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}")
    text = ChatFormat(dated).render([{"role": "user", "content": "hi"}])
    assert text == "Today Date: 26 Jul 2024 (Friday 26 July 24, 07)\nuser: hi\n"


def test_generate_builds_a_text_templates_prompt_and_stop_as_evaluation_does():
    from modelpress.generate import prompt_and_stop

    for template in ('Classify {{"text": "{phrase}"}}\nTone: {tone}<|end|>', "Phrase: {phrase}\nTone: {tone}\n###\n",
                     "{phrase} -> {tone}"):
        config = DataConfig(name="t", data_files=["x.json"], format="json", text_template=template)
        [ex] = render(config, _rows({"phrase": "I won!", "tone": "joy"}))
        assert prompt_and_stop({"task": {"text_template": template}}, "I won!") == (ex.prompt, ex.stop), template
    assert prompt_and_stop({"task": {"text_template": 'Classify {{"text": "{phrase}"}}\nTone: {tone}<|end|>'}},
                           "I won!") == ('Classify {"text": "I won!"}\nTone: ', "<|end|>")
    two_inputs = {"task": {"text_template": "{context}: {phrase} -> {tone}"}}
    assert prompt_and_stop(two_inputs, "I won!") == ("I won!", "") and prompt_and_stop({}, "hi") == ("hi", "")


def test_generate_streams_the_answer_up_to_the_stop_text_even_when_pieces_split_it():
    from modelpress.generate import until_stop

    assert "".join(until_stop(iter(["joy", "\n#", "##", "\nPhrase"]), "###")) == "joy\n"
    assert list(until_stop(iter(["jo", "y<|e", "nd|> more"]), "<|end|>")) == ["jo", "y"]
    assert "".join(until_stop(iter(["a <", "b> c"]), "<|end|>")) == "a <b> c"  # a false start is given back
    assert list(until_stop(iter(["a", "b"]), "")) == ["a", "b"]


def test_a_template_with_a_closing_marker_learns_and_reads_the_answer_up_to_it():
    config = DataConfig(name="t", data_files=["x.json"], format="json", loss_on="completion",
                        text_template="<|user|>\n{phrase}<|end|>\n<|assistant|>\n{tone}<|end|>")
    [ex] = render(config, _rows({"phrase": "We won!", "tone": "joy"}))
    assert ex.prompt == "<|user|>\nWe won!<|end|>\n<|assistant|>\n"
    assert (ex.completion, ex.target, ex.stop) == ("joy", "joy<|end|>", "<|end|>")


@pytest.mark.parametrize("row, message", [
    ({"phrase": "We won!", "tone": None}, "column 'tone' is missing or null"),  # once trained as the text "None"
    ({"phrase": {"text": "We won!"}, "tone": "joy"}, "column 'phrase' is dict"),
    ({"phrase": "We won!", "tone": "  "}, "the assistant turn, the answer to learn and to measure, is empty"),
    ({"phrase": "We won!"}, "chat_columns names column 'tone', which the row lacks"),
])
def test_chat_columns_take_text_only_and_an_answer(row, message):
    config = _config(chat_columns={"user": "Tone of: {phrase}", "assistant": "{tone}"})
    with pytest.raises(DataError, match=message) as err:
        render(config, _rows(row), ChatFormat(CHATML))
    assert str(err.value).startswith("f row 1: ")


@pytest.mark.parametrize("loss_on", ["completion", "all"])
def test_the_eval_split_keeps_a_conversation_with_the_one_whose_earlier_answer_it_is(loss_on):
    """Row B trains the answer "joy" to "We won!" as its first assistant turn: with row A (that question alone)
    held out, B trained on A's answer. Both now land on one side, whatever the seed and the loss (with loss_on
    all, where only the last turn is cut out of the rendering, they fell apart)."""
    from modelpress.data_split import split_examples

    won = [{"role": "user", "content": "We won!"}, {"role": "assistant", "content": "joy"}]
    rows = [{"messages": won}, {"messages": won + [{"role": "user", "content": "Why?"},
                                                   {"role": "assistant", "content": "the final"}]}]
    rows += [{"messages": [{"role": "user", "content": f"phrase {i}"}, {"role": "assistant", "content": "fear"}]}
             for i in range(8)]
    examples = render(_config(loss_on=loss_on), _rows(*rows), ChatFormat(CHATML))
    for seed in range(12):
        train, held = split_examples(examples, 0.3, seed)
        sides = [any(ex is examples[i] for ex in held) for i in (0, 1)]
        assert sides[0] == sides[1], seed
        assert len(train) + len(held) == len(examples)
        assert not {ex.prompt for ex in train} & {ex.prompt for ex in held}


def test_the_eval_split_keeps_rows_that_ask_the_same_together():
    """Rows asking one thing written with other case, spacing or Unicode form fell on both sides: the model was
    measured on what it had trained on. The system turn counts (it may hold the row's input); answers do not."""
    from modelpress.data_split import split_examples

    def asks(system: str, text: str) -> dict:
        return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": text},
                             {"role": "assistant", "content": "joy"}]}

    same = [asks("Be brief.", "We won the café cup!"), asks("be  BRIEF.", "we  WON the cafe\u0301 cup!")]
    others = [asks("Be brief.", f"phrase {i}") for i in range(8)]
    examples = render(_config(), _rows(*same, *others), ChatFormat(CHATML))
    for seed in range(12):
        train, held = split_examples(examples, 0.3, seed)
        sides = [any(ex is examples[i] for ex in held) for i in (0, 1)]
        assert sides[0] == sides[1], seed
    # the input in the system turn, one instruction for all: ten rows, not one group
    inputs = render(_config(), _rows(*[asks(f"phrase {i}", "What tone?") for i in range(10)]), ChatFormat(CHATML))
    train, held = split_examples(inputs, 0.3, 0)
    assert (len(train), len(held)) == (7, 3)


def test_generate_on_a_folder_without_a_recipe_uses_the_tokenizers_own_chat_template(tiny_model, tmp_path):
    """`export` evaluates nothing, so its card records no prompt recipe: an instruct model still gets its own chat
    format; a model without a chat template gets the text as it is."""
    import json

    from modelpress.generate import _own_chat_card, prompt_and_stop

    plain = tmp_path / "plain"
    plain.mkdir()
    for f in tiny_model.glob("tokenizer*"):
        shutil.copy(f, plain / f.name)
    assert _own_chat_card(plain, {}) == {} and prompt_and_stop({}, "hello") == ("hello", "")
    instruct = tmp_path / "instruct"
    shutil.copytree(plain, instruct)
    config = json.loads((instruct / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    (instruct / "tokenizer_config.json").write_text(json.dumps(config))
    card = _own_chat_card(instruct, {"id": "x"})
    assert card["id"] == "x"
    assert prompt_and_stop(card, "hello") == ("<|user|>hello<|end|><|assistant|>", "<|end|>")
    from modelpress.generate import _has_recipe

    # a model trained on plain text columns records that recipe: its tokenizer's chat template is not used
    assert _has_recipe({"task": {"task": "text-generation", "text_cols": ["text"], "data_config": "d"}})
    assert not _has_recipe({"task": {"task": "text-generation"}}) and not _has_recipe({})
    # what an export run's output card holds (write_outputs adds the answer length): still no recipe
    assert not _has_recipe({"task": {"task": "text-generation", "max_new_tokens": 8}})


# Phi-3-mini's template: an EOS token closes a conversation that no generation prompt follows
PHI3 = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")


def test_a_template_that_closes_the_conversation_with_eos_still_trains_every_assistant_turn():
    chat = ChatFormat(PHI3, {"eos_token": "<|endoftext|>"})
    messages = [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
                {"role": "user", "content": "U2"}, {"role": "assistant", "content": "A2"}]
    pieces = chat.pieces(messages)
    assert "".join(text for text, _ in pieces) == chat.render(messages)
    assert [text for text, trained in pieces if trained] == ["A1<|end|>\n", "A2<|end|>\n<|endoftext|>"]
    assert pieces[0] == ("<|user|>\nU1<|end|>\n<|assistant|>\n", False)


def test_loss_on_all_needs_only_the_last_turn_cut_out():
    """A template that rewrites earlier turns (as reasoning models' do: an earlier answer loses its <think> part):
    with loss_on: all the row renders with only its last answer cut out, as with a completion loss."""
    rewriting = ("{% for m in messages %}{% set c = m['content'] %}"
                 "{% if m['role'] == 'assistant' and not loop.last %}{% set c = c.split('</think>')[-1] %}{% endif %}"
                 "{{ m['role'] ~ ': ' ~ c ~ '\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}"
                 "{% endif %}")
    rows = _rows({"messages": [{"role": "user", "content": "hi"},
                               {"role": "assistant", "content": "<think>greet</think>yo"},
                               {"role": "user", "content": "tone?"}, {"role": "assistant", "content": "joy"}]})
    [completion_only] = render(_config(), rows, ChatFormat(rewriting))
    assert completion_only.prompt == "user: hi\nassistant: yo\nuser: tone?\nassistant: "
    [ex] = render(_config(loss_on="all"), rows, ChatFormat(rewriting))
    assert ex.completion == "joy" and ex.target == "joy\n"
    assert ex.prompt == "user: hi\nassistant: yo\nuser: tone?\nassistant: "


# Qwen3's real way: an empty think block before the last answer only when the answer holds none
QWEN3ISH = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
            "{% if message['role'] == 'assistant' and loop.last and '</think>' not in message['content'] %}"
            "{{ '<think>\n\n</think>\n\n' }}{% endif %}{{ message['content'] + '<|im_end|>\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_rows_that_bring_their_own_think_block_are_asked_by_generate_as_training_asked_them(tokenizer):
    """An answer holding a think block (data distilled from a reasoning model) is trained after the generation
    prompt alone; generate added the template's empty think block anyway, and the R1-Distill template, which drops
    the block, was compared with the row's text, think block included (a review)."""
    from modelpress.context import _lead_taken
    from modelpress.generate import chat_prompt_for

    columns = {"user": "{q}", "assistant": "{a}"}
    chat = ChatFormat(QWEN3ISH)
    [thinking] = render(_config(chat_columns=columns), _rows({"q": "hi", "a": "<think>\nhm\n</think>\n\njoy"}), chat)
    assert thinking.prompt.endswith("<|im_start|>assistant\n")
    lead = chat.turn_ends()[0]
    assert lead == "<think>\n\n</think>\n\n" and _lead_taken(lead, [thinking], "d") == {"lead": ""}
    card = {"template": QWEN3ISH, "special_tokens": {}, "columns": columns}
    assert chat_prompt_for(card, "hi") == thinking.prompt + lead  # what generate asked before
    assert chat_prompt_for({**card, **_lead_taken(lead, [thinking], "d")}, "hi") == thinking.prompt
    [plain] = render(_config(chat_columns=columns), _rows({"q": "hi", "a": "joy"}), chat)
    assert _lead_taken(lead, [plain], "d") == {} and chat_prompt_for(card, "hi") == plain.prompt
    assert _lead_taken(lead, [plain, plain, thinking], "d") == {"lead": lead}  # as most rows were asked
    [r1] = render(_config(chat_columns=columns), _rows({"q": "hi", "a": "<think>x</think>joy"}), ChatFormat(R1))
    assert (r1.completion, r1.target) == ("joy", "joy<|end|>")  # what the model learns to answer
    [r1] = render(_config(chat_columns=columns), _rows({"q": "hi", "a": "<think>\nx\n</think>\n\njoy"}), ChatFormat(R1))
    assert (r1.completion, r1.stop) == ("joy", "<|end|>")  # the blanks the template left before it: not the stop's


def test_an_earlier_answer_s_leading_blanks_do_not_merge_into_the_template_s_text(tokenizer):
    """A leading newline of an earlier answer merged with the template's newline after "assistant" into one token,
    which was trained: the model learnt a token its generation prompt never ends with (a review)."""
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\n\nHello"},
             {"role": "user", "content": "and?"}, {"role": "assistant", "content": "joy"}]
    [ex] = render(_config(), _rows({"messages": turns}), ChatFormat(CHATML))
    assert "<|im_start|>assistant\nHello<|im_end|>" in ex.prompt
    [(ids, labels)] = tokenize([ex], tokenizer, _config())
    assert _trained_text(tokenizer, ids, labels) == "Hello<|im_end|>\njoy<|im_end|>\n"
