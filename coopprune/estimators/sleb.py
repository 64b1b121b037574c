"""SLEB (Song et al., 2024): remove layers one at a time, each time the one whose removal hurts
least given those already removed, so redundancy between layers is seen step by step."""

from __future__ import annotations

from typing import Any

import numpy as np

from coopprune.errors import CoopPruneError
from coopprune.estimators.base import Contributions, Estimator, register
from coopprune.game import LayerGame


@register
class SLEB(Estimator):
    """Greedy removal over ``k`` steps; step s evaluates every remaining unprotected player.

    Real evaluations: sum over steps of the remaining candidates (fewer when the game already
    knows some coalitions). Ties go to the lower player index. Values rank by removal order (first
    removed = lowest); players never removed rank above, ordered by the utility of removing them at
    the last step (higher utility = less important); protected players rank highest. Requires ``k``.
    """

    name = "sleb"
    summary = "peer, SLEB's greedy removal one layer at a time"
    requires_k = True

    def _estimate(self, game: LayerGame, budget: int | None, seed: int, k: int | None) -> Contributions:
        n = game.n_players
        protected = set(game.protected_players)
        remaining = [i for i in range(n) if i not in protected]
        if not 0 <= k <= len(remaining):
            raise CoopPruneError(
                f"cannot remove {k} layers: protected layers {sorted(protected)} leave {len(remaining)}"
            )
        kept = np.ones(n, dtype=bool)
        removed: list[int] = []
        steps: list[dict[str, Any]] = []
        last: dict[int, float] = {}
        for _ in range(k):
            trials = np.tile(kept, (len(remaining), 1))
            trials[np.arange(len(remaining)), remaining] = False
            utilities = game.value_function(trials)
            pick = int(np.argmax(utilities))  # first maximum: the lowest index wins ties
            steps.append({"candidates": list(remaining), "utilities": utilities.tolist(), "removed": remaining[pick]})
            last = dict(zip(remaining, utilities.tolist()))
            kept[remaining[pick]] = False
            removed.append(remaining.pop(pick))
        values = np.full(n, float(k + len(remaining)))  # protected: above everything
        values[removed] = np.arange(k, dtype=float)
        if last:  # survivors: the less removing one at the last step would have cost, the lower it ranks
            for rank, player in enumerate(sorted(remaining, key=lambda p: -last[p])):
                values[player] = k + rank
        else:
            values[remaining] = 0.0  # k = 0: nothing was measured, so no order among them
        return self._result(values, removal=sorted(removed), details={"order": removed, "steps": steps})
