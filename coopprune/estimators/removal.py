"""Removal sets as the searches see them: the masks, the moves between sets and the searches on a
score (a surrogate's prediction or an acquisition), shared by ``semivalue-search``, EvoPress and
``game-search`` so each move exists once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from coopprune.select import select_within_cost

Predict = Callable[[np.ndarray], np.ndarray]


def removal_mask(n_players: int, removed: Iterable[int]) -> np.ndarray:
    mask = np.ones(n_players, dtype=bool)
    mask[list(removed)] = False
    return mask


def removal_masks(n_players: int, sets: Iterable[Iterable[int]]) -> np.ndarray:
    """One coalition row per removal set: the batch a game or a surrogate evaluates."""
    rows = [removal_mask(n_players, s) for s in sets]
    return np.stack(rows) if rows else np.ones((0, n_players), dtype=bool)


def level_switch(parent: tuple[int, ...], movable: list[int], rng: np.random.Generator, max_mutations: int = 3) -> tuple[int, ...]:
    """min(U{1..m}, U{1..m}) swaps of a removed and a kept block (biased toward one swap)."""
    removed = set(parent)
    flips = min(int(rng.integers(1, max_mutations + 1)), int(rng.integers(1, max_mutations + 1)))
    for _ in range(flips):
        kept = [i for i in movable if i not in removed]
        if not kept or not removed:
            break
        out = int(rng.choice(kept))
        back = int(rng.choice(sorted(removed)))
        removed = (removed | {out}) - {back}
    return tuple(sorted(removed))


@dataclass(frozen=True)
class Removal:
    """Which removal sets are candidates: subsets of ``movable`` whose cost fits ``max_cost`` and
    that no further movable player fits into. Unit costs and ``max_cost = k`` give exactly the
    k-sets; sublayer players give the sets within a parameter budget (attention and MLP differ)."""

    n_players: int
    movable: tuple[int, ...]
    costs: tuple[float, ...]
    max_cost: float

    @classmethod
    def of_size(cls, n_players: int, movable: Sequence[int], k: int) -> Removal:
        return cls(n_players, tuple(movable), (1.0,) * n_players, float(k))

    @property
    def unit(self) -> bool:
        return all(c == 1.0 for c in self.costs)

    def cost(self, removed: Sequence[int]) -> float:
        return float(sum(self.costs[i] for i in removed))

    def complete(self, removed: Sequence[int], order: Sequence[int]) -> tuple[int, ...]:
        """Add players from ``order`` while they fit: a maximal set."""
        out, total = set(removed), self.cost(removed)
        for i in order:
            if i not in out and total + self.costs[i] <= self.max_cost + 1e-9:
                out.add(int(i))
                total += self.costs[i]
        return tuple(sorted(out))

    def valid(self, removed: Sequence[int]) -> bool:
        kept = [i for i in self.movable if i not in set(removed)]
        total = self.cost(removed)
        return (set(removed) <= set(self.movable) and total <= self.max_cost + 1e-9
                and all(total + self.costs[i] > self.max_cost + 1e-9 for i in kept))

    def random(self, rng: np.random.Generator) -> tuple[int, ...]:
        return self.complete((), [int(i) for i in rng.permutation(self.movable)])

    def swaps(self, removed: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Every set one exchange away: one removed player back, one kept one out; with unequal
        costs the slack this leaves is filled by each player that fits in turn (then in order)."""
        kept = [i for i in self.movable if i not in set(removed)]
        found = set()
        for back in removed:
            rest = [i for i in removed if i != back]
            for out in kept:
                if self.cost(rest) + self.costs[out] > self.max_cost + 1e-9:
                    continue
                if self.unit:
                    found.add(tuple(sorted(rest + [out])))
                    continue
                others = [i for i in kept if i != out]
                fill = [i for i in others if self.cost(rest) + self.costs[out] + self.costs[i] <= self.max_cost + 1e-9]
                for first in fill or [None]:
                    found.add(self.complete(rest + [out] + ([first] if first is not None else []), others))
        return sorted(found - {removed})

    def mutate(self, removed: tuple[int, ...], rng: np.random.Generator, max_mutations: int = 3) -> tuple[int, ...]:
        """EvoPress's level switch generalised: min(U{1..m}, U{1..m}) times, one removed player
        comes back and random kept ones that fit go out."""
        if self.unit:
            return level_switch(removed, list(self.movable), rng, max_mutations)
        current = set(removed)
        for _ in range(min(int(rng.integers(1, max_mutations + 1)), int(rng.integers(1, max_mutations + 1)))):
            if not current:
                break
            back = int(rng.choice(sorted(current)))
            kept = [i for i in self.movable if i not in current and i != back]
            current = set(self.complete(sorted(current - {back}), [int(i) for i in rng.permutation(kept)]))
        return tuple(sorted(current))

    def scaled(self, factor: float) -> Removal:
        return dataclasses.replace(self, max_cost=self.max_cost * factor)

    def greedy(self, predict: Predict) -> tuple[int, ...]:
        """SLEB on the surrogate: remove, while anything fits, the player whose removal keeps the
        most predicted utility."""
        removed: list[int] = []
        while True:
            options = [i for i in self.movable if i not in removed
                       and self.cost(removed) + self.costs[i] <= self.max_cost + 1e-9]
            if not options:
                return tuple(sorted(removed))
            scores = predict(removal_masks(self.n_players, (removed + [i] for i in options)))
            removed.append(options[int(np.argmax(scores))])

    def by_values(self, values: np.ndarray) -> tuple[int, ...]:
        """The least-contributing players that fit (a ranking method's choice)."""
        fixed = [i for i in range(self.n_players) if i not in set(self.movable)]
        return tuple(select_within_cost(values, self.costs, self.max_cost, fixed))

    def local_search(self, score: Predict, start: tuple[int, ...]) -> tuple[int, ...]:
        """Best-improvement exchanges while the score rises."""
        current = start
        best = float(score(removal_mask(self.n_players, current)[None])[0])
        while True:
            options = self.swaps(current)
            if not options:
                return current
            values = score(removal_masks(self.n_players, options))
            top = int(np.argmax(values))
            if values[top] <= best + 1e-12:
                return current
            current, best = options[top], float(values[top])
