"""Utilities of a coalition, computed from its calibration loss and the full model's loss."""

from __future__ import annotations

import math
from collections.abc import Callable

from coopprune.errors import CoopPruneError


def ppl_ratio(loss: float, full_loss: float) -> float:
    """The paper's PPL_full / PPL_mask: 1 for the full model, toward 0 as damage grows."""
    return math.exp(full_loss - loss) if math.isfinite(loss) else math.nan


def loglik_diff(loss: float, full_loss: float) -> float:
    """Mean per-token log-likelihood change vs the full model (0 for the full model, negative below).

    Unlike the ratio it does not saturate at 0 for heavily pruned masks, so it keeps ranking them.
    """
    return full_loss - loss if math.isfinite(loss) else math.nan


UTILITIES: dict[str, Callable[[float, float], float]] = {"ppl_ratio": ppl_ratio, "loglik_diff": loglik_diff}


def get_utility(name: str) -> Callable[[float, float], float]:
    try:
        return UTILITIES[name]
    except KeyError:
        raise CoopPruneError(f"unknown utility '{name}'; choose one of {', '.join(UTILITIES)}") from None
