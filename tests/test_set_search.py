"""Set searches on synthetic games whose best k-set is known: game-search (coopprune's) and EvoPress."""

import dataclasses
import json
import re
from itertools import combinations

import numpy as np
import pytest

from coopprune.mixture import Calibration
from coopprune.errors import CoopPruneError
from coopprune.estimators import ESTIMATORS, get_estimator
from coopprune.estimators.evopress import generations_rule
from coopprune.estimators.game_search import GameSearchConfig, LogTarget, default_budget, initial_design, strata_around
from coopprune.estimators.removal import level_switch
from coopprune.game import FunctionGame
from coopprune.select import select_layers
from coopprune.surrogate import SurrogateConfig

FAST = SurrogateConfig(epochs=300)
SEARCH = dict(surrogate=FAST, bootstrap=0, per_round=4)


def redundant_pair_game(n=10):
    """0 and 1 back each other up: either alone costs almost nothing, both together a lot, so the
    k lowest average contributions are {0, 1, ...} while the best k-set keeps one of them."""
    w = np.r_[0.01, 0.01, 0.12 + 0.02 * np.arange(n - 2)]

    def value(masks):
        removed = ~np.asarray(masks, bool)
        return np.exp(-(removed @ w) - 0.3 * (removed[:, 0] & removed[:, 1]))

    return value


def cancelling_pair_game(n=10):
    """Removing 0 or 1 alone hurts most, removing both costs nothing (each undoes the other), so no
    greedy removal ever starts there: the best 2-set {0, 1} is unreachable for SLEB."""
    w = np.r_[0.0, 0.0, 0.05 + 0.03 * np.arange(n - 2)]

    def value(masks):
        removed = ~np.asarray(masks, bool)
        return np.exp(-(removed @ w) - 0.5 * (removed[:, 0] ^ removed[:, 1]))

    return value


def best_set(value, n, k):
    sets = list(combinations(range(n), k))
    utilities = value(np.stack([~np.isin(np.arange(n), s) for s in sets]))
    return list(sets[int(np.argmax(utilities))]), float(utilities.max())


def test_the_games_fool_ranking_and_greedy():
    value, n = redundant_pair_game(), 10
    ranked = get_estimator("semivalue", surrogate=FAST, bootstrap=0).estimate(FunctionGame(n, value), 160, seed=0)
    assert {0, 1} <= set(select_layers(ranked.values, 3))  # the average hides the redundancy
    assert not {0, 1} <= set(best_set(value, n, 3)[0])
    value, n = cancelling_pair_game(), 10
    sleb = get_estimator("sleb").estimate(FunctionGame(n, value), k=2)
    assert sleb.removal != best_set(value, n, 2)[0] == [0, 1]


@pytest.mark.parametrize("make_game, k, design", [(redundant_pair_game, 3, {}), (cancelling_pair_game, 2, {"singles": False})])
@pytest.mark.parametrize("method, options", [("game-search", SEARCH), ("evopress", {})])
def test_searches_find_the_optimum_within_their_budget(make_game, k, design, method, options):
    """The cancelling pair is found by game-search without the single-removal design: measuring
    every player alone (the default, what real models reward) teaches the surrogate that 0 and 1
    are the worst players to lose, and it stays on SLEB's greedy optimum {2, 3} (a known limit)."""
    options = {**options, **design} if method == "game-search" else options
    value, n = make_game(), 10
    budget = 60 if method == "game-search" else None  # EvoPress: its own generations rule
    found = get_estimator(method, **options).estimate(FunctionGame(n, value, windows=8), budget=budget, seed=0, k=k)
    _, utility = best_set(value, n, k)
    assert value(~np.isin(np.arange(n), found.removal)[None])[0] == pytest.approx(utility)  # an optimum (ties exist)
    assert all(type(i) is int for i in found.removal)  # written to JSON as plain ints
    if method == "game-search":
        assert found.passes <= 60 and found.details["search"]["chosen_real"] == pytest.approx(utility)
        assert found.details["search"]["proposals_fit"]["n"] > 0
    else:  # screens on 1 of 8 windows count as an eighth of a pass each
        assert found.evaluations < found.passes < found.evaluations + 64 + 32 * found.details["generations"]
        assert found.details["generations"] == generations_rule(k, n)
    again = get_estimator(method, **options).estimate(FunctionGame(n, value, windows=8), budget=budget, seed=0, k=k)
    assert again.removal == found.removal  # same seed, same set


