"""The KL utility: exact and top-K KL to the base model through the prefix-sharing engine."""

import math

import numpy as np
import pytest
import torch

from coopprune.dataset import MaskDataset
from coopprune.engine import MaskEvaluator
from coopprune.errors import CoopPruneError
from coopprune.game import LayerGame
from coopprune.models import architecture_for
from coopprune.objective import KLToBase, objective_for
from coopprune.sampling import StrataPlan
from coopprune.sweep import plan_manifest, run_sweep
from coopprune.utility import kl_utility, utility_spec
from tiny import N_LAYERS, VOCAB, tiny_model

IDS = torch.randint(0, VOCAB, (6, 20), generator=torch.Generator().manual_seed(0))
MASKS = StrataPlan.build(N_LAYERS, remove=[1, 2, 3], per_stratum=4, seed=0).sample()


def _evaluator(objective=None, **kwargs):
    model = tiny_model("llama")
    return MaskEvaluator(model, architecture_for(model.config), IDS, batch_size=4, objective=objective, **kwargs)


def _direct_kl(masks):
    """KL(base || masked) per token from two plain forward passes of physically masked models."""
    model = tiny_model("llama")
    arch = architecture_for(model.config)
    layers = arch.layers(model)
    with torch.inference_mode():
        base = torch.log_softmax(model(input_ids=IDS, use_cache=False).logits[:, :-1], -1)
        out = []
        for mask in masks:
            kept = [j for j in range(N_LAYERS) if mask[j]]
            with arch.stack_view(model, [layers[j] for j in kept], kept):
                logq = torch.log_softmax(model(input_ids=IDS, use_cache=False).logits[:, :-1], -1)
            out.append(float((base.exp() * (base - logq)).sum() / (IDS.shape[0] * (IDS.shape[1] - 1))))
    return out


def test_exact_kl_matches_two_forward_passes_and_is_zero_for_the_full_model():
    evaluator = _evaluator(KLToBase())
    losses = [r.loss for r in evaluator.evaluate(MASKS, progress=False)]
    np.testing.assert_allclose(losses, _direct_kl(MASKS), rtol=1e-4, atol=1e-6)
    assert abs(evaluator.full_loss) < 1e-6 and min(losses) > 0


def test_kl_through_prefix_sharing_equals_fresh_passes():
    shared = [r.loss for r in _evaluator(KLToBase()).evaluate(MASKS, progress=False)]
    fresh = [r.loss for r in _evaluator(KLToBase(), share_prefixes=False).evaluate(MASKS, progress=False)]
    np.testing.assert_allclose(shared, fresh, rtol=1e-5, atol=1e-7)


def test_top_k_kl_is_a_lower_bound_that_tightens_with_k():
    exact = np.array([r.loss for r in _evaluator(KLToBase()).evaluate(MASKS, progress=False)])
    errors = []
    for k in (8, 64, VOCAB - 1):
        approx = np.array([r.loss for r in _evaluator(KLToBase(top_k=k)).evaluate(MASKS, progress=False)])
        assert (approx <= exact + 1e-6).all()  # data processing: coarsening never adds divergence
        errors.append(np.abs(approx - exact).max())
    assert errors[0] >= errors[1] >= errors[2] and errors[2] < 1e-4 * exact.max()


def test_kl_utility_and_objective_choice():
    assert kl_utility(0.0, 5.0) == 1.0 and kl_utility(math.log(2), 0.0) == pytest.approx(0.5)
    assert math.isnan(kl_utility(math.inf, 0.0))
    assert utility_spec("kl@top1024").name == "kl" and utility_spec("ppl_ratio").objective == "nll"
    assert objective_for("kl", n_tokens=10, vocab=100).top_k is None
    assert objective_for("kl", n_tokens=10**6, vocab=50_000).top_k == 1024  # 200 GB exact: top-K instead
    with pytest.raises(CoopPruneError, match="unknown utility"):
        utility_spec("bleu")


def test_a_utility_is_one_registry_row():
    """The params accept exactly the registered utilities and the CLI's help names each of them."""
    from coopprune.config import Params
    from coopprune.utility import UTILITIES, utility_help

    for name in UTILITIES:
        assert Params.from_dict({"game": {"utility": name}}).game.utility == name
        assert f"{name}: " in utility_help()
    with pytest.raises(CoopPruneError, match="unknown utility 'bleu'; choose one of kl, ppl_ratio"):
        Params.from_dict({"game": {"utility": "bleu"}})


def test_a_kl_store_is_never_read_as_a_ppl_one(tmp_path):
    evaluator = _evaluator(KLToBase())
    plan = StrataPlan.build(N_LAYERS, remove=[1], per_stratum=3, seed=0)
    store = run_sweep(evaluator, plan_manifest(evaluator, plan, "m", "c", "kl", 4), tmp_path / "kl", progress=False)
    assert LayerGame(evaluator, "kl", store=MaskDataset.open(store.path)).evaluations == 0
    with pytest.raises(CoopPruneError, match="needs the 'nll' objective"):
        LayerGame(evaluator, "ppl_ratio")
    with pytest.raises(CoopPruneError, match="holds 'kl' utilities"):
        LayerGame(_evaluator(KLToBase(top_k=16)), "kl", store=MaskDataset.open(store.path))  # top-K is another game


def test_screens_cost_their_share_of_a_pass():
    game = LayerGame(_evaluator(KLToBase()), "kl")
    screen = game.screen([0, 3])
    screen.value_function(MASKS[:4])
    assert game.evaluations == 0 and game.cost == pytest.approx(4 * 2 / 6)
    game.value_function(MASKS[:2])
    assert game.evaluations == 2 and game.cost == pytest.approx(2 + 4 * 2 / 6)
    sub = game.subgame([0])
    sub.screen([1]).value_function(np.ones((1, N_LAYERS - 1), dtype=bool))
    assert sub.cost == pytest.approx(1 / 6)
    with pytest.raises(CoopPruneError, match="windows in"):
        game.screen([6])
