"""The facts of a release, read from its output folder once (:class:`Release`); nothing is
measured here, so a card can be rendered again at any time from what a run left:

- ``pruned/pruning.json``: removed layers, the method, its rounds (``scores.rounds``) and, for a
  set search (``game-search``), ``details.search`` with the trace, the peers' seed sets and the
  confirmed / refined sets of a multi-fidelity search;
- ``pruned/contributions.csv``: contributions with their intervals (``contributions.png`` and
  ``interactions.png`` beside it are embedded by :mod:`coopprune.card.sections`);
- ``pruned/attribution.json`` where present (the interaction analysis: its ``summary``,
  ``warnings`` and ``fit``);
- ``metrics.json`` (and ``heal_metrics.json`` from DVC's heal stage): scores before and after;
- ``benchmark/speed.json``: the speed-up, a median ratio over interleaved pairs with its spread
  (never two absolute figures taken at different moments);
- ``healed/healing.json``, ``gguf/``, ``gguf-patched/`` and ``gguf-healed/``: healing and exports, if any;
- ``data.json``: the calibration and evaluation text and their fingerprints;
- ``stability.json``: the removed sets of the decision repeated on other calibration seeds, where
  that step ran for this checkpoint (:func:`coopprune.stability.read_spread`).

Also the card's file names (:func:`card_file`) and the labels a card is for (:data:`LABELS`).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from coopprune.atomic import read_json
from coopprune.errors import CoopPruneError
from coopprune.records import ATTRIBUTION_FILE, PRUNING_FILE, named_players
from coopprune.stability import read_spread

CARD_FILE = "card.html"
LABELS = ("pruned", "patched", "healed")
#: Per-pair speed-ups whose max / min exceed this disagree too much to quote: the machine was busy.
WIDE_SPREAD = 1.25


def card_file(label: str = "pruned") -> str:
    """``card.html`` for the pruned model, ``card-<label>.html`` for the patched or healed one."""
    _check_label(label)
    return CARD_FILE if label == "pruned" else f"card-{label}.html"


def _check_label(label: str) -> None:
    if label not in LABELS:
        raise CoopPruneError(f"a release card is for one of {', '.join(LABELS)}, not '{label}'")


class Release:
    """What a run's output folder holds, read once (missing optional parts are None)."""

    def __init__(self, out_dir: str | Path, label: str = "pruned", exports: list[dict[str, Any]] | None = None):
        _check_label(label)
        self.out, self.label = Path(out_dir), label
        pruned = self.out / "pruned"
        record = read_json(pruned / PRUNING_FILE)
        if record is None:
            raise CoopPruneError(f"no {PRUNING_FILE} in {pruned}: nothing to make a card of")
        self.record: dict[str, Any] = record
        self.pruned_dir = pruned
        self.metrics: dict[str, Any] = dict(read_json(self.out / "metrics.json") or {})
        heal_metrics = read_json(self.out / "heal_metrics.json") or {}
        for key, value in heal_metrics.items():  # DVC's heal stage keeps the healed scores apart
            self.metrics.setdefault(key, value)
        self.speed: dict[str, Any] | None = read_json(self.out / "benchmark" / "speed.json")
        self.data: dict[str, Any] = read_json(self.out / "data.json") or {}
        self.spread: dict[str, Any] | None = read_spread(self.out)
        healing = read_json(self.out / "healed" / "healing.json")
        self.healing: dict[str, Any] | None = healing if healing and healing.get("enabled", True) else None
        if label == "healed" and self.healing is None:
            raise CoopPruneError(f"no healed model in {self.out} (healed/healing.json): no healed card")
        self.attribution: dict[str, Any] | None = read_json(pruned / ATTRIBUTION_FILE)
        self.contributions = _read_csv(pruned / "contributions.csv")
        self.exports = exports if exports is not None else _find_exports(self.out)
        self.benchmarks = {lab: read_json(self.out / "benchmark" / f"{lab}.json") or {} for lab in ("base", *LABELS)}

    # -- facts
    @property
    def model_name(self) -> str:
        from coopprune.naming import DEFAULT_MODEL_NAME, short_model_name

        source = str(self.record.get("base_model", "model"))
        return DEFAULT_MODEL_NAME if source == "default" else short_model_name(source)

    @property
    def removed(self) -> list[Any]:
        """The removed players: layer indices, or sublayer names for sublayer players."""
        return named_players(self.record.get("scores"), self.record.get("removed_layers") or [])

    @property
    def searches(self) -> list[dict[str, Any]]:
        """Each round's ``details.search`` (a set searcher's), in round order."""
        rounds = (self.record.get("scores") or {}).get("rounds") or []
        return [r["search"] for r in rounds if isinstance(r.get("search"), dict)]

    @property
    def sublayers(self) -> bool:
        return (self.record.get("scores") or {}).get("players") == "sublayers"

    def out_of(self) -> str:
        """``6 of 30 layers`` / ``5 of 60 sublayers``."""
        n = int(self.record.get("layers_before") or 0)
        return f"{len(self.removed)} of {2 * n} sublayers" if self.sublayers else f"{len(self.removed)} of {n} layers"

    def metric(self, label: str, key: str) -> Any:
        return self.metrics.get(f"{label}_{key}")

    @property
    def domains(self) -> list[str]:
        prefix = "base_perplexity_"
        return [k[len(prefix) :] for k in self.metrics if k.startswith(prefix)]

    def speed_summary(self) -> dict[int, dict[str, Any]]:
        if not self.speed:
            return {}
        return {int(b): s for b, s in (self.speed.get("summary") or {}).items()}

    def wide_speed(self) -> list[int]:
        """Batch sizes whose timing pairs disagree by more than :data:`WIDE_SPREAD`."""
        return [
            b
            for b, s in sorted(self.speed_summary().items())
            if s["speedup_min"] > 0 and s["speedup_max"] / s["speedup_min"] > WIDE_SPREAD
        ]


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _find_exports(out: Path) -> list[dict[str, Any]]:
    """The GGUF files under ``gguf/``, ``gguf-patched/`` and ``gguf-healed/``, with how each was made
    where the flow's ``summary.json`` says (a card rendered again later keeps it)."""
    summary = read_json(out / "summary.json") or {}
    how = {
        Path(str(part["gguf"].get("path"))).name: part["gguf"].get("how")
        for part in (summary, *(summary.get(label) or {} for label in LABELS[1:]))
        if isinstance(part, dict) and isinstance(part.get("gguf"), dict)
    }
    found = []
    for label in LABELS:
        for path in sorted((out / ("gguf" if label == "pruned" else f"gguf-{label}")).glob("*.gguf")):
            found.append({"path": str(path), "bytes": path.stat().st_size, "label": label, "how": how.get(path.name)})
    return found
