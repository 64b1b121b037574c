"""Int8 dynamic quantization composes with pruning in both orders and round-trips through disk."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from coopprune import pipeline
from coopprune.errors import CoopPruneError
from coopprune.models import load_model
from coopprune.quantize import KEEP_FLOAT, QUANT_FILE, WEIGHTS_FILE, quantize_int8, save_quantized
from tiny import prune_request


def logits(model, ids):
    with torch.inference_mode():
        return model(ids).logits


@pytest.fixture(scope="module")
def quantized_checkpoint(tiny_checkpoint, tmp_path_factory):
    loaded = load_model(str(tiny_checkpoint))
    quantize_int8(loaded.model)
    return save_quantized(loaded.model, loaded.tokenizer, tmp_path_factory.mktemp("q") / "int8"), loaded


def test_quantized_model_saves_and_loads_bit_for_bit(tiny_checkpoint, quantized_checkpoint):
    folder, in_memory = quantized_checkpoint
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    reloaded = load_model(str(folder))
    assert torch.equal(logits(reloaded.model, ids), logits(in_memory.model, ids))
    assert reloaded.fingerprint == load_model(str(folder)).fingerprint
    base = load_model(str(tiny_checkpoint))
    assert reloaded.fingerprint != base.fingerprint  # a mask store of the float model is never reused for it
    rel = (logits(reloaded.model, ids) - logits(base.model, ids)).norm() / logits(base.model, ids).norm()
    assert rel < 0.25, rel  # int8 weights and activations on a 32-wide random model: close, not equal
    assert not any(p.suffix in (".bin", ".pt", ".pth") for p in folder.iterdir())  # safetensors only
    assert reloaded.model.generate(ids[:1, :4], max_new_tokens=3, do_sample=False).shape == (1, 7)


@pytest.mark.parametrize("order", ["prune-then-quantize", "quantize-then-prune"])
def test_pruning_and_quantization_compose_in_both_orders(order, tiny_checkpoint, quantized_checkpoint, text_file, tmp_path):
    source = str(quantized_checkpoint[0]) if order == "quantize-then-prune" else str(tiny_checkpoint)
    result = pipeline.prune(prune_request(source, tmp_path / "pruned", "ppl", remove=2, calib=str(text_file), n_windows=4,
                                          window=16, progress=False))
    out = result.out_dir
    if order == "prune-then-quantize":
        loaded = load_model(str(out))
        quantize_int8(loaded.model)
        out = save_quantized(loaded.model, loaded.tokenizer, tmp_path / "pruned-int8")
    assert (out / QUANT_FILE).is_file()
    final = load_model(str(out))
    assert final.num_layers == 4 and final.model.config.num_hidden_layers == 4
    ids = torch.randint(0, 300, (1, 8), generator=torch.Generator().manual_seed(1))
    assert np.isfinite(logits(final.model, ids).numpy()).all()
    if order == "quantize-then-prune":  # the game ran on the quantized model and says so
        record = json.loads((out / "pruning.json").read_text())
        assert record["removed_layers"] == result.removed_layers


@pytest.mark.parametrize("keep_float", [KEEP_FLOAT, ()])
def test_the_layers_kept_in_float_survive_the_round_trip(keep_float, tiny_checkpoint, tmp_path):
    loaded = load_model(str(tiny_checkpoint))
    quantize_int8(loaded.model, keep_float)
    folder = save_quantized(loaded.model, loaded.tokenizer, tmp_path / "int8")
    modules = json.loads((folder / QUANT_FILE).read_text())["modules"]
    everything = keep_float == ()
    assert any(m.endswith(".down_proj") for m in modules) == everything and ("lm_head" in modules) == everything
    assert any(m.endswith(".q_proj") for m in modules)
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits(load_model(str(folder)).model, ids), logits(loaded.model, ids))


def test_a_model_with_nothing_to_quantize_is_a_clear_error(tmp_path):
    from tiny import save_tiny

    loaded = load_model(str(save_tiny(tmp_path / "gpt2", "gpt2", n_layers=2)))  # Conv1D blocks, a float head
    with pytest.raises(CoopPruneError, match="no linear layer to quantize"):
        quantize_int8(loaded.model)


def test_saving_an_unquantized_model_as_quantized_is_a_clear_error(tiny_checkpoint, tmp_path):
    loaded = load_model(str(tiny_checkpoint))
    with pytest.raises(CoopPruneError, match="no quantized linear layers"):
        save_quantized(loaded.model, loaded.tokenizer, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_cli_quantize_then_eval(tiny_checkpoint, text_file, tmp_path):
    from test_cli import assert_user_error, cli

    proc = cli("quantize", str(tiny_checkpoint), "--out", str(tmp_path / "int8"))
    assert proc.returncode == 0, proc.stderr
    assert "int8 checkpoint" in proc.stdout and (tmp_path / "int8" / QUANT_FILE).is_file()
    proc = cli("eval", str(tmp_path / "int8"), "--ppl-text", str(text_file), "--window", "32", "-q")
    assert proc.returncode == 0 and "perplexity" in proc.stdout, proc.stderr
    assert_user_error(cli("quantize", str(tiny_checkpoint), "--out", str(tmp_path / "int8")), "exists")


def test_a_shared_embedding_and_head_is_written_once_and_tied_again(tmp_path):
    from tiny import tiny_model, tiny_tokenizer

    model = tiny_model("llama", n_layers=2)
    model.config.tie_word_embeddings = True  # as SmolLM2: the LM head is the embedding matrix
    model.lm_head.weight = model.model.embed_tokens.weight
    quantize_int8(model)
    folder = save_quantized(model, tiny_tokenizer(), tmp_path / "int8")
    assert json.loads((folder / QUANT_FILE).read_text())["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert "lm_head.weight" not in load_file(str(folder / WEIGHTS_FILE))
    reloaded = load_model(str(folder)).model
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits(reloaded, ids), logits(model, ids))


def test_a_checkpoint_that_stores_the_shared_weight_twice_still_loads(quantized_checkpoint, tmp_path):
    """Checkpoints written before ties were recorded hold every float key and no ``tied`` entry."""
    import shutil

    folder, in_memory = quantized_checkpoint
    old = shutil.copytree(folder, tmp_path / "old")
    spec = json.loads((old / QUANT_FILE).read_text())
    spec.pop("tied")
    (old / QUANT_FILE).write_text(json.dumps(spec))
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits(load_model(str(old)).model, ids), logits(in_memory.model, ids))


def test_a_weights_file_that_does_not_match_the_config_is_a_clear_error(quantized_checkpoint, tmp_path):
    import shutil

    old = shutil.copytree(quantized_checkpoint[0], tmp_path / "broken")
    tensors = load_file(str(old / WEIGHTS_FILE))
    tensors.pop("model.norm.weight")
    save_file(tensors, str(old / WEIGHTS_FILE))
    with pytest.raises(CoopPruneError, match="do not match"):
        load_model(str(old))


def test_loads_overlapping_in_threads_leave_torch_unpatched(quantized_checkpoint):
    from concurrent.futures import ThreadPoolExecutor

    register = torch.nn.Module.register_parameter
    with ThreadPoolExecutor(4) as pool:
        models = list(pool.map(lambda _: load_model(str(quantized_checkpoint[0])).model, range(4)))
    assert torch.nn.Module.register_parameter is register
    assert not any(p.is_meta for m in models for p in m.parameters())
    assert not torch.nn.Linear(2, 2).weight.is_meta
