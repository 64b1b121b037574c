"""``pruning.json``: the record a pruned checkpoint carries of what was removed, from what, and why.

:class:`PruningRecord` is the one reader and writer of that file: :meth:`PruningRecord.save`
writes it, :meth:`PruningRecord.load` reads it back (save, load, save gives the same bytes), and
every other module names the file by :data:`PRUNING_FILE`. The JSON is the dataclass's fields in
their order, so checkpoints written by any earlier version load unchanged.

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
        path = Path(folder) / PRUNING_FILE
        if not path.is_file():
            raise CoopPruneError(f"no {PRUNING_FILE} in {folder}")
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

    @classmethod
    def load_if_present(cls, folder: str | Path) -> PruningRecord | None:
        """:meth:`load`, or None for a folder without a record (a checkpoint that was never pruned)."""
        return cls.load(folder) if (Path(folder) / PRUNING_FILE).is_file() else None
