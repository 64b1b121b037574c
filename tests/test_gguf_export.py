"""GGUF export, offline with tiny models written in-process: a checkpoint exported to GGUF loads
back with transformers' GGUF loader with the checkpoint's logits (f32: 1e-5; f16: close; q8_0 and
q4_0: exactly the logits of the checkpoint with its weights rounded the same way, and near the
float ones), for Llama and Qwen2; pruning a quantized GGUF directly equals pruning its dequantized
model, an exported q8_0 / q4_0 file included; bad input is a one-line error and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import save_tiny, tiny_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from coopprune.errors import CoopPruneError
from coopprune.gguf_export import DTYPES, copy_field, export_gguf, prune_gguf, record_facts, tensor_type
from coopprune.gguf_io import open_gguf, read_facts
from coopprune.models import load_model
from coopprune.prune import count_parameters, make_record, prune_layers, save_pruned
from coopprune.stages import run_stage

REMOVED = [1, 3]
PROMPT = "The quick brown fox jumps over"  # shorter than Qwen2's tiny sliding window (16)


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids).logits


def from_gguf(path: Path):
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def pruned(request, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp(f"gguf-{request.param}")
    loaded = load_model(str(save_tiny(root / "base", request.param, n_layers=5)))
    before = count_parameters(loaded.model)
    removed = prune_layers(loaded, REMOVED)
    return save_pruned(loaded, root / "pruned", make_record(loaded, removed, "game-search", before))


def test_an_exported_checkpoint_loads_back_with_its_logits(pruned, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(pruned)(PROMPT, return_tensors="pt").input_ids
    expected = logits_of(model, ids)
    f32 = export_gguf(pruned, tmp_path / "model-f32.gguf", dtype="f32")
    back = from_gguf(f32)
    assert back.config.num_hidden_layers == model.config.num_hidden_layers == 3
    torch.testing.assert_close(logits_of(back, ids), expected, atol=1e-5, rtol=0)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=f32.name)
    assert tokenizer(PROMPT).input_ids[-ids.shape[1]:] == ids[0].tolist()  # the vocabulary survived too

    f16 = export_gguf(pruned, tmp_path / "model-f16.gguf")
    assert f16.stat().st_size < f32.stat().st_size
    torch.testing.assert_close(logits_of(from_gguf(f16), ids), expected, atol=2e-2, rtol=0)
    facts = read_facts(f16)
    assert facts["removed_layers"] == REMOVED and facts["method"] == "game-search"
    assert facts["layers_before"] == 5 and facts["layers_after"] == 3


def rounded_like(checkpoint: Path, dtype: str):
    """The checkpoint with each weight quantized and dequantized as its GGUF tensor is in ``dtype``
    (rows are quantized along themselves, so Llama's q/k row permutation does not change them)."""
    import gguf
    from gguf.quants import dequantize, quantize

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == model.config.model_type)
    names = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    tied = bool(model.config.tie_word_embeddings)
    with torch.no_grad():
        for hf_name, weight in model.state_dict().items():
            if tied and hf_name == "lm_head.weight":
                continue  # the embedding itself, rounded once as the head
            name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            kind = tensor_type(name, tuple(weight.shape), dtype, tied=tied)
            weight.copy_(torch.from_numpy(dequantize(quantize(weight.numpy(), kind), kind).reshape(weight.shape)))
    return model


#: measured on the tiny models (3 layers, hidden 32, weights N(0, 0.2), logits' std ~1.15):
#: largest |logit - float logit| Llama / Qwen2: q8_0 0.10 / 0.15, q4_0 2.6 / 1.9; mean: q8_0
#: 0.018 / 0.022, q4_0 0.31 / 0.36. Bounds with about 2x room; the exact check is `rounded_like`.
TOLERANCE = {"q8_0": (0.3, 0.05), "q4_0": (5.0, 0.75)}  # (max, mean) absolute logit difference


