"""Peer baselines (ShortGPT's BI, Gromov's angular block, SLEB, last-k, random) on tiny models and
on a synthetic game whose greedy answer is known."""

import json

import numpy as np
import pytest
import torch

from coopprune.engine import MaskEvaluator
from coopprune.errors import CoopPruneError
from coopprune.estimators import get_estimator
from coopprune.game import LayerGame
from coopprune.models import architecture_for
from tiny import ARCHITECTURES, N_LAYERS, tiny_model

IDENTITY = (2, 3)  # layers made exact identities in the "predictable" model


def _game(model, protected=()) -> LayerGame:
    """Two batches of two windows, so statistics must stream across batches."""
    ids = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(1))
    return LayerGame(MaskEvaluator(model, architecture_for(model.config), ids, batch_size=2), protected=protected)


def _identity_llama():
    """A llama whose layers 2 and 3 return their input: the block to remove is known."""
    model = tiny_model("llama")
    with torch.no_grad():
        for i in IDENTITY:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    return model


class FakeGame:
    """Additive utilities plus a bonus kept while player 0 or 1 stays: 0 and 1 are redundant."""

    weights = np.array([0.5, 0.5, 1.0, 2.0, 3.0, 4.0])

    def __init__(self, protected=()):
        self.n_players = len(self.weights)
        self.layers = list(range(self.n_players))
        self.protected_players = tuple(protected)
        self.evaluations = 0
        self.cost = 0.0  # full-calibration passes, as Game counts them
        self.has_model = False  # a value function only, as Game says

    def value_function(self, coalitions):
        coalitions = np.asarray(coalitions, dtype=bool)
        self.evaluations += len(coalitions)
        self.cost += len(coalitions)
        return coalitions @ self.weights + 10.0 * (coalitions[:, 0] | coalitions[:, 1])

    def charge(self, passes):
        self.evaluations += passes


# ---------------------------------------------------------------- sleb
def test_sleb_follows_the_greedy_path_on_a_synthetic_game():
    result = get_estimator("sleb").estimate(FakeGame(), k=3)
    # removing 0 alone is cheap, but then 1 carries the bonus: the single-removal ranking (0, 1, 2) is wrong
    assert result.removal == [0, 2, 3]
    assert result.details["order"] == [0, 2, 3]
    assert result.evaluations == 6 + 5 + 4
    assert [max(s["utilities"]) for s in result.details["steps"]] == [20.5, 19.5, 17.5]
    assert [len(s["candidates"]) for s in result.details["steps"]] == [6, 5, 4]
    # removal order first, then the survivors by the damage of removing them at the last step
    assert np.argsort(result.values).tolist() == [0, 2, 3, 4, 5, 1]


def test_sleb_skips_protected_players():
    result = get_estimator("sleb").estimate(FakeGame(protected=[2]), k=3)
    assert result.removal == [0, 3, 4]
    assert result.evaluations == 5 + 4 + 3
    assert result.values[2] == result.values.max()
    with pytest.raises(CoopPruneError, match="cannot remove 5 layers"):
        get_estimator("sleb").estimate(FakeGame(protected=[2, 3]), k=5)
    with pytest.raises(CoopPruneError, match="give k"):
        get_estimator("sleb").estimate(FakeGame())
    nothing = get_estimator("sleb").estimate(FakeGame(protected=[2]), k=0)
    assert nothing.removal == [] and nothing.evaluations == 0 and nothing.values[2] > nothing.values[0]


def test_sleb_on_a_real_game_counts_every_candidate():
    runs = [get_estimator("sleb").estimate(_game(tiny_model("llama"), protected=[0]), k=2) for _ in range(2)]
    assert runs[0].evaluations == 5 + 4
    assert 0 not in runs[0].removal and len(runs[0].removal) == 2
    assert runs[0].removal == runs[1].removal
    np.testing.assert_array_equal(runs[0].values, runs[1].values)


# ---------------------------------------------------------------- block influence
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_block_influence_runs_on_every_architecture(arch):
    game = _game(tiny_model(arch))
    result = get_estimator("bi").estimate(game)
    assert result.values.shape == (N_LAYERS,)
    assert np.all(np.isfinite(result.values)) and np.all((result.values >= -1e-6) & (result.values <= 2 + 1e-6))
    assert result.evaluations == 1 and game.evaluations == 1
    assert result.removal is None


def test_block_influence_matches_hidden_states_before_the_final_norm():
    model = tiny_model("gpt2")  # a LayerNorm changes cosines (an RMSNorm with unit weights would not)
    game = _game(model)
    values = get_estimator("bi").estimate(game).values
    cos = []
    with torch.no_grad():
        for batch in game.evaluator.batches:
            states = model(input_ids=batch, output_hidden_states=True, use_cache=False).hidden_states
            pairs = [torch.cosine_similarity(states[i], states[i + 1], dim=-1) for i in range(N_LAYERS)]
            cos.append(torch.stack(pairs))
    expected = 1 - torch.cat([c.flatten(1) for c in cos], dim=1).mean(dim=1).numpy()
    # hidden_states[-1] has the final norm applied: only the last layer may differ
    np.testing.assert_allclose(values[:-1], expected[:-1], atol=1e-5)
    assert abs(values[-1] - expected[-1]) > 1e-3


