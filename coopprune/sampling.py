"""Stratified Monte-Carlo masks (Stage 1 of the paper): strata are numbers of removed layers.

Uniform random masks pile up at L/2 kept layers, far from any realistic pruning budget; strata
put the evaluations where the pruning decision is made.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from coopprune.errors import CoopPruneError

# The reference code's Llama-2-7B strata (remove 2/5/8/11/14 of 32), as fractions of the depth.
PAPER_REMOVE_RATIOS = (2 / 32, 5 / 32, 8 / 32, 11 / 32, 14 / 32)


def normalize_layers(layers: Sequence[int], n_layers: int, what: str = "protected layer") -> tuple[int, ...]:
    """Map negative indices (``-1`` = last) to positions; reject out-of-range ones."""
    out = set()
    for i in layers:
        j = i + n_layers if i < 0 else i
        if not 0 <= j < n_layers:
            raise CoopPruneError(f"{what} {i} is out of range for a model with {n_layers} layers")
        out.add(j)
    return tuple(sorted(out))


def removal_count(n_layers: int, remove: int | None = None, ratio: float | None = None) -> int:
    """Number of layers to remove from a count or a ratio of the depth (exactly one is given)."""
    if (remove is None) == (ratio is None):
        raise CoopPruneError("give exactly one of a layer count (--remove) or a ratio (--ratio)")
    if ratio is not None:
        if not 0 < ratio < 1:
            raise CoopPruneError(f"ratio must be in (0, 1), got {ratio}")
        remove = max(1, math.floor(ratio * n_layers + 0.5))
    assert remove is not None
    if not 1 <= remove < n_layers:
        raise CoopPruneError(f"number of layers to remove must be in [1, {n_layers - 1}], got {remove}")
    return remove


@dataclass(frozen=True)
class StrataPlan:
    """Which masks to evaluate on the real model: ``per_stratum`` distinct masks per removal count."""

    n_layers: int
    removals: tuple[int, ...]
    per_stratum: int
    protected: tuple[int, ...] = ()
    seed: int = 0

    @classmethod
    def build(
        cls,
        n_layers: int,
        remove: Sequence[int] | None = None,
        remove_ratios: Sequence[float] | None = None,
        per_stratum: int = 40,
        protected: Sequence[int] = (),
        seed: int = 0,
    ) -> StrataPlan:
        """Validate and derive the strata for a model of ``n_layers`` layers."""
        if per_stratum < 1:
            raise CoopPruneError(f"per_stratum must be at least 1, got {per_stratum}")
        if remove is None and remove_ratios is None:
            remove_ratios = PAPER_REMOVE_RATIOS
        counts = (
            [removal_count(n_layers, remove=r) for r in remove]
            if remove is not None
            else [removal_count(n_layers, ratio=r) for r in remove_ratios or ()]
        )
        if not counts:
            raise CoopPruneError("no strata: give at least one removal count or ratio")
        prot = normalize_layers(protected, n_layers)
        free = n_layers - len(prot)
        for r in counts:
            if r > free:
                raise CoopPruneError(
                    f"cannot remove {r} layers: protected layers {list(prot)} leave only {free} removable"
                )
        return cls(n_layers, tuple(sorted(set(counts))), per_stratum, prot, seed)

    def sample(self) -> np.ndarray:
        """Bool [n, L] masks (True = kept), sorted so consecutive masks share long prefixes.

        Each stratum has its own generator seeded by (seed, removal count), so adding a stratum
        does not change the masks of the others. Small strata are enumerated instead.
        """
        from coopprune.engine import lexicographic_order

        free = [i for i in range(self.n_layers) if i not in self.protected]
        rows: list[np.ndarray] = []
        for r in self.removals:
            if math.comb(len(free), r) <= self.per_stratum:
                drops = [list(c) for c in itertools.combinations(free, r)]
            else:
                rng = np.random.default_rng([self.seed, r])
                seen: set[tuple[int, ...]] = set()
                drops = []
                while len(drops) < self.per_stratum:
                    drop = tuple(sorted(rng.choice(free, size=r, replace=False).tolist()))
                    if drop not in seen:
                        seen.add(drop)
                        drops.append(list(drop))
            for drop in drops:
                row = np.ones(self.n_layers, dtype=bool)
                row[drop] = False
                rows.append(row)
        masks = np.stack(rows)
        return masks[lexicographic_order(masks)]


def stratified_masks(
    n_players: int, removals: list[int], count: int, rng: np.random.Generator, protected: tuple[int, ...] = ()
) -> np.ndarray:
    """``count`` masks drawn with replacement, spread evenly over removal counts, protected players
    kept: base masks for a semivalue of a cheap function (a surrogate, a fitted game), where
    repeats are free; :class:`StrataPlan` draws the distinct masks worth a real pass."""
    free = np.array([i for i in range(n_players) if i not in set(protected)])
    per = np.full(len(removals), count // len(removals))
    per[: count % len(removals)] += 1
    blocks = []
    for r, q in zip(removals, per):
        masks = np.ones((q, n_players), dtype=bool)
        if q and r:
            drop = rng.random((q, len(free))).argsort(axis=1)[:, :r]
            np.put_along_axis(masks, free[drop], False, axis=1)
        blocks.append(masks)
    return np.concatenate(blocks)
