"""The Python API behind the CLI: each function is one user-level job, built from the library."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from coopprune.atomic import write_json
from coopprune.calibration import Windows, calibration_windows, evaluation_windows, load_texts
from coopprune.config import Params
from coopprune.engine import MaskEvaluator
from coopprune.errors import CoopPruneError
from coopprune.estimators import Contributions, get_estimator
from coopprune.evaluate import PerplexityResult, perplexity
from coopprune.game import LayerGame
from coopprune.models import LoadedModel, load_model
from coopprune.models.loading import load_config
from coopprune.models.architectures import architecture_for
from coopprune.prune import check_output_dir, count_parameters, make_record, prune_layers, save_pruned
from coopprune.sampling import StrataPlan, normalize_layers, removal_count
from coopprune.select import select_layers
from coopprune.sweep import plan_manifest, run_sweep


def model_depth(source: str, revision: str | None = None, trust_remote_code: bool = False) -> int:
    """Number of decoder layers, read from the config alone (fails fast on unsupported models)."""
    _, config = load_config(source, revision, trust_remote_code)
    arch = architecture_for(config)
    return int(getattr(config, arch.num_layers_attr))


def load_calibration(loaded: LoadedModel, source: str, n_windows: int, window: int, seed: int) -> Windows:
    docs = load_texts(source)
    if not docs:
        raise CoopPruneError(f"calibration text is empty: {source}")
    return calibration_windows(loaded.tokenizer, docs, n_windows, window, seed)


@dataclass
class PruneResult:
    out_dir: Path
    removed_layers: list[int]
    contributions: Contributions


def prune(
    model: str,
    out_dir: str | Path,
    method: str = "ppl",
    remove: int | None = None,
    ratio: float | None = None,
    calib: str = "lambada",
    n_windows: int = 10,
    window: int = 128,
    seed: int = 0,
    protected: list[int] | None = None,
    utility: str = "ppl_ratio",
    budget: int | None = None,
    batch_size: int = 10,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    progress: bool = True,
) -> PruneResult:
    """Score every layer with ``method``, remove the least-contributing ones, save the checkpoint.

    Every argument is checked before the model's weights are read.
    """
    out = check_output_dir(out_dir, overwrite)
    estimator = get_estimator(method)
    n_layers = model_depth(model, trust_remote_code=trust_remote_code)
    k = removal_count(n_layers, remove, ratio)
    prot = normalize_layers(protected or [], n_layers)
    if k > n_layers - len(prot):
        raise CoopPruneError(f"cannot remove {k} layers: protected layers {list(prot)} leave {n_layers - len(prot)}")
    docs = load_texts(calib)
    if not docs:
        raise CoopPruneError(f"calibration text is empty: {calib}")

    loaded = load_model(model, trust_remote_code=trust_remote_code)
    windows = calibration_windows(loaded.tokenizer, docs, n_windows, window, seed)
    evaluator = MaskEvaluator(loaded.model, loaded.architecture, windows.input_ids, batch_size)
    game = LayerGame(evaluator, utility, progress=progress)
    contributions = estimator.estimate(game, budget=budget, seed=seed)
    removed = select_layers(contributions.values, k, prot)

    params_before = count_parameters(loaded.model)
    prune_layers(loaded, removed)
    record = make_record(
        loaded,
        removed,
        method,
        params_before,
        scores=contributions.to_json(),
        params={
            "calibration": {"source": calib, "n_windows": n_windows, "window": window, "seed": seed,
                            "fingerprint": windows.fingerprint},
            "utility": utility,
            "protected": list(prot),
            "budget": budget,
        },
    )
    save_pruned(loaded, out, record, overwrite=overwrite)
    return PruneResult(out, removed, contributions)


def evaluate_perplexity(
    checkpoint: str, text: str = "boolq", window: int = 128, max_windows: int | None = 64, batch_size: int = 8,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of a checkpoint (or hub id) on held-out text with ``window``-token windows."""
    docs = load_texts(text)
    loaded = load_model(checkpoint)
    return perplexity(loaded.model, evaluation_windows(loaded.tokenizer, docs, window, max_windows), batch_size, progress)


def sweep(params: Params, out_dir: str | Path | None = None, progress: bool = True):
    """Stage 1: evaluate the stratified mask plan into a (resumable) mask-utility dataset."""
    n_layers = model_depth(params.model.source, params.model.revision, params.model.trust_remote_code)
    plan = StrataPlan.build(
        n_layers,
        remove=params.sampling.remove,
        remove_ratios=params.sampling.remove_ratios,
        per_stratum=params.sampling.per_stratum,
        protected=params.game.protected,
        seed=params.sampling.seed,
    )
    loaded = load_model(params.model.source, params.model.revision, params.model.trust_remote_code, params.model.dtype)
    c = params.calibration
    windows = load_calibration(loaded, c.source, c.n_windows, c.window, c.seed)
    evaluator = MaskEvaluator(loaded.model, loaded.architecture, windows.input_ids, c.batch_size)
    manifest = plan_manifest(
        evaluator, plan, loaded.fingerprint, windows.fingerprint, params.game.utility, params.sampling.shard_size
    )
    out = Path(out_dir or Path(params.output_dir) / "masks")
    return run_sweep(evaluator, manifest, out, progress=progress)


def run(params: Params, progress: bool = True) -> dict[str, Any]:
    """The main job: sweep masks, score layers, prune, and compare perplexity before/after."""
    out = Path(params.output_dir)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    dataset = sweep(params, out / "masks", progress)
    timings["sweep_s"] = time.perf_counter() - t

    t = time.perf_counter()
    c = params.calibration
    result = prune(
        params.model.source, out / "pruned", params.prune.method, params.prune.remove, params.prune.ratio,
        c.source, c.n_windows, c.window, c.seed, params.game.protected, params.game.utility,
        batch_size=c.batch_size, overwrite=True, trust_remote_code=params.model.trust_remote_code, progress=progress,
    )
    result.contributions.save_csv(out / "contributions.csv")
    timings["prune_s"] = time.perf_counter() - t

    t = time.perf_counter()
    e = params.evaluation
    base = evaluate_perplexity(params.model.source, e.text, e.window, e.max_windows, e.batch_size, progress)
    pruned = evaluate_perplexity(str(result.out_dir), e.text, e.window, e.max_windows, e.batch_size, progress)
    timings["evaluate_s"] = time.perf_counter() - t

    masks, utilities = dataset.arrays()
    summary = {
        "mask_dataset": str(dataset.path),
        "masks_evaluated": len(dataset),
        "pruned_model": str(result.out_dir),
        "contributions": str(out / "contributions.csv"),
        "method": params.prune.method,
        "removed_layers": result.removed_layers,
        "real_evaluations": result.contributions.evaluations,
        "perplexity": {"base": asdict(base), "pruned": asdict(pruned)},
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    write_json(out / "summary.json", summary)
    return summary