def test_game_search_is_never_worse_than_what_it_was_given():
    value, n = redundant_pair_game(), 10
    game = FunctionGame(n, value)
    optimum, _ = best_set(value, n, 3)
    mask = ~np.isin(np.arange(n), optimum)
    game.value_function(mask[None])  # the store already holds the optimum: the search keeps it
    found = get_estimator("game-search", **SEARCH).estimate(game, budget=20, seed=1, k=3)
    assert found.removal == optimum


def test_game_search_respects_protected_players_and_budget_checks():
    value, n = redundant_pair_game(), 10
    game = FunctionGame(n, value, protected=[2, 3])
    found = get_estimator("game-search", **SEARCH).estimate(game, budget=40, seed=0, k=3)
    assert not {2, 3} & set(found.removal) and found.passes <= 40
    evo = get_estimator("evopress").estimate(FunctionGame(n, value, protected=[2, 3]), seed=0, k=3)
    assert not {2, 3} & set(evo.removal)
    with pytest.raises(CoopPruneError, match="cannot buy one round"):
        get_estimator("game-search", per_round=8).check(n, 3, budget=5)
    with pytest.raises(CoopPruneError, match="no option 'per_rnd'"):
        get_estimator("game-search", per_rnd=8)


def test_a_killed_evopress_resumes_at_its_generation_with_the_same_draws(tmp_path):
    """Checkpointed after every generation: the resumed run makes the uninterrupted run's choices
    (the same random draws from the same parent), evaluates only what was left, and counts the
    killed run's passes."""
    value, n = redundant_pair_game(), 10
    evo = dict(generations=12)
    calls = {"whole": 0, "dying": 0, "resumed": 0}

    def counted(name, die_at=None):
        def fn(masks):
            calls[name] += 1
            if calls[name] == die_at:
                raise KeyboardInterrupt  # killed mid-search
            return value(masks)
        return fn

    whole = get_estimator("evopress", **evo).estimate(FunctionGame(n, counted("whole"), windows=16), seed=0, k=3)
    with pytest.raises(KeyboardInterrupt):
        get_estimator("evopress", **evo).estimate(
            FunctionGame(n, counted("dying", die_at=9), windows=16, state_dir=tmp_path), seed=0, k=3)
    saved = json.loads((tmp_path / "evopress-k3-seed0.json").read_text())
    done = saved["trace"][-1]["generation"]
    assert 0 < done < 12 and [t["generation"] for t in saved["trace"]] == list(range(done + 1))
    resumed = get_estimator("evopress", **evo).estimate(
        FunctionGame(n, counted("resumed"), windows=16, state_dir=tmp_path), seed=0, k=3)
    assert resumed.removal == whole.removal
    assert [(t["removed"], t["utility"]) for t in resumed.details["trace"]] == [
        (t["removed"], t["utility"]) for t in whole.details["trace"]]
    assert calls["resumed"] <= 2 * (12 - done) and calls["resumed"] < calls["whole"]  # what was left, no more
    assert resumed.passes >= whole.passes  # the killed run's passes count (and the parent, unstored here, again)
    assert resumed.seconds >= saved["seconds"] > 0 and resumed.details["earlier_seconds"] == saved["seconds"]
    other = get_estimator("evopress", generations=5).estimate(
        FunctionGame(n, value, windows=16, state_dir=tmp_path), seed=0, k=3)
    assert len(other.details["trace"]) == 6  # other settings: the checkpoint is not theirs, the search starts afresh


def test_game_search_screens_on_a_share_of_the_windows():
    value, n = cancelling_pair_game(), 10
    game = FunctionGame(n, value, windows=10)
    found = get_estimator("game-search", screen_share=0.2, screen_factor=3, singles=False, **SEARCH).estimate(
        game, budget=60, seed=0, k=2)
    assert found.removal == [0, 1]
    assert found.passes > found.evaluations  # screens are paid for, at 2/10 of a pass each


