"""The paper's Stage 3: marginal contributions on the surrogate, averaged over base masks drawn
from the pruning strata. A size-restricted semivalue centred on the pruning range (not the
Shapley value, which weights every coalition size alike): arguably the right target when pruning
to a budget, and named for what it is."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from coopprune.estimators.base import register
from coopprune.estimators.surrogate_based import SurrogateEstimator
from coopprune.game import Game
from coopprune.sampling import StrataPlan, stratified_masks
from coopprune.shapley import semivalue
from coopprune.surrogate import Surrogate


@register
class Semivalue(SurrogateEstimator):
    name = "semivalue"
    summary = "the paper's size-restricted semivalue of a surrogate, the k lowest removed"

    def values_from(self, game: Game, plan: StrataPlan, seed: int) -> Callable[[Surrogate], np.ndarray]:
        rng = np.random.default_rng([seed, 0x5E41])
        base = stratified_masks(game.n_players, list(plan.removals), self.base_masks, rng, game.protected_players)
        return lambda surrogate: semivalue(surrogate.predict, game.n_players, base)
