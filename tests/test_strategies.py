"""Iterative and sublayer pruning on tiny real models: the checkpoints they save pass the same
equivalence and KV-cache checks as whole-layer pruning, and no coalition is evaluated twice."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from coopprune import pipeline
from coopprune.dataset import MaskDataset
from coopprune.engine import MaskEvaluator
from coopprune.errors import CoopPruneError
from coopprune.estimators import get_estimator
from coopprune.game import LayerGame
from coopprune.models import architecture_for
from coopprune.models.loading import LoadedModel
from coopprune.prune import count_parameters, make_record, prune_layers, save_pruned
from coopprune.strategy import select_players
from coopprune.sublayers import SublayerEvaluator, zero_half_layers
from tiny import N_LAYERS, prune_request, tiny_model, tiny_tokenizer

SPLITTABLE = ["llama", "qwen2", "gemma3_text", "gpt2", "gpt_neox"]
IDS = torch.randint(0, 300, (3, 24), generator=torch.Generator().manual_seed(1))
FAST = {"epochs": 200, "bootstrap": 3}


def _reloaded_logits(model, out):
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        return reloaded, reloaded(input_ids=IDS, use_cache=False).logits


def _masked_logits(evaluator, mask):
    captured = {}
    handle = evaluator.model.register_forward_hook(lambda m, a, out: captured.update(logits=out.logits.clone()))
    evaluator.evaluate(mask[None], progress=False)
    handle.remove()
    return captured["logits"]


def _generates_identically(model):
    prompt = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        return torch.equal(model.generate(prompt, use_cache=True, **kwargs), model.generate(prompt, use_cache=False, **kwargs))


@pytest.mark.parametrize("arch", SPLITTABLE)
def test_sublayer_mask_equals_saved_checkpoint(arch, tmp_path):
    # attn 0 and mlp of the last layer dropped (half layers), layer 2 dropped whole
    dropped = [0, 2 * 2, 2 * 2 + 1, 2 * (N_LAYERS - 1) + 1]
    mask = np.ones(2 * N_LAYERS, dtype=bool)
    mask[dropped] = False
    model = tiny_model(arch)
    evaluator = SublayerEvaluator(model, architecture_for(model.config), IDS)
    expected = _masked_logits(evaluator, mask)

    pruned = tiny_model(arch)
    loaded = LoadedModel(pruned, tiny_tokenizer(), architecture_for(pruned.config), "tiny", "fp")
    before = count_parameters(pruned)
    whole = zero_half_layers(pruned, loaded.architecture, dropped)
    assert whole == [2]
    prune_layers(loaded, whole)
    save_pruned(loaded, tmp_path / arch, make_record(loaded, whole, "test", before))
    reloaded, logits = _reloaded_logits(pruned, tmp_path / arch)
    assert (logits - expected).abs().max().item() < 1e-5
    assert _generates_identically(reloaded)
    # stand-ins are removed again: the original model is intact
    assert not any(type(m).__name__ == "_Identity" for m in model.modules())
    full = MaskEvaluator(model, architecture_for(model.config), IDS)
    assert full.evaluate(np.ones((1, N_LAYERS), bool), progress=False)[0].loss == pytest.approx(
        evaluator.evaluate(np.ones((1, 2 * N_LAYERS), bool), progress=False)[0].loss, abs=0
    )


def test_sublayer_prefix_sharing_is_exact():
    model = tiny_model("llama")
    arch = architecture_for(model.config)
    rng = np.random.default_rng(0)
    masks = rng.random((12, 2 * N_LAYERS)) > 0.3
    shared = [r.loss for r in SublayerEvaluator(model, arch, IDS).evaluate(masks, progress=False)]
    fresh = [r.loss for r in SublayerEvaluator(model, arch, IDS, share_prefixes=False).evaluate(masks, progress=False)]
    assert np.allclose(shared, fresh, rtol=1e-6, atol=0)


@pytest.mark.parametrize("arch", ["opt", "mamba", "rwkv"])
def test_unsplittable_layers_are_refused_clearly(arch):
    model = tiny_model(arch)
    with pytest.raises(CoopPruneError, match="sublayer players are not supported.*supported: .*llama"):
        SublayerEvaluator(model, architecture_for(model.config), IDS)


def test_subgame_reuses_earlier_evaluations():
    model = tiny_model("llama")
    game = LayerGame(MaskEvaluator(model, architecture_for(model.config), IDS))
    first = get_estimator("ppl").estimate(game)
    assert first.evaluations == N_LAYERS + 1
    sub = game.subgame([2])
    again = get_estimator("ppl").estimate(sub)
    # the subgame's full coalition is the parent's "all but layer 2", already known
    assert again.evaluations == N_LAYERS - 1
    masks, _ = sub.known()
    assert masks.shape[1] == N_LAYERS - 1 and len(masks) == N_LAYERS


def test_iterative_selection_removes_k_over_rounds():
    model = tiny_model("llama")
    game = LayerGame(MaskEvaluator(model, architecture_for(model.config), IDS), protected=[0])
    selection = select_players(game, get_estimator("ppl"), k=3, per_round=2)
    assert [len(r.removed) for r in selection.rounds] == [2, 1]
    assert len(selection.removed) == 3 and 0 not in selection.removed
    assert selection.rounds[1].players == [i for i in range(N_LAYERS) if i not in selection.rounds[0].removed]


@pytest.mark.parametrize(
    "method, extra",
    [
        ("semivalue", {"iterative": 1}),
        ("shapley-adjusted", {"budget": 48}),
        ("ppl", {"players": "sublayers"}),
        ("shapley", {"players": "sublayers", "budget": 40}),
        ("semivalue-search", {"budget": 30}),
    ],
)
def test_prune_strategies_end_to_end(method, extra, tiny_checkpoint, text_file, tmp_path):
    out = tmp_path / "out"
    options = FAST if method in ("semivalue", "semivalue-search", "shapley", "shapley-adjusted") else {}
    result = pipeline.prune(prune_request(
        tiny_checkpoint, out, method, remove=2, calib=str(text_file), n_windows=4, window=24,
        progress=False, **options, **extra,
    ))
    record = json.loads((out / "pruning.json").read_text())
    assert record["scores"]["evaluations"] == result.evaluations > 0
    assert (out / "contributions.csv").read_text().startswith("round,player,name,contribution")
    assert (out / "contributions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if method != "ppl":
        assert (out / "surrogate" / "surrogate.safetensors").is_file()
        meta = json.loads((out / "surrogate" / "surrogate.json").read_text())
        if meta["metrics"].get("held_out_chains", True):  # tiny games: chains may cover every coalition
            assert (out / "surrogate" / "heldout_fit.png").read_bytes()[:4] == b"\x89PNG"
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert _generates_identically(reloaded)
    if extra.get("players") == "sublayers":
        removed = record["scores"]["removed_players"]
        assert removed and record["scores"]["parameters_removed_effective"] <= record["scores"]["parameter_budget"]
    else:
        assert len(record["removed_layers"]) == 2 and len(record["scores"]["rounds"]) == (2 if "iterative" in extra else 1)


def test_game_store_never_evaluates_a_coalition_twice(tiny_checkpoint, text_file, tmp_path):
    from coopprune.config import Params

    params = Params.from_dict({
        "model": {"source": str(tiny_checkpoint)},
        "calibration": {"source": str(text_file), "n_windows": 4, "window": 24},
        "game": {"utility": "ppl_ratio"},
        "sampling": {"remove": [1, 2], "per_stratum": 4, "shard_size": 4},
    })
    dataset = pipeline.sweep(params, tmp_path / "masks", progress=False)
    kwargs = dict(calib=str(text_file), n_windows=4, window=24, progress=False, masks=dataset.path)
    first = pipeline.prune(prune_request(tiny_checkpoint, tmp_path / "a", "ppl", remove=1, **kwargs))
    assert first.evaluations == N_LAYERS + 1 - sum(1 for m in dataset.arrays()[0] if m.sum() >= N_LAYERS - 1)
    stored = MaskDataset.open(dataset.path)
    assert len(stored) == 8 + first.evaluations
    second = pipeline.prune(prune_request(tiny_checkpoint, tmp_path / "b", "ppl", remove=1, **kwargs))
    assert second.evaluations == 0 and second.removed_layers == first.removed_layers
    masks, _ = stored.arrays()
    assert len({m.tobytes() for m in masks}) == len(masks)
