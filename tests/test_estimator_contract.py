"""The contract every registered estimator keeps, checked over the whole registry: options built
from the params, the same result for the same seed, the passes it reports, a valid removal set and
a JSON-clean result. A method added to the registry is tested here without editing this file."""

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch

from coopprune import pipeline
from coopprune.config import Params
from coopprune.engine import MaskEvaluator
from coopprune.estimators import ESTIMATORS, get_estimator
from coopprune.game import FunctionGame, LayerGame
from coopprune.models import architecture_for
from coopprune.strategy import select_players
from coopprune.surrogate import Surrogate, SurrogateConfig
from tiny import N_LAYERS as TINY_LAYERS
from tiny import tiny_model

# ---------------------------------------------------------------- options from the params
N_LAYERS = 12
METHOD_OPTIONS = {"game-search": {"per_round": 3, "bootstrap": 2}, "permutation": {"bootstrap": 7},
                  "evopress": {"offspring": 5}, "semivalue": {"remove_ratios": [0.2]}}
VARIANTS = {
    "defaults": {},
    "bootstrap_off": {"sampling": {"remove": [1, 2, 5]}, "prune": {"bootstrap": 0},
                      "surrogate": {"recipe": "paper", "epochs": 5, "seed": 3}},
    "with_options": {"sampling": {"remove_ratios": [0.1, 0.3]}, "prune": {"bootstrap": 4, "options": METHOD_OPTIONS}},
}
# What pipeline.estimator_options gave at e9a5a6f, before the estimators built their own options:
# a SurrogateConfig as its fields that differ from the defaults, a tuple as {"tuple": [...]}.
PAPER_RATIOS = {"tuple": [0.0625, 0.15625, 0.25, 0.34375, 0.4375]}
REMOVE_1_2_5 = {"tuple": [0.08333333333333333, 0.16666666666666666, 0.4166666666666667]}
PAPER_SGD = {"SurrogateConfig": {"recipe": "paper", "epochs": 5, "seed": 3}}
DEFAULT_SURROGATE = {"SurrogateConfig": {}}
SURROGATE_FAMILY = {
    "defaults": {"surrogate": DEFAULT_SURROGATE, "remove_ratios": PAPER_RATIOS, "bootstrap": 10},
    "bootstrap_off": {"surrogate": PAPER_SGD, "remove_ratios": REMOVE_1_2_5, "bootstrap": 0},
    "with_options": {"surrogate": DEFAULT_SURROGATE, "remove_ratios": {"tuple": [0.1, 0.3]}, "bootstrap": 4},
}
NOTHING = {"defaults": {}, "bootstrap_off": {}, "with_options": {}}
SNAPSHOT = {
    "angular": NOTHING,
    "bi": NOTHING,
    "evopress": {"defaults": {}, "bootstrap_off": {}, "with_options": {"offspring": 5}},
    "exact": NOTHING,
    "game-search": {**SURROGATE_FAMILY, "with_options": {"surrogate": DEFAULT_SURROGATE, "remove_ratios": {"tuple": [0.1, 0.3]},
                                                         "bootstrap": 2, "per_round": 3}},
    "kernelshap": {"defaults": {}, "bootstrap_off": {"bootstrap": 0}, "with_options": {}},
    "last": NOTHING,
    "permutation": {"defaults": {}, "bootstrap_off": {"bootstrap": 0}, "with_options": {"bootstrap": 7}},
    "ppl": NOTHING,
    "random": NOTHING,
    "semivalue": {**SURROGATE_FAMILY, "with_options": {"surrogate": DEFAULT_SURROGATE, "remove_ratios": [0.2], "bootstrap": 4}},
    "semivalue-search": SURROGATE_FAMILY,
    "shapley": SURROGATE_FAMILY,
    "shapley-adjusted": SURROGATE_FAMILY,
    "sleb": NOTHING,
}


def encode(options):
    """Options as comparable plain data (exact: floats and field values as they are)."""
    def value(v):
        if isinstance(v, SurrogateConfig):
            default = SurrogateConfig()
            return {"SurrogateConfig": {f.name: getattr(v, f.name) for f in dataclasses.fields(v)
                                        if getattr(v, f.name) != getattr(default, f.name)}}
        return {"tuple": list(v)} if isinstance(v, tuple) else v

    return {key: value(v) for key, v in options.items()}


