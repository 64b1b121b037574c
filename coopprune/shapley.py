"""Shapley-value arithmetic on any value function over bool coalition matrices (vectorized).

Used on surrogates (millions of coalitions per second) and, for small games, on the real model.
Conventions: coalition column j is player j; a value function maps bool [n, players] -> float [n].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

ValueFunction = Callable[[np.ndarray], np.ndarray]
MAX_EXACT_PLAYERS = 16


def all_coalitions(n_players: int) -> np.ndarray:
    """Every coalition as a bool [2^n, n] matrix; row c has player j iff bit j of c is set."""
    codes = np.arange(2**n_players, dtype=np.int64)
    return ((codes[:, None] >> np.arange(n_players)) & 1).astype(bool)


def exact_shapley(value_fn: ValueFunction, n_players: int) -> np.ndarray:
    """Exact Shapley values by enumerating all 2^n coalitions (n <= 16)."""
    if n_players > MAX_EXACT_PLAYERS:
        raise ValueError(f"exact Shapley enumerates 2^n coalitions; n={n_players} > {MAX_EXACT_PLAYERS}")
    coalitions = all_coalitions(n_players)
    values = np.asarray(value_fn(coalitions), dtype=float)
    sizes = coalitions.sum(1)
    weights = np.array(
        [math.factorial(s) * math.factorial(n_players - s - 1) / math.factorial(n_players) for s in range(n_players)]
    )
    codes = np.arange(2**n_players, dtype=np.int64)
    phi = np.empty(n_players)
    for i in range(n_players):
        without = codes[(codes >> i) & 1 == 0]
        phi[i] = float((weights[sizes[without]] * (values[without | (1 << i)] - values[without])).sum())
    return phi


def random_permutations(n_players: int, count: int, rng: np.random.Generator, antithetic: bool = True) -> np.ndarray:
    """[count, n] player orders; with ``antithetic`` every odd row reverses the one before (lower variance)."""
    if not antithetic:
        return rng.permuted(np.tile(np.arange(n_players), (count, 1)), axis=1)
    half = rng.permuted(np.tile(np.arange(n_players), ((count + 1) // 2, 1)), axis=1)
    both = np.empty((2 * len(half), n_players), dtype=np.int64)
    both[0::2], both[1::2] = half, half[:, ::-1]
    return both[:count]


def balanced_permutations(n_players: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless antithetic pairs whose orders put every player at every position equally often.

    Blocks of n cyclic shifts of one random order (shifts in random order), each followed by its
    reverse. Every order is still uniformly distributed, so means over them stay unbiased; the
    balance removes the variance of which positions (coalition sizes) each player happened to
    draw (bench/estimator_accuracy.py measures what it buys shapley-adjusted).
    """
    while True:
        base = rng.permutation(n_players)
        for shift in rng.permutation(n_players):
            order = np.roll(base, int(shift))
            yield np.stack([order, order[::-1]])


def chain_coalitions(permutations: np.ndarray) -> np.ndarray:
    """The n+1 prefix coalitions of each order: bool [P, n+1, n] (empty first, full last)."""
    p, n = permutations.shape
    ranks = np.empty_like(permutations)
    np.put_along_axis(ranks, permutations, np.arange(n)[None, :].repeat(p, 0), axis=1)
    return ranks[:, None, :] < np.arange(n + 1)[None, :, None]


def chain_marginals(permutations: np.ndarray, chain_values: np.ndarray) -> np.ndarray:
    """Marginal contribution of every player in every order: [P, n] (player-indexed)."""
    steps = np.diff(chain_values, axis=1)  # [P, n]: step t adds player permutations[:, t]
    marginals = np.empty_like(steps)
    np.put_along_axis(marginals, permutations, steps, axis=1)
    return marginals


def permutation_shapley(value_fn: ValueFunction, n_players: int, permutations: np.ndarray) -> np.ndarray:
    """Monte-Carlo Shapley values: mean marginal contribution over the given orders."""
    chains = chain_coalitions(permutations)
    values = np.asarray(value_fn(chains.reshape(-1, n_players)), dtype=float).reshape(len(permutations), -1)
    return chain_marginals(permutations, values).mean(0)


def surrogate_shapley(value_fn: ValueFunction, n_players: int, seed: int, permutations: int = 4000) -> np.ndarray:
    """Shapley values of a cheap value function: exact up to 16 players, else antithetic sampling."""
    if n_players <= MAX_EXACT_PLAYERS:
        return exact_shapley(value_fn, n_players)
    rng = np.random.default_rng([seed, 0x5A])
    return permutation_shapley(value_fn, n_players, random_permutations(n_players, permutations, rng))


def semivalue(
    value_fn: ValueFunction, n_players: int, base_masks: np.ndarray, chunk: int = 1 << 20
) -> np.ndarray:
    """The paper's Stage 3: mean of f(m + i) - f(m - i) over the same base masks for every player i."""
    q = len(base_masks)
    phi = np.zeros(n_players)
    per_chunk = max(1, chunk // (2 * q))
    for start in range(0, n_players, per_chunk):
        players = range(start, min(n_players, start + per_chunk))
        batch = np.repeat(base_masks[None], 2 * len(players), axis=0)
        for j, i in enumerate(players):
            batch[2 * j, :, i] = True
            batch[2 * j + 1, :, i] = False
        values = np.asarray(value_fn(batch.reshape(-1, n_players)), dtype=float).reshape(len(players), 2, q)
        phi[list(players)] = (values[:, 0] - values[:, 1]).mean(axis=1)
    return phi
