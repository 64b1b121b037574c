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
bootstrap intervals and the fit's held-out error); the surrogate's own fit is reported on every
proposed set before its real pass.
Every setting scales with L and k; none refers to a model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from coopprune.attribution import attribute
from coopprune.errors import CoopPruneError
from coopprune.estimators.base import Contributions, get_estimator, register
from coopprune.estimators.removal import Predict, Removal, removal_mask, removal_masks
from coopprune.estimators.surrogate_based import SurrogateEstimator
from coopprune.game import Game
from coopprune.metrics import regression_metrics
from coopprune.sampling import StrataPlan, stratified_masks
from coopprune.shapley import semivalue
from coopprune.surrogate import Surrogate, fit_validated


class LogTarget:
    """Fit on log-utility mapped onto [0, 1]: 1 = the full model's utility 1, 0 = the ``floor``
    quantile of what was seen (everything worse is clipped to 0).

    Utilities of k-removals span orders of magnitude and combine roughly multiplicatively; on the
    log scale the surrogate learns them more nearly additively. Clipping the catastrophic masks
    (removing layer 0 alone can cost 15 nats) keeps the range where sets are chosen from being
    squeezed into the top percent of the sigmoid. Needs utilities in (0, 1] (``kl``,
    ``ppl_ratio``); others are used as they are.
    """

    def __init__(self, utilities: np.ndarray, floor: float = 0.2) -> None:
        finite = utilities[np.isfinite(utilities)]
        self.log = bool(len(finite)) and finite.min() > 0 and finite.max() <= 1 + 1e-9
        low = float(np.quantile(finite, floor)) if self.log else 1.0
        low = low if low < 1 - 1e-6 else (float(finite.min()) if self.log else 1.0)
        self.floor = float(np.log(low)) if low < 1 - 1e-6 else -1.0

    def __call__(self, utilities: np.ndarray) -> np.ndarray:
        if not self.log:
            return utilities
        return np.clip(1 - np.log(np.clip(utilities, 1e-300, 1)) / self.floor, 0, 1)

    def inverse(self, targets: np.ndarray) -> np.ndarray:
        return np.exp((1 - targets) * self.floor) if self.log else targets


def initial_design(n_players: int, k: int) -> int:
    """Masks the search wants before its first round: the L single removals and 5 masks per
    removed layer around k, at most L. A shallow cut has few sets to tell apart (C(30, 3) = 4,060
    against C(30, 6) = 593,775), so it needs fewer to start: 45 at k = 3 of 30, 2L from k = L/5."""
    return n_players + min(n_players, 5 * k)


def default_budget(n_players: int, k: int) -> int:
    """Real passes, initial design included: that design plus L k / 3 for the rounds. For L = 30:
    75 / 120 / 150 / 180 at k = 3 / 6 / 9 / 12, a third of EvoPress's tokens or less, and under
    SLEB's ~k L at k >= 6."""
    return initial_design(n_players, k) + round(n_players * k / 3)


def evaluated_sets(game: Game) -> set[tuple[int, ...]]:
    """The removal sets ``game`` already knows (this run's or its store's): never paid for twice."""
    return {tuple(np.flatnonzero(~m).tolist()) for m in game.known()[0]}


def strata_around(k: int, n_movable: int) -> list[int]:
    """Removal counts k/2, k and 3k/2 (clipped): masks near the decision, and some slack."""
    half = math.ceil(k / 2)
    return sorted({max(1, k - half), k, min(n_movable - 1, k + half)})


