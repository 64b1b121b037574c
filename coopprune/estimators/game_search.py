"""coopprune's set search: the game's surrogate decides which coalitions are worth a real pass.

Ranking layers by contribution and removing the k lowest misses interactions (two redundant
layers each look dispensable; removing both costs more than either says). EvoPress searches sets
directly but pays a real pass for every set it looks at. This method keeps the paper's surrogate
and uses it as the screen:

1. Start from what is paid for: every evaluation the game knows (the Stage-1 sweep, the mask
   store). When it knows fewer than ``initial`` masks (L + min(L, 5k): the L singles and five
   masks per removed layer, at most L, as a shallow cut's search space is small), it evaluates
   every single removal (``singles``) and draws the rest from strata around k (k/2, k and 3k/2
   removals), seeded. The
   sets of the one-pass peers (Gromov's angular block, ShortGPT's bottom k: ``peer_seeds``) are
   evaluated once for real too, and so is SLEB's greedy path over a shortlist (each step tries
   the ``greedy_width`` players whose single removals cost least: (k - 1) x width passes).
2. Rounds: fit an ensemble of ``ensemble`` surrogates on every real evaluation; propose k-removal
   sets by swap local search and EvoPress-style mutations on the surrogate, scored by predicted
   utility plus ``exploration`` x the members' disagreement; starts are the best real sets so
   far, SLEB's greedy path run on the surrogate, the semivalue's bottom k and seeded random sets;
   a proposal must lie within ``trust`` exchanges of one of the ``elites`` best real sets (the
   argmax of a surrogate fitted on ~100 masks, far from any of them, is mostly its own error);
   evaluate the ``per_round`` best unseen ones on the real model (with ``screen_share``, first
   ``screen_factor`` x as many on a random share of the windows, then the best on all of them).
3. Stop when ``budget`` real passes are spent (the initial design included; evaluations it finds,
   a sweep's, stand in for the design and count against the budget) or after ``patience`` rounds
   without a better real set.
4. On a calibration set of more than ``search_windows`` windows (default 10, the paper's
   calibration size), steps 1-3 run on a seeded ``search_windows`` of them, a screen pass costing
   that share, and the ``confirm`` best sets the search found are then evaluated on every window:
   the choice gets the tokens of the large set at about the cost of the small one (null: the
   search runs on every window). The screen is another game (other windows): its evaluations go to
   the store the game holds for those windows (the pipeline runs the Stage-1 sweep there, per
   ``screen_windows``, so the sweep stands in for the design and a killed search repeats no
   screen pass), else they stay in memory. The trace is on the screen's utilities. Then,
   while the budget lasts, a hill-climb on every window from the best confirmed set (per step
   ``screen_factor`` x ``refine`` neighbours one exchange away, picked by the screen's surrogate,
   are screened for real and the ``refine`` best evaluated on every window; null: off): a
   screen's optimum is often one exchange from the full calibration's.

The result is the best k-removal set ever evaluated on the full calibration set, so on
calibration it is never worse than any set it saw. Contributions are read off every real
evaluation the search made (``coopprune.attribution``: the semivalue over masks around k of a
second-order game fitted on the log-utility scale, Shapley values and pairwise interactions, with
bootstrap intervals and the fit's held-out error); ``explain_masks`` (default 0) adds that many
stratified real evaluations around k for the report alone. The surrogate's own fit is reported on
every proposed set before its real pass.
Every setting scales with L and k; none refers to a model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from coopprune.attribution import Attribution, attribute, explanation_masks
from coopprune.errors import CoopPruneError
from coopprune.estimators.base import Contributions, register
from coopprune.estimators.game_search_config import (
    REPORTED_SETTINGS,
    GameSearchConfig,
    default_budget,
    initial_design,
    strata_around,
)
from coopprune.estimators.removal import Removal, removal_mask, removal_masks
from coopprune.estimators.search_design import evaluate_design, greedy_path, peer_seeds
from coopprune.estimators.search_proposals import (
    LogTarget,
    best_known,
    evaluated_sets,
    fit_ensemble,
    propose,
    random_proposals,
    ranked_candidates,
    screened,
)
from coopprune.estimators.surrogate_based import SurrogateEstimator
from coopprune.game import Game
from coopprune.metrics import regression_metrics
from coopprune.surrogate import fit_validated

# re-exported: tests and the bench import the settings and the target from here
__all__ = ["REPORTED_SETTINGS", "GameSearch", "GameSearchConfig", "LogTarget", "default_budget", "initial_design",
           "strata_around"]


def _trace_entry(round_: int, passes: float, best: list[int], utility: float) -> dict:
    """One point of the search trace; no k-set evaluated yet (utility -inf) is written as null,
    which every JSON reader takes, not -Infinity."""
    return {"round": round_, "passes": passes, "removed": list(best),
            "utility": utility if math.isfinite(utility) else None}

@dataclasses.dataclass
class _SearchState:
    """Where the search stands: passes paid by the design, the best real set, its trace, and the
    surrogate's predictions of the sets it proposed against their real utilities."""

    cost0: float
    paid: float = 0.0
    best: list[int] = dataclasses.field(default_factory=list)
    best_utility: float = -math.inf
    trace: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    proposals: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    rounds: int = 0
    stale: int = 0

    def spent(self, game: Game) -> float:
        """Passes spent on the search's game: the design's and every evaluation since."""
        return self.paid + game.cost - self.cost0

    def proposals_fit(self) -> dict[str, Any]:
        """How well the surrogate predicted the sets it proposed, before their real pass."""
        pred, true = (np.array(v) for v in zip(*self.proposals)) if self.proposals else (np.zeros(0), np.zeros(0))
        return regression_metrics(true, pred)


