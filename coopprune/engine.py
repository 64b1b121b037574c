"""Evaluate coalitions (layer masks) on calibration windows, fast.

A dropped layer is skipped, not zeroed: the model runs on a view of its kept layers, which gives
exactly the pruned model's logits and saves the dropped layers' compute. Masks are evaluated in
lexicographic order so consecutive masks share a prefix of decisions; the output of every layer
is cached per depth and the next mask resumes from the deepest layer it shares with the last.
What the logits are reduced to (NLL of the text, or KL to the base model) is the ``objective``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from coopprune.models.architectures import Architecture
from coopprune.objective import NextTokenNLL, Objective, token_nll  # noqa: F401  (token_nll: re-exported)


@dataclass(frozen=True)
class MaskResult:
    """Mean per-token objective of one mask over the calibration windows (NLL, or KL to the base)."""

    loss: float
    tokens: int
    seconds: float

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if math.isfinite(self.loss) and self.loss < 700 else math.inf


class _Replay(nn.Module):
    """Stands in for a layer whose output is already known; proxies the layer's attributes."""

    def __init__(self, layer: nn.Module, output: object) -> None:
        super().__init__()
        self.layer = layer
        self.output = output

    def forward(self, *args: object, **kwargs: object) -> object:
        return self.output

    def __getattr__(self, name: str) -> object:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("layer"), name)


def lexicographic_order(masks: np.ndarray) -> np.ndarray:
    """Order that puts masks sharing long prefixes next to each other (kept-first)."""
    return np.lexsort(~masks.T[::-1]) if len(masks) else np.arange(0)


