"""The true Shapley value of the surrogate game (every coalition size weighted alike): exact
enumeration up to 16 players, antithetic permutation sampling above. Shapley weights every
coalition size alike, so the surrogate's real training masks are spread over every size too (plus
whatever the game already knows, such as the sweep's pruning strata). Surrogate error still
biases it; ``shapley-adjusted`` removes that bias."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from coopprune.estimators.base import register
from coopprune.estimators.surrogate_based import SurrogateEstimator
from coopprune.game import Game
from coopprune.sampling import StrataPlan
from coopprune.shapley import surrogate_shapley
from coopprune.surrogate import Surrogate


@register
class SurrogateShapley(SurrogateEstimator):
    name = "shapley"
    summary = "the Shapley value of a surrogate trained on every coalition size"
    all_sizes = True

    def values_from(self, game: Game, plan: StrataPlan, seed: int) -> Callable[[Surrogate], np.ndarray]:
        return lambda surrogate: surrogate_shapley(surrogate.predict, game.n_players, seed, self.permutations)
