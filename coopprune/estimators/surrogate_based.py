"""What the paper's estimators share: real evaluations of stratified masks, a validated surrogate
fitted on them, and bootstrap refits for intervals.

Training data is every real evaluation the game knows (the Stage 1 sweep, earlier rounds, other
methods) plus, when ``budget`` asks for more, masks drawn from the strata (seeded, protected
players kept). Only the masks evaluated now count against the budget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from coopprune.estimators.base import Contributions, Estimator
from coopprune.game import Game
from coopprune.sampling import PAPER_REMOVE_RATIOS, StrataPlan
from coopprune.surrogate import Surrogate, SurrogateConfig, fit_validated

if TYPE_CHECKING:
    from coopprune.config import Params

DEFAULT_BUDGET = 200  # real evaluations: 40 masks in each of the paper's 5 strata


class SurrogateEstimator(Estimator):
    """Base of the estimators that read contributions off a surrogate of the game."""

    uses_budget = True
    budget_is_sweep = True

    def __init__(
        self,
        surrogate: SurrogateConfig | None = None,
        remove_ratios: Sequence[float] = PAPER_REMOVE_RATIOS,
        bootstrap: int = 10,
        base_masks: int = 80_000,
        permutations: int = 4_000,
    ) -> None:
        self.surrogate_config = surrogate or SurrogateConfig()
        self.remove_ratios = tuple(remove_ratios)
        self.bootstrap = bootstrap
        self.base_masks = base_masks
        self.permutations = permutations

    @classmethod
    def options_from_params(cls, params: Params, n_layers: int) -> dict[str, Any]:
        """The ``surrogate`` section, the sweep's strata as ratios of ``n_layers`` (the paper's when
        it names none) and ``prune.bootstrap``."""
        s = params.sampling
        ratios = s.remove_ratios if s.remove is None else [r / n_layers for r in s.remove]
        return {"surrogate": SurrogateConfig(**params.surrogate.model_dump()),
                "remove_ratios": tuple(ratios) if ratios is not None else PAPER_REMOVE_RATIOS,
                "bootstrap": params.prune.bootstrap}

    #: Train on every coalition size (Shapley weights them alike) instead of the pruning strata.
    all_sizes: bool = False

    def plan(self, game: Game, budget: int, seed: int) -> StrataPlan:
        """``budget`` masks spread over the strata: the paper's scaled to this game, or every size."""
        n, protected = game.n_players, game.protected_players
        if self.all_sizes:
            free = n - len(protected)
            removals = list(range(1, min(free, n - 1) + 1))
            return StrataPlan.build(n, remove=removals, per_stratum=max(1, budget // len(removals)), protected=protected, seed=seed)
        probe = StrataPlan.build(n, remove_ratios=self.remove_ratios, protected=protected)
        per_stratum = max(1, budget // len(probe.removals))
        return StrataPlan.build(n, remove_ratios=self.remove_ratios, per_stratum=per_stratum, protected=protected, seed=seed)

    def training_data(self, game: Game, budget: int | None, seed: int) -> tuple[np.ndarray, np.ndarray, StrataPlan]:
        """Evaluate the stratified plan (cache hits are free), then return everything the game knows."""
        plan = self.plan(game, budget or DEFAULT_BUDGET, seed)
        game.value_function(plan.sample())
        masks, utilities = game.known()
        return masks, utilities, plan

    def fit(self, masks: np.ndarray, utilities: np.ndarray, plan: StrataPlan) -> Surrogate:
        """Validated fit: held-out metrics on the plan's strata, other known masks as out-of-strata."""
        strata = {plan.n_layers - r for r in plan.removals}
        inside = np.isin(masks.sum(1), list(strata))
        outside = (masks[~inside], utilities[~inside]) if (~inside).sum() >= 3 else None
        # refits on every real evaluation (out-of-strata ones included); the metrics stay held-out ones
        return fit_validated(masks[inside], utilities[inside], self.surrogate_config, out_of_strata=outside)

    def bootstrap_values(
        self, masks: np.ndarray, utilities: np.ndarray, seed: int, values_of: Callable[[Surrogate], np.ndarray]
    ) -> np.ndarray | None:
        """Contributions from surrogates refitted on resampled real evaluations: [B, players]."""
        if self.bootstrap < 2:
            return None
        rng = np.random.default_rng([seed, 0xB007])
        reps = []
        for b in range(self.bootstrap):
            rows = rng.integers(0, len(masks), len(masks))
            config = dataclasses.replace(self.surrogate_config, seed=self.surrogate_config.seed + 1 + b, ensemble=1)
            reps.append(values_of(Surrogate.fit(masks[rows], utilities[rows], config)))
        return np.stack(reps)

    @staticmethod
    def surrogate_details(plan: StrataPlan, n_train: int, surrogate: Surrogate) -> dict[str, Any]:
        return {
            "training_masks": n_train,
            "strata_removed": list(plan.removals),
            "surrogate": {"config": dataclasses.asdict(surrogate.config), "metrics": surrogate.metrics},
        }

    def _estimate(self, game: Game, budget: int | None, seed: int, k: int | None) -> Contributions:
        masks, utilities, plan = self.training_data(game, budget, seed)
        surrogate = self.fit(masks, utilities, plan)
        values_of = self.values_from(game, plan, seed)
        return self._result(
            values_of(surrogate),
            replicates=self.bootstrap_values(masks, utilities, seed, values_of),
            details=self.surrogate_details(plan, len(masks), surrogate),
            surrogate=surrogate,
        )

    def values_from(self, game: Game, plan: StrataPlan, seed: int) -> Callable[[Surrogate], np.ndarray]:
        raise NotImplementedError

