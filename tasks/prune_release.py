"""The steps of ``prune_release`` as Prefect tasks: each is one call into ``coopprune``.

No task caches its result (``NO_CACHE``): the steps write files, and resuming is the library's
job (sealed mask shards are skipped), which stays correct when DVC deletes outputs first.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from coopprune.config import Params
from coopprune.dataset import MaskDataset
from coopprune.naming import base_model_name
from coopprune.pipeline import benchmarking, dvc_stages, release, store
from coopprune.records import ATTRIBUTION_FILE
from coopprune.stages import run_stage


def contributions_tag(checkpoint: Path) -> dict[str, str]:
    """The run says in words whether its contributions can be read (``attribution.json``)."""
    path = checkpoint / ATTRIBUTION_FILE
    if not path.is_file():
        return {}
    a = json.loads(path.read_text())
    fit = f"held-out R2 {a['fit']['r2']:.2f} on {a['fit']['n']} real evaluations" if a["fit"]["r2"] is not None else "no held-out fit"
    return {"contributions": ("NOT TRUSTWORTHY: " + "; ".join(a["warnings"])) if a["warnings"] else f"readable ({fit})"}


def seed_spread_tag(out: Path) -> dict[str, str]:
    """``calibration_seed_spread``: the removed set across calibration seeds in words
    (``stability.json``, where the stability step ran for this checkpoint)."""
    from coopprune.stability import read_spread, spread_tag
    from coopprune.tracking.versions import CALIBRATION_SEED_SPREAD

    tag = spread_tag(read_spread(out))
    return {CALIBRATION_SEED_SPREAD: tag} if tag else {}


@task(name="prepare-data", cache_policy=NO_CACHE)
def prepare_data(params: Params) -> dict[str, Any]:
    return dvc_stages.prepare_data(params)


@task(name="plan-masks", cache_policy=NO_CACHE)
def plan_masks(params: Params) -> int:
    """Returns the number of shards to evaluate."""
    return store.plan_sweep(params).manifest.n_shards


@task(name="evaluate-shard", cache_policy=NO_CACHE, task_run_name="evaluate-shard-{shard}")
def evaluate_shard(params: Params, shard: int, threads: int | None = None) -> int:
    """Rows added (0 when the shard was already sealed by an earlier, interrupted run)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    return store.evaluate_shard(params, shard, progress=False)


@task(name="merge-masks", cache_policy=NO_CACHE)
def merge_masks(params: Params) -> dict[str, Any]:
    dataset = store.merge_sweep(store.masks_dir(params))
    return {"path": str(dataset.path), "rows": len(dataset)}


@task(name="fit-surrogate", cache_policy=NO_CACHE)
def fit_surrogate(params: Params) -> dict[str, Any]:
    return run_stage(params, "surrogate", progress=False)


@task(name="estimate-contributions", cache_policy=NO_CACHE)
def estimate_contributions(params: Params) -> dict[str, Any]:
    """Contributions on the game (reusing the sweep's masks) and the players to remove."""
    return run_stage(params, "contributions", progress=False)


