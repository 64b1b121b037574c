"""The depth-only baseline: drop the last layers (Gromov et al. find deep layers most redundant)."""

from __future__ import annotations

import numpy as np

from coopprune.estimators.base import Contributions, Estimator, register
from coopprune.game import LayerGame
from coopprune.select import select_layers


@register
class LastLayers(Estimator):
    """Remove the last ``k`` unprotected players; no forward passes; requires ``k``.

    Values are the distance from the end (``n - 1 - index``): higher = more important, as for
    every method, so the usual lowest-k selection gives the same set as ``removal``.
    """

    name = "last"
    summary = "peer, the last k layers"
    requires_k = True

    def _estimate(self, game: LayerGame, budget: int | None, seed: int, k: int | None) -> Contributions:
        values = np.arange(game.n_players, dtype=float)[::-1].copy()
        return self._result(values, removal=select_layers(values, k, game.protected_players))
