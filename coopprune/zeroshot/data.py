"""The bundled benchmark splits read from disk, a task's chosen items written as an Arrow file, and
the inline lm-eval configs that read those files, so lm-eval never touches the Hugging Face hub.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coopprune.errors import CoopPruneError
from coopprune.zeroshot.items import Pool, calibration_items, select_items
from coopprune.zeroshot.tasks import TASKS, check_tasks


def _load_split(data_dir: Path, name: str):
    import datasets

    folder = Path(data_dir) / TASKS[name].path
    if not (folder / "state.json").is_file():
        raise CoopPruneError(f"benchmark data for '{name}' not found: {folder} (run `coopprune fetch-default`)")
    try:
        return datasets.load_from_disk(str(folder))
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for damaged folders
        raise CoopPruneError(f"cannot read benchmark data for '{name}' at {folder}: {exc}") from None


def write_subset(data_dir: Path, name: str, limit: int | None, seed: int, out_file: Path,
                 pool: Pool = "evaluation") -> tuple[list[int], int]:
    """Write the task's seeded subset as an Arrow stream file (the ``arrow`` loader's format): of
    the items evaluation draws (:func:`select_items`), or of those reserved for calibration
    (:func:`calibration_items`, ``limit`` required).

    Returns the subset's row indices and the size of the whole split.
    """
    import pyarrow as pa

    split = _load_split(data_dir, name)
    if pool == "evaluation":
        items = select_items(len(split), limit, seed, name)
    else:
        assert limit is not None, "a calibration subset takes a number of items"
        items = calibration_items(len(split), limit, seed, name)
    table = split.select(items).with_format("arrow")[:]  # keeps the HF feature metadata in the schema
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(out_file), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return items, len(split)


@dataclass(frozen=True)
class Subsets:
    """The written subsets: lm-eval configs plus the source rows they hold."""

    configs: dict[str, dict[str, Any]]
    items: dict[str, list[int]]
    n_total: dict[str, int]


def build_configs(
    tasks: Sequence[str] | None, limit: int | None, seed: int, work_dir: Path, data_dir: Path | None = None,
    pool: Pool = "evaluation",
) -> Subsets:
    """Write each task's subset (of ``pool``, see :func:`write_subset`) under ``work_dir`` and
    return the inline lm-eval configs reading them."""
    from coopprune.fetch import benchmark_dir

    names = check_tasks(tasks)
    data_dir = Path(data_dir) if data_dir is not None else benchmark_dir()
    work_dir = Path(work_dir).resolve()
    shutil.rmtree(work_dir / "hf_datasets_cache", ignore_errors=True)  # never reuse a cache of older subsets
    configs, items, n_total = {}, {}, {}
    for name in names:
        data_file = work_dir / "data" / name / "validation.arrow"
        items[name], n_total[name] = write_subset(data_dir, name, limit, seed, data_file, pool)
        configs[name] = TASKS[name].lm_eval_config(name, data_file, work_dir / "hf_datasets_cache")
    return Subsets(configs, items, n_total)


def lm_eval_tasks(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """lm-eval ``TaskManager.load`` output for inline configs; the default task index (10 s, hub-backed)
    is never built: ``include_defaults=False`` and no include path, since every task comes as a dict."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False).load(list(configs.values()))
