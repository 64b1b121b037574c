"""Reference Shapley estimators on the real game, with the same budget of real evaluations:
shapiq's permutation sampling and KernelSHAP, and exact enumeration for small games. They are
the baselines the surrogate methods must beat at equal cost."""

from __future__ import annotations

import numpy as np

from coopprune.errors import CoopPruneError
from coopprune.estimators.base import Contributions, Estimator, register
from coopprune.estimators.surrogate_based import DEFAULT_BUDGET
from coopprune.game import Game
from coopprune.shapley import MAX_EXACT_PLAYERS, exact_shapley


class _Shapiq(Estimator):
    uses_budget = True

    def approximator(self, n_players: int, seed: int):  # noqa: ANN201 - a shapiq Approximator
        raise NotImplementedError

    def _estimate(self, game: Game, budget: int | None, seed: int, k: int | None) -> Contributions:
        values = self.approximator(game.n_players, seed).approximate(budget or DEFAULT_BUDGET, game.value_function)
        return self._result(np.asarray(values.get_n_order_values(1), dtype=float))


@register
class PermutationSampling(_Shapiq):
    name = "permutation"

    def approximator(self, n_players: int, seed: int):  # noqa: ANN201
        from shapiq import PermutationSamplingSV

        return PermutationSamplingSV(n_players, random_state=seed)


@register
class KernelShap(_Shapiq):
    name = "kernelshap"

    def approximator(self, n_players: int, seed: int):  # noqa: ANN201
        from shapiq import KernelSHAP

        return KernelSHAP(n_players, random_state=seed)


@register
class ExactShapley(Estimator):
    """Every coalition through the real model: 2^L evaluations, so only for small games."""

    name = "exact"

    def _estimate(self, game: Game, budget: int | None, seed: int, k: int | None) -> Contributions:
        n = game.n_players
        if n > MAX_EXACT_PLAYERS:
            raise CoopPruneError(f"exact Shapley needs 2^{n} real evaluations; use it for at most {MAX_EXACT_PLAYERS} players")
        if budget is not None and budget < 2**n:
            raise CoopPruneError(f"exact Shapley needs {2**n} real evaluations, budget is {budget}")
        return self._result(exact_shapley(game.value_function, n))
