"""The Python API behind the CLI: each function is one user-level job, built from the library.

One module per job, each importing only those listed before it:

- ``inputs``: what the game is played with, from the params (model depth, base model,
  calibration, the engine on its windows, the method's options and screen windows).
- ``store``: Stage 1, the sweep, and the mask datasets searches reuse; the Stage-2 surrogate.
- ``job``: the prune decision (``PruneRequest`` -> ``prune``, ``apply_decision``,
  ``prune_from_params``).
- ``benchmarking``: held-out perplexity, zero-shot, the curve, the timed speed comparison and
  the tracked metrics.
- ``release``: the patched and healed checkpoints, the removed set's spread across calibration
  seeds, the GGUF export, the release report and card.
- ``dvc_stages``: the functions ``coopprune.stages.STAGES`` runs, and ``prepare_data``.
- ``runner``: ``run``, the job without an orchestrator (``coopprune run``).

The names are imported back here, so ``from coopprune.pipeline import prune`` keeps working;
patch a name in the module that looks it up, not here.
"""

from __future__ import annotations

from coopprune.pipeline.benchmarking import (
    SPEED_FILE,
    SPEED_SETTINGS,
    benchmark,
    benchmark_key,
    compare_release_speed,
    evaluate_perplexity,
    held_out_perplexity,
    perplexity_curve,
    release_metrics,
    score_metrics,
)
from coopprune.pipeline.dvc_stages import (
    benchmark_stage,
    contributions_stage,
    data_stage,
    export_stage,
    heal_stage,
    patch_stage,
    prepare_data,
    prune_stage,
    stability_stage,
    surrogate_stage,
    sweep_stage,
)
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
from coopprune.pipeline.release import (
    benchmark_release,
    collect_plots,
    export_release,
    heal_release,
    heal_source,
    patch_release,
    release_card,
    report_release,
    seed_spread_release,
)
from coopprune.pipeline.runner import run
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

__all__ = [
    "DECISION_FILE", "REPORT_FILES", "SPEED_FILE", "SPEED_SETTINGS", "PruneRequest", "PruneResult", "SweepSetup",
    "apply_decision", "benchmark", "benchmark_key", "benchmark_release", "benchmark_stage", "build_evaluator",
    "calibration_for", "check_store", "collect_plots", "compare_release_speed", "contributions_stage", "data_stage",
    "empty_store", "estimator_options", "evaluate_perplexity", "evaluate_shard", "export_release", "export_stage",
    "fit_surrogate", "heal_release", "heal_source", "heal_stage", "held_out_perplexity", "load_base", "masks_dir",
    "merge_sweep", "model_depth", "patch_release", "patch_stage", "perplexity_curve", "plan_sweep", "prepare_data",
    "prune", "prune_from_params", "prune_stage", "release_card", "release_metrics", "removal_order",
    "report_release", "run", "score_metrics", "screen_windows", "search_store", "seed_spread_release",
    "stability_stage", "surrogate_stage", "sweep", "sweep_setup", "sweep_stage",
]
