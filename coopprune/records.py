"""``pruning.json``: the record a pruned checkpoint carries of what was removed, from what, and why;
``decision.json``: what a decision-only run chose, before any checkpoint exists.

:class:`PruningRecord` and :class:`Decision` are the one reader and writer of their files:
``save`` writes, ``load`` reads back (save, load, save gives the same bytes), and every other
module names the files by :data:`PRUNING_FILE` and :data:`DECISION_FILE`. The JSON is the
dataclass's fields in their order, so files written by any earlier version load unchanged.

Only the standard library at import time: fetch, GGUF export and the registry read records
without importing torch.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import coopprune
from coopprune.atomic import write_json
from coopprune.errors import CoopPruneError

PRUNING_FILE = "pruning.json"
DECISION_FILE = "decision.json"
#: Beside it, from a method that reads its contributions off real evaluations (coopprune.attribution).
ATTRIBUTION_FILE = "attribution.json"
INTERACTIONS_FILE = "interactions.png"


def _versions() -> dict[str, str]:
    """The versions that produced a record (torch and transformers imported only when one is made)."""
    import torch
    import transformers

    return {
        "coopprune": coopprune.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def named_players(scores: dict[str, Any] | None, removed: list[Any]) -> list[Any]:
    """The removed players as a record names them: for sublayer players their names (``scores``
    says which halves), else the removed layer indices."""
    return list((scores or {}).get("removed_players") or removed)


@dataclass
class PruningRecord:
    """``pruning.json``: everything needed to know what was removed, from what, and why."""

    base_model: str
    base_fingerprint: str
    removed_layers: list[int]
    kept_layers: list[int]
    layers_before: int
    layers_after: int
    parameters_before: int
    parameters_after: int
    method: str
    scores: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=_versions)
    created: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    def save(self, folder: str | Path) -> Path:
        """Write ``<folder>/pruning.json`` atomically; returns its path."""
        path = Path(folder) / PRUNING_FILE
        write_json(path, asdict(self))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> PruningRecord:
        """The record of the checkpoint in ``folder``; a one-line error when it has none or it is
        damaged (every field must be there: a record never gets today's versions or date)."""
        return _load(cls, Path(folder) / PRUNING_FILE)

    @property
    def players(self) -> list[Any]:
        """The removed players: layer indices, or sublayer names for sublayer players."""
        return named_players(self.scores, self.removed_layers)

    @classmethod
    def load_if_present(cls, folder: str | Path) -> PruningRecord | None:
        """:meth:`load`, or None for a folder without a record (a checkpoint that was never pruned)."""
        return cls.load(folder) if (Path(folder) / PRUNING_FILE).is_file() else None


@dataclass
class Decision:
    """``decision.json``: the players a decision-only run chose to remove (the ``contributions``
    stage), for ``apply_decision`` to prune later and for the seed spread to compare."""

    method: str
    removed_players: list[Any]  # layer indices, or sublayer names
    sublayers: bool
    base_fingerprint: str
    scores: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def players(self) -> list[Any]:
        """The removed players as the pruned checkpoint will record them."""
        return named_players(self.scores, self.removed_players)

    def save(self, folder: str | Path) -> Path:
        """Write ``<folder>/decision.json`` atomically; returns its path."""
        path = Path(folder) / DECISION_FILE
        write_json(path, asdict(self))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Decision:
        """The decision in ``folder``; a one-line error when it has none or it is damaged."""
        return _load(cls, Path(folder) / DECISION_FILE)


def _load(cls: type, path: Path) -> Any:
    """A record dataclass from its JSON file, every field required, errors in one line."""
    if not path.is_file():
        raise CoopPruneError(f"no {path.name} in {path.parent}")
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        missing = [f.name for f in fields(cls) if f.name not in data]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        return cls(**data)
    except (OSError, ValueError, TypeError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CoopPruneError(f"corrupt {path}: {detail}") from None
