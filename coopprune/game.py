"""The layer game: players are layers, a coalition is the set of kept layers.

Shaped like ``shapiq.Game``: ``value_function`` takes a bool coalition matrix [n, L] and returns
one utility per row. Every coalition is evaluated on the real model at most once.
"""

from __future__ import annotations

import numpy as np

from coopprune.dataset import mask_to_bits
from coopprune.engine import MaskEvaluator
from coopprune.utility import get_utility


class LayerGame:
    """Cooperative game over the decoder layers of one model on one calibration set."""

    def __init__(self, evaluator: MaskEvaluator, utility: str = "ppl_ratio", progress: bool = False) -> None:
        self.evaluator = evaluator
        self.utility_name = utility
        self._utility = get_utility(utility)
        self.progress = progress
        self._values: dict[str, float] = {}
        self.evaluations = 0  # real model evaluations consumed (cache hits are free)

    @property
    def n_players(self) -> int:
        return self.evaluator.n_layers

    def value_function(self, coalitions: np.ndarray) -> np.ndarray:
        """Utility of each coalition (row); unseen coalitions are evaluated in one shared batch."""
        coalitions = np.asarray(coalitions, dtype=bool)
        keys = [mask_to_bits(c) for c in coalitions]
        missing = sorted({k for k in keys if k not in self._values})
        if missing:
            masks = np.array([[c == "1" for c in k] for k in missing], dtype=bool)
            full = self.evaluator.full_loss
            for key, result in zip(missing, self.evaluator.evaluate(masks, progress=self.progress)):
                self._values[key] = self._utility(result.loss, full)
            self.evaluations += len(missing)
        return np.array([self._values[k] for k in keys], dtype=float)

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        return self.value_function(coalitions)
