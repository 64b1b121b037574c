"""Reference Shapley estimators on the real game, with the same budget of real evaluations:
shapiq's permutation sampling and KernelSHAP, and exact enumeration for small games. They are
the baselines the surrogate methods must beat at equal cost.

Their bootstrap intervals cost no evaluations: the coalitions shapiq asked for are recorded,
and the resamples redo shapiq's own arithmetic on them (permutations resampled for permutation
sampling; the sampled coalitions' draw counts resampled for KernelSHAP's weighted regression).
Each replicate scheme is checked to reproduce shapiq's estimate (to solver rounding) on the
original sample; if a shapiq release changes its internals, the intervals are left out, not made up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from coopprune.errors import CoopPruneError
from coopprune.estimators.base import Contributions, Estimator, register
from coopprune.estimators.surrogate_based import DEFAULT_BUDGET
from coopprune.game import Game
from coopprune.shapley import MAX_EXACT_PLAYERS, chain_marginals, exact_shapley

if TYPE_CHECKING:
    from coopprune.config import Params

Calls = list[tuple[np.ndarray, np.ndarray]]  # (coalitions, values) of each value-function call


Resample = Callable[[np.ndarray | None], np.ndarray]  # draw counts per unit (None: as drawn) -> estimate


class _Shapiq(Estimator):
    uses_budget = True

    def __init__(self, bootstrap: int = 200) -> None:
        self.bootstrap = bootstrap  # resamples of the recorded sample (free: no real evaluations)

    @classmethod
    def options_from_params(cls, params: Params, n_layers: int) -> dict[str, Any]:
        """``prune.bootstrap: 0`` turns the free resamples off; any other value keeps this method's
        own 200 (resamples of what shapiq evaluated, not surrogate refits)."""
        return {"bootstrap": 0} if params.prune.bootstrap == 0 else {}

    def approximator(self, n_players: int, seed: int):  # noqa: ANN201 - a shapiq Approximator
        raise NotImplementedError

    def resampler(self, approximator: Any, calls: Calls) -> tuple[int, Resample]:
        """How many independent draws the recorded sample holds, and the estimate reweighted by
        draw counts; everything that does not depend on the counts is computed once here."""
        raise NotImplementedError

    def _estimate(self, game: Game, budget: int | None, seed: int, k: int | None) -> Contributions:
        calls: Calls = []

        def recorded(coalitions: np.ndarray) -> np.ndarray:
            values = game.value_function(coalitions)
            calls.append((np.atleast_2d(np.asarray(coalitions, dtype=bool)), values))
            return values

        approximator = self.approximator(game.n_players, seed)
        values = np.asarray(approximator.approximate(budget or DEFAULT_BUDGET, recorded).get_n_order_values(1), float)
        details: dict[str, Any] = {}
        replicates = None
        if self.bootstrap >= 2 and game.n_players > 1:
            n_units, resample = self.resampler(approximator, calls)
            scale = float(np.abs(values).max()) or 1.0  # shapiq's solver differs from ours in the 7th digit
            same = np.allclose(resample(None), values, rtol=1e-4, atol=1e-5 * scale)
            if n_units >= 2 and same:
                rng = np.random.default_rng([seed, 0xB007])
                replicates = np.stack([
                    resample(rng.multinomial(n_units, np.full(n_units, 1 / n_units))) for _ in range(self.bootstrap)
                ])
            else:
                details["bootstrap_skipped"] = "the recorded sample does not reproduce shapiq's estimate"
        return self._result(values, replicates=replicates, details=details)


def permutation_chains(n_players: int, calls: Calls) -> tuple[np.ndarray, np.ndarray]:
    """The orders shapiq's PermutationSamplingSV drew and their chain values [P, n+1].

    It asks for the empty and the full coalition first, then for batches of n-1 prefix
    coalitions per order; a player's rank is n-1 minus the number of prefixes holding it.
    """
    empty, full = float(calls[0][1][0]), float(calls[1][1][0])
    prefixes = np.concatenate([c for c, _ in calls[2:]]).reshape(-1, n_players - 1, n_players)
    inner = np.concatenate([v for _, v in calls[2:]]).reshape(-1, n_players - 1)
    ranks = n_players - 1 - prefixes.sum(axis=1)
    orders = np.argsort(ranks, axis=1, kind="stable")
    chain = np.concatenate([np.full((len(inner), 1), empty), inner, np.full((len(inner), 1), full)], axis=1)
    return orders, chain


@register
class PermutationSampling(_Shapiq):
    name = "permutation"
    summary = "reference, shapiq's permutation-sampling Shapley on the model"

    def approximator(self, n_players: int, seed: int):  # noqa: ANN201
        from shapiq import PermutationSamplingSV

        return PermutationSamplingSV(n_players, random_state=seed)

    def resampler(self, approximator: Any, calls: Calls) -> tuple[int, Resample]:
        marginals = chain_marginals(*permutation_chains(approximator.n, calls))  # [P, n], one row per order

        def resample(counts: np.ndarray | None) -> np.ndarray:
            weights = np.ones(len(marginals)) if counts is None else counts
            return weights @ marginals / weights.sum()

        return len(marginals), resample


@register
class KernelShap(_Shapiq):
    name = "kernelshap"
    summary = "reference, shapiq's KernelSHAP on the model"

    def approximator(self, n_players: int, seed: int):  # noqa: ANN201
        from shapiq import KernelSHAP

        return KernelSHAP(n_players, random_state=seed)

    def resampler(self, approximator: Any, calls: Calls) -> tuple[int, Resample]:
        """shapiq's weighted least squares, with the sampled coalitions' draw counts replaced by resampled ones."""
        from shapiq.approximator.regression.base import _get_regression_matrices, solve_regression

        sampler = approximator._sampler
        coalitions, values = sampler.coalitions_matrix, calls[-1][1]
        sampled, counter = sampler.is_coalition_sampled, sampler.coalitions_counter.astype(float)
        matrix, weights = _get_regression_matrices(
            kernel_weights=approximator._init_kernel_weights(1),
            regression_coefficient_weight=approximator._get_regression_coefficient_weights(
                max_order=approximator.max_order, index=approximator.approximation_index
            ),
            sampling_adjustment_weights=sampler.sampling_adjustment_weights,
            coalitions_matrix=coalitions,
            max_order=approximator.max_order,
            n=approximator.n,
        )
        response = values - float(values[coalitions.sum(axis=1) == 0][0])
        draws = np.repeat(np.flatnonzero(sampled), counter[sampled].astype(int))  # one entry per individual draw

        def resample(counts: np.ndarray | None) -> np.ndarray:
            w = weights
            if counts is not None:  # multinomial over the individual draws, folded back per coalition
                new = np.bincount(np.repeat(draws, counts), minlength=len(counter)).astype(float)
                w = weights.copy()
                w[sampled] *= new[sampled] / counter[sampled]
            keep = w > 0
            return solve_regression(matrix[keep], response[keep], w[keep])[1:]

        return len(draws), resample


@register
class ExactShapley(Estimator):
    """Every coalition through the real model: 2^L evaluations, so only for small games."""

    name = "exact"
    summary = "reference, the exact Shapley value from 2^L evaluations, small models only"

    def _estimate(self, game: Game, budget: int | None, seed: int, k: int | None) -> Contributions:
        n = game.n_players
        if n > MAX_EXACT_PLAYERS:
            raise CoopPruneError(f"exact Shapley needs 2^{n} real evaluations; use it for at most {MAX_EXACT_PLAYERS} players")
        if budget is not None and budget < 2**n:
            raise CoopPruneError(f"exact Shapley needs {2**n} real evaluations, budget is {budget}")
        return self._result(exact_shapley(game.value_function, n))
