"""The answer-only loss (logits at trained positions only) equals the model's own full loss."""

from __future__ import annotations

import json

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


def test_a_bert_classifiers_loss_is_the_same_accumulated_as_in_one_batch(bert_folder, tmp_path):
    """BERT's forward takes **kwargs, so transformers treats its loss as divided by the rows of every accumulated
    micro-batch and skips its own division; BERT's mean loss is per micro-batch, so with 2 steps of accumulation
    the loss and gradients were twice those of one batch of the same rows."""
    from conftest import tone_workflow
    from modelpress.config.normalize import normalize
    from modelpress.engine import run_workflow

    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    model = tmp_path / "bert"  # the fixture's BERT, without dropout: the two runs draw no random numbers
    config = BertConfig.from_pretrained(bert_folder, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertForSequenceClassification.from_pretrained(bert_folder, config=config).save_pretrained(str(model))
    AutoTokenizer.from_pretrained(bert_folder).save_pretrained(str(model))
    losses = []
    for batch, steps in ((2, 1), (1, 2)):
        lora = {"type": "LoRA", "train_data_config": "tone", "r": 4, "target_modules": ["query", "value"],
                "lora_dropout": 0.0,
                "training_args": {"max_steps": 1, "per_device_train_batch_size": batch, "group_by_length": False,
                                  "gradient_accumulation_steps": steps, "learning_rate": 1e-3}}
        raw = tone_workflow(model, {"lora": lora}, evaluation={"enabled": False},
                            output_dir=str(tmp_path / f"out{steps}"), cache_dir=str(tmp_path / f"cache{steps}"))
        raw["input_model"]["task"] = "text-classification"
        raw["data_configs"][0]["pre_process_data_config"] = {"text_cols": ["phrase"], "label_col": "tone"}
        run_workflow(normalize(raw, tmp_path), show_progress=False)
        (log,) = (tmp_path / f"cache{steps}").glob("passes/*/model/training_log.json")
        losses.append(json.loads(log.read_text())["train_loss"])
    assert losses[1] == pytest.approx(losses[0], rel=1e-5) and losses[0] > 0.5  # four tones: about ln 4
