"""Utilities of a coalition, computed from the mean per-token objective of the masked model.

Three objectives feed them (``coopprune.objective``): next-token NLL on the calibration text
(``ppl_ratio``, ``loglik_diff``), the KL divergence of the masked model's next-token
distribution from the base model's (``kl``), and the multiple-choice cross-entropy of zero-shot
items reserved for calibration (``mc_margin``, ``coopprune.choices``): perplexity and downstream
accuracy do not always rank masks alike. The utility's *id* names both, so a mask store of
KL utilities is never read as one of PPL ratios (nor a top-K KL store as an exact one).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from coopprune.errors import CoopPruneError


def ppl_ratio(loss: float, full_loss: float) -> float:
    """The paper's PPL_full / PPL_mask: 1 for the full model, toward 0 as damage grows."""
    return math.exp(full_loss - loss) if math.isfinite(loss) else math.nan


def loglik_diff(loss: float, full_loss: float) -> float:
    """Mean per-token log-likelihood change vs the full model (0 for the full model, negative below).

    Unlike the ratio it does not saturate at 0 for heavily pruned masks, so it keeps ranking them.
    """
    return full_loss - loss if math.isfinite(loss) else math.nan


def kl_utility(loss: float, full_loss: float) -> float:
    """exp(-KL(base || masked)) in (0, 1]: 1 for the full model (whose KL is 0 by definition).

    Scores how far the whole next-token distribution moved, not only the probability of the
    observed token, which is what held-out text rewards (measured in docs/RESULTS.md).
    """
    return math.exp(-max(loss, 0.0)) if math.isfinite(loss) else math.nan


@dataclass(frozen=True)
class Utility:
    """A utility is one row of :data:`UTILITIES`: the params, the CLI and the mask store read it from there."""

    name: str
    objective: str  # "nll", "kl" or "mc": what the engine reduces the logits to
    fn: Callable[[float, float], float]
    summary: str = ""  # one line for the CLI's help


UTILITIES: dict[str, Utility] = {
    u.name: u
    for u in (
        Utility("kl", "kl", kl_utility, "KL to the base model's next-token distribution (default)"),
        Utility("ppl_ratio", "nll", ppl_ratio, "the paper's PPL ratio"),
        Utility("loglik_diff", "nll", loglik_diff, "the log-likelihood change"),
        # exp(full - loss) of the per-item choice cross-entropy: 1 for the full model, like ppl_ratio
        Utility("mc_margin", "mc", ppl_ratio,
                "zero-shot items' choice margins (then n_windows counts items)"),
    )
}


def utility_help() -> str:
    return "; ".join(f"{u.name}: {u.summary}" for u in UTILITIES.values()) + "."


def utility_spec(utility_id: str) -> Utility:
    """The utility behind an id such as ``ppl_ratio``, ``kl`` or ``kl@top1024``."""
    try:
        return UTILITIES[utility_id.split("@", 1)[0]]
    except KeyError:
        raise CoopPruneError(f"unknown utility '{utility_id}'; choose one of {', '.join(UTILITIES)}") from None


def get_utility(utility_id: str) -> Callable[[float, float], float]:
    return utility_spec(utility_id).fn