@pytest.mark.parametrize("dtype", ["q8_0", "q4_0"])
def test_a_quantized_export_loads_back_as_its_rounded_checkpoint(pruned, tmp_path, dtype):
    """Q8_0 / Q4_0 from gguf-py's quantizers: llama.cpp's types per tensor, and the file dequantizes
    to exactly the checkpoint's weights rounded the same way."""
    from gguf import GGMLQuantizationType as T

    model = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(pruned)(PROMPT, return_tensors="pt").input_ids
    path = export_gguf(pruned, tmp_path / f"model-{dtype}.gguf", dtype=dtype)
    reader = open_gguf(path)
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    matrix = T.Q8_0 if dtype == "q8_0" else T.Q4_0
    assert kinds["blk.0.attn_q.weight"] == kinds["blk.2.ffn_down.weight"] == kinds["token_embd.weight"] == matrix
    assert kinds["output.weight"] == T.Q8_0  # the head: q8_0 in a q4_0 file (llama-quantize: Q6_K)
    assert kinds["blk.0.attn_norm.weight"] == kinds["output_norm.weight"] == T.F32
    assert reader.get_field("general.file_type").contents() == {"q8_0": 7, "q4_0": 2}[dtype]  # LlamaFileType
    assert read_facts(path)["removed_layers"] == REMOVED

    back = from_gguf(path)
    assert back.config.num_hidden_layers == 3
    got = logits_of(back, ids)
    torch.testing.assert_close(got, logits_of(rounded_like(pruned, dtype), ids), atol=1e-5, rtol=0)
    diff = (got - logits_of(model, ids)).abs()
    largest, mean = TOLERANCE[dtype]
    assert diff.max() < largest and diff.mean() < mean, (diff.max(), diff.mean())
    assert path.stat().st_size < export_gguf(pruned, tmp_path / "model-f16.gguf").stat().st_size


def test_tensor_types_follow_llama_cpp(tmp_path):
    """Norms, 1-D tensors and biases f32; a tied embedding is the head (q8_0 in a q4_0 file); rows
    that are not whole 32-value blocks fall back to f16, and such a file still loads."""
    from gguf import GGMLQuantizationType as T

    assert tensor_type("blk.0.attn_q.bias", (32,), "q4_0") == T.F32
    assert tensor_type("blk.0.ffn_norm.weight", (32,), "q8_0") == T.F32
    assert tensor_type("blk.0.attn_q.weight", (32, 32), "f32") == T.F32
    assert tensor_type("blk.0.attn_q.weight", (32, 32), "f16") == T.F16
    assert tensor_type("token_embd.weight", (384, 32), "q4_0") == T.Q4_0
    assert tensor_type("token_embd.weight", (384, 32), "q4_0", tied=True) == T.Q8_0
    assert tensor_type("blk.0.ffn_down.weight", (32, 48), "q8_0") == T.F16

    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=384, num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(tmp_path / "ckpt")
    tiny_tokenizer().save_pretrained(tmp_path / "ckpt")
    path = export_gguf(tmp_path / "ckpt", tmp_path / "odd.gguf", dtype="q4_0")
    kinds = {t.name: t.tensor_type for t in open_gguf(path).tensors}
    assert "output.weight" not in kinds and kinds["token_embd.weight"] == T.Q8_0  # tied: the head
    assert kinds["blk.0.ffn_down.weight"] == T.F16 and kinds["blk.0.ffn_up.weight"] == T.Q4_0  # 48 vs 32 per row
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    torch.testing.assert_close(logits_of(from_gguf(path), ids), logits_of(rounded_like(tmp_path / "ckpt", "q4_0"), ids),
                               atol=1e-5, rtol=0)


def test_the_export_dtypes_are_the_config_choices():
    from typing import get_args

    from coopprune.config import ExportParams, Params

    assert set(get_args(ExportParams.model_fields["dtype"].annotation)) == set(DTYPES)
    assert Params.from_dict({"export": {"dtype": "q4_0"}}).export.dtype == "q4_0"
    with pytest.raises(CoopPruneError, match=r"^params: export.dtype: Input should be 'f16', 'f32', 'q8_0' or 'q4_0'$"):
        Params.from_dict({"export": {"dtype": "q4_k"}})


