"""The removed set's spread across calibration draws: is the set a property of the model, or of
the calibration windows that happened to be drawn? ``seed_spread`` repeats the release's decision
(the sweep, then the configured method's search, exactly as the main job runs them) once per
extra ``calibration.seed`` in ``stability.seeds``: other windows of the same text (for
``game.utility: mc_margin``, other reserved items), everything else unchanged. The sets are
compared in ``<output_dir>/stability.json``::

    {"release_seed": 0, "seeds": [0, 1, 2], "sets": {"0": [3, 4], "1": [3, 4], "2": [3, 5]},
     "distinct_sets": 2, "same_as_release": [1], "layers_always_removed": [3],
     "layers_sometimes_removed": [4, 5], "checkpoint": "<sha256 of pruned/pruning.json>"}

``same_as_release`` lists the extra seeds whose set is the release's; ``checkpoint`` ties the file
to the pruned checkpoint it was measured for, so a file left by an earlier prune is never read as
this one's (:func:`read_spread`). Sublayer players are compared by name.

Each seed works in ``<output_dir>/stability/seed-<s>`` (its own ``masks``, ``search`` stores and
``contributions/decision.json``), so a killed run resumes without repeating an evaluation, and a
seed already decided with the same settings on the same base weights is read back from its
``seed.json`` without loading the model. Each seed costs about what the main decision cost; with
``seeds: []`` nothing runs and nothing is written.

No Prefect here; the pipeline modules are imported where a seed is decided (they import torch).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from coopprune.atomic import read_json, write_json
from coopprune.config import Params, StabilityParams
from coopprune.errors import CoopPruneError
from coopprune.records import DECISION_FILE, PRUNING_FILE, Decision, PruningRecord

STABILITY_FILE = "stability.json"
STABILITY_DIR = "stability"
SEED_FILE = "seed.json"  # in each seed's folder: the settings it was decided with and its set
#: the sections a decision depends on (the base weights' fingerprint is added to them)
DECISION_SECTIONS = frozenset({"model", "calibration", "game", "sampling", "surrogate", "prune"})


def seed_dir(params: Params, seed: int) -> Path:
    return Path(params.output_dir) / STABILITY_DIR / f"seed-{seed}"


def seed_params(params: Params, seed: int) -> Params:
    """The release's params with ``calibration.seed = seed``, working in the seed's own folder
    (``stability`` emptied: this run is one of the repeats, not a release of its own)."""
    return params.model_copy(update={
        "calibration": params.calibration.model_copy(update={"seed": seed}),
        "stability": StabilityParams(),
        "output_dir": str(seed_dir(params, seed)),
    })


def seed_spread(params: Params, progress: bool = True) -> dict[str, Any]:
    """Decide again with each of ``params.stability.seeds`` and write ``<output_dir>/stability.json``;
    returns its content with ``path`` and ``decided`` (the seeds decided by this call; the others
    were read back). With no seeds: ``{"enabled": False}``, nothing run or written."""
    if not params.stability.seeds:
        return {"enabled": False}
    out = Path(params.output_dir)
    release, base_fingerprint, checkpoint = _release(out)
    sets: dict[int, list[Any]] = {params.calibration.seed: release}
    decided = []
    for seed in params.stability.seeds:
        sets[seed], fresh = _decide(params, seed, base_fingerprint, progress)
        if fresh:
            decided.append(seed)
    spread = summarize(params.calibration.seed, sets, checkpoint)
    write_json(out / STABILITY_FILE, spread)
    return {**spread, "path": str(out / STABILITY_FILE), "decided": decided}


def summarize(release_seed: int, sets: dict[int, list[Any]], checkpoint: str | None = None) -> dict[str, Any]:
    """``stability.json`` from each seed's removed set (the release's seed first)."""
    seeds = [release_seed, *(s for s in sets if s != release_seed)]
    chosen = {seed: sorted(sets[seed]) for seed in seeds}
    members = [set(s) for s in chosen.values()]
    always = set.intersection(*members)
    return {
        "release_seed": release_seed,
        "seeds": seeds,
        "sets": {str(s): chosen[s] for s in seeds},
        "distinct_sets": len({tuple(s) for s in chosen.values()}),
        "same_as_release": [s for s in seeds[1:] if chosen[s] == chosen[release_seed]],
        "layers_always_removed": sorted(always),
        "layers_sometimes_removed": sorted(set.union(*members) - always),
        "checkpoint": checkpoint,
    }


def _release(out: Path) -> tuple[list[Any], str, str | None]:
    """The release's own set (``pruned/pruning.json``, else the main ``contributions/decision.json``),
    its base weights' fingerprint and the checkpoint record's sha256 (None without a checkpoint)."""
    record_path = out / "pruned" / PRUNING_FILE
    if record_path.is_file():
        record = PruningRecord.load(out / "pruned")
        return record.players, record.base_fingerprint, _sha256(record_path)
    if not (out / "contributions" / DECISION_FILE).is_file():
        raise CoopPruneError(f"no {PRUNING_FILE} in {out / 'pruned'} and no decision in {out / 'contributions'}: "
                             "run the prune step before the seed spread")
    decision = Decision.load(out / "contributions")
    return decision.players, decision.base_fingerprint, None


def _decide(params: Params, seed: int, base_fingerprint: str, progress: bool) -> tuple[list[Any], bool]:
    """The set the main job chooses with ``calibration.seed = seed``, and whether it was decided now
    (False: read back from a finished decision with the same settings)."""
    p = seed_params(params, seed)
    folder = Path(p.output_dir)
    key = {"base_fingerprint": base_fingerprint,
           **p.model_dump(mode="json", include=set(DECISION_SECTIONS), by_alias=True)}
    done = read_json(folder / SEED_FILE) or {}
    if done.get("key") == key and "removed" in done and (folder / "contributions" / DECISION_FILE).is_file():
        return done["removed"], False

    from coopprune.dataset import MaskDataset
    from coopprune.pipeline.job import prune_from_params
    from coopprune.pipeline.store import sweep_setup
    from coopprune.sweep import run_sweep

    # store.sweep in its two steps: this seed's masks are this step's own cache, so one planned with
    # other settings (model, sampling, the method's screen windows) is started again, not refused
    setup = sweep_setup(p)
    masks = folder / "masks"
    try:
        MaskDataset.create_or_resume(masks, setup.manifest)
    except CoopPruneError:
        shutil.rmtree(masks)
    dataset = run_sweep(setup.evaluator, setup.manifest, masks, progress=progress)
    result = prune_from_params(p, dataset, progress=progress, decision_only=True)
    removed = sorted(Decision.load(folder / "contributions").players)
    write_json(folder / SEED_FILE, {"key": key, "removed": removed, "evaluations": result.evaluations})
    return removed, True


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- reading it back: metrics, the registry tag, the card


def read_spread(out_dir: str | Path) -> dict[str, Any] | None:
    """``<out_dir>/stability.json`` when the step ran for the checkpoint now in ``<out_dir>/pruned``;
    None when it did not run, was off (``{"enabled": false}``) or measured an earlier checkpoint."""
    out = Path(out_dir)
    spread = read_json(out / STABILITY_FILE)
    if not spread or not spread.get("seeds"):
        return None
    record = out / "pruned" / PRUNING_FILE
    if spread.get("checkpoint") and record.is_file() and _sha256(record) != spread["checkpoint"]:
        return None
    return spread


def spread_metrics(spread: dict[str, Any] | None) -> dict[str, int]:
    """``calibration_seeds`` (the release's included) and ``calibration_seed_distinct_sets``."""
    if not spread:
        return {}
    return {"calibration_seeds": len(spread["seeds"]), "calibration_seed_distinct_sets": spread["distinct_sets"]}


def spread_tag(spread: dict[str, Any] | None) -> str | None:
    """The registry tag ``calibration_seed_spread``: ``3 seeds, 1 set``, or ``3 seeds, 2 sets:
    layers 4, 5 vary; seed 1 matches the release's seed 0``."""
    if not spread:
        return None
    n, d = len(spread["seeds"]), spread["distinct_sets"]
    text = f"{n} seeds, {d} set{'s' if d != 1 else ''}"
    if d == 1:
        return text
    varying = ", ".join(map(str, spread["layers_sometimes_removed"]))
    same = spread["same_as_release"]
    matches = ("none matches" if not same else f"seed{'s' if len(same) > 1 else ''} "
               f"{', '.join(map(str, same))} match{'es' if len(same) == 1 else ''}")
    return f"{text}: layers {varying} vary; {matches} the release's seed {spread['release_seed']}"
