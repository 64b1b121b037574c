"""Per family: masked evaluation equals the saved pruned model, and the pruned checkpoint
generates the same with and without the KV cache (dropping the first and last layers too).
RWKV, whose blocks depend on their depth (state index, ``pre_ln``, ``rescale_every``), also runs
every method through the CLI."""

import json
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, BertConfig

from coopprune.engine import MaskEvaluator
from coopprune.errors import CoopPruneError
from coopprune.estimators import ESTIMATORS
from coopprune.models import architecture_for, supported_model_types
from coopprune.models.loading import LoadedModel
from coopprune.prune import count_parameters, make_record, prune_layers, save_pruned
from tiny import ARCHITECTURES, N_LAYERS, save_tiny, tiny_model, tiny_tokenizer

REMOVALS = [[0], [N_LAYERS - 1], [0, 2, N_LAYERS - 1]]


def _loaded(model):
    return LoadedModel(model, tiny_tokenizer(), architecture_for(model.config), "tiny", "fp")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_masked_evaluation_equals_saved_pruned_model(arch, tmp_path):
    model = tiny_model(arch)
    ids = torch.randint(0, 300, (3, 24), generator=torch.Generator().manual_seed(1))
    for removed in REMOVALS:
        mask = np.ones(N_LAYERS, dtype=bool)
        mask[removed] = False
        evaluator = MaskEvaluator(model, architecture_for(model.config), ids)
        captured = {}
        handle = model.register_forward_hook(lambda m, a, out: captured.update(logits=out.logits.clone()))
        evaluator.evaluate(mask[None], progress=False)
        handle.remove()

        pruned = tiny_model(arch)
        loaded = _loaded(pruned)
        before = count_parameters(pruned)
        prune_layers(loaded, removed)
        out = tmp_path / f"{arch}-{'-'.join(map(str, removed))}"
        save_pruned(loaded, out, make_record(loaded, removed, "test", before))
        reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
        assert AutoConfig.from_pretrained(out).model_type == model.config.model_type
        with torch.no_grad():
            logits = reloaded(input_ids=ids, use_cache=False).logits
        assert (logits - captured["logits"]).abs().max().item() < 1e-5
        # the evaluator must leave the original model untouched
        assert len(architecture_for(model.config).layers(model)) == N_LAYERS


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_pruned_checkpoint_generates_identically_with_kv_cache(arch, tmp_path):
    for removed in REMOVALS:
        model = tiny_model(arch)
        loaded = _loaded(model)
        before = count_parameters(model)
        prune_layers(loaded, removed)
        out = tmp_path / "-".join(map(str, removed))
        save_pruned(loaded, out, make_record(loaded, removed, "test", before))
        reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
        prompt = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11]])
        kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            cached = reloaded.generate(prompt, use_cache=True, **kwargs)
            uncached = reloaded.generate(prompt, use_cache=False, **kwargs)
        assert torch.equal(cached, uncached), f"{arch} without {removed}"


def test_per_layer_config_lists_are_sliced(tmp_path):
    model = tiny_model("gemma3_text")
    types = list(model.config.layer_types)
    assert len(set(types)) == 2, "the test needs mixed sliding/full layers"
    prune_layers(_loaded(model), [1, 4])
    assert model.config.layer_types == [t for i, t in enumerate(types) if i not in (1, 4)]
    assert model.config.num_hidden_layers == N_LAYERS - 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(N_LAYERS - 2))


def test_unsupported_architecture_names_the_supported_ones():
    with pytest.raises(CoopPruneError, match="unsupported architecture 'bert'.*llama.*mamba"):
        architecture_for(BertConfig())
    assert {"llama", "mistral", "qwen2", "gemma3_text", "gpt2", "gpt_neox", "opt", "mamba", "rwkv"} <= set(
        supported_model_types()
    )


def test_position_dependent_gpt2_is_refused():
    model = tiny_model("gpt2")
    model.config.scale_attn_by_inverse_layer_idx = True
    with pytest.raises(CoopPruneError, match="scale_attn_by_inverse_layer_idx"):
        architecture_for(model.config)


# ---------------------------------------------------------------- RWKV: blocks that know their depth
IDS = torch.randint(0, 300, (3, 24), generator=torch.Generator().manual_seed(1))


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _pruned_rwkv(removed, tmp_path):
    """The tiny RWKV with ``removed`` taken out, saved and reloaded (eval mode, as users run it)."""
    model = tiny_model("rwkv")
    if removed:
        architecture_for(model.config).remove_layers(model, removed)
    model.save_pretrained(tmp_path / "pruned")
    return AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()


def test_rwkv_rescaling_is_exercised():
    """eval-mode rescaling (every 2 blocks here) changes the logits beyond the tolerance used above,
    so the exactness tests below would see a view that rescaled by the wrong depth."""
    model = tiny_model("rwkv")
    model.train()
    canonical = _logits(model)
    model.eval()
    assert (canonical - _logits(model)).abs().max().item() > 1e-4
    assert model.rwkv.layers_are_rescaled  # transformers divided the weights in place


