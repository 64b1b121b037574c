"""Pruned models as GGUF files for llama.cpp, written with gguf-py.

Two ways, one format:

- :func:`prune_gguf` removes blocks from a GGUF directly: the removed blocks' tensors are dropped,
  the rest renumbered, ``<arch>.block_count`` and every per-layer metadata array shortened; tensor
  bytes are copied as they are, so a user prunes the Q4 file they already serve, and no
  dequantize-requantize round trip changes a weight.
- :func:`export_gguf` writes a (pruned or healed) safetensors checkpoint as an f16 / f32 / Q8_0 /
  Q4_0 GGUF, the way llama.cpp's ``convert_hf_to_gguf.py`` lays it out (its tensor names, Llama's
  q/k rows permuted for llama.cpp's rotary layout, norms and biases in f32, a tied head left out),
  quantized with gguf-py's own quantizers (:func:`tensor_type` says which tensor gets which type).

Both record ``pruning.json``'s facts under ``coopprune.*`` keys, so a file says what was removed,
from what, and how it was chosen. Only architectures whose blocks are independent of their index
are renumbered (a Gemma-2 block's sliding window depends on its parity, for instance); anything
else is a one-line error before a byte is written. Reading a GGUF (the checks, metadata values,
the ``coopprune.*`` facts) is :mod:`coopprune.gguf_io`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from coopprune.atomic import atomic_path
from coopprune.errors import CoopPruneError
from coopprune.gguf_io import FACTS, gguf_value, open_gguf
from coopprune.naming import base_model_name, short_model_name
from coopprune.records import PruningRecord

#: GGUF architectures whose blocks only differ by their ``blk.N.`` tensors: safe to drop and renumber.
RENUMBERABLE = ("llama", "qwen2", "qwen3")
#: Checkpoint model types :func:`export_gguf` writes (GGUF architecture of the same name); each is
#: verified by loading the file back (transformers' GGUF loader reads Qwen3 with its default head
#: size only, so Qwen3 waits for a check that does not depend on it).
EXPORTABLE = ("llama", "qwen2")
DTYPES = ("f16", "f32", "q8_0", "q4_0")
#: ``general.file_type`` of each export dtype (a ``gguf.LlamaFileType`` name)
_FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")


def check_output(dst: str | Path, overwrite: bool) -> Path:
    dst = Path(dst)
    if dst.suffix != ".gguf":
        raise CoopPruneError(f"output must be a .gguf file: {dst}")
    if dst.exists() and not overwrite:
        raise CoopPruneError(f"{dst} exists (pass --overwrite to replace it)")
    return dst


def copy_field(writer: Any, field: Any, value: Any = None) -> None:
    """Write a reader's metadata field to ``writer`` with its own type (``value`` replaces its contents)."""
    from gguf import GGUFValueType

    kind = field.types[0]
    writer.add_key_value(field.name, field.contents() if value is None else value, kind,
                         sub_type=field.types[-1] if kind == GGUFValueType.ARRAY else None)


