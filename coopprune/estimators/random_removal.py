"""The chance baseline: remove unprotected layers at random; every method must beat it."""

from __future__ import annotations

import numpy as np

from coopprune.estimators.base import Contributions, Estimator, register
from coopprune.game import LayerGame
from coopprune.select import select_layers


@register
class RandomRemoval(Estimator):
    """Values are a random permutation drawn from ``numpy.random.default_rng(seed)``; no forward passes.

    The removal is its ``k`` lowest unprotected players: a uniform random ``k``-subset, the same for
    the same seed, and nested across ``k``. Nothing is evaluated here: averaging the baseline over
    seeds is the caller's job (run it once per seed).
    """

    name = "random"
    random_draw = True
    summary = "peer, a seeded random set as the chance baseline"

    def _estimate(self, game: LayerGame, budget: int | None, seed: int, k: int | None) -> Contributions:
        values = np.random.default_rng(seed).permutation(game.n_players).astype(float)
        removal = None if k is None else select_layers(values, k, game.protected_players)
        return self._result(values, removal=removal, details={"seed": seed})
