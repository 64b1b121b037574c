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
from coopprune.dataset import MaskDataset
from coopprune.estimators import ESTIMATORS, get_estimator
from coopprune.evaluate import PerplexityResult, perplexity
from coopprune.game import LayerGame
from coopprune.models import LoadedModel, load_model
from coopprune.models.loading import load_config
from coopprune.models.architectures import architecture_for
from coopprune.prune import check_output_dir, count_parameters, make_record, prune_layers, save_pruned
from coopprune.sampling import PAPER_REMOVE_RATIOS, StrataPlan, normalize_layers, removal_count
from coopprune.report import write_report
from coopprune.strategy import Selection, select_by_cost, select_players
from coopprune.sublayers import SublayerEvaluator, check_sublayers, sublayer_parameters, zero_half_layers
from coopprune.sweep import plan_manifest, run_sweep


def model_depth(source: str, revision: str | None = None, trust_remote_code: bool = False, with_architecture: bool = False):
    """Number of decoder layers (and the family adapter), from the config alone: fails fast on unsupported models."""
    _, config = load_config(source, revision, trust_remote_code)
    arch = architecture_for(config)
    depth = int(getattr(config, arch.num_layers_attr))
    return (depth, arch) if with_architecture else depth


def load_calibration(loaded: LoadedModel, source: str, n_windows: int, window: int, seed: int) -> Windows:
    docs = load_texts(source)
    if not docs:
        raise CoopPruneError(f"calibration text is empty: {source}")
    return calibration_windows(loaded.tokenizer, docs, n_windows, window, seed)


@dataclass
class PruneResult:
    out_dir: Path
    removed_layers: list[int]
    selection: Selection

    @property
    def evaluations(self) -> int:
        return self.selection.evaluations


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
    iterative: int | None = None,
    masks: str | Path | None = None,
    estimator_options: dict[str, Any] | None = None,
    estimator_seed: int | None = None,
    players: str = "layers",
) -> PruneResult:
    """Score every layer with ``method``, remove the least-contributing ones, save the checkpoint.

    ``iterative``: layers removed per round (the game is re-run on the pruned model between
    rounds). ``masks``: a mask dataset of the same model and calibration (e.g. the sweep's) whose
    evaluations are reused and extended. Every argument is checked before weights are read.
    """
    out = check_output_dir(out_dir, overwrite)
    estimator = get_estimator(method, **(estimator_options or {}))
    if players not in ("layers", "sublayers"):
        raise CoopPruneError(f"--players must be layers or sublayers, got '{players}'")
    sublayers = players == "sublayers"
    if sublayers and iterative is not None:
        raise CoopPruneError("iterative pruning works on layer players; use one shot with --players sublayers")
    n_layers, architecture = model_depth(model, trust_remote_code=trust_remote_code, with_architecture=True)
    if sublayers:
        check_sublayers(architecture)
    k = removal_count(n_layers, remove, ratio)
    prot = normalize_layers(protected or [], n_layers)
    if k > n_layers - len(prot):
        raise CoopPruneError(f"cannot remove {k} layers: protected layers {list(prot)} leave {n_layers - len(prot)}")
    if iterative is not None and not 1 <= iterative <= k:
        raise CoopPruneError(f"--iterative takes a number of layers per round in [1, {k}], got {iterative}")
    store = MaskDataset.open(masks) if masks is not None else None
    docs = load_texts(calib)
    if not docs:
        raise CoopPruneError(f"calibration text is empty: {calib}")

    loaded = load_model(model, trust_remote_code=trust_remote_code)
    windows = calibration_windows(loaded.tokenizer, docs, n_windows, window, seed)
    if store is not None:
        check_store(store, loaded.fingerprint, windows.fingerprint)
    evaluator = (SublayerEvaluator if sublayers else MaskEvaluator)(
        loaded.model, loaded.architecture, windows.input_ids, batch_size
    )
    protected_players = [2 * i + h for i in prot for h in (0, 1)] if sublayers else list(prot)
    game = LayerGame(evaluator, utility, protected=protected_players, store=store, progress=progress)
    estimator_seed = seed if estimator_seed is None else estimator_seed
    names = game.player_names
    params_before = count_parameters(loaded.model)
    extra_scores: dict[str, Any] = {}
    if sublayers:
        costs = sublayer_parameters(loaded.model, loaded.architecture)
        max_cost = round(k * sum(costs) / n_layers)  # k average layers' worth of parameters
        selection = select_by_cost(game, estimator, costs, max_cost, budget, estimator_seed)
        removed_layers = zero_half_layers(loaded.model, loaded.architecture, selection.removed)
        extra_scores = {
            "players": "sublayers",
            "removed_players": [names[i] for i in selection.removed],
            "parameters_removed_effective": int(sum(costs[i] for i in selection.removed)),
            "parameter_budget": max_cost,
            "note": "half-removed layers are stored with zeroed output projections (exact; the dead weights stay on disk)",
        }
    else:
        selection = select_players(game, estimator, k, per_round=iterative, budget=budget, seed=estimator_seed)
        removed_layers = selection.removed
    if removed_layers:
        prune_layers(loaded, removed_layers)
    record = make_record(
        loaded,
        removed_layers,
        method,
        params_before,
        scores={
            "evaluations": selection.evaluations,
            "seconds": round(selection.seconds, 3),
            **extra_scores,
            "rounds": [{"players": r.players, "removed": r.removed, **r.contributions.to_json()} for r in selection.rounds],
        },
        params={
            "calibration": {"source": calib, "n_windows": n_windows, "window": window, "seed": seed,
                            "fingerprint": windows.fingerprint},
            "utility": utility,
            "players": players,
            "protected": list(prot),
            "budget": budget,
            "iterative": iterative,
            "masks": str(masks) if masks is not None else None,
            "estimator_options": {k: str(v) for k, v in (estimator_options or {}).items()},
        },
    )
    surrogate = getattr(estimator, "surrogate", None)
    save_pruned(
        loaded, out, record, overwrite=overwrite,
        extra=lambda folder: write_report(folder, selection, names, surrogate),
    )
    return PruneResult(out, removed_layers, selection)


