"""Remove layers for good and save a checkpoint that plain ``from_pretrained`` loads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from coopprune.atomic import atomic_dir
from coopprune.errors import CoopPruneError
from coopprune.models import LoadedModel
from coopprune.quantize import has_quantized_layers, write_quantized
from coopprune.records import PruningRecord
from coopprune.sampling import normalize_layers


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def check_output_dir(out_dir: str | Path, overwrite: bool) -> Path:
    """Fail before any work if the output exists (runs are long; find out first)."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise CoopPruneError(f"output folder exists: {out} (pass --overwrite to replace it)")
    return out


def prune_layers(loaded: LoadedModel, removed: Sequence[int]) -> list[int]:
    """Remove ``removed`` (original indices) from the model in place; returns them sorted."""
    n = loaded.num_layers
    removed = list(normalize_layers(removed, n, what="layer"))
    if not 1 <= len(removed) < n:
        raise CoopPruneError(f"must remove between 1 and {n - 1} layers, got {len(removed)}")
    loaded.architecture.remove_layers(loaded.model, removed)
    return removed


def save_pruned(
    loaded: LoadedModel,
    out_dir: str | Path,
    record: PruningRecord,
    overwrite: bool = False,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write weights (safetensors), config, tokenizer and ``pruning.json`` into ``out_dir`` atomically.

    ``extra(folder)`` may add files (reports) that appear together with the checkpoint or not at all.
    """
    out = check_output_dir(out_dir, overwrite)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if has_quantized_layers(loaded.model):  # int8 layers need their own safetensors layout
            write_quantized(loaded.model, loaded.tokenizer, Path(tmp))
        else:
            loaded.architecture.canonicalize(loaded.model)  # RWKV: undo its in-place inference rescaling
            loaded.model.save_pretrained(tmp, safe_serialization=True)
            loaded.tokenizer.save_pretrained(tmp)
        record.save(tmp)
        if extra is not None:
            extra(Path(tmp))
    return out


def make_record(loaded: LoadedModel, removed: list[int], method: str, parameters_before: int, **extra: Any) -> PruningRecord:
    """Record for a model that has just had ``removed`` taken out."""
    before = len(removed) + loaded.num_layers
    return PruningRecord(
        base_model=loaded.source,
        base_fingerprint=loaded.fingerprint,
        removed_layers=removed,
        kept_layers=[i for i in range(before) if i not in set(removed)],
        layers_before=before,
        layers_after=loaded.num_layers,
        parameters_before=parameters_before,
        parameters_after=count_parameters(loaded.model),
        method=method,
        **extra,
    )
