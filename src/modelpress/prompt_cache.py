"""A batch's common prompt prefix run once when a PyTorch model is evaluated.

Chat prompts open with the same tokens: SmolLM2's template starts every prompt with its default
system prompt and the user turn's header, 24 of a tone prompt's ~40 tokens. A causal model's keys
and values for those tokens do not depend on what follows them, so the runner computes them once
(batch 1), repeats the key/value cache over the batch and feeds each row only its own tokens.

- Generation: rows shorter than the longest are padded *between* the prefix and their own tokens,
  masked. transformers' `generate` takes positions from the mask (masked tokens are not counted),
  so each row is computed as it is alone: the same greedy answers (tests/test_batched_eval.py).
- Completion loss: rows are right-padded after their own tokens; the prefix stops before the
  position that predicts the first scored token, so every scored logit comes from the suffix, and
  the LM head (a fifth of SmolLM2's weights) runs only from that position on.

Latency is still timed one prompt at a time, with no cache carried between prompts.
The training side of the same idea is `modelpress.passes.prefix`.
"""

from __future__ import annotations

MIN_PREFIX = 8  # a shorter common head saves less than the extra forward call costs


def common_prefix(rows: list[list[int]], most: int | None = None) -> int:
    """Leading tokens every row holds alike, at most `most` and leaving at least one token of each row
    after them; 0 for one row or when fewer than MIN_PREFIX."""
    if len(rows) < 2:
        return 0
    limit = min(len(r) for r in rows) - 1
    limit = limit if most is None else min(limit, most)
    first, n = rows[0], 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n if n >= MIN_PREFIX else 0


def prefix_cache(model, prefix: list[int], batch: int):
    """The key/value cache of `prefix` (run once, at batch 1), repeated for `batch` rows."""
    import torch

    out = model(input_ids=torch.tensor([prefix]), use_cache=True, logits_to_keep=1)
    cache = getattr(out, "cache", None)
    if cache is None:  # transformers before 5.24 calls it past_key_values
        cache = out.past_key_values
    cache.batch_repeat_interleave(batch)
    return cache


def inner_left_pad(rows: list[list[int]], n: int, pad: int) -> tuple[list[list[int]], list[list[int]]]:
    """Rows as [prefix][padding][own tokens], and their masks: the own tokens end every row together."""
    width = max(len(r) for r in rows) - n
    ids = [r[:n] + [pad] * (width - len(r) + n) + r[n:] for r in rows]
    mask = [[1] * n + [0] * (width - len(r) + n) + [1] * (len(r) - n) for r in rows]
    return ids, mask


def generate_with_prefix(model, rows: list[list[int]], n: int, pad: int, **generate_kwargs):
    """`model.generate` over `rows`, whose first `n` tokens are alike, with those run once; returns
    the full id tensor (prefix, padding, own tokens, answer) and the width of the prompt part."""
    import torch

    ids, mask = inner_left_pad(rows, n, pad)
    cache = prefix_cache(model, rows[0][:n], len(rows))
    out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), cache=cache,
                         pad_token_id=pad, **generate_kwargs)
    return out, len(ids[0])


def logits_from(model, rows: list[list[int]], n: int, first: int, pad: int):
    """Logits of right-padded `rows` at positions `first` on (row i's position p is [i, p - first]).

    The rows' first `n` tokens (n <= first) are alike and run once (n = 0: no prefix). The LM head runs
    only from `first` on, where the model takes transformers' `logits_to_keep` positions."""
    import torch

    from modelpress.passes.losses import slices_logits

    width = max(len(r) for r in rows)
    ids = [r[n:] + [pad] * (width - len(r)) for r in rows]
    mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
    extra = {"cache": prefix_cache(model, rows[0][:n], len(rows)), "use_cache": True} if n else {}
    sliced = slices_logits(model)
    if sliced:
        extra["logits_to_keep"] = torch.arange(first - n, width - n)
    logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), **extra).logits
    return logits if sliced else logits[:, first - n:]
