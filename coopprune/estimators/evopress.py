"""EvoPress (Sieberling et al., ICML 2025, arXiv 2410.14649): (1 + lambda) evolutionary search over
k-removal sets, the strongest published search for block dropping. Follows the public code
(IST-DASLab/EvoPress ``evo_drop_search.py`` with ``scripts/run_drop_search.sh``'s settings):

* initial parent: the fittest of ``initial`` = 64 random k-sets, scored on the screen;
* each generation, ``offspring`` = 32 distinct children of the parent, each made by
  min(U{1..3}, U{1..3}) level-switch mutations (one kept block removed, one removed block
  restored, so the count stays k), never a duplicate of another child or of the parent;
* multi-step selection: every child scored on a screen (a random share of the calibration
  drawn anew each generation), the ``survivors`` = 2 best then scored with the parent on the
  full calibration set; the best of those is the next parent (elitist);
* generations = k (L - k) / 1.5, L the number of removable blocks (their script's rule);
* fitness: the game's utility, so KL to the base model (their default) with ``utility: kl``,
  the PPL ratio with ``ppl_ratio``.

Scaled to our calibration (stated in docs/RESULTS.md): their screen is 2,048 tokens and the final
step 32,768 tokens, 1/16 of it, of a 131,072-token calibration set. Ours is 10 x 128 tokens, so
the screen is ``screen_share`` = 1/16 of the windows, at least one (1 of 10), and the final step
uses all the windows every method is scored on (a deterministic fitness: the parent is not
re-evaluated, a cache hit). Cost: a screen evaluation counts as its share of a pass.

Resumable: where the game persists (a mask store), the search's state (parent, trace, random
state, passes spent) is checkpointed after every generation, so a killed run resumes at the
generation it was in, with the same random draws (the same set) and its earlier passes counted.
"""

from __future__ import annotations

import json
import time
from math import comb
from pathlib import Path
from typing import Any

import numpy as np

from coopprune.atomic import write_json
from coopprune.errors import CoopPruneError
from coopprune.estimators.base import EARLIER_SECONDS, Contributions, Estimator, register
from coopprune.estimators.removal import level_switch, removal_masks
from coopprune.game import Game


def generations_rule(k: int, n_movable: int) -> int:
    """Their script: int(k * (n - k) / 1.5)."""
    return int(k * (n_movable - k) / 1.5)


