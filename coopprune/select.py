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