class MaskEvaluator:
    """Computes the calibration loss of any layer mask on one model.

    ``windows``: LongTensor [N, T] of calibration tokens; ``batch_size`` windows run at once.
    ``share_prefixes=False`` recomputes every mask from the embeddings (used to check and bench).
    ``objective``: next-token NLL (default) or :class:`~coopprune.objective.KLToBase`, whose base
    log-probabilities are computed once per batch, on the first evaluation.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        architecture: Architecture,
        windows: torch.Tensor,
        batch_size: int = 16,
        share_prefixes: bool = True,
        objective: Objective | None = None,
    ) -> None:
        if windows.ndim != 2 or windows.shape[1] < 2:
            raise ValueError("windows must be a [N, T>=2] token tensor")
        self.model = model
        self.architecture = architecture
        self.layers = list(architecture.layers(model))
        self.n_layers = len(self.layers)
        self.batch_size = batch_size
        self.windows = windows.to(model.device)  # once, not per mask
        windows = self.windows
        self.objective = objective or NextTokenNLL()
        self._references: list[object] | None = None
        self.batches = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
        self.tokens = int(windows.shape[0] * (windows.shape[1] - 1))
        self.share_prefixes = share_prefixes
        self._full_loss: float | None = None

    def subset(self, rows: list[int]) -> MaskEvaluator:
        """The same model and objective on some of the windows (``objective.screen_rows``: the
        whole items of choice rows): a cheaper, noisier screen."""
        rows = self.objective.screen_rows(rows)
        return type(self)(self.model, self.architecture, self.windows[rows], self.batch_size,
                          self.share_prefixes, self.objective.subset(rows))

    def references(self) -> list[object]:
        """The objective's per-batch view of the base model (its log-probabilities for KL)."""
        if self._references is None:
            with torch.inference_mode():
                self._references = [
                    self.objective.reference(self.model(input_ids=b, use_cache=False).logits)
                    if self.objective.needs_reference else None
                    for b in self.batches
                ]
        return self._references

    @property
    def n_players(self) -> int:
        """Bits per mask: one per layer here (sublayer evaluators have two)."""
        return self.n_layers

    @property
    def player_names(self) -> list[str]:
        return [f"layer {i}" for i in range(self.n_layers)]

    @property
    def full_loss(self) -> float:
        """Loss of the unpruned model (computed once): the reference every utility divides by."""
        if self._full_loss is None:
            self._full_loss = self.evaluate(np.ones((1, self.n_players), dtype=bool), progress=False)[0].loss
        return self._full_loss

    def evaluate(
        self,
        masks: np.ndarray,
        progress: bool | str = True,
        on_result: Callable[[int, MaskResult], None] | None = None,
    ) -> list[MaskResult]:
        """Loss of each mask (rows of a bool [n, L] array, True = kept), in the input order.

        ``on_result(i, result)`` is called as soon as mask ``i`` is done, so callers can persist
        each result before the next one starts.
        """
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 2 or masks.shape[1] != self.n_players:
            raise ValueError(f"masks must be a bool [n, {self.n_players}] array, got shape {masks.shape}")
        order = lexicographic_order(masks)
        results: list[MaskResult | None] = [None] * len(masks)
        cache: list[dict[int, object]] = [{} for _ in self.batches]
        previous: np.ndarray | None = None
        desc = progress if isinstance(progress, str) else "masks"
        references = self.references()  # before the recorder's hooks go on
        with torch.inference_mode(), self._recording() as recorder:
            for i in tqdm(order, desc=desc, disable=not progress, unit="mask", leave=False):
                mask = masks[i]
                shared = _common_prefix(previous, mask) if self.share_prefixes else 0
                start = time.perf_counter()
                parts = []
                for b, batch in enumerate(self.batches):
                    recorder.target = cache[b]
                    parts.append(self._run(batch, mask, shared, cache[b], references[b]))
                loss = self.objective.combine(parts, self.tokens)
                results[i] = MaskResult(loss=loss, tokens=self.tokens, seconds=time.perf_counter() - start)
                previous = mask
                if on_result is not None:
                    on_result(int(i), results[i])
        return results  # type: ignore[return-value]

    def _run(
        self, input_ids: torch.Tensor, mask: np.ndarray, shared: int, cache: dict[int, object], reference: object
    ) -> object:
        kept = np.flatnonzero(mask).tolist()
        resume = [j for j in kept if j < shared]
        todo = [j for j in kept if j >= shared]
        modules: list[nn.Module] = [self.layers[j] for j in todo]
        indices = list(todo)
        if resume:
            last = resume[-1]
            modules.insert(0, _Replay(self.layers[last], cache[last]))
            indices.insert(0, last)
        # the replay stands where its layer stands in the pruned model (RWKV rescales by depth)
        first_position = len(resume) - 1 if resume else 0
        with self.architecture.stack_view(self.model, modules, indices, first_position=first_position):
            logits = self.model(input_ids=input_ids, use_cache=False).logits
        return self.objective.reduce(logits, input_ids, reference)

    def _recording(self) -> _Recorder:
        return _Recorder(self.layers, enabled=self.share_prefixes)


def _common_prefix(a: np.ndarray | None, b: np.ndarray) -> int:
    if a is None:
        return 0
    diff = np.flatnonzero(a != b)
    return int(diff[0]) if len(diff) else len(b)


class _Recorder:
    """Forward hooks that store each layer's output in the current batch's cache."""

    def __init__(self, layers: Sequence[nn.Module], enabled: bool) -> None:
        self.layers = layers
        self.enabled = enabled
        self.target: dict[int, object] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> _Recorder:
        if self.enabled:
            for j, layer in enumerate(self.layers):
                self._handles.append(layer.register_forward_hook(self._hook(j)))
        return self

    def _hook(self, j: int) -> Callable[..., None]:
        def store(module: nn.Module, args: object, output: object) -> None:
            self.target[j] = output

        return store

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def masks_from_kept(kept_sets: Iterable[Sequence[int]], n_layers: int) -> np.ndarray:
    """Bool [n, L] masks from lists of kept layer indices."""
    rows = []
    for kept in kept_sets:
        row = np.zeros(n_layers, dtype=bool)
        row[list(kept)] = True
        rows.append(row)
    return np.stack(rows) if rows else np.zeros((0, n_layers), dtype=bool)
