"""Evaluate a plan of masks into a MaskDataset, shard by shard, resumable after any kill."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from coopprune.dataset import Identity, Manifest, MaskDataset, bits_to_mask, mask_to_bits, shard_ids
from coopprune.engine import MaskEvaluator, MaskResult
from coopprune.sampling import StrataPlan
from coopprune.utility import get_utility


def result_row(
    mask_id: int, mask: np.ndarray, result: MaskResult, identity: Identity, seed: int, shard: int
) -> dict[str, Any]:
    """One dataset row; a non-finite loss is kept and flagged, never dropped."""
    utility = get_utility(identity.utility)(result.loss, identity.full_loss)
    return {
        "mask_id": mask_id,
        "mask": [bool(b) for b in mask],
        "n_kept": int(mask.sum()),
        "utility": utility,
        "finite": bool(math.isfinite(result.loss) and math.isfinite(utility)),
        "loss": result.loss,
        "perplexity": result.perplexity,
        "tokens": result.tokens,
        "seconds": result.seconds,
        "seed": seed,
        "shard": shard,
        "model_fingerprint": identity.model_fingerprint,
        "calibration_fingerprint": identity.calibration_fingerprint,
    }


def plan_manifest(
    evaluator: MaskEvaluator,
    plan: StrataPlan,
    model_fingerprint: str,
    calibration_fingerprint: str,
    utility: str = "ppl_ratio",
    shard_size: int = 64,
) -> Manifest:
    """The manifest of a sweep: identity of the game plus the sampled, sharded plan."""
    get_utility(utility)
    identity = Identity(model_fingerprint, calibration_fingerprint, utility, plan.n_layers, evaluator.full_loss)
    params = {"removals": list(plan.removals), "per_stratum": plan.per_stratum, "protected": list(plan.protected)}
    return Manifest(
        identity=identity,
        plan=[mask_to_bits(m) for m in plan.sample()],
        shard_size=shard_size,
        seed=plan.seed,
        plan_params=params,
    )


def run_shard(evaluator: MaskEvaluator, dataset: MaskDataset, shard: int, progress: bool = True) -> None:
    """Evaluate the shard's masks that have no row yet, persisting each at once, then seal it."""
    if dataset.is_sealed(shard):
        return
    manifest = dataset.manifest
    ids = dict(shard_ids(manifest))[shard]
    todo = [i for i in ids if not dataset.has(i)]
    # every row written but the seal missing (killed between the two): nothing to evaluate, seal it
    masks = np.array([bits_to_mask(manifest.plan[i]) for i in todo], dtype=bool).reshape(len(todo), evaluator.n_players)

    def persist(j: int, result: MaskResult) -> None:
        dataset.append(result_row(todo[j], masks[j], result, manifest.identity, manifest.seed, shard))

    if todo:
        evaluator.evaluate(masks, progress=f"shard {shard}" if progress else False, on_result=persist)
    dataset.seal(shard)


def run_sweep(
    evaluator: MaskEvaluator,
    manifest: Manifest,
    out_dir: str | Path,
    shards: Iterable[int] | None = None,
    progress: bool = True,
) -> MaskDataset:
    """Create or resume the dataset at ``out_dir`` and evaluate the given (default: all) shards."""
    dataset = MaskDataset.create_or_resume(out_dir, manifest)
    for shard in range(manifest.n_shards) if shards is None else shards:
        run_shard(evaluator, dataset, shard, progress)
    return dataset
