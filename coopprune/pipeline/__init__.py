"""The Python API behind the CLI: each function is one user-level job, built from the library."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from coopprune.atomic import atomic_dir, write_csv, write_json
from coopprune.calibration import evaluation_windows, load_texts, text_fingerprint
from coopprune.config import Params
from coopprune.domains import evaluation_texts
from coopprune.engine import MaskEvaluator
from coopprune.errors import CoopPruneError
from coopprune.evaluate import PerplexityResult, perplexity
from coopprune.mixture import Calibration
from coopprune.models import LoadedModel, load_model
from coopprune.models.loading import model_fingerprint
from coopprune.pipeline.inputs import (
    build_evaluator,
    calibration_for,
    estimator_options,
    load_base,
    model_depth,
    screen_windows,
)
from coopprune.pipeline.job import (
    DECISION_FILE,
    REPORT_FILES,
    PruneRequest,
    PruneResult,
    apply_decision,
    prune,
    prune_from_params,
    removal_order,
)
from coopprune.pipeline.store import (
    SweepSetup,
    check_store,
    empty_store,
    evaluate_shard,
    fit_surrogate,
    masks_dir,
    merge_sweep,
    plan_sweep,
    search_store,
    sweep,
    sweep_setup,
)
from coopprune.prune import count_parameters
from coopprune.records import ATTRIBUTION_FILE, INTERACTIONS_FILE, PruningRecord


def evaluate_perplexity(
    checkpoint: str, text: str = "boolq", window: int = 128, max_windows: int | None = 64, batch_size: int = 8,
    progress: bool = True, device: str = "cpu",
) -> PerplexityResult:
    """Perplexity of a checkpoint (or hub id) on held-out text with ``window``-token windows."""
    docs = load_texts(text)
    return held_out_perplexity(load_model(checkpoint, device=device), docs, window, max_windows, batch_size, progress)


def held_out_perplexity(
    loaded: LoadedModel, docs: list[str], window: int, max_windows: int | None, batch_size: int, progress: bool
) -> PerplexityResult:
    return perplexity(loaded.model, evaluation_windows(loaded.tokenizer, docs, window, max_windows), batch_size, progress)


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


def benchmark(params: Params, checkpoint: str | Path, out_file: str | Path | None = None) -> dict[str, Any]:
    """Perplexity on held-out text and zero-shot accuracy, with the same settings for every
    checkpoint so the base and pruned models compare. Speed is not here: a speed-up is only
    meaningful when both models are timed together (:func:`compare_release_speed`)."""
    from coopprune.zeroshot import zero_shot

    e, b = params.evaluation, params.benchmark
    loaded = load_model(str(checkpoint), device=params.model.device)  # once, for perplexity and zero-shot
    key = benchmark_key(params, model_fingerprint(loaded.model))
    if out_file is not None and Path(out_file).is_file():  # a rerun (e.g. after the registry was down)
        cached = json.loads(Path(out_file).read_text())
        if cached.get("key") == key:
            return cached
    ppl = held_out_perplexity(loaded, load_texts(e.text), e.window, e.max_windows, e.batch_size, progress=False)
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "key": key, "perplexity": asdict(ppl)}
    if e.domains:  # the held-out suite: each domain's evaluation documents, never calibrated on
        result["domains"] = {
            d: held_out_perplexity(loaded, evaluation_texts(d), e.window, e.max_windows, e.batch_size, False).perplexity
            for d in e.domains}
    if b.tasks:
        scores = zero_shot(loaded.model, loaded.tokenizer, b.tasks, b.limit, b.seed, b.batch_size)  # temp work dir
        result["zero_shot"] = scores.to_dict()
        result["parameters"] = count_parameters(loaded.model)
    if out_file is not None:
        write_json(Path(out_file), result)
    return result


def benchmark_key(params: Params, weights_fingerprint: str) -> str:
    """What a benchmark result depends on: the weights and the evaluation and benchmark settings."""
    import hashlib

    spec = {"weights": weights_fingerprint, "evaluation": params.evaluation.model_dump(),
            "benchmark": params.benchmark.model_dump(exclude=set(SPEED_SETTINGS)), "device": params.model.device}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def perplexity_curve(params: Params, pruned_dir: str | Path) -> list[dict[str, Any]]:
    """Held-out perplexity after removing the first j layers of the removal order, j = 0..k.

    Evaluated through the engine on the base model (skipping layers equals removing them), so
    the curve costs k + 1 passes over the evaluation windows and no checkpoint writes.
    """
    record = asdict(PruningRecord.load(pruned_dir))
    order = removal_order(record)
    e = params.evaluation
    loaded = load_base(params)
    windows = evaluation_windows(loaded.tokenizer, load_texts(e.text), e.window, e.max_windows)
    evaluator = MaskEvaluator(loaded.model, loaded.architecture, windows.input_ids, e.batch_size)
    masks = np.ones((len(order) + 1, evaluator.n_players), dtype=bool)
    for j in range(1, len(order) + 1):
        masks[j:, order[j - 1]] = False
    results = evaluator.evaluate(masks, progress=False)
    return [{"removed": j, "layers": order[:j], "perplexity": r.perplexity} for j, r in enumerate(results)]


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


def heal_release(params: Params, progress: bool = True) -> dict[str, Any]:
    """``<output_dir>/healed``: the pruned checkpoint healed with ``params.heal``. A healed folder of
    the same settings and the same removal is kept (a rerun does not train again)."""
    from coopprune.heal import HEALING_FILE, heal, settings_key

    out = Path(params.output_dir)
    source = heal_source(params)
    record = asdict(PruningRecord.load(source))
    done = out / "healed" / HEALING_FILE
    key = {"settings": settings_key(params.heal), "removed": record["removed_layers"], "base": record["base_fingerprint"]}
    if "patch" in record["params"]:  # healing the patched checkpoint: another patch is another input
        key["patch"] = record["params"]["patch"]["key"]
    healing = json.loads(done.read_text()) if done.is_file() else {}
    if healing.get("key") != key:
        healing = heal(source, out / "healed", params.heal, overwrite=True, progress=progress,
                       extra={"key": key}).record
    return {"path": str(out / "healed"), **{k: healing[k] for k in ("steps", "tokens", "data_fingerprint", "minutes", "loss")}}


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


def heal_source(params: Params) -> Path:
    """What healing starts from: ``<output_dir>/patched`` when ``patch.enabled``, else ``pruned``."""
    return Path(params.output_dir) / ("patched" if params.patch.enabled else "pruned")


def patch_release(params: Params, progress: bool = True) -> dict[str, Any]:
    """``<output_dir>/patched``: the pruned checkpoint with ``params.patch``'s linear patch, fitted on
    the run's calibration text (``patch.n_windows`` windows of it). A patched folder of the same
    settings, calibration and removal is kept (a rerun fits nothing again)."""
    from coopprune.patch import patch_checkpoint

    out, m = Path(params.output_dir), params.model
    record = PruningRecord.load(out / "pruned")
    calibration_params = params.calibration.model_copy(update={"n_windows": params.patch.n_windows})
    key = {"settings": params.patch.model_dump(exclude={"enabled"}), "calibration": calibration_params.model_dump(),
           "removed": record.removed_layers, "base": record.base_fingerprint}
    done = PruningRecord.load_if_present(out / "patched") if (out / "patched" / "config.json").is_file() else None
    entry = done.params.get("patch", {}) if done is not None else {}
    if entry.get("release_key") != key:
        entry = patch_checkpoint(m.source, out / "pruned", out / "patched", params.patch,
                                 Calibration.from_params(calibration_params), overwrite=True, progress=progress,
                                 device=m.device, dtype=m.dtype, batch_size=params.calibration.batch_size,
                                 trust_remote_code=m.trust_remote_code, extra={"release_key": key}).record
    return {"path": str(out / "patched"), "objective": entry["objective"], "lambda": entry["lambda"],
            "runs": [r["layers"] for r in entry["runs"] if r.get("folded_into") is not None],
            "skipped": entry["skipped"], "calibration_fingerprint": entry["calibration"]["fingerprint"],
            "minutes": round(entry["seconds"] / 60, 2)}


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


def export_release(params: Params, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """The model for llama.cpp, in ``<output_dir>/gguf/`` (``gguf-healed/`` for a healed checkpoint).
    When the base model was a GGUF (the bundled default included) and the checkpoint is the pruned
    one, that file is pruned directly, keeping the quantization users serve; otherwise the
    checkpoint is exported in ``export.dtype``."""
    from coopprune.fetch import base_gguf
    from coopprune.gguf_export import export_gguf, prune_gguf, record_facts
    from coopprune.heal import HEALING_FILE

    pruned = Path(checkpoint) if checkpoint else Path(params.output_dir) / "pruned"
    record = asdict(PruningRecord.load(pruned))
    healed = (pruned / HEALING_FILE).is_file()
    patched = not healed and "patch" in record["params"]  # its down_proj weights are not the base GGUF's
    folder = Path(params.output_dir) / ("gguf-healed" if healed else "gguf-patched" if patched else "gguf")
    source = None if healed or patched else base_gguf(pruned)
    if source is not None:
        stem, _, quant = source.stem.rpartition(".")
        dst = folder / (f"{stem}-pruned.{quant}.gguf" if stem else f"{source.stem}-pruned.gguf")
        facts = {k: v for k, v in record_facts(record).items() if k != "removed_layers"}
        prune_gguf(source, record["removed_layers"], dst, facts=facts, overwrite=True)
        how = f"pruned {source.name} (its quantization kept)"
    else:
        name = Path(str(record.get("base_model", "model")).rstrip("/")).name or "model"
        if name == "default":
            from coopprune.naming import DEFAULT_MODEL_NAME as name
        label = "healed" if healed else "patched" if patched else "pruned"
        dst = export_gguf(pruned, folder / f"{name}-{label}.{params.export.dtype}.gguf", dtype=params.export.dtype,
                          vocab_from=base_gguf(pruned), overwrite=True)
        how = f"exported the {label} checkpoint ({params.export.dtype})"
    for stale in folder.glob("*.gguf"):  # one file per run: an earlier run's other name goes
        if stale != dst:
            stale.unlink()
    return {"path": str(dst), "how": how, "bytes": dst.stat().st_size}


def benchmark_release(params: Params) -> dict[str, Any]:
    """Base and pruned model with identical settings, their speed timed together, then
    ``report_release`` and the release card (DVC's ``benchmark`` stage)."""
    out = Path(params.output_dir)
    scores = {label: benchmark(params, ckpt, out / "benchmark" / f"{label}.json")
              for label, ckpt in (("base", params.model.source), ("pruned", str(out / "pruned")))}
    speed = compare_release_speed(params, scores)
    release = report_release(params, scores, speed)
    release["card"] = str(release_card(params))
    return release


SPEED_FILE = "speed.json"
SPEED_SETTINGS = ("speed", "new_tokens", "speed_pairs")  # what the speed comparison alone depends on


def compare_release_speed(params: Params, scores: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """``<output_dir>/benchmark/speed.json``: base and pruned timed in ``benchmark.speed_pairs``
    interleaved pairs (``coopprune.speed.compare_speed``), or None with ``benchmark.speed`` off.
    ``scores`` (the two benchmarks' results) give the weights' keys: a rerun with the same weights
    and settings reads the file instead of timing again (as ``benchmark`` does)."""
    from coopprune.speed import compare_speed

    b = params.benchmark
    if not b.speed:
        return None
    out = Path(params.output_dir)
    path = out / "benchmark" / SPEED_FILE
    keys = [((scores or {}).get(label) or {}).get("key") for label in ("base", "pruned")]
    settings = json.dumps(params.benchmark.model_dump(include=set(SPEED_SETTINGS)), sort_keys=True)
    key = "+".join([*keys, settings]) if all(keys) else None  # type: ignore[list-item]
    if key is not None and path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached
    result = compare_speed(params.model.source, out / "pruned", (1, 8), b.new_tokens, repeats=b.speed_pairs)
    data = {"key": key, **result.to_json(), "metrics": result.metrics()}
    write_json(path, data)
    return data


def report_release(params: Params, scores: dict[str, Any], speed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The perplexity-vs-removed-layers curve, ``plots/`` and the flat ``metrics.json`` (with the
    speed comparison's ratios when ``speed`` is given)."""
    out = Path(params.output_dir)
    curve = perplexity_curve(params, out / "pruned")
    plots = collect_plots(out, [{"removed": c["removed"], "perplexity": c["perplexity"]} for c in curve])
    metrics = release_metrics(out, scores, speed)
    write_json(out / "metrics.json", metrics)
    return {"scores": scores, "curve": curve, "metrics": metrics, "plots": str(plots)}


def release_card(params: Params, label: str = "pruned", exports: list[dict[str, Any]] | None = None) -> Path:
    """``<output_dir>/card.html`` (``card-healed.html`` for the healed model): the release card
    (``coopprune.card``), one self-contained page."""
    from coopprune.card import write_card

    return write_card(params.output_dir, label, exports=exports)


def collect_plots(out: Path, curve: list[dict[str, Any]]) -> Path:
    """``<out>/plots``: the run's figures in one folder (what ``dvc plots show`` and MLflow pick up)."""
    from coopprune.surrogate import PLOT_FILE

    folder = out / "plots"
    with atomic_dir(folder, overwrite=True) as tmp:
        write_csv(tmp / "perplexity_curve.csv", curve)
        for src, name in ((out / "pruned" / "contributions.png", "contributions.png"),
                          (out / "pruned" / INTERACTIONS_FILE, INTERACTIONS_FILE),
                          (out / "surrogate" / PLOT_FILE, "surrogate_fit.png")):
            if src.is_file():
                shutil.copyfile(src, tmp / name)
    return folder


def release_metrics(out: Path, scores: dict[str, Any], speed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The flat numbers DVC and MLflow track: quality and cost of the base and pruned models, the
    speed-up (``speedup_bs1``, its ``_min``/``_max`` over the interleaved pairs, ...), the held-out
    fit behind the contributions (with how many masks it rests on) and whether they can be read
    (``contributions_trustworthy``), and the Stage-2 surrogate's held-out fit on the sweep."""
    metrics = score_metrics(scores)
    if speed is not None:
        metrics.update(speed["metrics"])
    attribution = out / "pruned" / ATTRIBUTION_FILE
    if attribution.is_file():
        a = json.loads(attribution.read_text())
        metrics.update({"contributions_fit_r2": a["fit"]["r2"], "contributions_fit_spearman": a["fit"]["spearman"],
                        "contributions_fit_masks": a["fit"]["n"], "contributions_spanning_zero": a["spanning_zero"],
                        "contributions_trustworthy": int(not a["warnings"])})
    surrogate = out / "surrogate" / "surrogate.json"
    if surrogate.is_file():
        m = json.loads(surrogate.read_text()).get("metrics") or {}
        overall = m.get("overall") or {}
        metrics["surrogate_heldout_masks"] = overall.get("n")
        metrics["surrogate_heldout_r2"] = overall.get("r2")
        metrics["surrogate_heldout_spearman"] = overall.get("spearman")
        metrics["surrogate_within_stratum_spearman"] = m.get("mean_within_stratum_spearman")
    return metrics


def score_metrics(scores: dict[str, Any]) -> dict[str, Any]:
    """``<label>_perplexity``, ``<label>_zero_shot_mean``, ... for each benchmarked model."""
    metrics: dict[str, Any] = {}
    for label, s in scores.items():
        metrics[f"{label}_perplexity"] = s["perplexity"]["perplexity"]
        if s.get("domains"):
            for domain, value in s["domains"].items():
                metrics[f"{label}_perplexity_{domain}"] = value
            metrics[f"{label}_domain_mean_perplexity"] = float(np.mean(list(s["domains"].values())))
        if "zero_shot" in s:
            metrics[f"{label}_zero_shot_mean"] = s["zero_shot"]["mean"]
            metrics[f"{label}_parameters"] = s["parameters"]
    return metrics


def run(params: Params, progress: bool = True) -> dict[str, Any]:
    """The job without an orchestrator (``coopprune run``): sweep, decide, prune and compare
    held-out perplexity. ``summary.json`` has the Prefect flow's shape (``make run``) for every key
    both write; the flow adds the zero-shot benchmark, healing, export and the registry."""
    out = Path(params.output_dir)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    dataset = sweep(params, out / "masks", progress)
    timings["sweep_s"] = time.perf_counter() - t

    t = time.perf_counter()
    result = prune_from_params(params, dataset, progress)
    timings["prune_s"] = time.perf_counter() - t

    t = time.perf_counter()
    e = params.evaluation
    scores = {label: {"perplexity": asdict(evaluate_perplexity(source, e.text, e.window, e.max_windows, e.batch_size, progress))}
              for label, source in (("base", params.model.source), ("pruned", str(result.out_dir)))}
    timings["evaluate_s"] = time.perf_counter() - t

    summary = {
        "model": params.model.source,
        "mask_dataset": {"path": str(dataset.path), "rows": len(dataset)},
        "pruned": {"path": str(result.out_dir), "removed_layers": result.removed_layers, "evaluations": result.evaluations},
        "method": params.prune.method,
        "benchmark": scores,
        "output_dir": str(out),
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / "summary.json", summary)
    return summary


# moved into modules of their own: imported back for callers
__all__ = [
    "DECISION_FILE", "PruneRequest", "PruneResult", "REPORT_FILES", "SweepSetup", "apply_decision",
    "build_evaluator", "calibration_for", "check_store", "empty_store", "estimator_options", "evaluate_shard",
    "fit_surrogate", "load_base", "masks_dir", "merge_sweep", "model_depth", "plan_sweep", "prune",
    "prune_from_params", "removal_order", "screen_windows", "search_store", "sweep", "sweep_setup",
]
