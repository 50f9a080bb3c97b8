"""How the runners lay out a batch of prompts (padding, masks), and a batch's common prompt prefix
run once when a PyTorch model is evaluated.

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
- Both from one prompt pass (`generate_scored`): the prompts but their last token run once into a
  cache; the last token and the expected completion are then scored from a copy of that cache, and
  generation goes on from the cache itself. The prompt, most of the work, runs once instead of twice.

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
    cache = _cache_of(out)
    cache.batch_repeat_interleave(batch)
    return cache


def left_pad(rows: list[list[int]], pad: int, shared: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """Token rows padded on the left to one width, and their attention masks (0 on padding); with
    `shared`, the padding goes after the rows' first `shared` tokens: [prefix][padding][own tokens]."""
    width = max(len(r) for r in rows)
    return ([r[:shared] + [pad] * (width - len(r)) + r[shared:] for r in rows],
            [[1] * shared + [0] * (width - len(r)) + [1] * (len(r) - shared) for r in rows])


def right_pad(rows: list[list[int]], pad: int) -> list[list[int]]:
    """Token rows padded on the right to one width."""
    width = max(len(r) for r in rows)
    return [r + [pad] * (width - len(r)) for r in rows]


def right_mask(rows: list[list[int]]) -> list[list[int]]:
    """The attention masks of `right_pad`'s rows (0 on padding)."""
    width = max(len(r) for r in rows)
    return [[1] * len(r) + [0] * (width - len(r)) for r in rows]


def generate_with_prefix(model, rows: list[list[int]], n: int, pad: int, **generate_kwargs):
    """`model.generate` over left-padded `rows`, whose first `n` tokens are alike and run once (n = 0:
    no prefix); returns the full id tensor (prompt part, answer) and the width of the prompt part."""
    import torch

    ids, mask = left_pad(rows, pad, n)
    extra = {"cache": prefix_cache(model, rows[0][:n], len(rows))} if n else {}
    out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), pad_token_id=pad,
                         **extra, **generate_kwargs)
    return out, len(ids[0])


def logits_from(model, rows: list[list[int]], n: int, first: int, pad: int):
    """Logits of right-padded `rows` at positions `first` on (row i's position p is [i, p - first]).

    The rows' first `n` tokens (n <= first) are alike and run once (n = 0: no prefix). The LM head runs
    only from `first` on, where the model takes transformers' `logits_to_keep` positions."""
    import torch

    from modelpress.passes.losses import slices_logits

    ids = right_pad([r[n:] for r in rows], pad)
    extra = {"cache": prefix_cache(model, rows[0][:n], len(rows)), "use_cache": True} if n else {}
    sliced = slices_logits(model)
    if sliced:
        extra["logits_to_keep"] = torch.arange(first - n, len(ids[0]))
    logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(right_mask(rows)), **extra).logits
    return logits if sliced else logits[:, first - n:]


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return out.past_key_values if cache is None else cache  # transformers before 5.24: past_key_values


def generate_scored(model, rows: list[list[int]], tails: list[list[int]], n: int, pad: int, **generate_kwargs):
    """`generate_with_prefix` that also scores each row's `tails` (the expected completion) after it,
    from one pass over the prompts: every row but its last token runs into a key/value cache (the first
    `n` tokens, alike in every row and at most the shortest row's length minus 2, once at batch 1);
    the last prompt token and the tail are scored from a copy of the cache, and generation goes on from
    the cache itself. Rows need 2 tokens or more. Returns (generated ids, prompt width, logits) where
    logits[i, j] predicts tails[i][j]."""
    import copy

    import torch

    from modelpress.passes.losses import slices_logits

    heads = [r[:-1] for r in rows]
    ids, mask = (torch.tensor(x) for x in left_pad(heads, pad, n))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate counts them: padding is not a position
    extra = {"cache": prefix_cache(model, heads[0][:n], len(rows))} if n else {}
    if slices_logits(model):
        extra["logits_to_keep"] = 1  # no logits are needed from the prompt pass
    cache = _cache_of(model(input_ids=ids[:, n:], attention_mask=mask, position_ids=positions[:, n:],
                            use_cache=True, **extra))
    scored = [[r[-1]] + t for r, t in zip(rows, tails)]
    last = mask.sum(-1, keepdim=True)  # the position of each row's last prompt token
    logits = model(input_ids=torch.tensor(right_pad(scored, pad)),
                   attention_mask=torch.cat([mask, torch.tensor(right_mask(scored))], dim=1),
                   position_ids=last + torch.arange(max(len(s) for s in scored)), cache=copy.deepcopy(cache),
                   use_cache=True).logits
    prompt = torch.cat([ids, torch.tensor([[r[-1]] for r in rows])], dim=1)
    prompt_mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype)], dim=1)
    out = model.generate(input_ids=prompt, attention_mask=prompt_mask, cache=cache, pad_token_id=pad, **generate_kwargs)
    return out, prompt.shape[1], logits
