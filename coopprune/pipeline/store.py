"""Stage 1 and the mask datasets: the (seeded, sharded, resumable) sweep into
``<output_dir>/masks``, the search's own copy of it, the store a search starts empty, the check
that a store fits the model and calibration, and the Stage-2 surrogate fitted on the sweep."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coopprune.config import GameParams, Params
from coopprune.dataset import Identity, Manifest, MaskDataset
from coopprune.engine import MaskEvaluator
from coopprune.errors import CoopPruneError
from coopprune.pipeline.inputs import build_evaluator, calibration_for, load_base, model_depth, screen_windows
from coopprune.sampling import StrataPlan
from coopprune.surrogate import Surrogate, SurrogateConfig, fit_validated
from coopprune.sweep import plan_manifest, run_shard, run_sweep


def empty_store(path: Path, evaluator: MaskEvaluator, model_fingerprint: str, calibration_fingerprint: str,
                game: GameParams) -> MaskDataset:
    """A mask dataset with nothing planned, for the evaluations a search makes on these windows:
    resumed where one of the same identity is there, replaced where one of another game is (a
    cache of what this output folder ran before, never a user's sweep)."""
    identity = Identity(model_fingerprint, calibration_fingerprint, game.utility + evaluator.objective.id_suffix,
                        evaluator.n_players, evaluator.full_loss)
    if (path / "manifest.json").is_file():
        store = MaskDataset.open(path)
        if store.manifest.identity.matches(identity):
            return store
        shutil.rmtree(path)
    return MaskDataset.create_or_resume(path, Manifest(identity=identity))


def check_store(store: MaskDataset, model_fingerprint: str, calibration_fingerprint: str) -> None:
    """A mask dataset can only be reused for the same model weights and calibration tokens."""
    identity = store.manifest.identity
    if identity.model_fingerprint != model_fingerprint:
        raise CoopPruneError(f"mask dataset {store.path} was evaluated on a different model (fingerprint differs)")
    if identity.calibration_fingerprint != calibration_fingerprint:
        raise CoopPruneError(f"mask dataset {store.path} used different calibration windows (fingerprint differs)")


@dataclass
class SweepSetup:
    """What every part of a sweep needs: the engine on the calibration windows and the plan."""

    evaluator: MaskEvaluator
    manifest: Manifest


def sweep_setup(params: Params) -> SweepSetup:
    """Load the model and calibration and derive the (seeded, deterministic) sharded plan."""
    n_layers = model_depth(params.model.source, params.model.revision, params.model.trust_remote_code)
    plan = StrataPlan.build(
        n_layers,
        remove=params.sampling.remove,
        remove_ratios=params.sampling.remove_ratios,
        per_stratum=params.sampling.per_stratum,
        protected=params.game.protected,
        seed=params.sampling.seed,
    )
    loaded = load_base(params)
    c = params.calibration
    windows = calibration_for(params).windows(loaded.tokenizer)
    evaluator = build_evaluator(loaded, windows, c.batch_size, params.game)
    rows = screen_windows(params, n_layers, windows.n_windows)
    if rows is not None:  # the method searches on these first: there the sweep stands in for its first evaluations
        windows, evaluator = windows.subset(rows), evaluator.subset(rows)
    manifest = plan_manifest(
        evaluator, plan, loaded.fingerprint, windows.fingerprint,
        params.game.utility + evaluator.objective.id_suffix, params.sampling.shard_size
    )
    return SweepSetup(evaluator, manifest)


def masks_dir(params: Params) -> Path:
    return Path(params.output_dir) / "masks"


def plan_sweep(params: Params, out_dir: str | Path | None = None) -> MaskDataset:
    """Create (or resume) the mask dataset with its manifest, evaluating nothing yet."""
    return MaskDataset.create_or_resume(out_dir or masks_dir(params), sweep_setup(params).manifest)


def evaluate_shard(params: Params, shard: int, out_dir: str | Path | None = None, progress: bool = True) -> int:
    """Evaluate one shard of a planned sweep (the unit a task runner fans out); returns rows added.

    Each shard writes only its own files, so shards may run at once in threads or on a cluster.
    """
    dataset = MaskDataset.open(out_dir or masks_dir(params))
    if not 0 <= shard < dataset.manifest.n_shards:
        raise CoopPruneError(f"shard {shard} is not in the plan (0..{dataset.manifest.n_shards - 1})")
    if dataset.is_sealed(shard):
        return 0
    setup = sweep_setup(params)
    dataset = MaskDataset.create_or_resume(dataset.path, setup.manifest)  # refuses a different model/plan
    before = len(dataset)
    run_shard(setup.evaluator, dataset, shard, progress)
    return len(dataset) - before


def search_store(params: Params, sweep: MaskDataset, name: str = "search") -> MaskDataset:
    """``<output_dir>/<name>``: the sweep's evaluations plus every one the method makes, each
    written as it is made (a killed search resumes without repeating one). The sweep itself is
    never extended, so its DVC output stays what the sweep stage wrote; a search store of another
    sweep (the sweep changed) is replaced by a fresh copy."""
    dest = Path(params.output_dir) / name
    if (dest / "manifest.json").is_file():
        store = MaskDataset.open(dest)
        if store.manifest.to_json() == sweep.manifest.to_json() and len(store) >= len(sweep):
            return store
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(sweep.path, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return MaskDataset.open(dest)


def merge_sweep(out_dir: str | Path) -> MaskDataset:
    """Check that every planned shard is sealed and reopen the whole dataset."""
    dataset = MaskDataset.open(out_dir)
    missing = [s for s in range(dataset.manifest.n_shards) if not dataset.is_sealed(s)]
    if missing:
        raise CoopPruneError(f"mask dataset {dataset.path} is missing shards {missing}: run them first")
    return dataset


def sweep(params: Params, out_dir: str | Path | None = None, progress: bool = True) -> MaskDataset:
    """Stage 1: evaluate the stratified mask plan into a (resumable) mask-utility dataset."""
    setup = sweep_setup(params)
    return run_sweep(setup.evaluator, setup.manifest, out_dir or masks_dir(params), progress=progress)


def fit_surrogate(params: Params, dataset: MaskDataset, out_dir: str | Path) -> Surrogate:
    """Stage 2 on the sweep alone: a surrogate validated on held-out masks of every stratum, saved."""
    masks, utilities = dataset.arrays()
    n_finite = int(np.isfinite(utilities).sum())
    if n_finite < 10:
        raise CoopPruneError(f"only {n_finite} finite utilities in {dataset.path}: too few to fit a surrogate")
    surrogate = fit_validated(masks, utilities, SurrogateConfig(**params.surrogate.model_dump()))  # drops the rest
    surrogate.save(out_dir)
    return surrogate
