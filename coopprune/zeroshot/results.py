"""What a zero-shot run returns: each task's accuracies and the subset they cover, their mean, and
the run's settings, as JSON or a small text table.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from coopprune.zeroshot.tasks import Metric


@dataclass(frozen=True)
class TaskResult:
    """One task's accuracies (lm-eval's stderr where it gives one) and the subset they cover."""

    task: str
    metric: Metric
    value: float
    acc: float
    acc_stderr: float | None
    acc_norm: float | None
    acc_norm_stderr: float | None
    n: int
    n_total: int
    items: list[int] = field(repr=False)


@dataclass(frozen=True)
class ZeroShotResult:
    """Per-task results and the unweighted mean of the headline metrics (the paper tables' "Avg")."""

    tasks: dict[str, TaskResult]
    mean: float
    limit: int | None
    seed: int
    num_fewshot: int
    lm_eval_version: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        """A small text table, one task a line."""
        lines = []
        for r in self.tasks.values():
            err = r.acc_norm_stderr if r.metric == "acc_norm" else r.acc_stderr
            pm = f" +/- {err:.3f}" if err is not None else ""
            lines.append(f"{r.task:<14} {r.metric:<8} {r.value:.4f}{pm}  (n={r.n})")
        lines.append(f"{'mean':<14} {'headline':<8} {self.mean:.4f}")
        return "\n".join(lines)


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None  # lm-eval writes "N/A" where it has no stderr
    return None if math.isnan(value) else value
