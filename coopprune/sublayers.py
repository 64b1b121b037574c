"""Sublayer players (beyond the paper; BlockPruner and FinerCut show the finer grain wins): the
attention and the MLP of every layer are separate players, 2L in all, ordered
``[attn 0, mlp 0, attn 1, mlp 1, ...]``.

A dropped sublayer is an identity on the residual stream. During evaluation it is replaced by a
stand-in that returns zeros without computing anything; a layer with both halves dropped is
skipped like a dropped layer, so prefix sharing works unchanged (in whole layers).

Checkpoints: transformers configs cannot express a layer without its attention or its MLP. A
layer with both halves dropped is removed for real; a half-dropped layer is saved with that
half's output projection zeroed (weights and bias), which is exactly an identity on the residual
stream and loads with plain ``from_pretrained``, but its dead weights still take space on disk.
``pruning.json`` says so and counts parameters removed both ways.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from coopprune.engine import MaskEvaluator
from coopprune.errors import CoopPruneError
from coopprune.models.architectures import Architecture
from coopprune.models.architectures.base import splittable_model_types

KINDS = ("attn", "mlp")


def check_sublayers(architecture: Architecture) -> None:
    """One-line error for families whose layers cannot be split into attention and MLP."""
    if len(architecture.sublayers) != 2:
        raise CoopPruneError(
            f"sublayer players are not supported for {architecture.name} (its layers are not attention + MLP); "
            f"supported: {', '.join(splittable_model_types())}"
        )


def sublayer_names(layers: Sequence[int]) -> list[str]:
    return [f"{kind} {i}" for i in layers for kind in KINDS]


def layer_mask(sublayer_mask: np.ndarray) -> np.ndarray:
    """Layers with at least one kept half (the rest are skipped outright)."""
    return np.asarray(sublayer_mask, dtype=bool).reshape(-1, 2).any(axis=1)


class _Identity(nn.Module):
    """Stands in for a dropped attention/MLP: a zero update, nothing computed."""

    def __init__(self, returns_tuple: bool) -> None:
        super().__init__()
        self.returns_tuple = returns_tuple

    def forward(self, *args: object, **kwargs: object) -> object:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        assert isinstance(hidden, torch.Tensor)
        zeros = torch.zeros_like(hidden)
        return (zeros, None) if self.returns_tuple else zeros


class SublayerEvaluator(MaskEvaluator):
    """A :class:`MaskEvaluator` whose masks have one bit per sublayer: bool [n, 2L]."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        check_sublayers(self.architecture)

    @property
    def n_players(self) -> int:
        return 2 * self.n_layers

    @property
    def player_names(self) -> list[str]:
        return sublayer_names(range(self.n_layers))

    def _run(
        self, input_ids: torch.Tensor, mask: np.ndarray, shared: int, cache: dict[int, object], reference: object
    ) -> float:
        with self._stand_ins(np.asarray(mask, dtype=bool).reshape(-1, 2)):
            return super()._run(input_ids, layer_mask(mask), shared // 2, cache, reference)

    @contextlib.contextmanager
    def _stand_ins(self, pairs: np.ndarray) -> Iterator[None]:
        swapped: list[tuple[nn.Module, str, nn.Module]] = []
        try:
            for j, (attn, mlp) in enumerate(pairs):
                if attn == mlp:
                    continue  # both kept: the real layer; both dropped: skipped
                attr, _, returns_tuple = self.architecture.sublayers[0 if not attn else 1]
                layer = self.layers[j]
                swapped.append((layer, attr, getattr(layer, attr)))
                setattr(layer, attr, _Identity(returns_tuple))
            yield
        finally:
            for layer, attr, original in reversed(swapped):
                setattr(layer, attr, original)


def _module(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def sublayer_parameters(model: PreTrainedModel, architecture: Architecture) -> list[int]:
    """Parameters of each sublayer player, ``[attn 0, mlp 0, ...]``: the cost side of the budget."""
    check_sublayers(architecture)
    counts = []
    for layer in architecture.layers(model):
        for attr, _, _ in architecture.sublayers:
            counts.append(sum(p.numel() for p in _module(layer, attr).parameters()))
    return counts


def zero_half_layers(model: PreTrainedModel, architecture: Architecture, dropped: Sequence[int]) -> list[int]:
    """Zero the output projection of every dropped sublayer whose layer keeps its other half.

    Returns the layers that lose both halves (to be removed for real by the caller).
    """
    check_sublayers(architecture)
    dropped_set = set(dropped)
    layers = architecture.layers(model)
    whole = []
    for j, layer in enumerate(layers):
        halves = [2 * j + h in dropped_set for h in range(2)]
        if all(halves):
            whole.append(j)
            continue
        for h, is_dropped in enumerate(halves):
            if is_dropped:
                projection = _module(layer, architecture.sublayers[h][1])
                with torch.no_grad():
                    for p in projection.parameters(recurse=False):
                        p.zero_()
    return whole
