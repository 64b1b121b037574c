"""How good and how fast a checkpoint is, with the same settings for every model: held-out
perplexity (overall and per held-out domain) and zero-shot accuracy, the perplexity after each
removal in turn (the curve), base and pruned timed together, and the flat metrics DVC and MLflow
track."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from coopprune.atomic import write_json
from coopprune.calibration import evaluation_windows, load_texts
from coopprune.config import Params
from coopprune.domains import evaluation_texts
from coopprune.engine import MaskEvaluator
from coopprune.evaluate import PerplexityResult, perplexity
from coopprune.models import LoadedModel, load_model
from coopprune.models.loading import model_fingerprint
from coopprune.pipeline.inputs import load_base
from coopprune.pipeline.job import removal_order
from coopprune.prune import count_parameters
from coopprune.records import ATTRIBUTION_FILE, PruningRecord
from coopprune.stability import read_spread, spread_metrics


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


def release_metrics(out: Path, scores: dict[str, Any], speed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The flat numbers DVC and MLflow track: quality and cost of the base and pruned models, the
    speed-up (``speedup_bs1``, its ``_min``/``_max`` over the interleaved pairs, ...), the held-out
    fit behind the contributions (with how many masks it rests on) and whether they can be read
    (``contributions_trustworthy``), the Stage-2 surrogate's held-out fit on the sweep, and, where
    the stability step ran, ``calibration_seeds`` and ``calibration_seed_distinct_sets``."""
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
    metrics.update(spread_metrics(read_spread(out)))  # the stability step's, when it ran for this checkpoint
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
