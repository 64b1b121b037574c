"""Layer contributions and pairwise interactions read off every real evaluation a job made.

A pruning job evaluates many masks for real (the Stage-1 sweep, the search's design, its rounds,
confirmations and hill-climb). Those are the only ground truth there is, so the report is fitted
to all of them, on the log-utility scale (``log v``: minus the KL in nats per token for ``kl``,
minus the log-perplexity increase for ``ppl_ratio``), where removing layer 0 (tens of nats) stays
distinguishable from removing a merely costly layer (one nat) instead of both sitting at v ~ 0.

The model is the smallest one that can show the paper's point, interaction: a second-order game

    log v(S) = - sum_i a_i z_i - sum_{i<j} b_ij z_i z_j,      z_i = 1 if layer i is removed,

(zero for the full model by construction) fitted by ridge regression, the penalty chosen by
leave-one-out error. ``a_i`` is what removing i alone costs; ``b_ij`` what removing i and j
together costs beyond that: positive for a redundant pair (each covers for the other, so either
looks dispensable alone and removing both hurts). For such a game every index has a closed
form: Shapley value ``a_i + sum_j b_ij / 2``, pairwise Shapley interaction (k-SII = Moebius, as
the game is 2-additive) ``-b_ij``, and the paper's semivalue is computed on the fitted game over
the strata of the decision. Intervals are percentile bootstraps over the real evaluations; the
fit is reported held out (k-fold), and where it is poor the summary says so in words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coopprune.errors import CoopPruneError
from coopprune.metrics import regression_metrics
from coopprune.sampling import stratified_masks

#: Held-out R2 (log scale) below which the contributions are reported as not trustworthy.
POOR_FIT_R2 = 0.5
BOOTSTRAP = 200  # ridge refits on resampled evaluations: milliseconds each
ALPHAS = tuple(float(a) for a in np.logspace(-4, 3, 29))
MAIN_SCALE = 10.0  # main-effect columns scaled up: their penalty is 1 / MAIN_SCALE**2 of the pairs'


def log_values(utilities: np.ndarray) -> np.ndarray:
    """``log v`` of utilities that are ratios to the full model (``kl``, ``ppl_ratio``,
    ``mc_margin``: positive, 1 = full); a utility that goes negative (``loglik_diff``, the log
    of ``ppl_ratio``) is on that scale already and is taken as it is."""
    u = np.asarray(utilities, dtype=float)
    return np.log(u) if np.all(u > 0) else u


def _pair_index(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, 1)


def _features(masks: np.ndarray) -> np.ndarray:
    z = (~np.asarray(masks, dtype=bool)).astype(float)
    i, j = _pair_index(z.shape[1])
    return np.concatenate([MAIN_SCALE * z, z[:, i] * z[:, j]], axis=1)


@dataclass(frozen=True)
class PairwiseGame:
    """``log v(S) = -(a . z + sum_{i<j} b_ij z_i z_j)`` on removal indicators ``z``."""

    main: np.ndarray  # a_i: cost of removing i alone
    pairs: np.ndarray  # b_ij, symmetric, zero diagonal: extra cost of removing both

    @property
    def n_players(self) -> int:
        return len(self.main)

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        z = (~np.asarray(masks, dtype=bool)).astype(float)
        return -(z @ self.main + 0.5 * np.einsum("bi,ij,bj->b", z, self.pairs, z))

    def expected_marginals(self, removal_probability: np.ndarray) -> np.ndarray:
        """``E[log v(m + i) - log v(m - i)]`` over base masks ``m`` that remove player j with
        probability ``removal_probability[j]``: ``a_i + sum_j b_ij p_j``, exact for this game."""
        return self.main + self.pairs @ np.asarray(removal_probability, dtype=float)

    def shapley(self) -> np.ndarray:
        """Every coalition size alike: each other player is out with probability 1/2."""
        return self.expected_marginals(np.full(self.n_players, 0.5))

    def interactions(self) -> np.ndarray:
        """Pairwise Shapley interaction index (negative: redundant pair)."""
        return -self.pairs

    def semivalue(self, strata: Sequence[int], protected: Sequence[int] = ()) -> np.ndarray:
        """The paper's semivalue over base masks removing ``strata`` players (uniform sets of the
        unprotected ones, strata alike), in closed form: no sampling noise."""
        free = np.array([i not in set(protected) for i in range(self.n_players)])
        share = float(np.mean(strata)) / free.sum()
        return self.expected_marginals(np.where(free, share, 0.0))


def _solve(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    return vt.T @ ((s / (s**2 + alpha)) * (u.T @ y))


def _loo_errors(x: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    """Mean squared leave-one-out error of ridge per alpha (closed form through the hat matrix)."""
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y
    out = []
    for a in alphas:
        shrink = s**2 / (s**2 + a)
        fitted = u @ (shrink * uty)
        hat = np.einsum("ij,j,ij->i", u, shrink, u)
        out.append(float(np.mean(((y - fitted) / np.maximum(1 - hat, 1e-9)) ** 2)))
    return np.array(out)


def fit_pairwise(masks: np.ndarray, log_v: np.ndarray, alpha: float | None = None) -> tuple[PairwiseGame, float]:
    """Ridge fit of the second-order game; ``alpha`` None: the leave-one-out best of ``ALPHAS``."""
    masks = np.asarray(masks, dtype=bool)
    x, y = _features(masks), np.asarray(log_v, dtype=float)
    if alpha is None:
        alpha = ALPHAS[int(np.argmin(_loo_errors(x, y, ALPHAS)))]
    coef = _solve(x, y, alpha)
    n = masks.shape[1]
    pairs = np.zeros((n, n))
    i, j = _pair_index(n)
    pairs[i, j] = -coef[n:]
    pairs += pairs.T
    return PairwiseGame(-MAIN_SCALE * coef[:n], pairs), alpha


def held_out_fit(masks: np.ndarray, log_v: np.ndarray, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """k-fold predictions of every real evaluation by a fit that did not see it (log scale)."""
    masks, log_v = np.asarray(masks, dtype=bool), np.asarray(log_v, dtype=float)
    order = np.random.default_rng([seed, 0xF01D]).permutation(len(masks))
    pred = np.empty(len(masks))
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        game, _ = fit_pairwise(masks[train], log_v[train])
        pred[test] = game(masks[test])
    return {"folds": folds, **regression_metrics(log_v, pred)}


@dataclass
class Attribution:
    """What the report shows: per-layer semivalue and Shapley with bootstrap intervals, pairwise
    interactions, the fit behind them (held out) and a plain-words verdict."""

    game: PairwiseGame
    semivalue: np.ndarray
    shapley: np.ndarray
    interactions: np.ndarray
    semivalue_ci: np.ndarray  # [2, n]
    shapley_ci: np.ndarray
    interactions_ci: np.ndarray  # [2, n, n]
    fit: dict[str, Any]
    strata: list[int]
    evaluations: int
    alpha: float
    replicates: np.ndarray = field(repr=False)  # bootstrap semivalues [B, n]
    warnings: list[str] = field(default_factory=list)
    explanation: str = ""  # why the chosen set, in words (:meth:`explain`)

    @property
    def n_players(self) -> int:
        return len(self.semivalue)

    @property
    def trustworthy(self) -> bool:
        return not self.warnings

    def spanning_zero(self) -> int:
        low, high = self.semivalue_ci
        return int(np.sum((low < 0) & (high > 0)))

    def redundant_pairs(self, players: Sequence[int], top: int = 5) -> list[tuple[int, int, float]]:
        """The most redundant pairs among ``players`` (most negative interaction), whose interval excludes zero."""
        players = sorted(players)
        rows = []
        for a, i in enumerate(players):
            for j in players[a + 1:]:
                if self.interactions_ci[1, i, j] < 0:
                    rows.append((i, j, float(self.interactions[i, j])))
        return sorted(rows, key=lambda r: r[2])[:top]

    def explain(self, chosen: Sequence[int], ranking: Sequence[int], real: dict[tuple[int, ...], float]) -> str:
        """A paragraph on the chosen set against the ranking's bottom k (``ranking``): what each
        costs (real utility where it was evaluated, else the fitted game's), and the redundant
        pairs that make the ranking's set worse than its parts say. Stored in ``explanation``."""
        chosen, ranking = sorted(int(i) for i in chosen), sorted(int(i) for i in ranking)
        game = self.game

        def fitted(st: list[int]) -> float:
            m = np.ones(self.n_players, dtype=bool)
            m[st] = False
            return -float(game(m[None])[0])

        def cost(st: list[int]) -> str:
            if tuple(st) in real:
                measured = -float(log_values(np.array([real[tuple(st)]]))[0])
                return f"a loss of {measured:.3f} nats (measured; the fitted game says {fitted(st):.3f})"
            return f"a loss of {fitted(st):.3f} nats (fitted, not measured)"

        text = (f"Removed layers {chosen}: {cost(chosen)}, chosen from {self.evaluations} real evaluations "
                f"(contributions fitted with held-out R2 {_fmt(self.fit.get('r2'))}).")
        if ranking != chosen:
            pairs = self.redundant_pairs(ranking, top=3)
            text += f" The ranking's bottom {len(ranking)} would remove {ranking}: {cost(ranking)}."
            if pairs:
                text += " Removing them together costs more than their contributions say: " + ", ".join(
                    f"layers {i} and {j} are redundant (interaction {v:.3f} nats)" for i, j, v in pairs) + "."
            else:
                text += (" No pair in it is redundant beyond its interval, so where the measured loss exceeds the"
                         " fitted one the gap is interaction of more than two layers, which a ranking cannot see.")
        else:
            text += " The ranking's bottom k is the same set."
        if self.warnings:
            text += " Caution: " + "; ".join(self.warnings) + "."
        self.explanation = text
        return text

    def summary(self) -> dict[str, Any]:
        """What the run's record keeps (the matrices go to ``attribution.json``)."""
        return {"fit": self.fit, "evaluations": self.evaluations, "alpha": self.alpha,
                "spanning_zero": self.spanning_zero(), "warnings": self.warnings,
                "shapley": [round(float(v), 6) for v in self.shapley], "summary": self.explanation}

    def to_json(self) -> dict[str, Any]:
        return {
            "scale": "log utility (nats per token)",
            "semivalue": self.semivalue.tolist(), "semivalue_ci": self.semivalue_ci.tolist(),
            "shapley": self.shapley.tolist(), "shapley_ci": self.shapley_ci.tolist(),
            "interactions": self.interactions.tolist(), "interactions_ci": self.interactions_ci.tolist(),
            "fit": self.fit, "strata_removed": self.strata, "evaluations": self.evaluations, "alpha": self.alpha,
            "spanning_zero": self.spanning_zero(), "warnings": self.warnings, "summary": self.explanation,
        }


def explanation_masks(n_players: int, strata: Sequence[int], count: int, seed: int,
                      protected: Sequence[int] = ()) -> np.ndarray:
    """``count`` distinct stratified masks around k to evaluate for the contributions alone: a
    search's own evaluations cluster where it looked, and a fit read off them alone ranks the
    layers it did not look at poorly (bench/contributions.py)."""
    rng = np.random.default_rng([seed, 0xE8A1])
    masks = stratified_masks(n_players, list(strata), count, rng, tuple(protected))
    return np.unique(masks, axis=0)


def attribute(
    masks: np.ndarray, utilities: np.ndarray, strata: Sequence[int], seed: int = 0,
    bootstrap: int = BOOTSTRAP, protected: Sequence[int] = (),
) -> Attribution:
    """Contributions, interactions and their intervals from real evaluations ``(masks, utilities)``."""
    masks = np.asarray(masks, dtype=bool)
    keep = np.isfinite(utilities) & ~np.all(masks, axis=1)
    masks, y = masks[keep], log_values(np.asarray(utilities)[keep])
    n = masks.shape[1]
    if len(masks) < n + 2:
        raise CoopPruneError(f"contributions need more real evaluations than players: {len(masks)} for {n} players")
    game, alpha = fit_pairwise(masks, y)
    strata = list(strata)

    def indices(g: PairwiseGame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return g.semivalue(strata, protected), g.shapley(), g.interactions()

    semi, shap, inter = indices(game)
    rng = np.random.default_rng([seed, 0xB0B0])
    reps = [indices(fit_pairwise(masks[r], y[r], alpha)[0]) for r in (rng.integers(0, len(masks), len(masks))
                                                                      for _ in range(bootstrap))]
    ci = [np.percentile(np.stack([r[t] for r in reps]), [2.5, 97.5], axis=0) for t in range(3)]
    fit = held_out_fit(masks, y, seed=seed)
    attribution = Attribution(game, semi, shap, inter, ci[0], ci[1], ci[2], fit, strata, len(masks), alpha,
                              replicates=np.stack([r[0] for r in reps]))
    attribution.warnings = verdict(attribution)
    return attribution


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def verdict(a: Attribution) -> list[str]:
    """What a reader must be told before reading the numbers."""
    out = []
    r2 = a.fit.get("r2")
    if r2 is None or not np.isfinite(r2) or r2 < POOR_FIT_R2:
        out.append(f"the model behind these contributions predicts held-out real evaluations poorly "
                   f"(R2 {r2 if r2 is None else round(r2, 2)} on {a.fit['n']} masks, {a.fit['folds']}-fold): "
                   "read the ranking, not the values")
    spanning = a.spanning_zero()
    if spanning > len(a.semivalue) / 3:
        out.append(f"{spanning} of {len(a.semivalue)} intervals span zero: their sign is not known")
    return out
