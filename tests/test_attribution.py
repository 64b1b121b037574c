"""Contributions and interactions read off real evaluations (coopprune.attribution)."""

from __future__ import annotations

import numpy as np
import pytest

from coopprune.attribution import PairwiseGame, attribute, fit_pairwise, held_out_fit, log_values
from coopprune.shapley import all_coalitions, exact_shapley, semivalue
from coopprune.sampling import stratified_masks


def planted(n: int = 8, seed: int = 0) -> PairwiseGame:
    """A second-order game with one catastrophic player and one redundant pair (2, 3)."""
    rng = np.random.default_rng(seed)
    main = rng.uniform(0.05, 0.5, n)
    main[0] = 8.0
    pairs = np.zeros((n, n))
    pairs[2, 3] = pairs[3, 2] = 1.5
    pairs[5, 6] = pairs[6, 5] = -0.2
    return PairwiseGame(main, pairs)


def test_closed_forms_match_the_definitions():
    game = planted()
    n = game.n_players
    assert np.allclose(game.shapley(), exact_shapley(game, n))
    base = all_coalitions(n)
    for r in (2, 3):  # every base mask of r removals: the exact semivalue of that stratum
        rows = base[(~base).sum(1) == r]
        assert np.allclose(game.semivalue([r]), semivalue(game, n, rows))
    m = np.ones(n, dtype=bool)
    m[[2, 3]] = False
    only2, only3 = m.copy(), m.copy()
    only2[3], only3[2] = True, True
    full = np.ones(n, dtype=bool)
    moebius = game(full[None]) - game(only2[None]) - game(only3[None]) + game(m[None])
    assert game.interactions()[2, 3] == pytest.approx(float(moebius[0]))
    assert game.interactions()[2, 3] < 0  # redundant: removing both costs more than the two apart


def test_fit_recovers_a_planted_game_from_stratified_evaluations():
    game = planted()
    masks = stratified_masks(game.n_players, [1, 2, 3, 4], 120, np.random.default_rng(1))
    fitted, alpha = fit_pairwise(masks, game(masks))
    assert alpha > 0
    assert np.allclose(fitted.main, game.main, atol=0.05)
    assert fitted.pairs[2, 3] == pytest.approx(1.5, abs=0.1)


def test_attribution_ranks_intervals_and_verdict():
    game = planted()
    masks = stratified_masks(game.n_players, [1, 2, 3, 4], 150, np.random.default_rng(2))
    utilities = np.exp(game(masks) + np.random.default_rng(3).normal(0, 0.01, len(masks)))
    a = attribute(masks, utilities, strata=[2, 3], seed=0, bootstrap=50)
    truth = game.semivalue([2, 3])
    assert int(np.argmax(a.semivalue)) == 0  # the catastrophic player stays far on top
    assert a.semivalue[0] > 5 * np.sort(a.semivalue)[-2]
    low, high = a.semivalue_ci
    assert np.mean((low <= truth + 0.05) & (truth - 0.05 <= high)) >= 0.75
    assert a.fit["r2"] > 0.95 and a.trustworthy
    assert a.redundant_pairs(range(game.n_players))[0][:2] == (2, 3)
    summary = a.summary()
    assert summary["warnings"] == [] and summary["fit"]["n"] == len(masks)


def test_a_poor_fit_is_said_in_words():
    rng = np.random.default_rng(4)
    masks = stratified_masks(10, [2, 3], 30, rng)
    noise = np.exp(-rng.uniform(0.1, 3.0, len(masks)))  # utilities unrelated to the masks
    a = attribute(masks, noise, strata=[2, 3], bootstrap=20)
    assert not a.trustworthy
    assert "poorly" in a.warnings[0]


def test_log_scale_and_refusals():
    assert np.allclose(log_values(np.array([1.0, np.e**-2])), [0.0, -2.0])
    assert np.allclose(log_values(np.array([-0.5, 0.1])), [-0.5, 0.1])  # loglik_diff: already logs
    masks = stratified_masks(10, [2], 5, np.random.default_rng(0))
    with pytest.raises(Exception, match="more real evaluations than players"):
        attribute(masks, np.full(5, 0.5), strata=[2])


def test_held_out_fit_is_out_of_sample():
    game = planted()
    masks = stratified_masks(game.n_players, [1, 2, 3], 90, np.random.default_rng(5))
    fit = held_out_fit(masks, game(masks))
    assert fit["n"] == 90 and fit["r2"] > 0.99


def test_explanation_names_the_redundant_pair_of_the_ranking():
    game = planted()
    masks = stratified_masks(game.n_players, [1, 2, 3, 4], 150, np.random.default_rng(6))
    a = attribute(masks, np.exp(game(masks)), strata=[2], bootstrap=30)
    ranking = [int(i) for i in np.argsort(a.semivalue)[:2]]
    text = a.explain([4, 7], [2, 3], {(4, 7): 0.9})
    assert "layers 2 and 3 are redundant" in text and "(measured; the fitted game says" in text and "(fitted, not measured)" in text
    assert a.to_json()["summary"] == text
    assert "same set" in a.explain(ranking, ranking, {})
