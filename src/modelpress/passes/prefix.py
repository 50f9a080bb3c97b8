"""Training on a shared prompt prefix once per batch, not once per row.

Chat-formatted rows start with the same tokens: SmolLM2's template opens every row with its
default system prompt and the user turn's header, 24 of a tone row's 49 tokens. A causal model's
keys and values for those leading tokens do not depend on what follows them, so the batch's
common prefix is run once (batch 1) and its key/value cache, repeated over the batch, feeds the
rows' remaining tokens. The loss and the gradients are the plain forward's (autograd sums the
prefix's gradient over the rows it was repeated for; tests/test_prefix.py compares both), and
the prefix's share of the step's compute is gone.

The prefix stops before the position that predicts the batch's first trained label, so every
trained position stays in the suffix, and it is used only where repeating one computation for
every row is exact: no dropout anywhere in the model, no gradient checkpointing (transformers
turns the cache off under it), one process (DDP expects one forward per backward) and a model whose
forward is transformers' own (a trust_remote_code one may not take the cache).
"""

from __future__ import annotations

from modelpress.passes.losses import native_forward

IGNORE = -100
MIN_PREFIX = 8  # a shorter common head saves less than the extra forward call costs


def shared_prefix_length(input_ids, attention_mask, labels) -> int:
    """Leading columns every row of the batch holds alike (real tokens, no label trained from them):
    0 when fewer than MIN_PREFIX, or when the batch has one row."""
    import torch

    if input_ids.dim() != 2 or input_ids.size(0) < 2 or labels is None or labels.shape != input_ids.shape:
        return 0
    alike = (input_ids == input_ids[:1]).all(dim=0)
    if attention_mask is not None:
        alike &= attention_mask.bool().all(dim=0)
    n = int(torch.cumprod(alike.long(), dim=0).sum())
    trained = (labels != IGNORE).any(dim=0).nonzero()
    if len(trained):  # position p predicts label p + 1: the first trained label's predictor stays in the suffix
        n = min(n, int(trained[0]) - 1)
    n = min(n, input_ids.size(1) - 1)
    return n if n >= MIN_PREFIX else 0


LENGTH_DEPENDENT_ROPE = {"dynamic", "longrope"}


def prefix_sharing_applies(model, adapter_dropout: float, gradient_checkpointing: bool, processes: int) -> bool:
    """Whether running the common prefix once gives the same step as the plain forward (see the module)."""
    config = getattr(model, "config", None)
    dropouts = [v for k, v in vars(config).items() if ("dropout" in k or k.endswith("pdrop"))
                and isinstance(v, (int, float)) and not isinstance(v, bool)] if config is not None else []
    # the prefix's call and the rest's would rotate differently from one plain forward under length-dependent rope
    return (adapter_dropout == 0 and not any(dropouts) and not gradient_checkpointing and processes == 1
            and getattr(config, "is_encoder_decoder", False) is False and not length_dependent_rope(config)
            and native_forward(model))


def length_dependent_rope(config) -> bool:
    """Whether the model's rotary scaling (dynamic, longrope) picks its frequencies from a call's longest
    position: then how a token is encoded depends on what else runs in the same call."""
    rope = (getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}) if config else {}
    return isinstance(rope, dict) and (rope.get("rope_type") or rope.get("type")) in LENGTH_DEPENDENT_ROPE


def split_prefix(model, inputs: dict) -> dict:
    """The batch with its shared prefix replaced by that prefix's key/value cache, or the batch as it
    came when it has no prefix worth sharing."""
    ids, labels, mask = inputs.get("input_ids"), inputs.get("labels"), inputs.get("attention_mask")
    if ids is None or {"cache", "past_key_values", "position_ids", "inputs_embeds"} & inputs.keys():
        return inputs
    n = shared_prefix_length(ids, mask, labels)
    if not n:
        return inputs
    head = model(input_ids=ids[:1, :n], attention_mask=None if mask is None else mask[:1, :n],
                 use_cache=True, logits_to_keep=1)
    cache = head.cache  # transformers 5.24 renamed past_key_values to cache
    cache.batch_repeat_interleave(ids.size(0))
    out = {**inputs, "input_ids": ids[:, n:], "labels": labels[:, n:], "cache": cache, "use_cache": True}
    if mask is None:
        import torch

        mask = torch.ones_like(ids)
    out["attention_mask"] = mask  # the suffix attends to the prefix: the mask spans both
    keep = inputs.get("logits_to_keep")
    if keep is not None and not isinstance(keep, int):
        out["logits_to_keep"] = keep[:, n:]
    return out


def prefix_sharing_trainer():
    """A transformers Trainer whose loss runs each batch's shared prefix once (`split_prefix`)."""
    from transformers import Trainer

    class PrefixSharingTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return super().compute_loss(model, split_prefix(model, inputs), return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return PrefixSharingTrainer
