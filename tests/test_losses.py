"""The answer-only loss (logits at trained positions only) equals the model's own full loss."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _tiny_lora_llama():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                             init_lora_weights=False))  # non-zero B: gradients reach A too
    return model.float()


def _batch():
    from modelpress.data import Collator

    rows = []
    for n, (prompt, answer) in enumerate([(7, 2), (11, 3), (5, 1), (9, 4)]):
        ids = [(13 * n + 5 * i) % 97 for i in range(prompt + answer)]
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:], "attention_mask": [1] * len(ids)})
    return Collator(pad_id=0)(rows)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_answer_loss_and_its_gradients_equal_the_full_loss():
    from modelpress.passes.losses import AnswerCollator, answer_loss, slices_logits, trained_positions

    model = _tiny_lora_llama()
    assert slices_logits(model)
    batch = _batch()
    full = model(**batch).loss
    full.backward()
    expected = _grads(model)
    model.zero_grad()

    mask = trained_positions(batch["labels"])
    assert int(mask.sum()) == 2 + 3 + 1 + 4 and not mask[:, -1].any()
    labels = batch.pop("labels")
    outputs = model(**batch, logits_to_keep=mask)
    assert outputs.logits.shape == (10, 97)  # only the ten answer positions went through the LM head
    sliced = answer_loss(outputs, labels)
    sliced.backward()
    assert sliced.item() == pytest.approx(full.item(), rel=1e-5)
    for name, grad in _grads(model).items():
        assert torch.allclose(grad, expected[name], atol=1e-6), name

    # the collator adds the same mask (10 of 4 x 15 positions are trained); with full logits (no mask) the
    # loss is the same too
    with_mask = AnswerCollator(lambda rows: _batch())([])
    assert torch.equal(with_mask["logits_to_keep"], mask)
    assert "logits_to_keep" not in AnswerCollator(lambda rows: _batch(), most=0.1)([])
    assert answer_loss(model(**batch), labels).item() == pytest.approx(full.item(), rel=1e-5)
    # two accumulation halves divided by the whole count sum to the whole
    halves = 0.0
    for rows in (slice(0, 2), slice(2, 4)):
        part = {k: v[rows] for k, v in batch.items()}
        out = model(**part, logits_to_keep=trained_positions(labels[rows]))
        halves += answer_loss(out, labels[rows], num_items_in_batch=10).item()
    assert halves == pytest.approx(full.item(), rel=1e-5)


def test_a_model_without_the_mask_slicing_is_not_given_one():
    from modelpress.passes.losses import slices_logits

    assert not slices_logits(torch.nn.Linear(2, 2))