#: The settings a result reports under ``details["search"]["settings"]``, in this order.
REPORTED_SETTINGS = ("per_round", "ensemble", "exploration", "patience", "screen_share", "greedy_width",
                     "search_windows", "confirm", "refine", "proposals")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GameSearchConfig:
    """game-search's own settings (``-o NAME=VALUE``, ``prune.options``), as the module docstring
    describes them, with their defaults; building one checks them. The surrogate family's options
    (``surrogate``, ``bootstrap``, ...) are the estimator's constructor keywords."""

    per_round: int = 8
    ensemble: int = 3
    exploration: float = 1.0
    patience: int = 6
    initial: int | None = None
    restarts: int = 8
    mutations: int = 64
    elites: int = 4
    screen_share: float | None = None
    screen_factor: int = 4
    singles: bool = True
    peer_seeds: tuple[str, ...] = ("angular", "bi")  # a list is taken too
    greedy_width: int | None = 4
    trust: int | None = 2
    base_masks: int = 20_000
    search_windows: int | None = 10
    confirm: int = 8
    refine: int | None = 8
    #: "random": the ablation without the surrogate: each round's sets are drawn at random
    #: (seeded) from the same candidates (one exchange from / mutations of the elites), the
    #: hill-climb's neighbours too; everything else (design, seeds, greedy path, budget) is unchanged.
    #: Measured on SmolLM2 (bench/contributions.py --step ablation): the same set and passes at
    #: k = 3, 6 and 12; at k = 9 the surrogate finds a better set (exp -KL 0.3203 vs 0.3177) in 53.7
    #: passes against 66.7, so it stays the default.
    proposals: str = "surrogate"

    def __post_init__(self) -> None:
        object.__setattr__(self, "peer_seeds", tuple(self.peer_seeds))
        if self.search_windows is not None and self.search_windows < 1:
            raise CoopPruneError("game-search: search_windows must be at least 1 (or null: every window), "
                                 f"got {self.search_windows}")
        if self.confirm < 1:
            raise CoopPruneError(f"game-search: confirm must be at least 1, got {self.confirm}")
        if self.refine is not None and self.refine < 1:
            raise CoopPruneError(f"game-search: refine must be at least 1 (or null), got {self.refine}")
        for key in ("per_round", "ensemble", "patience", "elites", "screen_factor"):
            if getattr(self, key) < 1:
                raise CoopPruneError(f"game-search: {key} must be at least 1, got {getattr(self, key)}")
        if (self.exploration < 0 or self.restarts < 0 or self.mutations < 0
                or (self.initial is not None and self.initial < 0)):
            raise CoopPruneError("game-search: exploration, restarts, mutations and initial cannot be negative")
        if self.screen_share is not None and not 0 < self.screen_share < 1:
            raise CoopPruneError(f"game-search: screen_share must be in (0, 1), got {self.screen_share}")
        if self.greedy_width is not None and self.greedy_width < 1:
            raise CoopPruneError(f"game-search: greedy_width must be at least 1 (or null), got {self.greedy_width}")
        if self.proposals not in ("surrogate", "random"):
            raise CoopPruneError(f"game-search: proposals must be 'surrogate' or 'random', got '{self.proposals}'")
        if self.trust is not None and self.trust < 1:
            raise CoopPruneError(f"game-search: trust must be at least 1 exchange (or null), got {self.trust}")



