"""The release after the cut: the patched and the healed checkpoint (each kept where its inputs
did not change), the removed set's spread across calibration seeds, the GGUF for llama.cpp, the
release benchmark with its report (the curve, ``plots/``, ``metrics.json``) and the release card."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from coopprune.atomic import atomic_dir, write_csv, write_json
from coopprune.config import Params
from coopprune.mixture import Calibration
from coopprune.pipeline.benchmarking import benchmark, compare_release_speed, perplexity_curve, release_metrics
from coopprune.records import INTERACTIONS_FILE, PruningRecord


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


def heal_source(params: Params) -> Path:
    """What healing starts from: ``<output_dir>/patched`` when ``patch.enabled``, else ``pruned``."""
    return Path(params.output_dir) / ("patched" if params.patch.enabled else "pruned")


def patch_release(params: Params, progress: bool = True) -> dict[str, Any]:
    """``<output_dir>/patched``: the pruned checkpoint with ``params.patch``'s linear patch, fitted on
    the run's calibration text (``patch.n_windows`` windows of it). A patched folder of the same
    settings, calibration and removal is kept (a rerun fits nothing again)."""
    from coopprune.patch_job import patch_checkpoint

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


def seed_spread_release(params: Params, progress: bool = True) -> dict[str, Any]:
    """``<output_dir>/stability.json``: the release's decision repeated with each of
    ``stability.seeds`` as ``calibration.seed`` (``coopprune.stability.seed_spread``), after the prune;
    seeds decided before with the same settings are read back. ``{"enabled": False}`` without seeds."""
    from coopprune.stability import seed_spread

    return seed_spread(params, progress)


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
