"""The functions ``coopprune.stages.STAGES`` names (``coopprune stage NAME``, each stage of
``dvc.yaml``, the Prefect tasks through ``run_stage``): each takes ``(params, progress)``, writes
only its own outputs under ``output_dir`` and returns a JSON-able dict. ``prepare_data`` is the
``data`` stage's check of the inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coopprune.atomic import atomic_dir, write_json
from coopprune.calibration import load_texts, text_fingerprint
from coopprune.config import Params
from coopprune.domains import evaluation_texts
from coopprune.errors import CoopPruneError
from coopprune.mixture import Calibration
from coopprune.pipeline.benchmarking import benchmark, score_metrics
from coopprune.pipeline.inputs import model_depth
from coopprune.pipeline.job import apply_decision, prune_from_params
from coopprune.pipeline.release import (
    benchmark_release,
    export_release,
    heal_release,
    patch_release,
    seed_spread_release,
)
from coopprune.pipeline.store import fit_surrogate, masks_dir, merge_sweep, sweep


def prepare_data(params: Params) -> dict[str, Any]:
    """Fail fast and fingerprint the inputs: model depth and family, calibration and evaluation text.

    Fetches the bundled defaults when they are named and missing, so later steps only read.
    """
    n_layers, architecture = model_depth(
        params.model.source, params.model.revision, params.model.trust_remote_code, with_architecture=True
    )
    calibration = Calibration.from_params(params.calibration)
    parts = calibration.documents()
    calibration_docs = [doc for _, docs in parts for doc in docs]
    evaluation_docs = load_texts(params.evaluation.text)
    if not evaluation_docs:
        raise CoopPruneError(f"evaluation text is empty: {params.evaluation.text}")
    texts = {
        "calibration": {"source": calibration.label, "documents": len(calibration_docs),
                        "fingerprint": text_fingerprint(calibration_docs)},
        "evaluation": {"source": params.evaluation.text, "documents": len(evaluation_docs),
                       "fingerprint": text_fingerprint(evaluation_docs)},
    }
    if texts["calibration"]["fingerprint"] == texts["evaluation"]["fingerprint"]:
        raise CoopPruneError("calibration and evaluation text are the same: perplexity would not be held out")
    held_out = set().union(*(evaluation_texts(d) for d in params.evaluation.domains))
    shared = sum(1 for doc in calibration_docs if doc in held_out)
    if shared:
        raise CoopPruneError(f"{shared} calibration documents are also documents of the held-out domains "
                             f"({', '.join(params.evaluation.domains)}): they must be disjoint")
    if params.benchmark.tasks:
        from coopprune.fetch import benchmark_dir

        benchmark_dir()
    return {"n_layers": n_layers, "architecture": architecture.name, **texts}


def data_stage(params: Params, progress: bool = True) -> dict[str, Any]:
    result = prepare_data(params)
    write_json(Path(params.output_dir) / "data.json", result)
    return result


def sweep_stage(params: Params, progress: bool = True) -> dict[str, Any]:
    dataset = sweep(params, progress=progress)
    return {"path": str(dataset.path), "rows": len(dataset)}


def surrogate_stage(params: Params, progress: bool = True) -> dict[str, Any]:
    out = Path(params.output_dir) / "surrogate"
    surrogate = fit_surrogate(params, merge_sweep(masks_dir(params)), out)
    return {"path": str(out), "metrics": surrogate.metrics}


def contributions_stage(params: Params, progress: bool = True) -> dict[str, Any]:
    result = prune_from_params(params, progress=progress, decision_only=True)
    return {"path": str(result.out_dir), "removed_players": result.removed_layers, "evaluations": result.evaluations}


def prune_stage(params: Params, progress: bool = True) -> dict[str, Any]:
    out = Path(params.output_dir)
    result = apply_decision(params.model.source, out / "contributions", out / "pruned", overwrite=True,
                            trust_remote_code=params.model.trust_remote_code, dtype=params.model.dtype)
    return {"path": str(result.out_dir), "removed_layers": result.removed_layers, "evaluations": result.evaluations}


def benchmark_stage(params: Params, progress: bool = True) -> dict[str, Any]:
    return benchmark_release(params)


def export_stage(params: Params, progress: bool = True) -> dict[str, Any]:
    return export_release(params)


def heal_stage(params: Params, progress: bool = True) -> dict[str, Any]:
    """DVC's ``heal`` stage: heal and benchmark the healed model with the pruned one's settings
    (``heal_metrics.json``); with ``heal.enabled: false`` it records that and does nothing else,
    so the stage's outputs always exist and a disabled step costs nothing."""
    from coopprune.heal import HEALING_FILE

    out = Path(params.output_dir)
    if not params.heal.enabled:
        with atomic_dir(out / "healed", overwrite=True) as tmp:
            write_json(tmp / HEALING_FILE, {"enabled": False})
        write_json(out / "heal_metrics.json", {"healed": False})
        return {"enabled": False}
    healed = heal_release(params, progress)
    score = benchmark(params, healed["path"], out / "healed" / "benchmark.json")
    metrics = {"healed": True, "heal_steps": healed["steps"], "heal_tokens": healed["tokens"],
               "heal_minutes": healed["minutes"], **score_metrics({"healed": score})}
    write_json(out / "heal_metrics.json", metrics)
    return {**healed, "metrics": metrics}


def patch_stage(params: Params, progress: bool = True) -> dict[str, Any]:
    """DVC's ``patch`` stage: patch and benchmark the patched model with the pruned one's settings
    (``patch_metrics.json``); with ``patch.enabled: false`` it records that and does nothing else."""
    out = Path(params.output_dir)
    if not params.patch.enabled:
        with atomic_dir(out / "patched", overwrite=True) as tmp:
            write_json(tmp / "patch.json", {"enabled": False})
        write_json(out / "patch_metrics.json", {"patched": False})
        return {"enabled": False}
    patched = patch_release(params, progress)
    score = benchmark(params, patched["path"], out / "patched" / "benchmark.json")
    metrics = {"patched": True, "patch_minutes": patched["minutes"], "patch_runs": len(patched["runs"]),
               **score_metrics({"patched": score})}
    write_json(out / "patch_metrics.json", metrics)
    return {**patched, "metrics": metrics}


def stability_stage(params: Params, progress: bool = True) -> dict[str, Any]:
    """DVC's ``stability`` stage: the removed set decided again with each of ``stability.seeds``
    (``stability.json``, read by the benchmark stage's metrics and card); with no seeds it records
    that the step is off and does nothing else, so the stage's outputs always exist."""
    from coopprune.stability import STABILITY_DIR, STABILITY_FILE

    out = Path(params.output_dir)
    if not params.stability.seeds:
        (out / STABILITY_DIR).mkdir(parents=True, exist_ok=True)  # a DVC output either way
        write_json(out / STABILITY_FILE, {"enabled": False})
        return {"enabled": False}
    return seed_spread_release(params, progress)
