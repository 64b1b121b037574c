"""Contribution estimators share one interface (like shapiq's approximators), so the CLI, the
flows and the benchmarks treat every method, the paper's and the peers', alike."""

from __future__ import annotations

import csv
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from coopprune.atomic import atomic_path
from coopprune.errors import CoopPruneError
from coopprune.game import LayerGame


@dataclass
class Contributions:
    """Per-layer contribution (higher = more important) and what it cost to estimate."""

    method: str
    values: np.ndarray
    evaluations: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "values": [None if not np.isfinite(v) else float(v) for v in self.values],
            "evaluations": self.evaluations,
            "seconds": round(self.seconds, 3),
            **self.details,
        }

    def save_csv(self, path: str | Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["layer", "contribution", "rank"])
            ranks = np.argsort(np.argsort(np.nan_to_num(self.values, nan=np.inf)))
            for i, v in enumerate(self.values):
                writer.writerow([i, float(v), int(ranks[i])])


class Estimator(ABC):
    """Estimates every player's contribution in a game within a budget of real evaluations."""

    name: ClassVar[str]

    def estimate(self, game: LayerGame, budget: int | None = None, seed: int = 0) -> Contributions:
        start, used = time.perf_counter(), game.evaluations
        values, details = self._estimate(game, budget, seed)
        return Contributions(self.name, values, game.evaluations - used, time.perf_counter() - start, details)

    @abstractmethod
    def _estimate(self, game: LayerGame, budget: int | None, seed: int) -> tuple[np.ndarray, dict[str, Any]]: ...


ESTIMATORS: dict[str, type[Estimator]] = {}


def register(cls: type[Estimator]) -> type[Estimator]:
    ESTIMATORS[cls.name] = cls
    return cls


def get_estimator(name: str) -> Estimator:
    try:
        return ESTIMATORS[name]()
    except KeyError:
        raise CoopPruneError(f"unknown method '{name}'; choose one of {', '.join(sorted(ESTIMATORS))}") from None
