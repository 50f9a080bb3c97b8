"""Training losses for the LoRA passes, given to the Hugging Face Trainer as `compute_loss_func`.

Both divide a summed loss by `num_items_in_batch`, the count the Trainer takes over all
gradient-accumulation micro-batches, so accumulation gives the same step as one big batch.

`answer_loss` is the causal-LM loss computed only where a label is trained. When the loss is on
the answer alone (a tone of 1-3 tokens after a 40-token prompt), most positions have no label,
yet a plain forward projects every position onto the vocabulary (49152 x 576 for SmolLM2, a
fifth of the model's compute) and takes a softmax there. transformers' `logits_to_keep`, given
a boolean (batch, length) mask, projects only the masked positions; the collator below sends
that mask, and the loss reads the matching targets. The value and gradients equal the full
loss's (tests/test_losses.py).
"""

from __future__ import annotations

import sys

IGNORE = -100


def trained_positions(labels):
    """(batch, length) bool: position p predicts a trained label at p + 1 (never the last position)."""
    import torch

    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE
    return mask


def answer_loss(outputs, labels, num_items_in_batch=None):
    """Cross-entropy of logits computed at the trained positions only (see `AnswerCollator`), or of
    full (batch, length, vocab) logits when the collator sent no mask for this batch."""
    import torch

    logits = outputs["logits"]
    labels = labels.to(logits.device)
    if logits.dim() == 3:  # every position was projected: predict label p + 1 from position p
        logits, targets = logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1)
    else:  # (n_trained, vocab), flattened in the mask's row-major order
        targets = labels[:, 1:][trained_positions(labels)[:, :-1]]
    total = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum", ignore_index=IGNORE)
    count = num_items_in_batch if num_items_in_batch is not None else max(int((targets != IGNORE).sum()), 1)
    return total / count


class AnswerCollator:
    """Wraps a token-level collator and adds the `logits_to_keep` mask `answer_loss` expects, when at
    most `most` of the batch's positions are trained: when the loss is on (nearly) every token, the
    mask would only add a gather and its gradient's scatter, so the batch goes without one."""

    def __init__(self, collate, most: float = 0.5):
        self.collate, self.most = collate, most

    def __call__(self, batch: list[dict]) -> dict:
        out = self.collate(batch)
        mask = trained_positions(out["labels"])
        if mask.sum() <= self.most * mask.numel():
            out["logits_to_keep"] = mask
        return out


def native_forward(model) -> bool:
    """Whether the model's forward is transformers' own (it takes `cache=` and `logits_to_keep`, which the
    shared-prefix paths pass): a trust_remote_code model's may name them otherwise, or take and drop them."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(inner).__module__.startswith("transformers.models.")


def slices_logits(model) -> bool:
    """Whether the model's forward takes a boolean `logits_to_keep` mask (transformers' slice_logits_to_keep)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return hasattr(sys.modules.get(type(inner).__module__), "slice_logits_to_keep")


def weighted_class_loss(weights: list[float]):
    """A classifier loss: each row's cross-entropy times its class's weight, summed over the rows."""
    import torch

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"].float()  # a bfloat16 base's logits: the loss in float32
        labels = labels.to(logits.device)
        rows = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        scale = torch.tensor(weights, dtype=logits.dtype, device=logits.device)[labels]
        count = num_items_in_batch if num_items_in_batch is not None else labels.numel()
        return (rows * scale).sum() / count
    return loss
