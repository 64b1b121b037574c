"""Turn contributions into the set of layers to remove."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coopprune.errors import CoopPruneError


def select_layers(values: np.ndarray, k: int, protected: Sequence[int] = ()) -> list[int]:
    """The ``k`` least-contributing unprotected layers (ties: lower index first).

    A NaN contribution means "unknown" and is treated as essential, never as removable.
    """
    n = len(values)
    candidates = [i for i in range(n) if i not in set(protected)]
    if k > len(candidates):
        raise CoopPruneError(f"cannot remove {k} layers: protected layers {sorted(protected)} leave {len(candidates)}")
    scores = np.nan_to_num(np.asarray(values, dtype=float), nan=np.inf)
    ranked = sorted(candidates, key=lambda i: (scores[i], i))
    return sorted(ranked[:k])


def select_within_cost(
    values: np.ndarray, costs: Sequence[int], max_cost: int, protected: Sequence[int] = ()
) -> list[int]:
    """Least-contributing unprotected players, cheapest-to-lose first, whose costs sum to at most ``max_cost``.

    Used when players differ in size (sublayers): budgets are compared in parameters removed.
    """
    scores = np.nan_to_num(np.asarray(values, dtype=float), nan=np.inf)
    chosen, total = [], 0
    for i in sorted((i for i in range(len(values)) if i not in set(protected)), key=lambda i: (scores[i], i)):
        if total + costs[i] <= max_cost:
            chosen.append(i)
            total += costs[i]
    if not chosen:
        raise CoopPruneError(f"no removable player fits a budget of {max_cost} parameters")
    return sorted(chosen)
