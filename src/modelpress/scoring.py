"""Completion loss: the mean -log p of each expected completion's tokens after its prompt, batched.

The runners score right-padded batches of similar-length sequences (`loss_batches`) under a budget
of logits; these helpers are the parts that do not depend on the runtime.
"""

from __future__ import annotations

LOSS_BATCH = 16  # sequences scored together by the runners' completion_loss,
LOSS_LOGITS = 100_000_000  # and at most this many logits (padded tokens x vocabulary: 400 MB in float32)


def loss_tokens(vocab_size: int | None) -> int:
    """The padded tokens a completion-loss batch may hold for this vocabulary size."""
    return max(1, LOSS_LOGITS // (vocab_size or 2**17))


def loss_batches(lengths: list[int], size: int = LOSS_BATCH, tokens: int = 2048) -> list[list[int]]:
    """Indexes of sequences grouped shortest first, at most `size` together and `tokens` padded tokens
    (a longer sequence goes alone)."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda k: lengths[k]):
        if batches and len(batches[-1]) < size and (len(batches[-1]) + 1) * lengths[i] <= tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def batched_loss(pairs: list[tuple[list[int], list[int]]], batch_size: int, tokens: int, logits_of) -> tuple[float, int]:
    """Summed -log p of each pair's tail after its head, and the count of tail tokens. `logits_of(rows, most)`
    scores a right-padded batch and returns (logits, offset): logits from position `offset` on, where
    `offset` is at most `most`, the batch's last position that predicts no scored token."""
    total, count = 0.0, 0
    for batch in loss_batches([len(head) + len(tail) for head, tail in pairs], batch_size, tokens):
        logits, offset = logits_of([pairs[i][0] + pairs[i][1] for i in batch], min(len(pairs[i][0]) for i in batch) - 1)
        for i, row in zip(batch, logits):
            head, tail = pairs[i]
            total += nll(row, head, tail, offset)
            count += len(tail)
    return total, count


def mean(total: float, count: int) -> float:
    return total / count if count else float("nan")


def scored_split(head: list[int], tail: list[int]) -> tuple[list[int], list[int]]:
    """(context, scored tokens): plain text with no prompt and no BOS scores every token but the first."""
    return (head, tail) if head else (tail[:1], tail[1:])


def nll(logits, head: list[int], tail: list[int], offset: int = 0) -> float:
    """Sum of -log p(tail token | everything before it), from the sequence's logits from position `offset` on."""
    start = len(head) - 1 - offset
    return tail_nll(logits[start: start + len(tail)], tail)


def tail_nll(logits, tail: list[int]) -> float:
    """Sum of -log p(tail[k]) under the k-th row of `logits` (the rows that predict the tail's tokens)."""
    import numpy as np

    rows = logits.astype(np.float64)
    rows = rows - rows.max(axis=-1, keepdims=True)
    log_probs = rows - np.log(np.exp(rows).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(tail)), tail].sum())
