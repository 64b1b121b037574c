"""Regression-adjusted Monte Carlo Shapley: the surrogate's exact (or plentiful-sample) Shapley
value plus an unbiased correction, the mean residual marginal contribution on real permutation
chains. Cross-fitted: the surrogate used to correct a fold of chains never saw that fold, so
surrogate error cannot bias the ranking; a perfect surrogate needs no correction, a bad one
falls back to plain permutation sampling."""

from __future__ import annotations

import dataclasses

import numpy as np

from coopprune.dataset import mask_to_bits
from coopprune.errors import CoopPruneError
from coopprune.estimators.base import Contributions, register
from coopprune.estimators.surrogate_based import DEFAULT_BUDGET, SurrogateEstimator
from coopprune.game import Game
from coopprune.shapley import balanced_permutations, chain_coalitions, chain_marginals, surrogate_shapley
from coopprune.surrogate import Surrogate, evaluate_surrogate

MAX_PERMUTATIONS = 10_000


@register
class AdjustedShapley(SurrogateEstimator):
    name = "shapley-adjusted"
    summary = "the surrogate's Shapley value plus a cross-fitted Monte Carlo correction"
    folds = 2

    def draw_chains(self, game: Game, budget: int, seed: int) -> np.ndarray:
        """Position-balanced antithetic pairs, as many as ``budget`` new real evaluations allow."""
        n = game.n_players
        rng = np.random.default_rng([seed, 0xAD])
        seen = {mask_to_bits(m) for m in game.known()[0]}
        perms: list[np.ndarray] = []
        new = 0
        pairs = balanced_permutations(n, rng)
        while len(perms) < MAX_PERMUTATIONS:
            pair = next(pairs)
            keys = {mask_to_bits(c) for c in chain_coalitions(pair).reshape(-1, n)} - seen
            if new + len(keys) > budget:
                break
            perms.extend(pair)
            seen |= keys
            new += len(keys)
        if len(perms) < 2 * self.folds:
            raise CoopPruneError(
                f"shapley-adjusted needs a budget of at least {2 * self.folds * n} real evaluations for "
                f"{n} players ({self.folds} folds of antithetic permutation pairs), got {budget}"
            )
        return np.stack(perms)

    def _estimate(self, game: Game, budget: int | None, seed: int, k: int | None) -> Contributions:
        n = game.n_players
        perms = self.draw_chains(game, budget or DEFAULT_BUDGET, seed)
        chains = chain_coalitions(perms)  # [P, n+1, n]
        real = game.value_function(chains.reshape(-1, n)).reshape(len(perms), n + 1)
        real_marginals = chain_marginals(perms, real)
        masks, utilities = game.known()
        known_keys = np.array([mask_to_bits(m) for m in masks])
        fold_of = (np.arange(len(perms)) // 2) % self.folds  # antithetic pairs stay together

        parts, corrections, fold_metrics, heldout = [], [], [], []
        for f in range(self.folds):
            held = fold_of == f
            held_keys = {mask_to_bits(c) for c in chains[held].reshape(-1, n)}
            train = ~np.isin(known_keys, list(held_keys))
            if train.sum() < 2 * n:  # the chains cover (nearly) every coalition: plain permutation sampling
                parts.append(np.zeros(n))
                corrections.append(real_marginals[held])
                continue
            config = dataclasses.replace(self.surrogate_config, seed=self.surrogate_config.seed + f)
            surrogate = Surrogate.fit(masks[train], utilities[train], config)
            phi = surrogate_shapley(surrogate.predict, n, seed, self.permutations)
            predicted = surrogate.predict(chains[held].reshape(-1, n)).reshape(held.sum(), n + 1)
            correction = real_marginals[held] - chain_marginals(perms[held], predicted)
            parts.append(phi)
            corrections.append(correction)
            fold_metrics.append(evaluate_surrogate(surrogate, chains[held].reshape(-1, n), real[held].reshape(-1)))
            heldout.append((chains[held].reshape(-1, n), real[held].reshape(-1), predicted.reshape(-1)))
        values = np.mean([p + c.mean(0) for p, c in zip(parts, corrections)], axis=0)

        replicates = None
        if self.bootstrap >= 2:
            rng = np.random.default_rng([seed, 0xB007])
            replicates = np.stack([
                np.mean([p + c[rng.integers(0, len(c), len(c))].mean(0) for p, c in zip(parts, corrections)], axis=0)
                for _ in range(self.bootstrap)
            ])
        fitted = Surrogate.fit(masks, utilities, self.surrogate_config)
        fitted.metrics = {"held_out_chains": fold_metrics}
        if heldout:
            fitted.heldout = tuple(np.concatenate(a) for a in zip(*heldout))  # type: ignore[assignment]
        return self._result(
            values,
            replicates=replicates,
            surrogate=fitted,
            details={
                "permutations": len(perms),
                "training_masks": len(masks),
                "surrogate_shapley": np.mean(parts, axis=0).tolist(),
                "mean_abs_correction": float(np.abs(np.mean([c.mean(0) for c in corrections], axis=0)).mean()),
                "surrogate": {"config": dataclasses.asdict(self.surrogate_config), "metrics": fitted.metrics},
            },
        )
