"""Per family: masked evaluation equals the saved pruned model, and the pruned checkpoint
generates the same with and without the KV cache (dropping the first and last layers too)."""

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, BertConfig

from coopprune.engine import MaskEvaluator
from coopprune.errors import CoopPruneError
from coopprune.models import architecture_for, supported_model_types
from coopprune.models.loading import LoadedModel
from coopprune.prune import count_parameters, make_record, prune_layers, save_pruned
from tiny import ARCHITECTURES, N_LAYERS, tiny_model, tiny_tokenizer

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
    assert {"llama", "mistral", "qwen2", "gemma3_text", "gpt2", "gpt_neox", "opt", "mamba"} <= set(
        supported_model_types()
    )


def test_position_dependent_gpt2_is_refused():
    model = tiny_model("gpt2")
    model.config.scale_attn_by_inverse_layer_idx = True
    with pytest.raises(CoopPruneError, match="scale_attn_by_inverse_layer_idx"):
        architecture_for(model.config)