def test_facts_name_the_bundled_default_by_its_real_name() -> None:
    """``pruning.json`` keeps the alias the checkpoint reloads by; the GGUF a user serves says what it is."""
    facts = record_facts({"base_model": "default", "method": "sleb", "removed_layers": [1], "extra": 1})
    assert facts["base_model"].startswith("HuggingFaceTB/SmolLM2-135M-Instruct") and "extra" not in facts
    assert record_facts({"base_model": "org/model"})["base_model"] == "org/model"


@pytest.mark.parametrize("dtype", ["q8_0", "q4_0"])
def test_pruning_a_quantized_gguf_equals_pruning_its_dequantized_model(tmp_path, dtype):
    """Quantize, then prune: an unpruned checkpoint exported in q8_0 / q4_0, pruned as a GGUF."""
    base = save_tiny(tmp_path / "base", "llama", n_layers=5)
    quantized = export_gguf(base, tmp_path / f"base-{dtype}.gguf", dtype=dtype)
    out = prune_gguf(quantized, REMOVED, tmp_path / f"pruned-{dtype}.gguf", facts={"method": "sleb"})

    reader, source = open_gguf(out), open_gguf(quantized)
    assert reader.get_field("llama.block_count").contents() == 3
    types = {t.name: t.tensor_type for t in source.tensors}
    assert types["blk.2.attn_q.weight"].name == dtype.upper() and types["output.weight"].name == "Q8_0"
    assert {t.name: t.tensor_type for t in reader.tensors} == {n: k for n, k in types.items() if not n.startswith(("blk.3.", "blk.4."))}
    moved = {t.name: np.array(t.data) for t in reader.tensors}
    original = {t.name: np.array(t.data) for t in source.tensors}
    assert np.array_equal(moved["blk.1.attn_q.weight"], original["blk.2.attn_q.weight"])  # bytes, renumbered
    assert np.array_equal(moved["blk.2.ffn_down.weight"], original["blk.4.ffn_down.weight"])
    assert read_facts(out) == {"source_block_count": 5, "method": "sleb", "removed_layers": REMOVED}

    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    dequantized = from_gguf(quantized)
    del dequantized.model.layers[3], dequantized.model.layers[1]
    dequantized.config.num_hidden_layers = 3
    for i, layer in enumerate(dequantized.model.layers):
        layer.self_attn.layer_idx = i
    torch.testing.assert_close(logits_of(from_gguf(out), ids), logits_of(dequantized, ids), atol=0, rtol=0)


def test_per_layer_metadata_arrays_lose_the_removed_entries(tmp_path):
    from gguf import GGUFWriter

    src = export_gguf(save_tiny(tmp_path / "base", "llama", n_layers=4), tmp_path / "base.gguf", dtype="f32")
    reader = open_gguf(src)
    writer = GGUFWriter(str(tmp_path / "arrays.gguf"), "llama")
    for field in reader.fields.values():
        if field.name == "llama.feed_forward_length":  # per-layer FFN sizes, as OpenELM-style files have
            writer.add_array(field.name, [64, 65, 66, 67])
        elif field.name != "general.architecture" and not field.name.startswith("GGUF."):
            copy_field(writer, field)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.array(tensor.data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out = prune_gguf(tmp_path / "arrays.gguf", [0, 2], tmp_path / "pruned.gguf")
    assert open_gguf(out).get_field("llama.feed_forward_length").contents() == [65, 67]


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    base = save_tiny(tmp_path / "base", "llama", n_layers=4)
    src = export_gguf(base, tmp_path / "base.gguf", dtype="f32")
    dst = tmp_path / "out.gguf"
    for removed, message in (([4], r"outside the 4 blocks"), ([0, 1, 2, 3], "between 1 and 3"), ([], "between 1 and 3")):
        with pytest.raises(CoopPruneError, match=message):
            prune_gguf(src, removed, dst)
    with pytest.raises(CoopPruneError, match="exists"):
        prune_gguf(src, [1], src)
    with pytest.raises(CoopPruneError, match="exists"):
        export_gguf(base, src)
    with pytest.raises(CoopPruneError, match="must be a .gguf"):
        prune_gguf(src, [1], tmp_path / "out.bin")
    with pytest.raises(CoopPruneError, match="not a GGUF"):
        prune_gguf(base / "config.json", [1], dst)
    with pytest.raises(CoopPruneError, match="dtype must be"):
        export_gguf(base, dst, dtype="q4")
    gpt2 = save_tiny(tmp_path / "gpt2", "gpt2", n_layers=2)
    with pytest.raises(CoopPruneError, match="cannot export a 'gpt2'"):
        export_gguf(gpt2, dst)

    from gguf import GGUFWriter

    writer = GGUFWriter(str(tmp_path / "gemma2.gguf"), "gemma2")  # blocks alternate sliding windows by index
    writer.add_block_count(4)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CoopPruneError, match="cannot renumber the blocks of a 'gemma2'"):
        prune_gguf(tmp_path / "gemma2.gguf", [1], dst)
    assert not dst.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert json.loads((base / "config.json").read_text())["num_hidden_layers"] == 4


