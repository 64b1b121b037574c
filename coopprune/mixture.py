"""What to calibrate on: one text source, or a weighted mixture of named domains and sources, as token windows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedTokenizerBase

from coopprune.calibration import Windows, allocate, calibration_windows, ids_fingerprint, load_texts
from coopprune.domains import DOMAINS
from coopprune.errors import CoopPruneError

if TYPE_CHECKING:
    from coopprune.config import CalibrationParams


@dataclass(frozen=True)
class Calibration:
    """What to calibrate on: one text source, or a weighted mixture of named domains and sources.

    A mixture's windows are drawn per part (``allocate``: equal weights, equal tokens), each with
    :func:`calibration_windows` on that part's calibration documents (a bundled domain's
    calibration pool, never its held-out documents), and stacked part by part with each window's
    part in ``Windows.groups``. One source is read exactly as before the mixtures existed.
    """

    parts: tuple[tuple[str, float], ...]
    n_windows: int
    window: int
    seed: int
    mixture: bool = False

    @classmethod
    def from_params(cls, params: CalibrationParams) -> Calibration:
        parts = tuple(params.mix.items()) if params.mix else ((params.source, 1.0),)
        return cls(parts, params.n_windows, params.window, params.seed, mixture=bool(params.mix))

    @property
    def label(self) -> str:
        if not self.mixture:
            return self.parts[0][0]
        return "mix(" + ", ".join(f"{name}={weight:g}" for name, weight in self.parts) + ")"

    def documents(self) -> list[tuple[str, list[str]]]:
        """Every part's calibration documents, read and checked (no part may be empty): call it
        before loading a model, so a bad source fails first."""
        out = []
        for name, weight in self.parts:
            if weight == 0:
                continue
            docs = DOMAINS[name].texts("calibration") if self.mixture and name in DOMAINS else load_texts(name)
            if not docs:
                raise CoopPruneError(f"calibration text is empty: {name}")
            out.append((name, docs))
        return out

    def windows(self, tokenizer: PreTrainedTokenizerBase,
                documents: list[tuple[str, list[str]]] | None = None) -> Windows:
        documents = documents if documents is not None else self.documents()
        if not self.mixture:
            return calibration_windows(tokenizer, documents[0][1], self.n_windows, self.window, self.seed)
        weights = [w for _, w in self.parts if w != 0]
        counts = allocate(weights, self.n_windows)
        chunks, groups = [], []
        for (name, docs), n in zip(documents, counts, strict=True):
            if n:
                chunks.append(calibration_windows(tokenizer, docs, n, self.window, self.seed).input_ids)
                groups += [name] * n
        ids = torch.cat(chunks)
        return Windows(ids, ids_fingerprint(ids), tuple(groups))