def test_rwkv_masks_are_bitwise_the_pruned_checkpoint_with_prefix_sharing(tmp_path):
    model = tiny_model("rwkv")
    canonical = {k: v.clone() for k, v in model.state_dict().items()}
    _logits(model)  # eval-mode forward first: transformers divides the weights in place
    arch = architecture_for(model.config)
    masks = np.random.default_rng(0).random((16, N_LAYERS)) > 0.4
    masks = masks[masks.any(axis=1)]
    shared = [r.loss for r in MaskEvaluator(model, arch, IDS).evaluate(masks, progress=False)]
    fresh = [r.loss for r in MaskEvaluator(model, arch, IDS, share_prefixes=False).evaluate(masks, progress=False)]
    assert shared == fresh  # a replayed prefix keeps its depth (and so its rescaling)
    # the evaluator leaves the canonical weights, the full stack and the block ids as they were
    assert all(torch.equal(canonical[k], v) for k, v in model.state_dict().items())
    assert [b.layer_id for b in model.rwkv.blocks] == list(range(N_LAYERS))
    assert not model.rwkv.layers_are_rescaled and hasattr(model.rwkv.blocks[0], "pre_ln")
    assert not any(hasattr(b, "pre_ln") for b in model.rwkv.blocks[1:])

    evaluator = MaskEvaluator(model, arch, IDS)
    evaluator.evaluate(np.ones((1, N_LAYERS), dtype=bool), progress=False)  # fills the prefix cache
    for i, mask in enumerate(masks[:6]):
        captured = {}
        handle = model.register_forward_hook(lambda m, a, out: captured.update(logits=out.logits.clone()))
        evaluator.evaluate(mask[None], progress=False)
        handle.remove()
        reloaded = _pruned_rwkv(np.flatnonzero(~mask).tolist(), tmp_path / str(i))
        assert torch.equal(_logits(reloaded), captured["logits"]), mask


def test_rwkv_masks_are_bitwise_the_pruned_checkpoint_in_bfloat16(tmp_path):
    tiny_model("rwkv").save_pretrained(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.bfloat16).eval()
    arch = architecture_for(model.config)
    evaluator = MaskEvaluator(model, arch, IDS)
    evaluator.evaluate(np.ones((1, N_LAYERS), dtype=bool), progress=False)
    for removed in REMOVALS:
        mask = np.ones(N_LAYERS, dtype=bool)
        mask[removed] = False
        captured = {}
        handle = model.register_forward_hook(lambda m, a, out: captured.update(logits=out.logits.clone()))
        evaluator.evaluate(mask[None], progress=False)
        handle.remove()
        pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.bfloat16)
        arch.remove_layers(pruned, removed)
        pruned.save_pretrained(tmp_path / "pruned")
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", dtype=torch.bfloat16).eval()
        assert torch.equal(_logits(reloaded), captured["logits"]), removed


def test_rwkv_removal_renumbers_the_state_and_moves_pre_ln(tmp_path):
    model = tiny_model("rwkv")
    pre_ln = {k: v.clone() for k, v in model.rwkv.blocks[0].pre_ln.state_dict().items()}
    arch = architecture_for(model.config)
    arch.remove_layers(model, [0, 1, 3])
    blocks = model.rwkv.blocks
    assert model.config.num_hidden_layers == N_LAYERS - 3
    for depth, block in enumerate(blocks):
        assert block.layer_id == block.attention.layer_id == block.feed_forward.layer_id == depth
    assert hasattr(blocks[0], "pre_ln") and not any(hasattr(b, "pre_ln") for b in blocks[1:])
    assert all(torch.equal(v, pre_ln[k]) for k, v in blocks[0].pre_ln.state_dict().items())
    with torch.no_grad():
        state = model(input_ids=IDS, use_cache=True).state
    assert [tuple(s.shape) for s in state] == [(3, 32, N_LAYERS - 3)] * 5
    expected = _logits(model)
    arch.canonicalize(model)  # what save_pruned does: that forward divided weights in place
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(_logits(reloaded), expected)


def test_rwkv_checkpoint_saved_after_inference_is_not_rescaled_twice(tmp_path):
    """transformers' save_pretrained after an eval-mode forward writes the divided weights; the
    pruned checkpoint must hold the canonical ones (a reload divides them itself)."""
    model = tiny_model("rwkv")
    loaded = _loaded(model)
    before = count_parameters(model)
    MaskEvaluator(model, loaded.architecture, IDS).evaluate(np.ones((2, N_LAYERS), dtype=bool), progress=False)
    prune_layers(loaded, [2])
    expected = _logits(model)  # eval mode: the weights are divided in place again
    assert model.rwkv.layers_are_rescaled
    save_pruned(loaded, tmp_path / "out", make_record(loaded, [2], "test", before))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.equal(_logits(reloaded), expected)
    assert torch.equal(_logits(reloaded), _logits(_pruned_rwkv([2], tmp_path)))


def _cli(*args):
    """``coopprune`` in-process; returns (exit code, stderr)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from coopprune.cli import main

    out, err = io.StringIO(), io.StringIO()
    with mock.patch.object(sys, "argv", ["coopprune", *args]), redirect_stdout(out), redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            return exc.code, err.getvalue()
    return 0, err.getvalue()


@pytest.fixture(scope="module")
def rwkv_checkpoint(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("rwkv") / "rwkv", "rwkv")


@pytest.mark.parametrize("method", sorted(ESTIMATORS))
def test_every_method_prunes_rwkv_through_the_cli(method, rwkv_checkpoint, text_file, tmp_path):
    out = tmp_path / "pruned"
    code, err = _cli("prune", str(rwkv_checkpoint), "--out", str(out), "-k", "2", "--method", method,
                     "--calib", str(text_file), "--n-windows", "4", "--window", "24", "--budget", "64",
                     "--bootstrap", "0", "-q")
    assert code == 0, err
    record = json.loads((out / "pruning.json").read_text())
    assert record["method"] == method and len(record["removed_layers"]) == 2
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.num_hidden_layers == N_LAYERS - 2
    # the CLI's evaluation forwards left the saved weights canonical: the checkpoint is exactly
    # the base one with those blocks removed
    base = AutoModelForCausalLM.from_pretrained(rwkv_checkpoint).eval()
    architecture_for(base.config).remove_layers(base, record["removed_layers"])
    assert torch.equal(_logits(reloaded), _logits(base))
