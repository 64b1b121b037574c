"""ShortGPT's Block Influence (Men et al., 2024): a layer that barely turns its input is redundant."""

from __future__ import annotations

from coopprune.activations import span_statistic
from coopprune.estimators.base import Contributions, Estimator, register
from coopprune.game import LayerGame


@register
class BlockInfluence(Estimator):
    """BI_i = 1 - mean over calibration tokens of cos(input_i, output_i); low BI = removable.

    Inputs and outputs come from hooks on the layers (not the final-normed hidden states), over
    every token of every calibration window: one forward pass, no masked evaluations.
    """

    name = "bi"
    summary = "peer, ShortGPT's Block Influence from one forward pass"
    needs_model = True

    def _estimate(self, game: LayerGame, budget: int | None, seed: int, k: int | None) -> Contributions:
        influence = 1.0 - span_statistic(game, 1)
        game.charge(1)
        return self._result(influence)