def _trace_entry(round_: int, passes: float, best: list[int], utility: float) -> dict:
    """One point of the search trace; no k-set evaluated yet (utility -inf) is written as null,
    which every JSON reader takes, not -Infinity."""
    return {"round": round_, "passes": passes, "removed": list(best),
            "utility": utility if math.isfinite(utility) else None}

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
        movable = [i for i in range(n) if i not in set(game.protected_players)]
        if not 1 <= k < len(movable):
            raise CoopPruneError(f"game-search needs 1 <= k < {len(movable)} removable players, got k={k}")
        removal = (Removal.of_size(n, movable, k) if costs is None
                   else Removal(n, tuple(movable), tuple(float(c) for c in costs), float(max_cost)))  # type: ignore[arg-type]
        budget = default_budget(n, k) if budget is None else budget
        self.check(n, k, budget, game.n_windows)
        rng = np.random.default_rng([seed, 0x6A3E])
        full, game = game, self._search_game(game, seed)
        room = budget - self._reserve(full.n_windows)  # the search's share; the confirmations are paid from the rest
        cost0, full_cost0 = game.cost, full.cost
        strata = strata_around(k, len(movable))
        paid = self._initial_design(game, removal, k, strata, room, seed)  # evaluations found stand in for it
        seeds = self._peer_seeds(game, removal, k)
        round_cost = self.config.per_round * game.pass_cost
        greedy = self._greedy_path(game, removal, k, room=room - paid - (game.cost - cost0) - round_cost)
        if greedy is not None:
            seeds["greedy"] = greedy

        best, best_utility = self._best_known(game, removal)
        trace = [_trace_entry(0, paid + game.cost - cost0, best, best_utility)]
        proposals: list[tuple[float, float]] = []  # (predicted before its real pass, real)
        stale, rounds = 0, 0
        while paid + game.cost - cost0 + round_cost <= room + 1e-9 and stale < self.config.patience:
            rounds += 1
            if self.config.proposals == "surrogate":
                ensemble, target = self._fit(game, seed + 101 * rounds)
                picked = self._propose(ensemble, game, removal, strata, rng)
            else:
                picked = self._random_proposals(game, removal, rng)
            if not picked:
                break
            if self.config.screen_share is not None:
                picked = self._screened(game, picked, rng)
            real = game.value_function(removal_masks(n, picked))
            if self.config.proposals == "surrogate":
                predicted = target.inverse(ensemble.predict(removal_masks(n, picked)))
                proposals += list(zip(predicted.tolist(), real.tolist()))
            new_best, new_utility = self._best_known(game, removal)
            stale = 0 if new_utility > best_utility + 1e-12 else stale + 1
            best, best_utility = new_best, max(best_utility, new_utility)
            trace.append(_trace_entry(rounds, paid + game.cost - cost0, best, best_utility))
        confirmed = self._confirm(full, game, removal) if game is not full else []
        refined = self._refine(full, game, removal, seed, budget - paid - (full.cost - full_cost0)) if confirmed else []
        if confirmed:
            best, best_utility = self._best_known(full, removal)

        masks, utilities = game.known()
        target = LogTarget(utilities)
        config = dataclasses.replace(self.surrogate_config, ensemble=self.config.ensemble)
        final = fit_validated(masks, target(utilities), config)  # the search's surrogate, as it last stood
        explained = attribute(masks, utilities, strata, seed, protected=game.protected_players)
        ranking = removal.by_values(explained.semivalue)
        if ranking not in evaluated_sets(game):  # one pass beyond the budget: the report compares measured sets
            game.value_function(removal_mask(n, ranking)[None])
        explained.explain(best, ranking, dict(self._ranked(game, removal)))
        pred, true = (np.array(v) for v in zip(*proposals)) if proposals else (np.zeros(0), np.zeros(0))
        details = {
            "search": {
                "budget": budget, "rounds": rounds,
                "stopped": "patience" if stale >= self.config.patience else "budget",
                "strata_removed": strata, "chosen_real": best_utility, "chosen_cost": removal.cost(best),
                "max_cost": removal.max_cost, "passes_before": paid, "peer_seeds": seeds, "trace": trace,
                "fidelity": None if game is full else {"windows": game.n_windows, "of": full.n_windows,
                                                       "confirmed": confirmed, "refined": refined},
                "proposals_fit": regression_metrics(true, pred),
                "settings": {key: getattr(self.config, key) for key in REPORTED_SETTINGS},
            },
            "training_masks": len(masks),
            "surrogate": {"config": dataclasses.asdict(final.config), "metrics": final.metrics},
            "attribution": explained.summary(),
        }
        return self._result(explained.semivalue, removal=sorted(best), surrogate=final, attribution=explained,
                            replicates=explained.replicates if self.bootstrap >= 2 else None, details=details)

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
        top = self._ranked(screen, removal)[: self.config.confirm]
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
        best, best_utility = self._best_known(full, removal)
        width = self.config.refine * self.config.screen_factor
        steps: list[dict[str, Any]] = []
        while room >= width * screen.pass_cost + self.config.refine * full.pass_cost - 1e-9:
            on_full = evaluated_sets(full)
            fresh = [st for st in removal.swaps(best) if st not in on_full]
            if not fresh:
                break
            spent = full.cost
            screened = dict(self._ranked(screen, removal))
            unknown = [st for st in fresh if st not in screened]
            take: list[tuple[int, ...]] = []
            if unknown:
                if self.config.proposals == "surrogate":
                    ensemble, _ = self._fit(screen, seed + 0x3EF + len(steps))
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

    def _initial_design(self, game: Game, removal: Removal, k: int, strata: list[int], budget: int, seed: int) -> int:
        """When the game knows too few masks: every single removal first (``singles``: what each
        player costs alone, L passes, the start of SLEB's path), then removal sets at k/2, k and
        3k/2 players (for unequal costs: at those shares of the cost budget). Evaluations it
        already knows (a sweep) stand in for the design and count against the budget: returns how
        many did."""
        wanted = initial_design(game.n_players, k) if self.config.initial is None else self.config.initial
        wanted = min(wanted, budget - self.config.per_round)  # always leave room for one round
        known = len(game.known()[0])
        if self.config.singles:  # measured even when a sweep stands in for the rest (paid for as they go)
            singles = removal_masks(game.n_players, ((i,) for i in removal.movable))
            game.value_function(singles[:wanted])
        missing = wanted - len(game.known()[0])
        if missing > 0:
            if removal.unit:
                per = math.ceil(missing / len(strata)) + game.n_players  # room for the rows already known
                plan = StrataPlan.build(game.n_players, remove=strata, per_stratum=per,
                                        protected=game.protected_players, seed=seed).sample()
            else:
                rng = np.random.default_rng([seed, 0x1C])
                sets = {removal.scaled(s / k).random(rng) for s in strata for _ in range(math.ceil(missing / len(strata)))}
                plan = removal_masks(game.n_players, sorted(sets))
            seen = {m.tobytes() for m in game.known()[0]}
            plan = plan[[m.tobytes() not in seen for m in plan]]
            game.value_function(plan[np.random.default_rng([seed, 0x1D]).permutation(len(plan))[:missing]])
        return min(known, wanted)

    def _peer_seeds(self, game: Game, removal: Removal, k: int) -> dict[str, list[int]]:
        """The sets the one-pass peers would remove (Gromov's block, ShortGPT's bottom k), evaluated
        for real: two activation passes and two evaluations buy a search that is never worse on
        calibration than either. Games without a model (synthetic) or with sizes skip this."""
        if not removal.unit or not game.has_model:
            return {}
        seeds = {}
        for name in self.config.peer_seeds:
            try:
                c = get_estimator(name).estimate(game, k=k)
            except CoopPruneError:  # e.g. no block of k avoids the protected layers
                continue
            chosen = c.removal if c.removal is not None else removal.by_values(c.values)
            if removal.valid(tuple(chosen)):
                game.value_function(removal_mask(game.n_players, chosen)[None])
                seeds[name] = sorted(int(i) for i in chosen)
        return seeds

    def _greedy_path(self, game: Game, removal: Removal, k: int, room: float) -> list[int] | None:
        """SLEB's greedy path on real passes, over a shortlist: start from the best single removal;
        each step tries the ``greedy_width`` players whose single removals cost least among those
        left, and keeps the best. (k - 1) x width passes instead of SLEB's ~k L; the singles it
        ranks by are the initial design's. Unit costs only (for sizes the ranking is not the path);
        skipped when its passes do not fit in ``room``."""
        if (self.config.greedy_width is None or not removal.unit or not self.config.singles
                or (k - 1) * self.config.greedy_width * game.pass_cost > room):
            return None
        n = game.n_players
        single = game.value_function(removal_masks(n, ((i,) for i in removal.movable)))  # known: free
        order = [removal.movable[i] for i in np.argsort(-single, kind="stable")]
        removed = [order[0]]
        while len(removed) < k:
            options = [i for i in order if i not in removed][: self.config.greedy_width]
            values = game.value_function(removal_masks(n, (removed + [i] for i in options)))
            removed.append(options[int(np.argmax(values))])
        return sorted(int(i) for i in removed)

    def _fit(self, game: Game, seed: int) -> tuple[Surrogate, LogTarget]:
        masks, utilities = game.known()
        config = dataclasses.replace(self.surrogate_config, ensemble=self.config.ensemble, seed=seed)
        target = LogTarget(utilities)
        return Surrogate.fit(masks, target(utilities), config), target

    @staticmethod
    def _candidates(game: Game, removal: Removal) -> tuple[list[tuple[int, ...]], np.ndarray]:
        """Every real evaluation that is a candidate removal set, with its utility."""
        masks, utilities = game.known()
        sets = [tuple(np.flatnonzero(~m).tolist()) for m in masks]
        keep = [i for i, st in enumerate(sets) if np.isfinite(utilities[i]) and removal.valid(st)]
        return [sets[i] for i in keep], utilities[keep]

    def _ranked(self, game: Game, removal: Removal) -> list[tuple[tuple[int, ...], float]]:
        """The real candidate sets, best first (ties: the lower set)."""
        sets, utilities = self._candidates(game, removal)
        return sorted(zip(sets, utilities.tolist()), key=lambda su: (-su[1], su[0]))

    def _best_known(self, game: Game, removal: Removal) -> tuple[tuple[int, ...], float]:
        """The best real candidate set, or nothing yet."""
        ranked = self._ranked(game, removal)
        return ranked[0] if ranked else ((), -math.inf)

    def _propose(
        self, ensemble: Surrogate, game: Game, removal: Removal, strata: list[int], rng: np.random.Generator
    ) -> list[tuple[int, ...]]:
        n = game.n_players
        mean: Predict = ensemble.predict

        def acquisition(x: np.ndarray) -> np.ndarray:
            mu, sd = ensemble.predict(x, return_std=True)
            return mu + self.config.exploration * sd

        elites = [st for st, _ in self._ranked(game, removal)[: self.config.elites]]
        base = stratified_masks(n, strata, 4096, np.random.default_rng(int(rng.integers(1 << 31))), game.protected_players)
        seeds = {removal.greedy(mean), removal.by_values(semivalue(mean, n, base))}  # SLEB's path, the ranking
        starts = elites + sorted(seeds) + [removal.random(rng) for _ in range(self.config.restarts)]
        pool = {removal.local_search(acquisition, s) for s in dict.fromkeys(starts)}
        for elite in elites:
            pool |= set(removal.swaps(elite))
            pool |= {removal.mutate(elite, rng) for _ in range(self.config.mutations // max(len(elites), 1))}
        if self.config.trust is not None and elites:  # a surrogate is trusted only near real evaluations
            pool = {s for s in pool if min(len(set(s) - set(e)) for e in elites) <= self.config.trust}
        pool |= seeds
        seen = evaluated_sets(game)
        fresh = sorted(s for s in pool if s not in seen and removal.valid(s))
        if not fresh:
            return []
        scores = acquisition(removal_masks(n, fresh))
        take = self.config.per_round * (self.config.screen_factor if self.config.screen_share is not None else 1)
        return [fresh[i] for i in np.argsort(-scores, kind="stable")[:take]]

    def _random_proposals(self, game: Game, removal: Removal, rng: np.random.Generator) -> list[tuple[int, ...]]:
        """The ablation's round: ``per_round`` unseen sets drawn at random from the elites'
        one-exchange neighbours and mutations, the candidates the surrogate would rank."""
        elites = [st for st, _ in self._ranked(game, removal)[: self.config.elites]]
        pool: set[tuple[int, ...]] = set()
        for elite in elites:
            pool |= set(removal.swaps(elite))
            pool |= {removal.mutate(elite, rng) for _ in range(self.config.mutations // max(len(elites), 1))}
        if not elites:
            pool = {removal.random(rng) for _ in range(self.config.restarts)}
        seen = evaluated_sets(game)
        fresh = sorted(s for s in pool if s not in seen and removal.valid(s))
        take = self.config.per_round * (self.config.screen_factor if self.config.screen_share is not None else 1)
        return [fresh[i] for i in rng.permutation(len(fresh))[:take]]

    def _screened(self, game: Game, candidates: list[tuple[int, ...]], rng: np.random.Generator) -> list[tuple[int, ...]]:
        """Multi-fidelity: score every candidate on a random share of the windows, keep the best."""
        size = max(1, round(self.config.screen_share * game.n_windows))  # type: ignore[operator]
        if size >= game.n_windows or len(candidates) <= self.config.per_round:
            return candidates[: self.config.per_round]
        screen = game.screen(sorted(int(i) for i in rng.choice(game.n_windows, size=size, replace=False)))
        scores = screen.value_function(removal_masks(game.n_players, candidates))
        return [candidates[i] for i in np.argsort(-scores, kind="stable")[: self.config.per_round]]