@register
class EvoPress(Estimator):
    """Set-based: returns the final parent as ``removal``; values rank removed below kept."""

    name = "evopress"
    summary = "peer, EvoPress's evolutionary search over k-sets"
    requires_k = True

    def __init__(
        self,
        *,
        generations: int | None = None,
        offspring: int = 32,
        initial: int = 64,
        survivors: int = 2,
        max_mutations: int = 3,
        screen_share: float = 1 / 16,
    ) -> None:
        if offspring < 1 or initial < 1 or survivors < 1 or max_mutations < 1:
            raise CoopPruneError("evopress: offspring, initial, survivors and max_mutations must be at least 1")
        if not 0 < screen_share <= 1:
            raise CoopPruneError(f"evopress: screen_share must be in (0, 1], got {screen_share}")
        self.generations = generations
        self.offspring, self.initial, self.survivors = offspring, initial, survivors
        self.max_mutations, self.screen_share = max_mutations, screen_share

    def _screen(self, game: Game, rng: np.random.Generator) -> Game:
        """A fresh random share of the windows (their random minibatch per selection step)."""
        n = game.n_windows
        size = max(1, round(self.screen_share * n))
        if size >= n:
            return game
        return game.screen(sorted(int(i) for i in rng.choice(n, size=size, replace=False)))

    def _offspring(self, parent: tuple[int, ...], movable: list[int], rng: np.random.Generator,
                   space: int) -> list[tuple[int, ...]]:
        """``offspring`` distinct children of ``parent`` (fewer in a small space), each a level
        switch of up to ``max_mutations`` players."""
        children: list[tuple[int, ...]] = []
        wanted, attempts = min(self.offspring, space - 1), 0
        while len(children) < wanted and attempts < 100 * self.offspring:
            attempts += 1
            child = level_switch(parent, movable, rng, self.max_mutations)
            if child != parent and child not in children:
                children.append(child)
        return children

    def _estimate(self, game: Game, budget: int | None, seed: int, k: int | None) -> Contributions:
        assert k is not None
        n = game.n_players
        movable = [i for i in range(n) if i not in set(game.protected_players)]
        if not 1 <= k < len(movable):
            raise CoopPruneError(f"evopress needs 1 <= k < {len(movable)} removable players, got k={k}")
        rng, cost0, used0 = np.random.default_rng([seed, 0xE7D]), game.cost, game.evaluations
        started, earlier_seconds = time.perf_counter(), 0.0
        generations = generations_rule(k, len(movable)) if self.generations is None else self.generations

        def fitness(g: Game, sets: list[tuple[int, ...]]) -> np.ndarray:
            return g.value_function(removal_masks(n, sets))

        settings = {"k": k, "seed": seed, "generations": generations, "offspring": self.offspring, "initial": self.initial,
                    "survivors": self.survivors, "max_mutations": self.max_mutations, "screen_share": self.screen_share,
                    "movable": movable}
        checkpoint = game.state_path(f"evopress-k{k}-seed{seed}")
        saved = _load_state(checkpoint, settings)
        if saved is not None:  # a killed run: where it stood after its last finished generation
            rng.bit_generator.state = saved["rng"]
            parent, parent_utility, trace = tuple(saved["parent"]), float(saved["parent_utility"]), saved["trace"]
            game.evaluations += saved["evaluations"]
            game.spend(saved["passes"])
            earlier_seconds = float(saved["seconds"])
        else:
            starts = [tuple(sorted(int(i) for i in rng.choice(movable, size=k, replace=False))) for _ in range(self.initial)]
            scores = fitness(self._screen(game, rng), starts)
            parent = starts[int(np.argmax(scores))]
            parent_utility = float(fitness(game, [parent])[0])
            trace = [{"generation": 0, "passes": game.cost - cost0, "removed": list(parent), "utility": parent_utility}]

        def save() -> None:
            if checkpoint is not None:
                write_json(checkpoint, {"settings": settings, "parent": list(parent), "parent_utility": parent_utility,
                                        "trace": trace, "rng": rng.bit_generator.state,
                                        "passes": game.cost - cost0, "evaluations": game.evaluations - used0,
                                        "seconds": earlier_seconds + time.perf_counter() - started})

        save()
        space = comb(len(movable), k)
        for generation in range(trace[-1]["generation"] + 1, generations + 1):
            children = self._offspring(parent, movable, rng, space)
            if not children:
                break
            screened = fitness(self._screen(game, rng), children)
            best = [children[i] for i in np.argsort(-screened, kind="stable")[: self.survivors]]
            finalists = best + [parent]  # elitist: the parent competes in the last step
            real = fitness(game, finalists)
            top = int(np.argmax(real))  # ties: a child first, as their sort keeps offspring order
            parent, parent_utility = finalists[top], float(real[top])
            trace.append({"generation": generation, "passes": game.cost - cost0, "removed": list(parent), "utility": parent_utility})
            save()
        values = np.full(n, 1.0)
        values[list(game.protected_players)] = 2.0
        values[list(parent)] = 0.0
        details = {"generations": generations, "offspring": self.offspring, "initial": self.initial,
                   "survivors": self.survivors, "screen_windows": max(1, round(self.screen_share * game.n_windows)),
                   "chosen_real": parent_utility, "trace": trace, EARLIER_SECONDS: earlier_seconds}
        return self._result(values, removal=sorted(parent), details=details)


def _load_state(path: Path | None, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it is of a search with these settings (else it is started afresh)."""
    if path is None or not path.is_file():
        return None
    state = json.loads(path.read_text())
    return state if state.get("settings") == settings else None
