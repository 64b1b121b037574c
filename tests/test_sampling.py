import math

import numpy as np
import pytest

from coopprune.engine import lexicographic_order
from coopprune.errors import CoopPruneError
from coopprune.sampling import StrataPlan, removal_count


def test_paper_strata_scaled_to_30_layers():
    plan = StrataPlan.build(30, per_stratum=10)
    assert plan.removals == (2, 5, 8, 10, 13)


def test_strata_sizes_distinct_masks_and_protection():
    plan = StrataPlan.build(30, remove=[2, 6], per_stratum=50, protected=[0, -1], seed=3)
    masks = plan.sample()
    assert masks.shape == (100, 30)
    assert sorted(set((30 - masks.sum(1)).tolist())) == [2, 6]
    assert len({m.tobytes() for m in masks}) == 100
    assert masks[:, 0].all() and masks[:, 29].all()


def test_small_strata_are_enumerated():
    masks = StrataPlan.build(6, remove=[1], per_stratum=50).sample()
    assert len(masks) == 6 == math.comb(6, 1)


def test_seeded_and_reproducible():
    a = StrataPlan.build(30, per_stratum=20, seed=1).sample()
    b = StrataPlan.build(30, per_stratum=20, seed=1).sample()
    c = StrataPlan.build(30, per_stratum=20, seed=2).sample()
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_adding_a_stratum_keeps_the_others():
    a = StrataPlan.build(30, remove=[3], per_stratum=20).sample()
    b = StrataPlan.build(30, remove=[3, 7], per_stratum=20).sample()
    assert {m.tobytes() for m in a} <= {m.tobytes() for m in b}


def test_sorted_for_prefix_sharing():
    masks = StrataPlan.build(12, per_stratum=30).sample()
    assert np.array_equal(lexicographic_order(masks), np.arange(len(masks)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(remove=[30]), r"in \[1, 29\]"),
        (dict(remove=[0]), r"in \[1, 29\]"),
        (dict(remove_ratios=[1.5]), r"ratio must be in \(0, 1\)"),
        (dict(remove=[10], protected=list(range(25))), "protected layers .* leave only 5"),
        (dict(protected=[30]), "out of range"),
        (dict(per_stratum=0), "per_stratum"),
    ],
)
def test_impossible_strata(kwargs, message):
    with pytest.raises(CoopPruneError, match=message):
        StrataPlan.build(30, **kwargs)


def test_removal_count():
    assert removal_count(30, ratio=0.2) == 6
    with pytest.raises(CoopPruneError, match="exactly one"):
        removal_count(30, 3, 0.1)
