"""The surrogate side of game-search's rounds, kept apart from the orchestration (budget, design,
confirmation) in ``game_search.py``: the log-utility target, fitting the ensemble on every real
evaluation, ranking the real candidate sets, proposing unseen k-removal sets (swap local search and
mutations scored on the surrogate, or at random for the ablation) and screening them on a share of
the windows. Each is a function of the game, the removal rule, the settings and the caller's RNG,
drawn from in the order the search always drew."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from coopprune.estimators.game_search_config import GameSearchConfig
from coopprune.estimators.removal import Predict, Removal, removal_masks
from coopprune.game import Game
from coopprune.sampling import stratified_masks
from coopprune.shapley import semivalue
from coopprune.surrogate import Surrogate, SurrogateConfig


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


def evaluated_sets(game: Game) -> set[tuple[int, ...]]:
    """The removal sets ``game`` already knows (this run's or its store's): never paid for twice."""
    return {tuple(np.flatnonzero(~m).tolist()) for m in game.known()[0]}


def fit_ensemble(
    game: Game, surrogate: SurrogateConfig, config: GameSearchConfig, seed: int
) -> tuple[Surrogate, LogTarget]:
    """``config.ensemble`` surrogates (``surrogate``'s family, seeded) fitted on every real evaluation
    ``game`` knows, on the log target; returns the target too, to map predictions back."""
    masks, utilities = game.known()
    fitted = dataclasses.replace(surrogate, ensemble=config.ensemble, seed=seed)
    target = LogTarget(utilities)
    return Surrogate.fit(masks, target(utilities), fitted), target


def _candidates(game: Game, removal: Removal) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """Every real evaluation that is a candidate removal set, with its utility."""
    masks, utilities = game.known()
    sets = [tuple(np.flatnonzero(~m).tolist()) for m in masks]
    keep = [i for i, st in enumerate(sets) if np.isfinite(utilities[i]) and removal.valid(st)]
    return [sets[i] for i in keep], utilities[keep]


def ranked_candidates(game: Game, removal: Removal) -> list[tuple[tuple[int, ...], float]]:
    """The real candidate sets, best first (ties: the lower set)."""
    sets, utilities = _candidates(game, removal)
    return sorted(zip(sets, utilities.tolist()), key=lambda su: (-su[1], su[0]))


def best_known(game: Game, removal: Removal) -> tuple[tuple[int, ...], float]:
    """The best real candidate set, or nothing yet."""
    ranked = ranked_candidates(game, removal)
    return ranked[0] if ranked else ((), -math.inf)


def propose(
    ensemble: Surrogate, game: Game, removal: Removal, strata: list[int], config: GameSearchConfig,
    rng: np.random.Generator,
) -> list[tuple[int, ...]]:
    """A round's unseen k-removal sets, best first by predicted utility plus ``exploration`` x the
    members' disagreement: swap local search from the elites, the surrogate's greedy path and
    ranking and random starts, the elites' swaps and mutations, within ``trust`` of an elite."""
    n = game.n_players
    mean: Predict = ensemble.predict

    def acquisition(x: np.ndarray) -> np.ndarray:
        mu, sd = ensemble.predict(x, return_std=True)
        return mu + config.exploration * sd

    elites = [st for st, _ in ranked_candidates(game, removal)[: config.elites]]
    base = stratified_masks(n, strata, 4096, np.random.default_rng(int(rng.integers(1 << 31))), game.protected_players)
    seeds = {removal.greedy(mean), removal.by_values(semivalue(mean, n, base))}  # SLEB's path, the ranking
    starts = elites + sorted(seeds) + [removal.random(rng) for _ in range(config.restarts)]
    pool = {removal.local_search(acquisition, s) for s in dict.fromkeys(starts)}
    for elite in elites:
        pool |= set(removal.swaps(elite))
        pool |= {removal.mutate(elite, rng) for _ in range(config.mutations // max(len(elites), 1))}
    if config.trust is not None and elites:  # a surrogate is trusted only near real evaluations
        pool = {s for s in pool if min(len(set(s) - set(e)) for e in elites) <= config.trust}
    pool |= seeds
    seen = evaluated_sets(game)
    fresh = sorted(s for s in pool if s not in seen and removal.valid(s))
    if not fresh:
        return []
    scores = acquisition(removal_masks(n, fresh))
    take = config.per_round * (config.screen_factor if config.screen_share is not None else 1)
    return [fresh[i] for i in np.argsort(-scores, kind="stable")[:take]]


def random_proposals(
    game: Game, removal: Removal, config: GameSearchConfig, rng: np.random.Generator
) -> list[tuple[int, ...]]:
    """The ablation's round: ``per_round`` unseen sets drawn at random from the elites'
    one-exchange neighbours and mutations, the candidates the surrogate would rank."""
    elites = [st for st, _ in ranked_candidates(game, removal)[: config.elites]]
    pool: set[tuple[int, ...]] = set()
    for elite in elites:
        pool |= set(removal.swaps(elite))
        pool |= {removal.mutate(elite, rng) for _ in range(config.mutations // max(len(elites), 1))}
    if not elites:
        pool = {removal.random(rng) for _ in range(config.restarts)}
    seen = evaluated_sets(game)
    fresh = sorted(s for s in pool if s not in seen and removal.valid(s))
    take = config.per_round * (config.screen_factor if config.screen_share is not None else 1)
    return [fresh[i] for i in rng.permutation(len(fresh))[:take]]


def screened(
    game: Game, candidates: list[tuple[int, ...]], config: GameSearchConfig, rng: np.random.Generator
) -> list[tuple[int, ...]]:
    """Multi-fidelity: score every candidate on a random share of the windows, keep the best."""
    size = max(1, round(config.screen_share * game.n_windows))  # type: ignore[operator]
    if size >= game.n_windows or len(candidates) <= config.per_round:
        return candidates[: config.per_round]
    screen = game.screen(sorted(int(i) for i in rng.choice(game.n_windows, size=size, replace=False)))
    scores = screen.value_function(removal_masks(game.n_players, candidates))
    return [candidates[i] for i in np.argsort(-scores, kind="stable")[: config.per_round]]
