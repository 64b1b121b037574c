"""The mask-utility dataset: resume after SIGKILL, schema, corruption, NaN handling."""

import dataclasses
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from coopprune.dataset import SCHEMA, MaskDataset
from coopprune.errors import CoopPruneError
from sweep_job import CountingEvaluator, build, sweep

HERE = Path(__file__).parent


def _values(dataset):
    return {r["mask_id"]: (tuple(r["mask"]), r["loss"], r["utility"]) for r in dataset.rows()}


def _rows_on_disk(path: Path) -> int:
    """Rows the running job has written; a journal sealed into its parquet between the listing and
    the read counts on the next poll (reading it raced the job: CI failed on that once)."""
    def lines(journal: Path) -> int:
        try:
            return len(journal.read_text().splitlines())
        except FileNotFoundError:
            return 0

    return sum(map(lines, path.glob("*.journal"))) + sum(pq.read_metadata(p).num_rows for p in path.glob("*.parquet"))


def test_sweep_killed_and_restarted_evaluates_every_mask_exactly_once(tmp_path):
    reference = sweep(tmp_path / "reference")
    planned = len(reference.manifest.plan)
    assert len(reference) == planned == 22

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(HERE / "sweep_job.py"), str(out), "0.05"])
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or _rows_on_disk(out) < 8):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = MaskDataset.open(out)
    assert 8 <= len(done_before) < planned, "the kill must land mid-sweep"
    assert any(out.glob("*.parquet")) and any(out.glob("*.journal"))

    CountingEvaluator.count = 0
    resumed = sweep(out)
    # +1: each process computes the full model's reference loss once; no planned mask is redone
    assert CountingEvaluator.count == planned - len(done_before) + 1
    assert sorted(r["mask_id"] for r in resumed.rows()) == list(range(planned))
    assert _values(resumed) == _values(reference)
    assert not any(out.glob("*.journal"))
    assert len(MaskDataset.open(out)) == planned


def test_second_sweep_does_nothing(tmp_path):
    sweep(tmp_path / "d")
    CountingEvaluator.count = 0
    sweep(tmp_path / "d")
    assert CountingEvaluator.count == 1  # the reference loss only


def test_same_params_same_masks_and_values(tmp_path):
    a, b = sweep(tmp_path / "a"), sweep(tmp_path / "b")
    assert a.manifest.plan == b.manifest.plan
    assert _values(a) == _values(b)


def test_torn_journal_line_is_ignored(tmp_path):
    evaluator, manifest = build()
    dataset = MaskDataset.create_or_resume(tmp_path / "d", manifest)
    (tmp_path / "d" / "shard-00000.journal").write_text('{"mask_id": 0, "mask": [tr')
    assert len(MaskDataset.open(tmp_path / "d")) == 0
    assert dataset.manifest.identity.n_layers == 6


def test_resume_with_different_plan_is_refused(tmp_path):
    sweep(tmp_path / "d")
    evaluator, manifest = build()
    manifest.plan = manifest.plan[:-1]
    with pytest.raises(CoopPruneError, match="different plan"):
        MaskDataset.create_or_resume(tmp_path / "d", manifest)


def test_a_store_is_resumed_across_a_derived_field_and_refused_across_any_other(tmp_path):
    sweep(tmp_path / "d")
    evaluator, manifest = build()
    identity = manifest.identity
    manifest.identity = dataclasses.replace(identity, full_loss=identity.full_loss + 1e-12)
    assert MaskDataset.create_or_resume(tmp_path / "d", manifest).manifest.identity.matches(manifest.identity)
    assert not identity.matches(dataclasses.replace(identity, utility="kl"))
    manifest.identity = dataclasses.replace(identity, utility="kl")
    with pytest.raises(CoopPruneError, match="different identity.utility"):
        MaskDataset.create_or_resume(tmp_path / "d", manifest)


def test_corrupt_shard_is_a_clear_error(tmp_path):
    sweep(tmp_path / "d")
    (tmp_path / "d" / "shard-00001.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CoopPruneError, match="corrupt mask dataset shard .*shard-00001"):
        MaskDataset.open(tmp_path / "d")


def test_schema_mismatch_is_a_clear_error(tmp_path):
    sweep(tmp_path / "d")
    pq.write_table(pa.table({"mask_id": [0], "score": [1.0]}), tmp_path / "d" / "shard-00000.parquet")
    with pytest.raises(CoopPruneError, match="schema mismatch"):
        MaskDataset.open(tmp_path / "d")


def test_not_a_dataset(tmp_path):
    with pytest.raises(CoopPruneError, match="not a mask dataset"):
        MaskDataset.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(CoopPruneError, match="corrupt mask dataset manifest"):
        MaskDataset.open(tmp_path)


def test_schema_is_documented_and_stored(tmp_path):
    dataset = sweep(tmp_path / "d")
    table = pq.read_table(next((tmp_path / "d").glob("*.parquet")))
    assert table.schema.equals(SCHEMA)
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert set(manifest["schema"]) == set(SCHEMA.names)
    masks, utilities = dataset.arrays()
    assert masks.shape == (22, 6) and np.all(masks.sum(1) >= 3)
    assert np.all(np.isfinite(utilities)) and np.all(utilities > 0)


def test_nan_losses_are_kept_flagged_and_aligned(tmp_path):
    evaluator, manifest = build()
    layer = evaluator.layers[2]
    with np.errstate(all="ignore"):
        layer.mlp.down_proj.weight.data.fill_(float("nan"))
    dataset = MaskDataset.create_or_resume(tmp_path / "d", manifest)
    from coopprune.sweep import run_shard

    for shard in range(manifest.n_shards):
        run_shard(evaluator, dataset, shard, progress=False)
    rows = MaskDataset.open(tmp_path / "d").rows()
    assert len(rows) == len(manifest.plan)
    for row in rows:
        uses_nan_layer = row["mask"][2]
        assert row["finite"] is (not uses_nan_layer)
        assert math.isnan(row["utility"]) is uses_nan_layer


def test_a_shard_killed_between_its_last_row_and_its_seal_is_sealed_on_resume(tmp_path, monkeypatch):
    from coopprune.sweep import run_shard

    evaluator, manifest = build()
    dataset = MaskDataset.create_or_resume(tmp_path / "d", manifest)
    monkeypatch.setattr(MaskDataset, "seal", lambda self, shard: None)  # the kill, after the last row
    run_shard(evaluator, dataset, 0, progress=False)
    monkeypatch.undo()
    rows = len(MaskDataset.open(tmp_path / "d"))
    resumed = MaskDataset.create_or_resume(tmp_path / "d", manifest)
    run_shard(evaluator, resumed, 0, progress=False)  # nothing left to evaluate: only the seal
    assert resumed.is_sealed(0) and len(MaskDataset.open(tmp_path / "d")) == rows > 0
