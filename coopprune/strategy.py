"""Pruning strategies: which players to remove, in one shot or in rounds.

Iterative pruning re-runs the estimator on the game of the already-pruned model (a subgame:
the removed layers skipped, which is exactly the pruned model), so every real evaluation of an
earlier round that still applies is reused rather than repeated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from coopprune.errors import CoopPruneError
from coopprune.estimators import Contributions, Estimator
from coopprune.game import Game
from coopprune.select import choose, select_within_cost

if TYPE_CHECKING:
    from coopprune.surrogate import Surrogate


@dataclass
class Round:
    """One estimation round: contributions of the players still present, and what it removed."""

    players: list[int]  # original player indices the contributions refer to
    contributions: Contributions
    removed: list[int]  # original player indices removed in this round


@dataclass
class Selection:
    removed: list[int]
    rounds: list[Round]

    @property
    def evaluations(self) -> int:
        return sum(r.contributions.evaluations for r in self.rounds)

    @property
    def seconds(self) -> float:
        return sum(r.contributions.seconds for r in self.rounds)

    @property
    def surrogate(self) -> Surrogate | None:
        """The surrogate the last round fitted (the report saves it), if its method fits one."""
        return self.rounds[-1].contributions.surrogate if self.rounds else None


def select_by_cost(
    game: Game, estimator: Estimator, costs: list[int], max_cost: int, budget: int | None = None, seed: int = 0
) -> Selection:
    """One shot over players of different sizes: a cost-aware set search's own set, else the
    least-contributing players within ``max_cost``."""
    if estimator.accepts_costs:
        nominal = max(1, round(max_cost / (sum(costs) / len(costs))))  # players of average size that fit
        result = estimator.estimate(game, budget=budget, seed=seed, k=nominal, costs=costs, max_cost=max_cost)
        removed = sorted(result.removal or [])
    else:
        result = estimator.estimate(game, budget=budget, seed=seed)
        if result.removal is not None:
            raise CoopPruneError(f"{result.method} picks a set of k players; with players of different sizes use a scoring method")
        removed = select_within_cost(result.values, costs, max_cost, game.protected_players)
    result.details["removed_cost"] = int(sum(costs[i] for i in removed))
    result.details["max_cost"] = max_cost
    return Selection(removed, [Round(list(range(game.n_players)), result, removed)])


def select_players(
    game: Game, estimator: Estimator, k: int, per_round: int | None = None, budget: int | None = None, seed: int = 0
) -> Selection:
    """Remove ``k`` players, ``per_round`` at a time (``None``: all at once)."""
    if per_round is not None and not 1 <= per_round <= k:
        raise CoopPruneError(f"--iterative takes a number of layers per round in [1, {k}], got {per_round}")
    step = per_round or k
    removed: list[int] = []
    rounds: list[Round] = []
    while len(removed) < k:
        r = min(step, k - len(removed))
        index = [i for i in range(game.n_players) if i not in set(removed)]
        sub = game.subgame(removed) if removed else game
        result = estimator.estimate(sub, budget=budget, seed=seed + len(rounds), k=r)
        chosen = [index[j] for j in choose(result, r, sub.protected_players)]
        rounds.append(Round(players=index, contributions=result, removed=chosen))
        removed = sorted(removed + chosen)
    return Selection(removed, rounds)