def test_game_search_at_a_lower_fidelity_confirms_its_best_sets_on_every_window():
    """On its share of the windows the search prefers removing layer 9 (the screen undervalues it);
    the confirmation on every window puts the true optimum first, paid at full price."""
    value, n = redundant_pair_game(), 10

    def screen(masks, rows):
        return value(masks) * np.exp(0.13 * ~np.asarray(masks, bool)[:, 9])

    game = FunctionGame(n, value, windows=10, screen_fn=screen)
    found = get_estimator("game-search", search_windows=2, confirm=4, refine=None, **SEARCH).estimate(
        game, budget=40, seed=0, k=3)
    confirmed = found.details["search"]["fidelity"]["confirmed"]
    assert confirmed[0]["removed"] == [0, 2, 9] and len(confirmed) == 4  # the screen's favourite
    assert found.removal == best_set(value, n, 3)[0] == [0, 2, 3]
    assert found.details["search"]["chosen_real"] == pytest.approx(best_set(value, n, 3)[1])
    assert game.evaluations == 4  # only the confirmations ran on every window
    assert 4 < found.passes <= 40  # screen evaluations at 2/10 of a pass each
    again = get_estimator("game-search", search_windows=2, confirm=4, refine=None, **SEARCH).estimate(
        FunctionGame(n, value, windows=10, screen_fn=screen), budget=40, seed=0, k=3)
    assert again.removal == found.removal and again.passes == found.passes
    with pytest.raises(CoopPruneError, match="search_windows must be"):
        get_estimator("game-search", search_windows=0)
    with pytest.raises(CoopPruneError, match="and 8 confirmations"):
        get_estimator("game-search", search_windows=5).check(n, 3, budget=10, n_windows=10)
    get_estimator("game-search", search_windows=5).check(n, 3, budget=10, n_windows=5)  # no screen: no confirmations
    for every in (10, None):  # as many search windows as there are windows, or null: the search runs on all of them
        whole = get_estimator("game-search", search_windows=every, **SEARCH).estimate(
            FunctionGame(n, value, windows=10), budget=40, k=3)
        assert whole.details["search"]["fidelity"] is None


def test_settings_scale_with_depth_and_k():
    assert [default_budget(30, k) for k in (3, 6, 9, 12)] == [75, 120, 150, 180] and default_budget(60, 6) == 210
    assert [initial_design(30, k) for k in (3, 6, 12)] == [45, 60, 60]  # a shallow cut starts on fewer masks
    assert strata_around(6, 30) == [3, 6, 9] and strata_around(1, 5) == [1, 2]
    assert generations_rule(6, 30) == 96  # EvoPress's script: int(k (L - k) / 1.5)
    rng = np.random.default_rng(0)
    children = {level_switch((1, 2, 3), list(range(10)), rng) for _ in range(200)}
    assert all(len(c) == 3 for c in children) and len(children) > 20
    target = LogTarget(np.array([1.0, 0.1, 0.01]), floor=0.0)
    np.testing.assert_allclose(target(np.array([1.0, 0.1, 0.01])), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(target.inverse(target(np.array([0.3]))), [0.3])
    utilities = np.r_[np.full(8, 0.5), 1e-9, 1e-12]  # two catastrophic masks do not squeeze the rest
    assert LogTarget(utilities)(np.array([0.5]))[0] < 0.5 < LogTarget(utilities, floor=0.0)(np.array([0.5]))[0]


@pytest.mark.parametrize("method", ["game-search", "evopress"])
def test_set_searches_end_to_end_with_a_kl_store(method, tiny_checkpoint, text_file, tmp_path):
    """Through pipeline.prune on a real (tiny) model: every real evaluation lands in the mask store
    as it is made, so a second run (a resumed one) never repeats one; the checkpoint reloads."""
    import json

    from tiny import N_LAYERS, prune_request
    from transformers import AutoModelForCausalLM

    from coopprune import pipeline
    from coopprune.config import Params
    from coopprune.dataset import MaskDataset

    params = Params.from_dict({
        "model": {"source": str(tiny_checkpoint)},
        "calibration": {"source": str(text_file), "n_windows": 4, "window": 24},
        "sampling": {"remove": [1, 2], "per_stratum": 4, "shard_size": 4},
    })
    store = pipeline.sweep(params, tmp_path / "masks", progress=False)
    assert store.manifest.identity.utility == "kl"
    common = dict(remove=2, calib=str(text_file), n_windows=4, window=24, utility="kl", progress=False,
                  masks=store.path, epochs=200, bootstrap=2, budget=16 if method == "game-search" else None,
                  options={"per_round": 4} if method == "game-search" else {"generations": 3})
    first = pipeline.prune(prune_request(tiny_checkpoint, tmp_path / "a", method, **common))
    record = json.loads((tmp_path / "a" / "pruning.json").read_text())
    assert len(record["removed_layers"]) == 2 and record["params"]["utility"] == "kl"
    assert record["scores"]["passes"] >= record["scores"]["evaluations"] == first.evaluations > 0
    activations = 2 if method == "game-search" else 0  # the peer seeds' passes (angular, BI): no masks
    assert len(MaskDataset.open(store.path)) == 8 + first.evaluations - activations
    second = pipeline.prune(prune_request(tiny_checkpoint, tmp_path / "b", method, **common))
    masks, _ = MaskDataset.open(store.path).arrays()
    if method == "evopress":  # its checkpoint beside the store: the finished search is read back, cost and all
        assert second.evaluations == first.evaluations and second.removed_layers == first.removed_layers
        assert (store.path / "state" / "evopress-k2-seed0.json").is_file()
        assert len({m.tobytes() for m in masks}) == len(masks) == 8 + first.evaluations
    else:
        assert len({m.tobytes() for m in masks}) == len(masks) == 8 + first.evaluations + second.evaluations - 2 * activations
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "a").config.num_hidden_layers == N_LAYERS - 2


