"""Hidden states of the decoder layers on the calibration windows, for the similarity-based peers
(ShortGPT's Block Influence, Gromov et al.'s angular distance).

States are taken with hooks on the layer modules, not with ``output_hidden_states``: many models
apply the final norm to the last entry of ``hidden_states``, which would make the last layer look
unlike its input for a reason that has nothing to do with the layer. Statistics are reduced while
the forward pass runs, so only the few states a statistic still needs are held at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from coopprune.engine import MaskEvaluator
from coopprune.errors import CoopPruneError
from coopprune.game import LayerGame

#: ``on_layer(j, input, output)``: the hidden states [B, T, H] entering and leaving player ``j``.
LayerIO = Callable[[int, torch.Tensor, torch.Tensor], None]


def _hidden(output: object) -> torch.Tensor:
    """A layer's hidden-state output: a tensor, or the first entry of a tuple / ModelOutput."""
    return output if isinstance(output, torch.Tensor) else output[0]  # type: ignore[index]


def _layer_evaluator(game: LayerGame) -> MaskEvaluator:
    """The game's evaluator, if its players are whole layers of a model (hidden states exist per player)."""
    evaluator = getattr(game, "evaluator", None)
    if not isinstance(evaluator, MaskEvaluator) or evaluator.n_players != evaluator.n_layers:
        raise CoopPruneError("similarity methods (bi, angular) need a game whose players are the layers of a model")
    return evaluator


def stream_layer_io(game: LayerGame, on_layer: LayerIO) -> None:
    """Run the game's model over every calibration batch, calling ``on_layer`` once per layer and batch.

    Only the layers the game plays over run (``game.layers``): for a subgame of a pruned model the
    states are those of the pruned model. Layers are reported in order within each batch. The
    input is cloned, so a layer that updates its input in place cannot corrupt the comparison.
    """
    evaluator = _layer_evaluator(game)
    modules = [evaluator.layers[i] for i in game.layers]
    inputs: dict[int, torch.Tensor] = {}

    def before(j: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
            state = args[0] if args else kwargs["hidden_states"]
            inputs[j] = state.clone()  # type: ignore[union-attr]

        return hook

    def after(j: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[object, ...], output: object) -> None:
            on_layer(j, inputs.pop(j), _hidden(output))

        return hook

    handles = []
    try:
        for j, module in enumerate(modules):
            handles.append(module.register_forward_pre_hook(before(j), with_kwargs=True))
            handles.append(module.register_forward_hook(after(j)))
        device = evaluator.model.device
        with torch.inference_mode(), evaluator.architecture.stack_view(evaluator.model, modules, game.layers):
            for batch in evaluator.batches:
                evaluator.model(input_ids=batch.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()


def angle(cosine: torch.Tensor) -> torch.Tensor:
    """Angular distance in [0, 1] from a cosine similarity (Gromov et al.'s ``arccos(cos) / pi``)."""
    return torch.arccos(cosine.clamp(-1.0, 1.0)) / math.pi


def span_statistic(
    game: LayerGame, span: int, of_cosine: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> np.ndarray:
    """Mean over every calibration token of ``of_cosine(cos(x_l, x_{l+span}))``, for l = 0..n-span.

    ``x_l`` is the input of player ``l`` and ``x_{l+span}`` the output of player ``l+span-1``, so
    ``span=1`` compares each layer's input with its own output (Block Influence) and larger spans
    compare the residual stream across a block of ``span`` consecutive players. At most ``span``
    inputs are held at a time. One forward pass over the calibration set; the caller charges it.
    """
    n = game.n_players
    if not 1 <= span <= n:
        raise ValueError(f"span must be between 1 and {n} players, got {span}")
    totals = torch.zeros(n - span + 1, dtype=torch.float64)
    starts: dict[int, torch.Tensor] = {}

    def on_layer(j: int, x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        starts[j] = x_in
        first = j - span + 1
        if first >= 0:
            cosine = nn.functional.cosine_similarity(starts.pop(first).float(), x_out.float(), dim=-1)
            stat = cosine if of_cosine is None else of_cosine(cosine)
            totals[first] += stat.double().sum().cpu()

    stream_layer_io(game, on_layer)
    tokens = sum(batch.numel() for batch in _layer_evaluator(game).batches)
    return (totals / tokens).numpy()