def params_for(method, variant):
    data = {key: dict(section) for key, section in VARIANTS[variant].items()}
    prune = data.setdefault("prune", {})
    prune["method"] = method
    if "options" in prune:
        prune["options"] = {method: prune["options"][method]} if method in prune["options"] else {}
    return Params.from_dict({"model": {"source": "tiny"}, **data})


def test_the_snapshot_covers_the_registry():
    assert sorted(SNAPSHOT) == sorted(ESTIMATORS)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("method", sorted(ESTIMATORS))
def test_options_from_params_are_what_the_pipeline_gave(method, variant):
    """Same options, same order (the pruning record lists them), for every method."""
    options = pipeline.estimator_options(params_for(method, variant), N_LAYERS)
    assert list(encode(options).items()) == list(SNAPSHOT[method][variant].items())


# ---------------------------------------------------------------- the CLI lists the registry
@pytest.mark.parametrize("method", sorted(ESTIMATORS))
def test_every_method_says_what_it_does_in_one_line(method):
    summary = vars(ESTIMATORS[method]).get("summary")  # its own, not a parent's
    assert summary and "\n" not in summary and len(summary) <= 100


def test_prune_help_lists_the_registry(monkeypatch):
    from coopprune.cli import _method_help

    monkeypatch.setattr(sys, "argv", ["coopprune", "prune", "--help"])
    listed = _method_help()
    assert all(f"{name}: {ESTIMATORS[name].summary}" in listed for name in ESTIMATORS)


# ---------------------------------------------------------------- every method on a tiny game
K, PROTECTED, SEED = 2, (0,), 3
N_PLAYERS, WINDOWS = 8, 12  # 12 windows: game-search screens on 10 of them, EvoPress on 1
WEIGHTS = np.linspace(0.05, 0.4, N_PLAYERS)
FAST = {"surrogate": {"epochs": 150}, "prune": {"bootstrap": 2}}  # small fits; intervals still exercised


def value(masks):
    """A known game: removal costs add up on the log scale, and players 1 and 2 back each other up."""
    removed = ~np.asarray(masks, bool)
    return np.exp(-(removed @ WEIGHTS) - 0.3 * (removed[:, 1] & removed[:, 2]))


def on_windows(masks, rows):
    """The same game seen on some windows: a little off, by how many."""
    return value(masks) * np.exp(-0.02 * len(rows) * ~np.asarray(masks, bool)[:, 5])


class Counted:
    """What the game's value functions were really asked: full evaluations, and passes (a
    screen's evaluation is its share of the windows)."""

    def __init__(self):
        self.evaluations, self.passes = 0, 0.0

    def full(self, masks):
        self.evaluations += len(masks)
        self.passes += len(masks)
        return value(masks)

    def screen(self, masks, rows):
        self.passes += len(masks) * len(rows) / WINDOWS
        return on_windows(masks, rows)


def layer_game():
    """For the methods that read activations: a tiny llama, two batches of two windows."""
    model = tiny_model("llama")
    ids = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(1))
    return LayerGame(MaskEvaluator(model, architecture_for(model.config), ids, batch_size=2), protected=PROTECTED)


def run(method):
    """The method as the pipeline runs it: options from the params, checked, then one selection."""
    cls = ESTIMATORS[method]
    counted = Counted()
    game = layer_game() if cls.needs_model else FunctionGame(
        N_PLAYERS, counted.full, protected=PROTECTED, windows=WINDOWS, screen_fn=counted.screen)
    params = Params.from_dict({"model": {"source": "tiny"}, **FAST, "prune": {**FAST["prune"], "method": method}})
    estimator = get_estimator(method, **pipeline.estimator_options(params, game.n_players))
    estimator.check(game.n_players, K, None, game.n_windows)
    before = (game.evaluations, game.cost)
    selection = select_players(game, estimator, K, seed=SEED)
    return selection, game, before, (None if cls.needs_model else counted)


def plain(data):
    """``data`` as JSON gives it back: tuples become lists."""
    if isinstance(data, dict):
        return {key: plain(v) for key, v in data.items()}
    return [plain(v) for v in data] if isinstance(data, (list, tuple)) else data