def test_game_search_at_a_lower_fidelity_end_to_end(tiny_checkpoint, text_file, tmp_path):
    """On a real (tiny) model with a KL store: the search runs on 2 of the 8 windows, only its
    confirmations (full passes) reach the store, and the cost counts the screens at 1/4."""
    import json

    from tiny import prune_request

    from coopprune import pipeline
    from coopprune.config import Params
    from coopprune.dataset import MaskDataset

    params = Params.from_dict({
        "model": {"source": str(tiny_checkpoint)},
        "calibration": {"source": str(text_file), "n_windows": 8, "window": 24},
        "sampling": {"remove": [1, 2], "per_stratum": 4, "shard_size": 4},
    })
    store = pipeline.sweep(params, tmp_path / "masks", progress=False)
    common = dict(remove=2, calib=str(text_file), n_windows=8, window=24, utility="kl", progress=False,
                  masks=store.path, epochs=200, bootstrap=0, budget=16,
                  options={"per_round": 4, "search_windows": 2, "confirm": 3})
    result = pipeline.prune(prune_request(tiny_checkpoint, tmp_path / "a", "game-search", **common))
    record = json.loads((tmp_path / "a" / "pruning.json").read_text())
    assert 1 <= result.evaluations <= 3 and len(MaskDataset.open(store.path)) == 8 + result.evaluations
    assert result.evaluations < record["scores"]["passes"] <= 16
    search = record["scores"]["rounds"][0]["search"]
    assert (search["fidelity"]["windows"], search["fidelity"]["of"], len(search["fidelity"]["confirmed"])) == (2, 8, 3)
    assert search["chosen_real"] >= max(c["full"] for c in search["fidelity"]["confirmed"])


def test_under_a_fidelity_the_sweep_runs_on_the_screen_windows_and_stands_in_for_the_design(
        tiny_checkpoint, text_file, tmp_path):
    """With ``search_windows`` fewer than the windows the Stage-1 sweep runs on the search's screen windows (a
    fraction of a pass a mask); its copy is the screen's store, so the design pays for none of
    its masks again and every screen evaluation persists; the evaluations on every window go to
    ``search``. Run again, the search finds everything it wants already paid for."""
    import json

    from coopprune import pipeline
    from coopprune.config import Params
    from coopprune.dataset import MaskDataset

    params = Params.from_dict({
        "model": {"source": str(tiny_checkpoint)},
        "calibration": {"source": str(text_file), "n_windows": 8, "window": 24},
        "game": {"utility": "kl"},
        "sampling": {"remove": [1, 2, 3], "per_stratum": 3, "shard_size": 4},
        "surrogate": {"epochs": 200},
        "prune": {"remove": 2, "bootstrap": 0, "budget": 24,
                  "options": {"game-search": {"per_round": 4, "search_windows": 2, "confirm": 3, "refine": 2}}},
        "output_dir": str(tmp_path / "run"),
    })
    rows = pipeline.screen_windows(params, 6)
    sweep = pipeline.sweep(params, progress=False)
    assert rows is not None and len(rows) == 2
    loaded = pipeline.load_base(params)
    windows = Calibration.from_params(params.calibration).windows(loaded.tokenizer)
    assert sweep.manifest.identity.calibration_fingerprint == windows.subset(rows).fingerprint != windows.fingerprint

    result = pipeline.prune_from_params(params, progress=False)
    search = json.loads((tmp_path / "run" / "pruned" / "pruning.json").read_text())["scores"]["rounds"][0]["search"]
    screen, full = MaskDataset.open(tmp_path / "run" / "search-screen"), MaskDataset.open(tmp_path / "run" / "search")
    assert len(MaskDataset.open(sweep.path)) == 9  # the sweep itself is never extended
    assert search["passes_before"] == 9 and len(screen) > 9  # the sweep stood in for the design; the screen persisted
    confirmed = len(search["fidelity"]["confirmed"]) + sum(s["evaluated"] for s in search["fidelity"]["refined"])
    assert len(full) == result.evaluations == confirmed  # the full game counts its own passes; the screen's are cost

    again = pipeline.prune_from_params(params, progress=False)  # resumed from both stores: nothing paid twice
    full_again = MaskDataset.open(tmp_path / "run" / "search")
    assert len(full_again) == len(full) + again.evaluations
    assert len({tuple(r["mask"]) for r in full_again.rows()}) == len(full_again)
    import shutil  # `coopprune prune --masks <sweep>` under the fidelity: the sweep is taken as the screen's store

    shutil.copytree(sweep.path, tmp_path / "mine")
    cli = pipeline.prune(pipeline.PruneRequest(params, tmp_path / "cli", masks=tmp_path / "mine", progress=False))
    assert len(MaskDataset.open(tmp_path / "mine")) > 9 and cli.evaluations >= 1
    with pytest.raises(CoopPruneError, match="of no use to it"):
        pipeline.prune(pipeline.PruneRequest(params.model_copy(update={"prune": params.prune.model_copy(
            update={"options": {}})}), tmp_path / "x", screen_masks=screen.path))


