"""The mask-utility dataset: every real evaluation of a coalition, on disk, never lost or repeated.

Layout of a dataset folder::

    manifest.json            identity (model and calibration fingerprints, utility, L, full loss)
                             and the planned masks with their shard numbers
    shard-00000.parquet      finished shards, written atomically (schema: SCHEMA_DOC)
    shard-00001.journal      the shard in progress: one JSON row per evaluated mask, fsynced

A killed sweep leaves finished shards and a journal; resuming reads both, evaluates only the
masks with no row yet, and seals the journal into a parquet shard.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from coopprune.atomic import atomic_path, write_json
from coopprune.errors import CoopPruneError

FORMAT_VERSION = 1
SCHEMA = pa.schema(
    [
        ("mask_id", pa.int64()),
        ("mask", pa.list_(pa.bool_())),
        ("n_kept", pa.int32()),
        ("utility", pa.float64()),
        ("finite", pa.bool_()),
        ("loss", pa.float64()),
        ("perplexity", pa.float64()),
        ("tokens", pa.int64()),
        ("seconds", pa.float64()),
        ("seed", pa.int64()),
        ("shard", pa.int32()),
        ("model_fingerprint", pa.string()),
        ("calibration_fingerprint", pa.string()),
    ]
)
SCHEMA_DOC = {
    "mask_id": "position of the mask in the manifest's plan (ad-hoc masks continue after it)",
    "mask": "one bool per layer, True = layer kept",
    "n_kept": "number of kept layers (the stratum)",
    "utility": "utility of the coalition (manifest.utility); NaN when the loss was not finite",
    "finite": "False when the loss was NaN or inf (row kept, never dropped)",
    "loss": "mean next-token NLL over the calibration tokens",
    "perplexity": "exp(loss)",
    "tokens": "number of predicted calibration tokens",
    "seconds": "wall time of this mask's evaluation",
    "seed": "seed of the plan that drew the mask; -1 for masks an estimator evaluated on demand",
    "shard": "shard the row is stored in",
    "model_fingerprint": "sha256 of the model config and weights",
    "calibration_fingerprint": "sha256 of the calibration token windows",
}


@dataclass(frozen=True)
class Identity:
    """What the utilities depend on: a dataset only ever holds rows of one identity."""

    model_fingerprint: str
    calibration_fingerprint: str
    utility: str
    n_layers: int
    full_loss: float

    #: Fields computed from the others (the base model's loss on the windows the fingerprints
    #: name): two identities that differ only there hold the same game.
    DERIVED = ("full_loss",)

    def matches(self, other: Identity) -> bool:
        """Same game, the derived fields aside (they may differ in the last float bits across machines)."""
        return all(getattr(self, f) == getattr(other, f) for f in asdict(self) if f not in self.DERIVED)


@dataclass
class Manifest:
    identity: Identity
    plan: list[str] = field(default_factory=list)  # planned masks as '0'/'1' strings
    shard_size: int = 64
    seed: int = 0
    plan_params: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def shard_of(self, mask_id: int) -> int:
        return mask_id // self.shard_size

    @property
    def n_shards(self) -> int:
        return -(-len(self.plan) // self.shard_size)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "schema": SCHEMA_DOC}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        data = {k: v for k, v in data.items() if k != "schema"}
        return cls(identity=Identity(**data.pop("identity")), **data)


def mask_to_bits(mask: np.ndarray) -> str:
    return "".join("1" if b else "0" for b in mask)


def bits_to_mask(bits: str) -> np.ndarray:
    return np.frombuffer(bits.encode(), dtype=np.uint8) == ord("1")


class MaskDataset:
    """Append-only store of evaluated masks; see the module docstring for the layout."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest
        self._rows: dict[int, dict[str, Any]] = {}
        self._load_rows()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path) -> MaskDataset:
        """Open an existing dataset, validating its manifest and every shard's schema."""
        path = Path(path)
        manifest_file = path / "manifest.json"
        if not manifest_file.is_file():
            raise CoopPruneError(f"not a mask dataset (no manifest.json): {path}")
        try:
            manifest = Manifest.from_json(json.loads(manifest_file.read_text()))
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise CoopPruneError(f"corrupt mask dataset manifest {manifest_file}: {exc}") from None
        if manifest.format_version != FORMAT_VERSION:
            raise CoopPruneError(
                f"mask dataset {path} has format {manifest.format_version}; this coopprune reads {FORMAT_VERSION}"
            )
        return cls(path, manifest)

    @classmethod
    def create_or_resume(cls, path: str | Path, manifest: Manifest) -> MaskDataset:
        """Resume the dataset at ``path`` if it was made by the same model/calibration/plan."""
        path = Path(path)
        if (path / "manifest.json").exists():
            existing = cls.open(path)
            _check_same(existing.manifest, manifest, path)
            return existing
        if path.exists() and any(path.iterdir()):
            raise CoopPruneError(f"output folder exists and is not a mask dataset: {path}")
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / "manifest.json", manifest.to_json())
        return cls(path, manifest)

    def _load_rows(self) -> None:
        for shard_file in sorted(self.path.glob("shard-*.parquet")):
            try:
                table = pq.read_table(shard_file)
            except (pa.ArrowInvalid, OSError) as exc:
                raise CoopPruneError(f"corrupt mask dataset shard {shard_file}: {exc}") from None
            if not table.schema.equals(SCHEMA):
                raise CoopPruneError(
                    f"schema mismatch in {shard_file}: expected columns {SCHEMA.names}, found {table.schema.names}"
                )
            for row in table.to_pylist():
                self._rows[row["mask_id"]] = row
            # A journal beside a sealed shard is a leftover of a kill between seal and cleanup.
            self._journal(int(shard_file.stem.split("-")[1])).unlink(missing_ok=True)
        for journal in sorted(self.path.glob("shard-*.journal")):
            for line in journal.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill: that mask is simply evaluated again
                self._rows.setdefault(row["mask_id"], row)
        n = self.manifest.identity.n_layers
        for row in self._rows.values():
            if len(row["mask"]) != n:
                raise CoopPruneError(f"mask dataset {self.path}: row {row['mask_id']} has {len(row['mask'])} bits, not {n}")

    # ------------------------------------------------------------------ writing
    def _journal(self, shard: int) -> Path:
        return self.path / f"shard-{shard:05d}.journal"

    def _parquet(self, shard: int) -> Path:
        return self.path / f"shard-{shard:05d}.parquet"

    def append(self, row: dict[str, Any]) -> None:
        """Persist one evaluated mask before anything else happens (fsync'd journal line)."""
        row = {name: row[name] for name in SCHEMA.names}
        with open(self._journal(row["shard"]), "a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._rows[row["mask_id"]] = row

    def seal(self, shard: int) -> None:
        """Turn a shard's journal into a parquet file (atomic), then drop the journal."""
        rows = sorted((r for r in self._rows.values() if r["shard"] == shard), key=lambda r: r["mask_id"])
        with atomic_path(self._parquet(shard)) as tmp:
            pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)
        self._journal(shard).unlink(missing_ok=True)

    def next_adhoc_shard(self) -> tuple[int, int]:
        """(shard, first mask id) for masks evaluated on demand: both continue after everything stored."""
        shards = [r["shard"] for r in self._rows.values()]
        shard = max([self.manifest.n_shards - 1, *shards]) + 1
        first_id = max([len(self.manifest.plan) - 1, *self._rows]) + 1
        return shard, first_id

    def seal_pending(self) -> None:
        """Seal every on-demand shard still held in a journal (the plan's shards are sealed by the sweep)."""
        for journal in sorted(self.path.glob("shard-*.journal")):
            shard = int(journal.stem.split("-")[1])
            if shard >= self.manifest.n_shards:
                self.seal(shard)

    def is_sealed(self, shard: int) -> bool:
        return self._parquet(shard).exists()

    # ------------------------------------------------------------------ reading
    def content_fingerprint(self) -> str:
        """sha256 over the manifest and every shard file: changes whenever a row is added."""
        import hashlib

        digest = hashlib.sha256()
        for path in sorted([self.path / "manifest.json", *self.path.glob("shard-*.*")]):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()

    def has(self, mask_id: int) -> bool:
        return mask_id in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self) -> list[dict[str, Any]]:
        return [self._rows[k] for k in sorted(self._rows)]

    def to_table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows(), schema=SCHEMA)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(masks bool [n, L], utilities float [n]) for every row, NaN utilities included."""
        rows = self.rows()
        n = self.manifest.identity.n_layers
        masks = np.array([r["mask"] for r in rows], dtype=bool).reshape(len(rows), n)
        return masks, np.array([r["utility"] for r in rows], dtype=float)


def _check_same(old: Manifest, new: Manifest, path: Path) -> None:
    for key, a, b in [
        *((f"identity.{k}", v, getattr(new.identity, k)) for k, v in asdict(old.identity).items()),
        ("plan", old.plan, new.plan),
        ("shard_size", old.shard_size, new.shard_size),
    ]:
        if key.removeprefix("identity.") in Identity.DERIVED:
            continue  # derived from the fingerprints already compared
        if a != b:
            raise CoopPruneError(
                f"mask dataset {path} was made with a different {key}; use a new folder or --overwrite"
            )


def shard_ids(manifest: Manifest) -> Iterable[tuple[int, list[int]]]:
    """(shard, planned mask ids) for every shard of the plan."""
    for shard in range(manifest.n_shards):
        start = shard * manifest.shard_size
        yield shard, list(range(start, min(start + manifest.shard_size, len(manifest.plan))))
