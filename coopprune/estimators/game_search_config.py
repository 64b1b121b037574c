"""game-search's settings, kept apart from the search so that what can be set, its defaults, its
checks and the budget rules that scale with L and k are read in one place. ``game_search.py``
re-exports them for the code that imports them from there (tests, bench)."""

from __future__ import annotations

import dataclasses
import math

from coopprune.errors import CoopPruneError

#: The settings a result reports under ``details["search"]["settings"]``, in this order.
REPORTED_SETTINGS = ("per_round", "ensemble", "exploration", "patience", "screen_share", "greedy_width",
                     "search_windows", "confirm", "refine", "proposals", "explain_masks")


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
    #: Real evaluations added for the contributions only, after the decision: stratified masks
    #: around k (seeded, on the search's windows), which spread the masks the report is read off
    #: beyond where the search looked. They change no decision. Measured on SmolLM2 against a
    #: 3,069-evaluation reference (bench/contributions.py --step compare): 186 of them take the
    #: contributions' Spearman from 0.70 to 0.82 and find the reference's top five, but lower the
    #: intervals' coverage from 0.97 to 0.87 and cost 5.3 minutes of `make run` here, so off by default.
    explain_masks: int = 0

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
        if (self.exploration < 0 or self.restarts < 0 or self.mutations < 0 or self.explain_masks < 0
                or (self.initial is not None and self.initial < 0)):
            raise CoopPruneError("game-search: exploration, restarts, mutations, initial and explain_masks "
                                 "cannot be negative")
        if self.screen_share is not None and not 0 < self.screen_share < 1:
            raise CoopPruneError(f"game-search: screen_share must be in (0, 1), got {self.screen_share}")
        if self.greedy_width is not None and self.greedy_width < 1:
            raise CoopPruneError(f"game-search: greedy_width must be at least 1 (or null), got {self.greedy_width}")
        if self.proposals not in ("surrogate", "random"):
            raise CoopPruneError(f"game-search: proposals must be 'surrogate' or 'random', got '{self.proposals}'")
        if self.trust is not None and self.trust < 1:
            raise CoopPruneError(f"game-search: trust must be at least 1 exchange (or null), got {self.trust}")


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


def strata_around(k: int, n_movable: int) -> list[int]:
    """Removal counts k/2, k and 3k/2 (clipped): masks near the decision, and some slack."""
    half = math.ceil(k / 2)
    return sorted({max(1, k - half), k, min(n_movable - 1, k + half)})