def test_game_search_under_a_cost_budget_finds_the_best_set_that_fits():
    """Players of two sizes (attention and MLP halves): the best set within the cost budget."""
    from coopprune.estimators.removal import Removal

    n = 12
    costs = [1.0, 2.0] * (n // 2)
    w = np.linspace(0.02, 0.3, n)[np.random.default_rng(3).permutation(n)]

    def value(masks):
        removed = ~np.asarray(masks, bool)
        return np.exp(-(removed @ w) - 0.4 * (removed[:, 4] & removed[:, 5]))

    removal = Removal(n, tuple(range(n)), tuple(costs), 5.0)
    candidates = [s for r in range(1, 6) for s in combinations(range(n), r) if removal.valid(s)]
    utilities = value(np.stack([~np.isin(np.arange(n), s) for s in candidates]))
    best = utilities.max()
    found = get_estimator("game-search", patience=10, **SEARCH).estimate(FunctionGame(n, value), budget=60, seed=0, k=3,
                                                                        costs=costs, max_cost=5.0)
    assert removal.valid(found.removal) and sum(costs[i] for i in found.removal) <= 5
    assert value(~np.isin(np.arange(n), found.removal)[None])[0] == pytest.approx(best)
    with pytest.raises(CoopPruneError, match="cost budget"):
        get_estimator("sleb").estimate(FunctionGame(n, value), k=3, costs=costs, max_cost=5.0)


def test_game_search_on_sublayer_players_end_to_end(tiny_checkpoint, text_file, tmp_path):
    import json

    from tiny import prune_request

    from coopprune import pipeline

    out = tmp_path / "out"
    result = pipeline.prune(prune_request(tiny_checkpoint, out, "game-search", remove=2, calib=str(text_file), n_windows=4,
                                          window=24, utility="kl", players="sublayers", budget=30, epochs=200,
                                          bootstrap=0, options={"per_round": 4}, progress=False))
    scores = json.loads((out / "pruning.json").read_text())["scores"]
    assert scores["removed_players"] and scores["parameters_removed_effective"] <= scores["parameter_budget"]
    assert result.evaluations <= 30


def test_the_shortlist_greedy_seed_follows_sleb_for_its_width_times_k_passes():
    """Each step tries the ``greedy_width`` cheapest single removals left: on an additive game that
    is SLEB's path, for (k - 1) x width real passes after the singles."""
    n, k, width = 10, 3, 3
    w = np.linspace(0.01, 0.2, n)[::-1]  # layer 9 cheapest, then 8, 7, ...

    def value(masks):
        return np.exp(-((~np.asarray(masks, bool)) @ w))

    game = FunctionGame(n, value)
    search = get_estimator("game-search", greedy_width=width, peer_seeds=(), **SEARCH)
    found = search.estimate(game, budget=60, seed=0, k=k)
    assert found.details["search"]["peer_seeds"]["greedy"] == [7, 8, 9]
    assert found.removal == [7, 8, 9]
    with pytest.raises(CoopPruneError, match="greedy_width must be at least 1"):
        get_estimator("game-search", greedy_width=0)


def test_explain_masks_are_real_evaluations_for_the_contributions_that_change_no_decision():
    value, n = redundant_pair_game(), 10
    plain_game, more_game = FunctionGame(n, value, protected=[9]), FunctionGame(n, value, protected=[9])
    plain = get_estimator("game-search", **SEARCH).estimate(plain_game, budget=40, seed=0, k=3)
    more = get_estimator("game-search", explain_masks=30, **SEARCH).estimate(more_game, budget=40, seed=0, k=3)
    assert more.removal == plain.removal and more.details["search"] == {
        **plain.details["search"], "settings": {**plain.details["search"]["settings"], "explain_masks": 30}}
    added = more.details["attribution"]["evaluations"] - plain.details["attribution"]["evaluations"]
    assert 0 < added <= 30 and more.evaluations - plain.evaluations == added  # drawn masks the search had not met
    known, _ = more_game.known()
    assert known[:, 9].all()  # protected players are never removed, for the report either
    again = FunctionGame(n, value, protected=[9])
    get_estimator("game-search", explain_masks=30, **SEARCH).estimate(again, budget=40, seed=0, k=3)
    assert np.array_equal(np.unique(again.known()[0], axis=0), np.unique(known, axis=0))  # seeded


def test_game_search_refines_the_confirmed_set_on_every_window():
    """The screen slightly undervalues removing layer 3, so its best sets (the confirmed ones) keep it;
    the full optimum is one exchange from them, and the hill-climb on every window finds it."""
    value, n = redundant_pair_game(), 10

    def screen(masks, rows):
        return value(masks) * np.exp(-0.05 * ~np.asarray(masks, bool)[:, 3])

    def search(refine):
        game = FunctionGame(n, value, windows=10, screen_fn=screen)
        return get_estimator("game-search", search_windows=2, confirm=2, refine=refine, **SEARCH).estimate(
            game, budget=40, seed=0, k=3), game

    plain, _ = search(None)
    assert 3 not in plain.removal and plain.details["search"]["fidelity"]["refined"] == []
    found, game = search(4)
    assert found.removal == best_set(value, n, 3)[0] == [0, 2, 3]
    refined = found.details["search"]["fidelity"]["refined"]
    assert refined[0]["moved"] and not refined[-1]["moved"]
    assert game.evaluations == 2 + sum(step["evaluated"] for step in refined)  # confirmations and refinement only
    assert found.passes <= 40
    with pytest.raises(CoopPruneError, match="refine must be"):
        get_estimator("game-search", refine=0)


@pytest.mark.parametrize("options, message", [
    ({"search_windows": 0}, "game-search: search_windows must be at least 1 (or null: every window), got 0"),
    ({"confirm": 0}, "game-search: confirm must be at least 1, got 0"),
    ({"refine": 0}, "game-search: refine must be at least 1 (or null), got 0"),
    ({"per_round": 0}, "game-search: per_round must be at least 1, got 0"),
    ({"screen_factor": 0}, "game-search: screen_factor must be at least 1, got 0"),
    ({"initial": -1}, "game-search: exploration, restarts, mutations, initial and explain_masks cannot be negative"),
    ({"explain_masks": -1}, "game-search: exploration, restarts, mutations, initial and explain_masks cannot be negative"),
    ({"screen_share": 1.0}, "game-search: screen_share must be in (0, 1), got 1.0"),
    ({"trust": 0}, "game-search: trust must be at least 1 exchange (or null), got 0"),
])
def test_game_search_config_checks_its_settings(options, message):
    """The settings are one frozen, typed object; building it checks them, whichever way it is built."""
    with pytest.raises(CoopPruneError) as raised:
        GameSearchConfig(**options)
    assert str(raised.value) == message
    with pytest.raises(CoopPruneError, match=re.escape(message)):
        get_estimator("game-search", **options)


def test_game_search_options_are_its_config_and_the_surrogate_familys():
    search = get_estimator("game-search", per_round=3, peer_seeds=["bi"], base_masks=50, bootstrap=2)
    assert search.config == GameSearchConfig(per_round=3, peer_seeds=("bi",), base_masks=50)
    assert search.base_masks == 50 and search.bootstrap == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        search.config.per_round = 4  # type: ignore[misc]
    family = {"surrogate", "remove_ratios", "bootstrap", "permutations"}
    assert ESTIMATORS["game-search"].option_names() == {f.name for f in dataclasses.fields(GameSearchConfig)} | family
