"""The Stage-1 sweep of `make run`'s plan on Prefect's thread runner vs a local Dask cluster.

Same params as `make run` (SmolLM2-135M, 10 x 128 LAMBADA tokens, the 30 masks of
params.yaml's sampling section), the flow's own shard task (`tasks.prune_release.evaluate_shard`)
submitted on each task runner: threads (`flow.workers: 1`, torch on both cores: make run's
default) and Dask (`flow.task_runner: dask`, 2 worker processes of 1 thread each, torch on one
core each). Shards of 15 masks, so that two workers have work (the shard size changes scheduling
only: the plan, and so the dataset, is the same). Per runner: wall time (the Dask cluster's start
included), masks per second, and whether the two datasets are identical mask by mask.

    python bench/dask_sweep.py [--shard-size 15]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from prefect import flow
from prefect.futures import wait

from coopprune.atomic import write_json
from coopprune.config import Params
from coopprune.dataset import MaskDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tasks/ and flows/ are not installed: the checkout's
from flows.prune_release import task_runner  # noqa: E402
from tasks.prune_release import evaluate_shard, merge_masks, plan_masks, worker_threads  # noqa: E402

RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parent / "work" / "dask_sweep"


@flow(name="sweep-only", log_prints=False)
def sweep_only(params: Params) -> dict:
    """The sweep part of prune_release, on whatever task runner it is given."""
    n_shards = plan_masks(params)
    threads = worker_threads(params.flow.workers)
    futures = [evaluate_shard.submit(params, shard, threads) for shard in range(n_shards)]
    wait(futures)
    failed = [s for s, f in enumerate(futures) if f.state.is_failed()]
    if failed:
        raise RuntimeError(f"shards {failed} failed")
    return merge_masks(params)


def run(runner: str, workers: int, shard_size: int) -> tuple[float, MaskDataset]:
    base = Params.load(Path(__file__).parent.parent / "params.yaml").model_dump()
    out = WORK / runner
    shutil.rmtree(out, ignore_errors=True)  # a fresh sweep each time: nothing read from an earlier one
    base["output_dir"] = str(out)
    base["sampling"]["shard_size"] = shard_size
    base["flow"] = {**base["flow"], "task_runner": runner, "workers": workers}
    params = Params.from_dict(base)
    start = time.perf_counter()
    sweep_only.with_options(task_runner=task_runner(params.flow))(params)
    return time.perf_counter() - start, MaskDataset.open(out / "masks")


def by_mask(dataset: MaskDataset) -> dict[bytes, float]:
    rows = dataset.rows()
    return {np.asarray(r["mask"], dtype=bool).tobytes(): float(r["utility"]) for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shard-size", type=int, default=15)
    args = parser.parse_args()
    results = {}
    for runner, workers in (("threads", 1), ("dask", 2)):
        seconds, dataset = run(runner, workers, args.shard_size)
        results[runner] = {"workers": workers, "seconds": round(seconds, 1), "masks": len(dataset),
                           "masks_per_s": round(len(dataset) / seconds, 3), "utilities": by_mask(dataset)}
        print(f"{runner}: {len(dataset)} masks in {seconds:.1f}s", flush=True)
    a, b = results["threads"]["utilities"], results["dask"]["utilities"]
    identical = a.keys() == b.keys() and all(a[m] == b[m] for m in a)
    max_diff = max((abs(a[m] - b[m]) for m in a if m in b), default=float("nan"))
    rows = ["| runner | workers x threads | masks | wall s | masks/s |", "|---|---|---|---|---|"]
    for runner, r in results.items():
        shape = "1 x 2 (torch)" if runner == "threads" else "2 processes x 1"
        rows.append(f"| {runner} | {shape} | {r['masks']} | {r['seconds']} | {r['masks_per_s']} |")
    verdict = "identical" if identical else f"differ (max |delta utility| {max_diff:.3g})"
    table = "\n".join(rows) + f"\n\nDatasets {verdict}: same masks, utilities compared mask by mask.\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dask_sweep.md").write_text(table)
    write_json(RESULTS / "dask_sweep.json", {
        "shard_size": args.shard_size, "identical": identical, "max_abs_utility_diff": max_diff,
        **{k: {kk: vv for kk, vv in v.items() if kk != "utilities"} for k, v in results.items()}})


if __name__ == "__main__":
    main()