@register
class GameSearch(SurrogateEstimator):
    """Surrogate-screened search for the best k-removal set; see the module docstring."""

    name = "game-search"
    summary = "coopprune's set search, the surrogate screening which sets get a real pass"
    requires_k = True
    accepts_costs = True  # players of different sizes (sublayers) under a cost budget
    budget_is_sweep = False  # its budget is real passes, by its own rule (default_budget)

    config_class = GameSearchConfig

    def __init__(self, config: GameSearchConfig | None = None, **options: Any) -> None:
        """``options``: the surrogate family's (``surrogate``, ``bootstrap``, ...; ``base_masks`` is
        in ``config``)."""
        self.config = config if config is not None else GameSearchConfig()
        super().__init__(base_masks=self.config.base_masks, **options)

    def check(self, n_players: int, k: int | None, budget: int | None, n_windows: int | None = None) -> None:
        """Fail before any model is loaded when the budget cannot buy one round (and, on a
        screen, the confirmations)."""
        if k is None:
            return
        budget = default_budget(n_players, k) if budget is None else budget
        size = self._screen_size(n_windows)
        share = 1.0 if size is None else size / n_windows  # type: ignore[operator]
        if budget < self.config.per_round * share + self._reserve(n_windows):
            raise CoopPruneError(f"game-search: a budget of {budget} real passes cannot buy one round of "
                                 f"{self.config.per_round}"
                                 + (f" and {self.config.confirm} confirmations" if size else "")
                                 + " (raise --budget or lower per_round)")

    def _reserve(self, n_windows: int | None) -> int:
        """Full passes kept back for the confirmation step (a search on a screen only)."""
        return self.config.confirm if self._screen_size(n_windows) is not None else 0

    def _estimate(
        self, game: Game, budget: int | None, seed: int, k: int | None,
        costs: Sequence[float] | None = None, max_cost: float | None = None,
    ) -> Contributions:
        assert k is not None
        n = game.n_players
        removal = self._removal(game, k, costs, max_cost)
        budget = default_budget(n, k) if budget is None else budget
        self.check(n, k, budget, game.n_windows)
        full, game = game, self._search_game(game, seed)
        room = budget - self._reserve(full.n_windows)  # the search's share; the confirmations are paid from the rest
        full_cost0 = full.cost
        strata = strata_around(k, len(removal.movable))
        state = _SearchState(cost0=game.cost)
        state.paid = evaluate_design(game, removal, k, strata, room, seed, self.config)  # found evaluations stand in
        seeds = peer_seeds(game, removal, k, self.config)
        greedy = greedy_path(game, removal, k, room - state.spent(game) - self.config.per_round * game.pass_cost,
                             self.config)
        if greedy is not None:
            seeds["greedy"] = greedy
        self._rounds(game, removal, strata, room, state, seed)
        confirmed = self._confirm(full, game, removal) if game is not full else []
        refined = (self._refine(full, game, removal, seed, budget - state.paid - (full.cost - full_cost0))
                   if confirmed else [])
        if confirmed:
            state.best, state.best_utility = best_known(full, removal)
        masks, utilities = game.known()
        target = LogTarget(utilities)
        config = dataclasses.replace(self.surrogate_config, ensemble=self.config.ensemble)
        final = fit_validated(masks, target(utilities), config)  # the search's surrogate, as it last stood
        explained = self._explain(game, removal, strata, state.best, seed)
        details = {
            "search": {
                "budget": budget, "rounds": state.rounds,
                "stopped": "patience" if state.stale >= self.config.patience else "budget",
                "strata_removed": strata, "chosen_real": state.best_utility, "chosen_cost": removal.cost(state.best),
                "max_cost": removal.max_cost, "passes_before": state.paid, "peer_seeds": seeds, "trace": state.trace,
                "fidelity": None if game is full else {"windows": game.n_windows, "of": full.n_windows,
                                                       "confirmed": confirmed, "refined": refined},
                "proposals_fit": state.proposals_fit(),
                "settings": {key: getattr(self.config, key) for key in REPORTED_SETTINGS},
            },
            "training_masks": len(masks),
            "surrogate": {"config": dataclasses.asdict(final.config), "metrics": final.metrics},
            "attribution": explained.summary(),
        }
        return self._result(explained.semivalue, removal=sorted(state.best), surrogate=final, attribution=explained,
                            replicates=explained.replicates if self.bootstrap >= 2 else None, details=details)

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _removal(game: Game, k: int, costs: Sequence[float] | None, max_cost: float | None) -> Removal:
        """The sets the search may remove: k of the unprotected players, or any within a cost budget."""
        n = game.n_players
        movable = [i for i in range(n) if i not in set(game.protected_players)]
        if not 1 <= k < len(movable):
            raise CoopPruneError(f"game-search needs 1 <= k < {len(movable)} removable players, got k={k}")
        if costs is None:
            return Removal.of_size(n, movable, k)
        return Removal(n, tuple(movable), tuple(float(c) for c in costs), float(max_cost))  # type: ignore[arg-type]

    def _rounds(self, game: Game, removal: Removal, strata: list[int], room: float, state: _SearchState,
                seed: int) -> None:
        """Step 2: rounds of proposals, each ``per_round`` sets evaluated for real, until the
        search's share of the budget is spent or ``patience`` rounds bring no better set."""
        n = game.n_players
        rng = np.random.default_rng([seed, 0x6A3E])
        round_cost = self.config.per_round * game.pass_cost
        state.best, state.best_utility = best_known(game, removal)
        state.trace = [_trace_entry(0, state.spent(game), state.best, state.best_utility)]
        while state.spent(game) + round_cost <= room + 1e-9 and state.stale < self.config.patience:
            state.rounds += 1
            if self.config.proposals == "surrogate":
                ensemble, target = fit_ensemble(game, self.surrogate_config, self.config, seed + 101 * state.rounds)
                picked = propose(ensemble, game, removal, strata, self.config, rng)
            else:
                picked = random_proposals(game, removal, self.config, rng)
            if not picked:
                break
            if self.config.screen_share is not None:
                picked = screened(game, picked, self.config, rng)
            real = game.value_function(removal_masks(n, picked))
            if self.config.proposals == "surrogate":
                predicted = target.inverse(ensemble.predict(removal_masks(n, picked)))
                state.proposals += list(zip(predicted.tolist(), real.tolist()))
            new_best, new_utility = best_known(game, removal)
            state.stale = 0 if new_utility > state.best_utility + 1e-12 else state.stale + 1
            state.best, state.best_utility = new_best, max(state.best_utility, new_utility)
            state.trace.append(_trace_entry(state.rounds, state.spent(game), state.best, state.best_utility))

    def _explain(self, game: Game, removal: Removal, strata: list[int], best: list[int], seed: int) -> Attribution:
        """Contributions read off every real evaluation of the search (and ``explain_masks`` more),
        and why ``best`` beats the ranking's bottom k (which gets one real pass beyond the budget
        when it has none)."""
        n = game.n_players
        if self.config.explain_masks:
            game.value_function(explanation_masks(n, strata, self.config.explain_masks, seed, game.protected_players))
        masks, utilities = game.known()
        explained = attribute(masks, utilities, strata, seed, protected=game.protected_players)
        ranking = removal.by_values(explained.semivalue)
        if ranking not in evaluated_sets(game):
            game.value_function(removal_mask(n, ranking)[None])
        explained.explain(best, ranking, dict(ranked_candidates(game, removal)))
        return explained

    # ------------------------------------------------------------------ steps
    def _screen_size(self, n_windows: int | None) -> int | None:
        """Windows the search runs on when they are fewer than all; None: it runs on every window."""
        if self.config.search_windows is None or n_windows is None or n_windows <= self.config.search_windows:
            return None
        return self.config.search_windows

    def screen_windows(self, n_windows: int, seed: int) -> list[int] | None:
        """On more than ``search_windows`` windows: the seeded ones the search runs on."""
        size = self._screen_size(n_windows)
        if size is None:
            return None
        rows = np.random.default_rng([seed, 0xF1DE]).choice(n_windows, size=size, replace=False)
        return sorted(int(i) for i in rows)

    def _search_game(self, game: Game, seed: int) -> Game:
        """The game the search runs on: ``game`` itself, or its screen on ``screen_windows``."""
        rows = self.screen_windows(game.n_windows, seed)
        return game if rows is None else game.screen(rows)

    def _confirm(self, full: Game, screen: Game, removal: Removal) -> list[dict[str, Any]]:
        """The ``confirm`` best sets of the lower-fidelity search, evaluated on every window."""
        top = ranked_candidates(screen, removal)[: self.config.confirm]
        if not top:
            return []
        real = full.value_function(removal_masks(full.n_players, (st for st, _ in top)))
        return [{"removed": list(st), "screen": u, "full": float(r)} for (st, u), r in zip(top, real)]

    def _refine(self, full: Game, screen: Game, removal: Removal, seed: int, room: float) -> list[dict[str, Any]]:
        """Hill-climb on every window from the best confirmed set, as long as ``room`` passes last:
        each step screens the ``screen_factor`` x ``refine`` unseen one-exchange neighbours the
        screen's surrogate ranks highest (real screen passes: the surrogate alone misses sets),
        evaluates the ``refine`` best on every window and moves to the best while it is better.
        The screen's optimum is often one exchange from the full calibration's."""
        if self.config.refine is None:
            return []
        best, best_utility = best_known(full, removal)
        width = self.config.refine * self.config.screen_factor
        steps: list[dict[str, Any]] = []
        while room >= width * screen.pass_cost + self.config.refine * full.pass_cost - 1e-9:
            on_full = evaluated_sets(full)
            fresh = [st for st in removal.swaps(best) if st not in on_full]
            if not fresh:
                break
            spent = full.cost
            screened = dict(ranked_candidates(screen, removal))
            unknown = [st for st in fresh if st not in screened]
            take: list[tuple[int, ...]] = []
            if unknown:
                if self.config.proposals == "surrogate":
                    ensemble, _ = fit_ensemble(screen, self.surrogate_config, self.config, seed + 0x3EF + len(steps))
                    scores = ensemble.predict(removal_masks(full.n_players, unknown))
                else:  # the ablation: neighbours at random
                    scores = np.random.default_rng([seed, 0x3EF, len(steps)]).random(len(unknown))
                take = [unknown[i] for i in np.argsort(-scores, kind="stable")[:width]]
                utilities = screen.value_function(removal_masks(full.n_players, take))
                screened |= dict(zip(take, utilities.tolist()))
            ranked = sorted((st for st in fresh if st in screened), key=lambda st: (-screened[st], st))
            picked = ranked[: self.config.refine]
            real = full.value_function(removal_masks(full.n_players, picked))
            room -= full.cost - spent
            top = int(np.argmax(real))
            moved = bool(real[top] > best_utility + 1e-12)
            steps.append({"removed": list(picked[top]), "full": float(real[top]), "screened": len(take),
                          "evaluated": len(picked), "moved": moved})
            if not moved:
                break
            best, best_utility = picked[top], float(real[top])
        return steps