def test_identity_layers_have_no_influence():
    values = get_estimator("bi").estimate(_game(_identity_llama())).values
    assert np.allclose(values[list(IDENTITY)], 0, atol=1e-6)
    assert values[[i for i in range(N_LAYERS) if i not in IDENTITY]].min() > 1e-3


def test_similarity_peers_need_a_model_with_layer_players():
    for method in ("bi", "angular"):
        with pytest.raises(CoopPruneError, match="players are the layers of a model"):
            get_estimator(method).estimate(FakeGame(), k=2)


# ---------------------------------------------------------------- angular
def test_angular_finds_the_identity_block():
    game = _game(_identity_llama())
    result = get_estimator("angular").estimate(game, k=2)
    assert result.removal == list(IDENTITY)
    assert result.details["block_start"] == IDENTITY[0]
    assert result.details["block_distances"][IDENTITY[0]] < 1e-3
    assert result.evaluations == 1
    # values agree with the block: its players hold the lowest distances
    assert sorted(np.argsort(result.values)[:2].tolist()) == list(IDENTITY)


def test_angular_block_avoids_protected_players():
    result = get_estimator("angular").estimate(_game(_identity_llama(), protected=[2]), k=2)
    assert 2 not in result.removal and len(result.removal) == 2
    assert result.removal[1] - result.removal[0] == 1
    assert np.isnan(result.values[2])  # no allowed block contains it


def test_angular_needs_a_feasible_block_and_k():
    game = _game(tiny_model("llama"), protected=[1, 3])
    with pytest.raises(CoopPruneError, match="no block of 3 consecutive layers avoids the protected layers"):
        get_estimator("angular").estimate(game, k=3)
    assert game.evaluations == 0  # refused before any forward pass
    with pytest.raises(CoopPruneError, match="give k"):
        get_estimator("angular").estimate(game)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "mamba", "rwkv"])
def test_angular_runs_and_is_deterministic(arch):
    model = tiny_model(arch)
    first, second = (get_estimator("angular").estimate(_game(model), k=2, seed=s) for s in (0, 1))
    assert first.values.shape == (N_LAYERS,) and first.evaluations == 1
    assert first.removal == second.removal
    np.testing.assert_array_equal(first.values, second.values)
    distances = np.asarray(first.details["block_distances"])
    assert np.all((distances >= 0) & (distances <= 1))


# ---------------------------------------------------------------- subgames
@pytest.mark.parametrize("arch", ["llama", "gpt2", "mamba", "rwkv"])
def test_similarity_peers_play_on_the_pruned_model(arch):
    model = tiny_model(arch)
    game = _game(model)
    sub = game.subgame([1])
    bi = get_estimator("bi").estimate(sub)
    angular = get_estimator("angular").estimate(sub, k=2)
    assert bi.values.shape == angular.values.shape == (N_LAYERS - 1,)
    assert bi.evaluations == angular.evaluations == 1 and game.evaluations == 2
    assert all(0 <= p < N_LAYERS - 1 for p in angular.removal)
    # the subgame sees exactly the physically pruned model
    pruned = tiny_model(arch)
    architecture_for(pruned.config).remove_layers(pruned, [1])
    np.testing.assert_allclose(bi.values, get_estimator("bi").estimate(_game(pruned)).values, atol=1e-5)


# ---------------------------------------------------------------- last, random
def test_last_drops_the_last_unprotected_players():
    game = _game(tiny_model("llama"), protected=[N_LAYERS - 1])
    result = get_estimator("last").estimate(game, k=2)
    assert result.removal == [N_LAYERS - 3, N_LAYERS - 2]
    assert result.values.shape == (N_LAYERS,) and result.evaluations == 0 and game.evaluations == 0
    with pytest.raises(CoopPruneError, match="give k"):
        get_estimator("last").estimate(game)


def test_random_is_seeded_and_respects_protected_players():
    game = FakeGame(protected=[0, 5])
    runs = {seed: get_estimator("random").estimate(game, k=2, seed=seed) for seed in range(8)}
    assert game.evaluations == 0 and all(r.evaluations == 0 for r in runs.values())
    again = get_estimator("random").estimate(game, k=2, seed=3)
    assert again.removal == runs[3].removal and np.array_equal(again.values, runs[3].values)
    assert len({tuple(r.removal) for r in runs.values()}) > 1
    for r in runs.values():
        assert not {0, 5} & set(r.removal) and len(r.removal) == 2
        assert sorted(r.values) == list(range(6))
        lowest = sorted((p for p in range(6) if p not in (0, 5)), key=lambda p: r.values[p])[:2]
        assert sorted(lowest) == r.removal
    assert get_estimator("random").estimate(game, seed=3).removal is None


def test_results_serialize_to_json():
    game = _game(tiny_model("llama"), protected=[0])
    for method in ("bi", "angular", "sleb", "last", "random"):
        result = get_estimator(method).estimate(game, k=2)
        json.dumps(result.to_json(), allow_nan=False)