def test_the_cli_prunes_a_gguf_like_a_checkpoint_and_exports_one(pruned, tmp_path):
    from test_cli import assert_user_error, cli

    base = Path(json.loads((pruned / "pruning.json").read_text())["base_model"])
    src = export_gguf(base, tmp_path / "base.gguf", dtype="f32")
    result = cli("export-gguf", str(src), "--out", str(tmp_path / "a.gguf"), "--like", str(pruned))
    assert result.returncode == 0, result.stderr
    facts = read_facts(tmp_path / "a.gguf")
    assert facts["removed_layers"] == REMOVED and facts["method"] == "game-search" and facts["source_block_count"] == 5
    result = cli("export-gguf", str(pruned), "--out", str(tmp_path / "b.gguf"), "--dtype", "f32")
    assert result.returncode == 0, result.stderr
    ids = torch.tensor([[5, 17, 42, 99]])
    torch.testing.assert_close(logits_of(from_gguf(tmp_path / "a.gguf"), ids), logits_of(from_gguf(tmp_path / "b.gguf"), ids),
                               atol=1e-5, rtol=0)  # both ways give the same model

    for args, message in (([str(src), "--out", str(tmp_path / "c.gguf")], "exactly one of --remove"),
                          ([str(src), "--out", str(tmp_path / "c.gguf"), "--remove", "1,x"], "comma-separated"),
                          ([str(pruned), "--out", str(tmp_path / "c.gguf"), "--remove", "1"], "apply to a GGUF source"),
                          ([str(pruned), "--out", str(tmp_path / "c.gguf"), "--dtype", "q4"], "dtype must be one of f16, f32, q8_0, q4_0"),
                          ([str(src), "--out", str(tmp_path / "a.gguf"), "--remove", "1"], "exists")):
        assert_user_error(cli("export-gguf", *args), message)
    assert not (tmp_path / "c.gguf").exists()


def test_the_export_stage_prunes_a_gguf_base_as_is(tmp_path):
    """A run whose base model is a GGUF gets that file pruned (its tensor types kept), not a re-export."""
    from coopprune import pipeline
    from coopprune.config import Params

    base = save_tiny(tmp_path / "base", "llama", n_layers=5)
    source = export_gguf(base, tmp_path / "tiny.Q8_0.gguf", dtype="q8_0")
    loaded = load_model(str(source))
    before = count_parameters(loaded.model)
    removed = prune_layers(loaded, REMOVED)
    save_pruned(loaded, tmp_path / "run" / "pruned", make_record(loaded, removed, "sleb", before))
    params = Params.from_dict({"model": {"source": str(source)}, "output_dir": str(tmp_path / "run")})
    (tmp_path / "run" / "gguf").mkdir()
    (tmp_path / "run" / "gguf" / "old-name.gguf").write_bytes(b"GGUF")  # an earlier run's file goes
    result = run_stage(params, "export")
    out = Path(result["path"])
    assert out.name == "tiny-pruned.Q8_0.gguf" and "quantization kept" in result["how"]
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    assert read_facts(out)["removed_layers"] == REMOVED and read_facts(out)["method"] == "sleb"
    kinds = {t.name: t.tensor_type for t in open_gguf(out).tensors}
    assert kinds["blk.0.attn_q.weight"] == {t.name: t.tensor_type for t in open_gguf(source).tensors}["blk.0.attn_q.weight"]
