"""game-search's starting design (step 1 of the method in ``game_search.py``), kept apart from the
rounds and the confirmation: the real passes bought before the surrogate is first fitted, namely
the single removals and strata around k, the one-pass peers' sets and SLEB's greedy path over a
shortlist. Each is a function of the game, the removal rule and the settings."""

from __future__ import annotations

import math

import numpy as np

from coopprune.errors import CoopPruneError
from coopprune.estimators.base import get_estimator
from coopprune.estimators.game_search_config import GameSearchConfig, initial_design
from coopprune.estimators.removal import Removal, removal_mask, removal_masks
from coopprune.game import Game
from coopprune.sampling import StrataPlan


def evaluate_design(
    game: Game, removal: Removal, k: int, strata: list[int], budget: int, seed: int, config: GameSearchConfig
) -> int:
    """When the game knows too few masks: every single removal first (``singles``: what each
    player costs alone, L passes, the start of SLEB's path), then removal sets at k/2, k and
    3k/2 players (for unequal costs: at those shares of the cost budget). Evaluations it
    already knows (a sweep) stand in for the design and count against the budget: returns how
    many did."""
    wanted = initial_design(game.n_players, k) if config.initial is None else config.initial
    wanted = min(wanted, budget - config.per_round)  # always leave room for one round
    known = len(game.known()[0])
    if config.singles:  # measured even when a sweep stands in for the rest (paid for as they go)
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


def peer_seeds(game: Game, removal: Removal, k: int, config: GameSearchConfig) -> dict[str, list[int]]:
    """The sets the one-pass peers would remove (Gromov's block, ShortGPT's bottom k), evaluated
    for real: two activation passes and two evaluations buy a search that is never worse on
    calibration than either. Games without a model (synthetic) or with sizes skip this."""
    if not removal.unit or not game.has_model:
        return {}
    seeds = {}
    for name in config.peer_seeds:
        try:
            c = get_estimator(name).estimate(game, k=k)
        except CoopPruneError:  # e.g. no block of k avoids the protected layers
            continue
        chosen = c.removal if c.removal is not None else removal.by_values(c.values)
        if removal.valid(tuple(chosen)):
            game.value_function(removal_mask(game.n_players, chosen)[None])
            seeds[name] = sorted(int(i) for i in chosen)
    return seeds


def greedy_path(game: Game, removal: Removal, k: int, room: float, config: GameSearchConfig) -> list[int] | None:
    """SLEB's greedy path on real passes, over a shortlist: start from the best single removal;
    each step tries the ``greedy_width`` players whose single removals cost least among those
    left, and keeps the best. (k - 1) x width passes instead of SLEB's ~k L; the singles it
    ranks by are the initial design's. Unit costs only (for sizes the ranking is not the path);
    skipped when its passes do not fit in ``room``."""
    if (config.greedy_width is None or not removal.unit or not config.singles
            or (k - 1) * config.greedy_width * game.pass_cost > room):
        return None
    n = game.n_players
    single = game.value_function(removal_masks(n, ((i,) for i in removal.movable)))  # known: free
    order = [removal.movable[i] for i in np.argsort(-single, kind="stable")]
    removed = [order[0]]
    while len(removed) < k:
        options = [i for i in order if i not in removed][: config.greedy_width]
        values = game.value_function(removal_masks(n, (removed + [i] for i in options)))
        removed.append(options[int(np.argmax(values))])
    return sorted(int(i) for i in removed)
