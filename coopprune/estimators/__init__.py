"""Contribution estimators, one registered class per file (game-search's settings, starting design and
proposals live in the modules beside it); importing the package registers them all."""

from coopprune.estimators import adjusted, game_search, ppl, reference, search, semivalue, shapley  # noqa: F401  (registration)
from coopprune.estimators import angular, block_influence, evopress, last, random_removal, sleb  # noqa: F401  (peers)
from coopprune.estimators.base import ESTIMATORS, Contributions, Estimator, get_estimator

__all__ = ["ESTIMATORS", "Contributions", "Estimator", "get_estimator"]