def estimator_options(params: Params, n_layers: int) -> dict[str, Any]:
    """Constructor options of the configured method, from params (surrogate methods only take any)."""
    from coopprune.estimators.surrogate_based import SurrogateEstimator
    from coopprune.surrogate import SurrogateConfig

    if not issubclass(ESTIMATORS[params.prune.method], SurrogateEstimator):
        return {}
    s = params.sampling
    ratios = s.remove_ratios if s.remove is None else [r / n_layers for r in s.remove]
    return {
        "surrogate": SurrogateConfig(**params.surrogate.model_dump()),
        "remove_ratios": tuple(ratios) if ratios is not None else PAPER_REMOVE_RATIOS,
        "bootstrap": params.prune.bootstrap,
    }


def check_store(store: MaskDataset, model_fingerprint: str, calibration_fingerprint: str) -> None:
    """A mask dataset can only be reused for the same model weights and calibration tokens."""
    identity = store.manifest.identity
    if identity.model_fingerprint != model_fingerprint:
        raise CoopPruneError(f"mask dataset {store.path} was evaluated on a different model (fingerprint differs)")
    if identity.calibration_fingerprint != calibration_fingerprint:
        raise CoopPruneError(f"mask dataset {store.path} used different calibration windows (fingerprint differs)")


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
    c, p = params.calibration, params.prune
    result = prune(
        params.model.source, out / "pruned", p.method, p.remove, p.ratio,
        c.source, c.n_windows, c.window, c.seed, params.game.protected, params.game.utility,
        budget=p.budget or len(dataset.manifest.plan), batch_size=c.batch_size, overwrite=True,
        trust_remote_code=params.model.trust_remote_code, progress=progress, iterative=p.iterative,
        masks=dataset.path, estimator_options=estimator_options(params, dataset.manifest.identity.n_layers),
        estimator_seed=params.sampling.seed,
    )
    timings["prune_s"] = time.perf_counter() - t

    t = time.perf_counter()
    e = params.evaluation
    base = evaluate_perplexity(params.model.source, e.text, e.window, e.max_windows, e.batch_size, progress)
    pruned = evaluate_perplexity(str(result.out_dir), e.text, e.window, e.max_windows, e.batch_size, progress)
    timings["evaluate_s"] = time.perf_counter() - t

    summary = {
        "mask_dataset": str(dataset.path),
        "masks_evaluated": len(dataset),
        "pruned_model": str(result.out_dir),
        "contributions": str(result.out_dir / "contributions.csv"),
        "method": params.prune.method,
        "removed_layers": result.removed_layers,
        "real_evaluations_beyond_sweep": result.evaluations,
        "perplexity": {"base": asdict(base), "pruned": asdict(pruned)},
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    write_json(out / "summary.json", summary)
    return summary
