"""The random sampler's order over a search space: every combination once, reproducible, never listed whole."""

from __future__ import annotations

import itertools
import math
import time

import modelpress.search as search
from modelpress.search import draw_order


def test_a_small_space_is_shuffled_whole_and_reproducibly():
    sizes = [3, 2, 4]
    order = list(draw_order(sizes, 5))
    assert sorted(order) == list(itertools.product(range(3), range(2), range(4)))
    assert order == list(draw_order(sizes, 5)) and order != list(draw_order(sizes, 6))


def test_a_large_space_is_drawn_without_listing_it(monkeypatch):
    sizes = [3, 5, 2]
    monkeypatch.setattr(search, "SHUFFLED_MAX", 10)  # this 30-combination space takes the drawing path
    order = list(draw_order(sizes, 1))
    assert len(order) == 30 and sorted(order) == list(itertools.product(range(3), range(5), range(2)))
    assert order == list(draw_order(sizes, 1))


def test_a_space_too_large_to_list_gives_its_first_draws_at_once():
    sizes = [10] * 12  # 10^12 combinations: listing them would not fit in memory
    started = time.perf_counter()
    first = list(itertools.islice(draw_order(sizes, 0), 50))
    assert time.perf_counter() - started < 5
    assert len(set(first)) == 50
    assert all(len(c) == 12 and all(0 <= i < 10 for i in c) for c in first)
    assert math.prod(sizes) > search.SHUFFLED_MAX
