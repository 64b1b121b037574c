"""Gromov et al. (2024), "The Unreasonable Ineffectiveness of the Deeper Layers": remove the block
of ``k`` consecutive layers across which the residual stream turns the least."""

from __future__ import annotations

import numpy as np

from coopprune.activations import angle, span_statistic
from coopprune.errors import CoopPruneError
from coopprune.estimators.base import Contributions, Estimator, register
from coopprune.game import LayerGame


@register
class AngularDistance(Estimator):
    """Block distance d(l, k) = mean over tokens of arccos(cos(x_l, x_{l+k})) / pi; remove argmin.

    The paper measures the last token of each sequence only; here every token of every calibration
    window counts, which uses the same forward pass and gives a far less noisy estimate. The block
    must contain no protected player. Values: each player gets the smallest distance of any allowed
    block containing it, so the chosen block holds the lowest values (higher = more important, as
    for every method) and the usual lowest-k selection picks it too (barring ties); players in no
    allowed block get NaN ("unknown", treated as essential). One forward pass; requires ``k``.
    """

    name = "angular"
    summary = "peer, Gromov's block of k layers that turns the residual stream least"
    requires_k = True
    needs_model = True

    def _estimate(self, game: LayerGame, budget: int | None, seed: int, k: int | None) -> Contributions:
        n = game.n_players
        if not 1 <= k <= n:
            raise CoopPruneError(f"method 'angular' needs 1 <= k <= {n} layers, got k={k}")
        protected = set(game.protected_players)
        allowed = [start for start in range(n - k + 1) if protected.isdisjoint(range(start, start + k))]
        if not allowed:
            names = sorted(game.layers[p] for p in protected)
            raise CoopPruneError(f"no block of {k} consecutive layers avoids the protected layers {names}")
        distances = span_statistic(game, k, angle)
        game.charge(1)
        best = min(allowed, key=lambda start: (distances[start], start))
        values = np.full(n, np.nan)
        for start in allowed:
            values[start : start + k] = np.fmin(values[start : start + k], distances[start])
        details = {"block_distances": [float(d) for d in distances], "block_start": best}
        return self._result(values, removal=list(range(best, best + k)), details=details)
