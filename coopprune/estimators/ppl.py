"""Shortened-LLaMA's PPL criterion: the damage of removing each layer alone (L evaluations)."""

from __future__ import annotations

from typing import Any

import numpy as np

from coopprune.estimators.base import Estimator, register
from coopprune.game import LayerGame


@register
class SingleLayerRemoval(Estimator):
    """Contribution of layer i = v(all) - v(all but i): its marginal value to the full model."""

    name = "ppl"

    def _estimate(self, game: LayerGame, budget: int | None, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        n = game.n_players
        coalitions = np.vstack([np.ones((1, n), dtype=bool), ~np.eye(n, dtype=bool)])
        values = game.value_function(coalitions)
        return values[0] - values[1:], {"removal_utilities": values[1:].tolist()}