def _add_facts(writer: Any, facts: Mapping[str, Any]) -> None:
    for key, value in facts.items():
        if value is None:
            continue
        name = FACTS + key
        if isinstance(value, bool):
            writer.add_bool(name, value)
        elif isinstance(value, int):
            writer.add_int64(name, value)
        elif isinstance(value, float):
            writer.add_float64(name, value)
        elif isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
            from gguf import GGUFValueType

            # add_array infers the item type from the first item; an empty list needs it named
            writer.add_key_value(name, [int(v) for v in value], GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
        else:
            writer.add_string(name, value if isinstance(value, str) else json.dumps(value))


def record_facts(record: Mapping[str, Any]) -> dict[str, Any]:
    """What of a ``pruning.json`` record travels in a GGUF's metadata."""
    keys = ("base_model", "base_fingerprint", "removed_layers", "method", "layers_before", "layers_after")
    facts = {key: record[key] for key in keys if record.get(key) is not None}
    if "base_model" in facts:  # the real name, not the "default" alias the checkpoint reloads by
        facts["base_model"] = base_model_name(str(facts["base_model"]))
    return facts


def prune_gguf(
    src: str | Path, removed: Iterable[int], dst: str | Path, *, facts: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``src`` without the blocks ``removed`` (original indices) to ``dst``, atomically.

    Tensor data is copied byte for byte in its own quantization; per-layer metadata arrays (those
    of the architecture with one entry per block) lose the removed entries.
    """
    from gguf import GGUFValueType, GGUFWriter, Keys

    dst = check_output(dst, overwrite)
    reader = open_gguf(src)
    arch = str(gguf_value(reader, Keys.General.ARCHITECTURE))
    if arch not in RENUMBERABLE:
        raise CoopPruneError(f"cannot renumber the blocks of a '{arch}' GGUF safely (supported: {', '.join(RENUMBERABLE)})")
    n = int(gguf_value(reader, f"{arch}.block_count"))
    removed = sorted({int(i) for i in removed})
    outside = [i for i in removed if not 0 <= i < n]
    if outside:
        raise CoopPruneError(f"layers {outside} are outside the {n} blocks of {src} (0..{n - 1})")
    if not 1 <= len(removed) < n:
        raise CoopPruneError(f"must remove between 1 and {n - 1} of the {n} blocks, got {len(removed)}")
    kept = [i for i in range(n) if i not in removed]
    renumber = {old: new for new, old in enumerate(kept)}

    with atomic_path(dst) as tmp:
        writer = GGUFWriter(str(tmp), arch, endianess=reader.endianess)
        for field in reader.fields.values():
            if field.name == Keys.General.ARCHITECTURE or field.name.startswith(("GGUF.", FACTS)):
                continue
            value = field.contents()
            if field.name == f"{arch}.block_count":
                value = len(kept)
            elif field.name.startswith(f"{arch}.") and field.types[0] == GGUFValueType.ARRAY and len(value) == n:
                value = [value[i] for i in kept]  # one entry per block (head counts, FFN sizes, ...)
            copy_field(writer, field, value)
        _add_facts(writer, {"source_block_count": n, **(facts or {}), "removed_layers": removed})
        tensors = []
        for tensor in reader.tensors:
            name = tensor.name
            if match := _BLOCK.match(name):
                if int(match[1]) in removed:
                    continue
                name = f"blk.{renumber[int(match[1])]}.{match[2]}"
            writer.add_tensor_info(name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type)
            tensors.append(tensor)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in tensors:
            writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
        writer.close()
    return dst


# ------------------------------------------------------------------------------------ checkpoint -> GGUF


def _permute_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotate-half q/k rows -> llama.cpp's interleaved pairs (``LlamaModel.permute`` upstream)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise CoopPruneError(f"rope scaling '{rope_type}' is not exported to GGUF yet (only plain RoPE)")
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _write_hparams(writer: Any, config: Any, arch: str) -> None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _write_vocab(writer: Any, checkpoint: Path, vocab_from: Path | None, n_vocab: int) -> None:
    """The tokenizer: copied from the GGUF the model came from (exactly what llama.cpp read before,
    pre-tokenizer included), else built from the checkpoint's byte-level BPE tokenizer."""
    from gguf import SpecialVocab
    from gguf.vocab import BpeVocab

    if vocab_from is not None:
        reader = open_gguf(vocab_from)
        for field in reader.fields.values():
            if field.name.startswith("tokenizer."):
                copy_field(writer, field)
        return
    try:
        vocab = BpeVocab(checkpoint)
    except Exception as exc:  # noqa: BLE001 - gguf's vocab readers raise plain exceptions
        raise CoopPruneError(f"cannot export the tokenizer of {checkpoint} (only byte-level BPE, or pass the "
                             f"source GGUF as vocab_from): {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
    tokens, types = [], []
    for text, _score, kind in vocab.all_tokens():
        tokens.append(text)
        types.append(int(kind))
    if len(tokens) < n_vocab:  # the embedding is padded past the tokenizer: llama.cpp wants one entry per row
        tokens += [f"[PAD{i}]".encode() for i in range(len(tokens), n_vocab)]
        types += [5] * (n_vocab - len(types))  # TokenType.UNUSED
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    SpecialVocab(checkpoint, load_merges=True, n_vocab=n_vocab).add_to_gguf(writer, quiet=True)


def tensor_type(name: str, shape: tuple[int, ...], dtype: str, *, tied: bool = False) -> Any:
    """The GGML type of the GGUF tensor ``name`` (of numpy ``shape``) in an export in ``dtype``.

    llama.cpp's conventions: 1-D tensors, norms and anything but a ``.weight`` stay f32
    (``convert_hf_to_gguf.py``); ``q8_0`` quantizes every other matrix, embedding and head included
    (``convert_hf_to_gguf.py --outtype q8_0``); ``q4_0`` (``llama-quantize``'s Q4_0, which the
    converter does not offer) keeps the output head, or the token embedding when it is the tied head,
    at higher precision: Q6_K there, Q8_0 here, since gguf-py cannot quantize K-quants. A matrix whose
    rows are not a whole number of blocks (32 values) falls back to f16, as the converter's does.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if dtype == "f32" or len(shape) < 2 or not name.endswith(".weight") or name.endswith("_norm.weight"):
        return GGMLQuantizationType.F32
    if dtype == "f16":
        return GGMLQuantizationType.F16
    head = name == "output.weight" or (tied and name == "token_embd.weight")
    kind = GGMLQuantizationType.Q8_0 if dtype == "q8_0" or head else GGMLQuantizationType.Q4_0
    return kind if shape[-1] % GGML_QUANT_SIZES[kind][0] == 0 else GGMLQuantizationType.F16


def _checked_weights(checkpoint: Path, dtype: str) -> list[Path]:
    """The checkpoint's safetensors files, after every refusal that needs no model."""
    if dtype not in DTYPES:
        raise CoopPruneError(f"dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
    if not (checkpoint / "config.json").is_file():
        raise CoopPruneError(f"not a checkpoint folder (no config.json): {checkpoint}")
    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise CoopPruneError(f"no safetensors weights in {checkpoint}")
    if (checkpoint / "quantization.json").is_file():
        raise CoopPruneError(f"{checkpoint} is int8-quantized (our own layout): export its float checkpoint")
    return files


def _gguf_tensors(files: list[Path], config: Any, dtype: str) -> list[tuple[str, np.ndarray, Any]]:
    """Every tensor under its GGUF name, in llama.cpp's layout and ``dtype``'s type (a tied output
    head is left out: llama.cpp falls back to the token embedding)."""
    import gguf
    import torch
    from safetensors import safe_open

    arch = config.model_type
    model_arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    names = gguf.get_tensor_name_map(model_arch, config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    tensors: list[tuple[str, np.ndarray, Any]] = []
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            for hf_name in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                if hf_name == "lm_head.weight" and config.tie_word_embeddings:
                    continue
                name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise CoopPruneError(f"no GGUF name for tensor '{hf_name}' of a '{arch}' checkpoint")
                data = weights.get_tensor(hf_name).to(torch.float32).numpy()
                if arch == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
                    data = _permute_rows(data, heads if "q_proj" in hf_name else kv_heads)
                kind = tensor_type(name, data.shape, dtype, tied=bool(config.tie_word_embeddings))
                tensors.append((name, gguf.quants.quantize(data, kind), kind))
    return tensors


def export_gguf(
    checkpoint: str | Path, dst: str | Path, *, dtype: str = "f16", vocab_from: str | Path | None = None,
    overwrite: bool = False, progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> Path:
    """Write a safetensors checkpoint folder as a GGUF at ``dst`` (``f16``: matrices in half
    precision, norms and biases in f32, as llama.cpp's converter does; ``f32``: everything;
    ``q8_0`` / ``q4_0``: matrices quantized, see :func:`tensor_type`)."""
    import gguf
    from transformers import AutoConfig

    checkpoint = Path(checkpoint)
    dst = check_output(dst, overwrite)
    files = _checked_weights(checkpoint, dtype)
    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=False)
    arch = config.model_type
    if arch not in EXPORTABLE:
        raise CoopPruneError(f"cannot export a '{arch}' checkpoint to GGUF yet (supported: {', '.join(EXPORTABLE)})")
    found = PruningRecord.load_if_present(checkpoint)
    record = asdict(found) if found is not None else {}
    tensors = _gguf_tensors(files, config, dtype)

    with atomic_path(dst) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_name(short_model_name(str(record.get("base_model") or checkpoint.name)) + ("-pruned" if record else ""))
        writer.add_file_type(gguf.LlamaFileType[_FILE_TYPES[dtype]])
        _write_hparams(writer, config, arch)
        _write_vocab(writer, checkpoint, Path(vocab_from) if vocab_from else None, config.vocab_size)
        _add_facts(writer, record_facts(record))
        for name, data, kind in tensors:
            writer.add_tensor(name, data, raw_dtype=kind if data.dtype == np.uint8 else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress is not None)
        writer.close()
    return dst
