"""How well predictions match the truth: rank correlation and regression metrics.

Plain numpy, no model code, so anything can import it: the surrogate's validation, the fit plots,
the game search's proposal check and the benchmarks that compare utilities. A metric that is
undefined (too few points, a constant side) is None, never NaN, so results stay strict JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's rho needs."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    _, group, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(group, weights=ranks) / counts)[group]


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rho; None where it is undefined (fewer than 3 points or a constant side)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def regression_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """n, R2, Spearman and MAE; None (JSON null) where a metric is undefined, so the dict can be
    written as strict JSON anywhere."""
    true, pred = np.asarray(true, float), np.asarray(pred, float)
    if len(true) == 0:
        return {"n": 0, "r2": None, "spearman": None, "mae": None}
    ss_tot = float(((true - true.mean()) ** 2).sum())
    r2 = 1 - float(((true - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else None
    return {"n": int(len(true)), "r2": r2, "spearman": spearman(true, pred), "mae": float(np.abs(true - pred).mean())}
