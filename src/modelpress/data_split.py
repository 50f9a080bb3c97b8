"""The eval split of a training pass's rows: held-out prompts that no training row shares."""

from __future__ import annotations

import logging
import random
import unicodedata

from modelpress.data import Example
from modelpress.errors import DataError

log = logging.getLogger("modelpress")


def split_examples(examples: list[Example], size: float, seed: int,
                   classes: bool = False) -> tuple[list[Example], list[Example]]:
    """Hold out `size` (a fraction below 1, or a count) of the distinct prompts for evaluation.

    Rows that share a prompt always land on the same side, so no eval phrase is ever trained on; so do
    conversations one of which trains an answer to the other's prompt (an earlier assistant turn of a longer
    conversation that opens the same way). The eval side keeps one row per distinct prompt. With `classes` (a
    classifier's labels), a row whose label no training row has is trained instead, with a warning.
    """
    groups = _prompt_groups(examples)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    count = int(round(size * len(keys))) if size < 1 else int(size)
    if not 0 < count < len(keys):
        raise DataError(f"eval_dataset_size {size} leaves no rows on one side ({len(keys)} distinct rows). "
                        "Use a fraction between 0 and 1 or a smaller count.")
    if classes:
        keys, count = _labels_trained(groups, keys, count)
        if not count:
            raise DataError(f"eval_dataset_size {size} holds out only rows whose labels no training row has "
                            f"({len(keys)} distinct rows): the classifier could not learn them. Use a larger "
                            "fraction or add rows of those labels.")
    held = {id(ex) for k in keys[:count] for ex in groups[k]}
    train = [ex for ex in examples if id(ex) not in held]
    evaluation = [ex for k in keys[:count] for ex in distinct(groups[k])]
    return train, evaluation


def _labels_trained(groups: dict, keys: list, count: int) -> tuple[list, int]:
    """The split with every held-out label among the training rows' (a classifier cannot learn a class it never
    sees): a held-out group whose label only held-out rows have goes to training."""
    trained = {ex.completion for k in keys[count:] for ex in groups[k]}
    moved = []
    for k in keys[:count]:
        labels = {ex.completion for ex in groups[k]}
        if not labels <= trained:
            moved.append(k)
            trained |= labels
    if moved:
        log.warning("the eval split held every row of the labels %s: those rows are trained instead (%d prompts)",
                    ", ".join(sorted({ex.completion for k in moved for ex in groups[k]})), len(moved))
    return [k for k in keys[:count] if k not in moved] + moved + keys[count:], count - len(moved)


def _key(ex: Example) -> str:
    """What tells a row apart: its prompt, or its text where the prompt holds none of it."""
    return f"{ex.prompt}{ex.completion}" if ex.fixed_prompt else ex.prompt or ex.completion


def _asked(ex: Example) -> str:
    """What a row asks, as a reader would tell two rows apart: its messages but the answers (a system turn may
    hold the input), or its prompt, in Unicode NFC, case-folded, with its whitespace collapsed; rows that ask the
    same stay together."""
    said = [f"{role}: {text}" for role, text in ex.history if role != "assistant"]
    text = "\n".join(said) if said else _key(ex)
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


def distinct(examples: list[Example]) -> list[Example]:
    """One row per distinct prompt (the first), in order: what an evaluation measures."""
    first: dict[str, Example] = {}
    for ex in examples:
        first.setdefault(_key(ex), ex)
    return list(first.values())


def _prompt_groups(examples: list[Example]) -> dict[str, list[Example]]:
    """Examples grouped by prompt, and groups joined where one holds an answer to another's prompt (a chat
    prompt's earlier assistant turn, which it trains on; found by the messages, so a template that rewrites
    earlier turns changes nothing); each group keyed by its first prompt, groups in the order the rows come."""
    first = {}
    for i, ex in enumerate(examples):
        first.setdefault(_key(ex), i)
    parent = {key: key for key in first}
    asked = {}  # a chat row's prompt messages -> its key
    for ex in examples:
        if ex.history:
            asked.setdefault(ex.history, _key(ex))

    def root(key: str) -> str:
        while parent[key] != key:
            parent[key] = key = parent[parent[key]]
        return key

    def join(one: str, other: str) -> None:
        a, b = sorted((root(one), root(other)), key=first.get)
        parent[b] = a

    said: dict[str, str] = {}  # what a row asks, written loosely -> the first row's key
    for ex in examples:
        for i, (role, _) in enumerate(ex.history):
            other = asked.get(ex.history[:i]) if role == "assistant" else None
            if other is not None:  # an earlier answer, given to a prompt that is another row's
                join(_key(ex), other)
        join(_key(ex), said.setdefault(_asked(ex), _key(ex)))
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(root(_key(ex)), []).append(ex)
    return groups


def shared_prompts(train: list[Example], evaluation: list[Example]) -> int:
    """How many distinct eval prompts a training row asks too (two data configs over one file, sliced by rows)."""
    trained = {_asked(ex) for ex in train}
    return len({_asked(ex) for ex in evaluation} & trained)
