"""Contributions -> the set of players to remove: the one place a ranking becomes a set.

Every path goes through :func:`select_within_cost` (players of different sizes under a budget;
unit sizes and a budget of k give the k lowest): the pipeline's rounds (``strategy``), the
searches' ranking seeds (``Removal.by_values``) and the bootstrap's stability check. A set-based
method's own set is taken as it is (:func:`choose`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from coopprune.errors import CoopPruneError


class Ranked(Protocol):
    """What :func:`choose` reads of an estimator's result (``estimators.base.Contributions``)."""

    method: str
    values: np.ndarray
    removal: list[int] | None


def select_within_cost(
    values: np.ndarray, costs: Sequence[float], max_cost: float, protected: Sequence[int] = ()
) -> list[int]:
    """Least-contributing unprotected players first (ties: lower index), each taken while its cost
    still fits in ``max_cost``. A NaN contribution means "unknown" and is treated as essential."""
    scores = np.nan_to_num(np.asarray(values, dtype=float), nan=np.inf)
    chosen, total = [], 0.0
    for i in sorted((i for i in range(len(values)) if i not in set(protected)), key=lambda i: (scores[i], i)):
        if total + costs[i] <= max_cost + 1e-9:
            chosen.append(i)
            total += costs[i]
    if not chosen:
        raise CoopPruneError(f"no removable player fits a budget of {max_cost} parameters")
    return sorted(chosen)


def select_layers(values: np.ndarray, k: int, protected: Sequence[int] = ()) -> list[int]:
    """The ``k`` least-contributing unprotected layers (ties: lower index first)."""
    n = len(values)
    left = n - len(set(protected) & set(range(n)))
    if k > left:
        raise CoopPruneError(f"cannot remove {k} layers: protected layers {sorted(protected)} leave {left}")
    return select_within_cost(values, [1.0] * n, k, protected) if k else []


def choose(contributions: Ranked, k: int, protected: tuple[int, ...]) -> list[int]:
    """The k players to remove: a set-based method's own set, otherwise the k lowest contributions."""
    if contributions.removal is not None:
        if len(contributions.removal) != k or set(contributions.removal) & set(protected):
            raise CoopPruneError(f"{contributions.method} proposed {contributions.removal} for k={k}")
        return sorted(contributions.removal)
    return select_layers(contributions.values, k, protected)