@task(name="prune", cache_policy=NO_CACHE)
def prune(params: Params, contributions: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint without the players ``contributions`` chose, with its report beside it."""
    return run_stage(params, "prune", progress=False)


@task(name="benchmark", cache_policy=NO_CACHE, task_run_name="benchmark-{label}")
def benchmark(params: Params, checkpoint: str, label: str) -> dict[str, Any]:
    out = Path(params.output_dir) / "benchmark" / f"{label}.json"
    return benchmarking.benchmark(params, checkpoint, out)


@task(name="compare-speed", cache_policy=NO_CACHE)
def compare_speed(params: Params, scores: dict[str, Any]) -> dict[str, Any] | None:
    """Base and pruned timed together in interleaved pairs (``benchmark.speed_pairs``): the
    speed-up is their median ratio, never two figures timed minutes apart; None with speed off."""
    return benchmarking.compare_release_speed(params, scores)


@task(name="seed-spread", cache_policy=NO_CACHE)
def stability(params: Params, pruned: dict[str, Any]) -> dict[str, Any]:
    """The removed set decided again with each of ``stability.seeds`` as the calibration seed
    (``stability.json``); seeds already decided with the same settings are read back."""
    return release.seed_spread_release(params, progress=False)


@task(name="patch", cache_policy=NO_CACHE)
def patch(params: Params, pruned: dict[str, Any]) -> dict[str, Any]:
    """The training-free linear patch of the pruned checkpoint (``patch.enabled``), before healing.
    The flow benchmarks the result itself (``benchmark-patched``), not DVC's patch stage."""
    return release.patch_release(params, progress=False)


@task(name="heal", cache_policy=NO_CACHE)
def heal(params: Params, pruned: dict[str, Any]) -> dict[str, Any]:
    """LoRA healing of the pruned (or patched) checkpoint (``heal.enabled``); resumes a killed run's training.
    The flow benchmarks the result itself (``benchmark-healed``), not DVC's heal stage."""
    return release.heal_release(params, progress=False)


@task(name="export-gguf", cache_policy=NO_CACHE, task_run_name="export-gguf-{label}")
def export_gguf(params: Params, checkpoint: str, label: str) -> dict[str, Any]:
    """A model as a GGUF for llama.cpp (``export.gguf``), logged with its registered version."""
    return release.export_release(params, checkpoint)


@task(name="report", cache_policy=NO_CACHE)
def report(params: Params, scores: dict[str, Any], speed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Perplexity curve, plots/ and metrics.json from both benchmarks and the speed comparison."""
    return release.report_release(params, scores, speed)


@task(name="card", cache_policy=NO_CACHE, task_run_name="card-{label}")
def card(params: Params, label: str = "pruned", exports: list[dict[str, Any]] | None = None) -> str:
    """The release card (``<output_dir>/card.html``, ``card-healed.html``): one self-contained page."""
    return str(release.release_card(params, label, exports))


@task(name="register", cache_policy=NO_CACHE)
def register(params: Params, summary: dict[str, Any]) -> dict[str, Any]:
    """One MLflow run with everything, the checkpoint as a new version (alias candidate), promotion;
    a healed checkpoint then as a version of its own, judged by the same rule against the champion."""
    result = publish(params, summary)
    for label in ("patched", "healed"):
        if summary.get(label):
            result[label] = publish(params, summary, label=label)
    return result


def release_tags(params: Params, summary: dict[str, Any], label: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's tags, and the part of them its registered version carries too: the variant's
    (healed, patched) and the removed set's spread across seeds."""
    out = Path(params.output_dir)
    healed = summary.get("healed") if label == "healed" else None
    patched = summary.get("patched") if label == "patched" else None
    masks = Path(summary["mask_dataset"]["path"])
    tags = {
        "base_model": base_model_name(params.model.source),
        "base_model_revision": params.model.revision,
        "release_fingerprint": release_fingerprint(params, summary),
        "mask_dataset_dvc_md5": dvc_out_md5(masks),
        "mask_dataset_sha256": MaskDataset.open(masks).content_fingerprint(),
        "removed_layers": ",".join(map(str, summary["pruned"]["removed_layers"])),
        "method": params.prune.method,
    }
    variant = {"healed": "true", "heal_steps": healed["steps"], "heal_loss": healed["loss"],
               "heal_data_fingerprint": healed["data_fingerprint"]} if healed else {}
    if patched:
        variant |= {"patched": "true", "patch_objective": patched["objective"], "patch_lambda": str(patched["lambda"]),
                    "patch_calibration_fingerprint": patched["calibration_fingerprint"]}
    shared = seed_spread_tag(out) | variant  # the same removed set for the pruned, patched and healed versions
    return tags | contributions_tag(out / label) | shared, shared


def version_tags(metrics: dict[str, Any], label: str, tags: dict[str, Any], shared: dict[str, Any],
                 gguf: dict[str, Any] | None, card: Path) -> dict[str, Any]:
    """What the registered version's page shows: its scores, provenance, files and speed-up."""
    from coopprune.tracking import registry

    return {
        registry.ZERO_SHOT_MEAN: metrics.get(f"{label}_zero_shot_mean"),
        registry.PERPLEXITY: metrics.get(f"{label}_perplexity"),
        registry.DOMAIN_MEAN_PERPLEXITY: metrics.get(f"{label}_domain_mean_perplexity"),
        **{key.removeprefix(f"{label}_"): value for key, value in metrics.items()
           if key.startswith(f"{label}_perplexity_")},  # each held-out domain's, on the version page
        registry.BASE_MODEL: tags["base_model"],  # the real name, not pruning.json's "default"
        "release_fingerprint": tags["release_fingerprint"],
        "mask_dataset_dvc_md5": tags["mask_dataset_dvc_md5"],
        "gguf": f"gguf/{Path(gguf['path']).name}" if gguf else None,
        "card": f"card/{card.name}",
        **speed_tags(metrics),
        **shared,
    }


def publish(params: Params, summary: dict[str, Any], label: str = "pruned") -> dict[str, Any]:
    """Log and register ``<output_dir>/<label>`` (``pruned``, ``patched`` or ``healed``) with its own scores."""
    from coopprune.card import card_file, card_summary
    from coopprune.tracking import registry

    out = Path(params.output_dir)
    metrics = summary["metrics"]
    variant = summary.get(label) if label in ("healed", "patched") else None
    gguf = (variant or summary).get("gguf")
    masks = Path(summary["mask_dataset"]["path"])
    tags, shared = release_tags(params, summary, label)
    name = params.registry.model_name or registry.registered_model_name(params.model.source)
    k = len(summary["pruned"]["removed_layers"])
    run_name = f"{registry.registered_model_name(params.model.source, suffix='')} {params.prune.method} k={k}" + (
        f" {label}" if label != "pruned" else "")
    data = summary.get("data") or {}
    inputs = {role: {"name": f"{role} text", "source": data[role]["source"], "digest": data[role]["fingerprint"]}
              for role in ("calibration", "evaluation") if role in data}
    inputs["masks"] = {"name": "mask dataset", "source": str(masks), "digest": tags["mask_dataset_sha256"]}
    exports = release_exports(summary)
    card_path = out / card_file(label)
    if not card_path.is_file():  # the flow writes it before registering; a caller that did not gets one now
        card_path = release.release_card(params, label, exports)
    with tempfile.TemporaryDirectory(prefix=".mlflow-model-", dir=out) as tmp:  # logged, then gone
        model_path, model_dir = registered_model_dir(out / label, Path(tmp))
        artifacts = {"plots": out / "plots", "benchmark": out / "benchmark", "surrogate": out / "surrogate",
                     "card": card_path}
        flavored = (model_dir / "MLmodel").is_file()
        if not flavored:
            artifacts[model_path] = model_dir
        if gguf:
            artifacts["gguf"] = Path(gguf["path"])
        run_id = registry.log_run(params.registry.experiment, run_name, params.model_dump(), metrics, artifacts,
                                  tags, start_time=summary.get("started_at"), inputs=inputs,
                                  models={model_path: model_dir} if flavored else None)
    version = registry.register_pruned(run_id, model_path, name, version_tags(metrics, label, tags, shared, gguf, card_path),
                                       description=card_summary(out, label, exports))
    result: dict[str, Any] = {"run_id": run_id, "model_name": name, "version": version, "alias": registry.CANDIDATE}
    if params.registry.promote:
        decision = registry.promote(name, params.registry.rule)
        result["promotion"] = {"promoted": decision.promoted, "reason": decision.reason}
    return result


def speed_tags(metrics: dict[str, Any]) -> dict[str, str]:
    """The speed-up as the version shows it: ``speedup_bs1`` (the median pruned/base ratio of the
    interleaved pairs) and ``speedup_bs1_range`` (min-max over the pairs); no absolute tokens/s.
    The healed model has the pruned one's layers, so it carries the same measured ratio."""
    tags = {}
    for key, value in metrics.items():
        if key.startswith("speedup_bs") and key.count("_") == 1:
            tags[key] = f"{value:.3f}"
            low, high = metrics.get(f"{key}_min"), metrics.get(f"{key}_max")
            if low is not None and high is not None:
                tags[f"{key}_range"] = f"{low:.2f}-{high:.2f} over {metrics.get('speed_pairs')} interleaved pairs"
    return tags


def release_exports(summary: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The GGUF files the flow wrote (with how each was made), for the card; None: none exported."""
    found = []
    for label, part in (("pruned", summary), ("healed", summary.get("healed") or {})):
        if part.get("gguf"):
            found.append({**part["gguf"], "label": label})
    return found or None


def registered_model_dir(pruned: Path, work: Path) -> tuple[str, Path]:
    """What the registry holds, as (artifact path, local folder): the checkpoint as an MLflow
    transformers model written under ``work``, or the plain folder when it is int8-quantized (no
    transformers flavor loads it)."""
    from coopprune.quantize import is_quantized
    from coopprune.tracking.mlflow_model import save_mlflow_model

    if is_quantized(pruned):
        return "checkpoint", pruned
    return "model", save_mlflow_model(pruned, work / "model")


def release_fingerprint(params: Params, summary: dict[str, Any]) -> str:
    """The watcher's fingerprint when it started this run, else the base weights' fingerprint."""
    if params.release.fingerprint:
        return params.release.fingerprint
    return MaskDataset.open(summary["mask_dataset"]["path"]).manifest.identity.model_fingerprint


def dvc_out_md5(path: Path) -> str | None:
    """The md5 DVC recorded for ``path`` in ``dvc.lock`` (None outside a DVC run)."""
    import yaml

    lock = Path("dvc.lock")
    if not lock.is_file():
        return None
    for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
        for out in stage.get("outs", []):
            if Path(out.get("path", "")).resolve() == path.resolve():
                return out.get("md5")
    return None


def worker_threads(workers: int) -> int:
    """Torch threads per concurrent shard so that workers x threads fits the cores."""
    return max(1, (os.cpu_count() or 1) // workers)
