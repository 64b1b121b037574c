"""Which items of a split an evaluation draws and which are reserved for calibration, from the
split's size, the seed and the task name alone (no data is read), so every caller gets the same rows.
"""

from __future__ import annotations

import zlib
from typing import Literal

import numpy as np

from coopprune.errors import CoopPruneError

Pool = Literal["evaluation", "calibration"]  # the items evaluations draw, or those reserved for calibration


def select_items(n_total: int, limit: int | None, seed: int, task: str) -> list[int]:
    """Row indices of the evaluated subset, sorted: a seeded permutation's first ``limit`` rows.

    Seeded per task (so tasks do not share a pattern) and nested: for one seed, the items of a
    smaller limit are contained in those of a larger one. ``None`` or a limit above the split size
    means every row but the task's :func:`reserved_items` (kept for calibration).
    """
    if limit is not None and limit < 1:
        raise CoopPruneError(f"limit must be at least 1 (or None for every item), got {limit}")
    reserved = set(reserved_items(task, n_total))
    if limit is None or limit >= n_total - len(reserved):
        return [i for i in range(n_total) if i not in reserved]
    rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
    return sorted([int(i) for i in rng.permutation(n_total) if int(i) not in reserved][:limit])


#: Share of a task's items that no zero-shot evaluation ever draws: they are calibration data
#: (HellaSwag contexts are the how-to domain of ``coopprune.domains``; the items of every task here
#: are the multiple-choice rows of the ``mc_margin`` utility, ``coopprune.choices``). BoolQ reserves
#: nothing: its passages are the held-out evaluation text.
RESERVED_SHARE = {task: 0.25 for task in ("piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")}
#: A split with fewer items than this reserves none: a small split (a test's, a custom one) is all
#: evaluation. Every bundled split of a reserving task has at least 299 items.
MIN_RESERVING_SPLIT = 100


def reserved_items(task: str, n_total: int) -> list[int]:
    """The items kept for calibration: the tail of the seed-0 permutation, so the seed-0 subsets
    evaluated before the reservation existed (any limit up to the rest) are unchanged."""
    n_reserved = int(n_total * RESERVED_SHARE.get(task, 0.0)) if n_total >= MIN_RESERVING_SPLIT else 0
    if n_reserved == 0:
        return []
    order = np.random.default_rng([0, zlib.crc32(task.encode())]).permutation(n_total)
    return sorted(int(i) for i in order[n_total - n_reserved :])


def calibration_items(n_total: int, limit: int, seed: int, task: str) -> list[int]:
    """``limit`` of the task's :func:`reserved_items`, sorted: a seeded permutation's first rows
    (nested in ``limit`` like :func:`select_items`). Never an item any evaluation draws."""
    reserved = reserved_items(task, n_total)
    if not 1 <= limit <= len(reserved):
        raise CoopPruneError(f"'{task}' reserves {len(reserved)} of its {n_total} items for calibration "
                             f"(splits under {MIN_RESERVING_SPLIT} items reserve none); {limit} asked")
    rng = np.random.default_rng([seed, zlib.crc32(task.encode()), 1])
    return sorted(int(reserved[i]) for i in rng.permutation(len(reserved))[:limit])
