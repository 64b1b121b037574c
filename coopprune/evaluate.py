"""Perplexity of a (pruned) model on held-out text, with the window convention stated."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from coopprune.calibration import Windows
from coopprune.engine import token_nll
from coopprune.errors import CoopPruneError


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    loss: float
    window: int
    n_windows: int
    tokens: int
    text_fingerprint: str


def max_context(model: PreTrainedModel) -> int | None:
    config = model.config
    for attr in ("max_position_embeddings", "n_positions"):
        if isinstance(getattr(config, attr, None), int):
            return getattr(config, attr)
    return None  # e.g. Mamba: no positional limit


def perplexity(model: PreTrainedModel, windows: Windows, batch_size: int = 8, progress: bool = True) -> PerplexityResult:
    """exp(mean NLL) over every predicted token of non-overlapping windows (no striding)."""
    limit = max_context(model)
    if limit is not None and windows.length > limit:
        raise CoopPruneError(f"window of {windows.length} tokens exceeds the model's context of {limit}")
    ids = windows.input_ids
    nll = 0.0
    with torch.inference_mode():
        for start in tqdm(range(0, len(ids), batch_size), desc="perplexity", disable=not progress, leave=False):
            batch = ids[start : start + batch_size].to(model.device)
            nll += float(token_nll(model(input_ids=batch, use_cache=False).logits, batch))
    tokens = windows.n_windows * (windows.length - 1)
    loss = nll / tokens
    return PerplexityResult(
        perplexity=math.exp(loss) if loss < 700 else math.inf,
        loss=loss,
        window=windows.length,
        n_windows=windows.n_windows,
        tokens=tokens,
        text_fingerprint=windows.fingerprint,
    )
