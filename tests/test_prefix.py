"""Running a batch's shared prompt prefix once gives the plain forward's loss and gradients."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

HEAD = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38]  # ten tokens every row opens with (a system prompt's stand-in)


def _tiny_lora(kind: str = "llama", dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config_class, model_class = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[kind]
    config = config_class(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = get_peft_model(model_class(config), LoraConfig(
        r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "k_proj", "v_proj", "down_proj"],
        init_lora_weights=False))  # non-zero B: gradients reach A too
    return model.float()


def _batch(head=HEAD):
    from modelpress.data import Collator

    rows = []
    for n, (prompt, answer) in enumerate([(4, 2), (9, 3), (2, 1), (6, 4)]):
        ids = list(head) + [(13 * n + 5 * i) % 97 for i in range(prompt + answer)]
        rows.append({"input_ids": ids, "labels": [-100] * (len(ids) - answer) + ids[-answer:],
                     "attention_mask": [1] * len(ids)})
    return Collator(pad_id=0)(rows)


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_the_split_batch_gives_the_plain_loss_and_gradients(kind):
    from modelpress.passes.prefix import split_prefix

    model = _tiny_lora(kind)
    batch = _batch()
    split = split_prefix(model, batch)
    assert split["input_ids"].shape[1] == batch["input_ids"].shape[1] - len(HEAD)  # the rows differ from there on
    assert split["attention_mask"].shape == batch["attention_mask"].shape
    full_loss, full_grads = _loss_and_grads(model, batch)
    loss, grads = _loss_and_grads(model, split_prefix(model, batch))
    assert loss == pytest.approx(full_loss, rel=1e-5)
    for name, grad in grads.items():
        assert grad.abs().max() > 0, name
        assert torch.allclose(grad, full_grads[name], atol=1e-6, rtol=1e-4), name


def test_the_answer_only_loss_and_its_mask_follow_the_split():
    from modelpress.passes.losses import AnswerCollator, answer_loss
    from modelpress.passes.prefix import split_prefix

    model = _tiny_lora()
    batch = AnswerCollator(lambda rows: _batch(), most=1.0)([])
    expected, _ = _loss_and_grads(model, _batch())
    split = split_prefix(model, batch)
    assert split["logits_to_keep"].shape == split["input_ids"].shape
    assert int(split["logits_to_keep"].sum()) == int(batch["logits_to_keep"].sum()) == 2 + 3 + 1 + 4
    labels = split.pop("labels")
    assert answer_loss(model(**split), labels).item() == pytest.approx(expected, rel=1e-5)


def test_what_has_no_worthwhile_shared_prefix_goes_unchanged():
    from modelpress.passes.prefix import MIN_PREFIX, shared_prefix_length, split_prefix

    model = _tiny_lora()
    short = _batch(HEAD[:MIN_PREFIX - 2])  # 6 + the shortest prompt's 1 token: under MIN_PREFIX
    assert shared_prefix_length(short["input_ids"], short["attention_mask"], short["labels"]) == 0
    assert split_prefix(model, short) is short
    one_row = {k: v[:1] for k, v in _batch().items()}
    assert split_prefix(model, one_row) is one_row
    trained_everywhere = _batch()
    trained_everywhere["labels"] = trained_everywhere["input_ids"].clone()  # loss on every token: nothing to share
    assert shared_prefix_length(trained_everywhere["input_ids"], None, trained_everywhere["labels"]) == 0
    padded = _batch()
    padded["attention_mask"][2, 3] = 0  # a hole in one row's head ends the shared part there
    assert shared_prefix_length(padded["input_ids"], padded["attention_mask"], padded["labels"]) == 0


def test_it_applies_only_where_one_computation_for_all_rows_is_exact():
    from modelpress.passes.prefix import prefix_sharing_applies

    assert prefix_sharing_applies(_tiny_lora(), 0.0, gradient_checkpointing=False, processes=1)
    assert not prefix_sharing_applies(_tiny_lora(), 0.05, gradient_checkpointing=False, processes=1)
    assert not prefix_sharing_applies(_tiny_lora(), 0.0, gradient_checkpointing=True, processes=1)
    assert not prefix_sharing_applies(_tiny_lora(), 0.0, gradient_checkpointing=False, processes=2)
    model = _tiny_lora()
    model.config.attention_dropout = 0.1
    assert not prefix_sharing_applies(model, 0.0, gradient_checkpointing=False, processes=1)
    for rope in ("longrope", "dynamic"):  # frequencies picked per call from its longest position
        model = _tiny_lora()
        model.config.rope_parameters = {**(model.config.rope_parameters or {}), "rope_type": rope}
        assert not prefix_sharing_applies(model, 0.0, gradient_checkpointing=False, processes=1)
