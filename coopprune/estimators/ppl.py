"""Shortened-LLaMA's PPL criterion: the damage of removing each layer alone (L evaluations)."""

from __future__ import annotations

import numpy as np

from coopprune.estimators.base import Contributions, Estimator, register
from coopprune.game import Game


@register
class SingleLayerRemoval(Estimator):
    """Contribution of layer i = v(all) - v(all but i): its marginal value to the full model."""

    name = "ppl"
    summary = "peer, each layer's damage when removed alone, as in Shortened LLaMA"

    def _estimate(self, game: Game, budget: int | None, seed: int, k: int | None) -> Contributions:
        n = game.n_players
        coalitions = np.vstack([np.ones((1, n), dtype=bool), ~np.eye(n, dtype=bool)])
        values = game.value_function(coalitions)
        return self._result(values[0] - values[1:], details={"removal_utilities": values[1:].tolist()})