def without_time(record):
    return {key: v for key, v in record.items() if key != "seconds"}


@pytest.fixture(scope="module")
def runs():
    """Each method run twice on fresh games with the same seed (shared by the checks below)."""
    cache = {}

    def get(method):
        if method not in cache:
            cache[method] = (run(method), run(method))
        return cache[method]

    return get


METHODS = sorted(ESTIMATORS)


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_result(method, runs):
    (first, *_), (second, *_) = runs(method)
    assert first.removed == second.removed
    a, b = (s.rounds[0].contributions for s in (first, second))
    assert json.dumps(without_time(a.to_json())) == json.dumps(without_time(b.to_json()))
    assert (a.replicates is None) == (b.replicates is None)
    if a.replicates is not None:
        assert np.array_equal(a.replicates, b.replicates)


@pytest.mark.parametrize("method", METHODS)
def test_reported_passes_are_what_the_game_counted(method, runs):
    (selection, game, (evaluations0, cost0), counted), _ = runs(method)
    result = selection.rounds[0].contributions
    assert result.evaluations == game.evaluations - evaluations0 == selection.evaluations
    assert result.passes == pytest.approx(game.cost - cost0)
    if counted is not None:  # a synthetic game: what its value functions were really asked
        assert result.evaluations == counted.evaluations
        assert result.passes == pytest.approx(counted.passes)
    if ESTIMATORS[method].needs_model:
        assert result.evaluations >= 1  # the forward pass it read the activations from


@pytest.mark.parametrize("method", METHODS)
def test_a_valid_removal_set(method, runs):
    (selection, game, *_), _ = runs(method)
    removed, result = selection.removed, selection.rounds[0].contributions
    assert len(removed) == len(set(removed)) == K
    assert all(type(i) is int and 0 <= i < game.n_players for i in removed)
    assert not set(removed) & set(game.protected_players)
    assert result.values.shape == (game.n_players,)
    if result.removal is not None:  # a set-based method: its own set is the one removed
        assert sorted(result.removal) == removed
    assert result.method == method


#: Non-finite numbers a result may hold, by method and place, and why (``json`` writes them as
#: -Infinity or NaN, which strict parsers refuse); anything else non-finite fails the contract.
DOCUMENTED_NONFINITE: dict[str, dict[tuple, str]] = {}  # none today (game-search's empty trace start is null)


def nonfinite(data, path=()):
    """Where ``data`` holds NaN or an infinity."""
    if isinstance(data, dict):
        return [p for key, v in data.items() for p in nonfinite(v, (*path, key))]
    if isinstance(data, (list, tuple)):
        return [p for i, v in enumerate(data) for p in nonfinite(v, (*path, i))]
    return [path] if isinstance(data, float) and not np.isfinite(data) else []


def replaced(data, path, new):
    if not path:
        return new
    head, *rest = path
    copy = dict(data) if isinstance(data, dict) else list(data)
    copy[head] = replaced(data[head], rest, new)
    return copy


@pytest.mark.parametrize("method", METHODS)
def test_the_result_is_clean_json(method, runs):
    """No NaN or infinity but the documented ones (a NaN value is written as null), no numpy
    scalars, string keys: what ``json`` writes, it reads back the same."""
    (selection, *_), _ = runs(method)
    record = selection.rounds[0].contributions.to_json()
    found = nonfinite(record)
    assert set(found) <= set(DOCUMENTED_NONFINITE.get(method, {})), found
    for path in found:
        record = replaced(record, path, None)
    assert json.loads(json.dumps(record, allow_nan=False)) == plain(record)


@pytest.mark.parametrize("method", METHODS)
def test_what_it_fitted_travels_in_the_result(method, runs):
    """A surrogate method returns its surrogate (the report saves it) and reports its fit."""
    (selection, *_), _ = runs(method)
    result = selection.rounds[0].contributions
    assert ("surrogate" in result.details) == (result.surrogate is not None) == (selection.surrogate is not None)
    assert result.surrogate is None or isinstance(result.surrogate, Surrogate)
    assert not any(isinstance(v, Surrogate) for v in vars(get_estimator(method)).values())
