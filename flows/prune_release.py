"""``prune_release``: one model release from weights to a registered, benchmarked pruned model.

    python -m flows.prune_release --params params.yaml [--task-runner dask --address tcp://...]

Mask shards fan out on the configured Prefect task runner (threads here, Dask for a cluster);
everything else runs in order. Re-running after a kill resumes: sealed shards are skipped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from coopprune.atomic import write_json
from coopprune.config import FlowParams, Params
from coopprune.errors import CoopPruneError
from flows.orphans import reap_orphaned_servers
from tasks.prune_release import (
    benchmark,
    card,
    compare_speed,
    contributions_tag,
    estimate_contributions,
    evaluate_shard,
    export_gguf,
    fit_surrogate,
    heal,
    merge_masks,
    patch,
    plan_masks,
    prepare_data,
    prune,
    register,
    release_exports,
    report,
    stability,
    worker_threads,
)


def task_runner(settings: FlowParams):
    """The Prefect task runner the shards run on (an existing engine, not a home-made scheduler)."""
    if settings.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=settings.workers)
    from prefect_dask import DaskTaskRunner

    if settings.address:
        return DaskTaskRunner(address=settings.address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": settings.workers, "threads_per_worker": 1, "processes": True})


# log_prints stays off: Prefect would turn prints into logs even while a library captures stdout
# (dill's disassembly capture inside datasets/lm-eval then floods the log).
@flow(name="prune_release", log_prints=False)
def prune_release(params: Params) -> dict[str, Any]:
    """Sweep -> surrogate -> contributions -> prune -> [seed spread] -> [patch] -> [heal] -> benchmark -> speed ->
    [GGUF] -> card -> register; returns the summary."""
    started, started_at = time.perf_counter(), time.time()
    out = Path(params.output_dir)
    prepared = prepare_data(params)
    n_shards = plan_masks(params)
    threads = worker_threads(params.flow.workers)
    shard_task = evaluate_shard.with_options(retries=params.flow.retries, retry_delay_seconds=1)
    shards = [shard_task.submit(params, shard, threads) for shard in range(n_shards)]
    wait(shards)
    failed = [s for s, future in enumerate(shards) if future.state.is_failed()]
    if failed:
        raise CoopPruneError(f"mask shards {failed} failed after {params.flow.retries} retries; nothing was registered")
    masks = merge_masks(params)
    surrogate = fit_surrogate(params)
    contributions = estimate_contributions(params)
    pruned = prune(params, contributions)
    spread = stability(params, pruned) if params.stability.seeds else None  # before report: metrics and card read it
    patched = patch(params, pruned) if params.patch.enabled else None
    healed = heal(params, pruned) if params.heal.enabled else None  # heals the patched model when there is one
    scores = {"base": benchmark(params, params.model.source, "base"),
              "pruned": benchmark(params, pruned["path"], "pruned")}
    if patched is not None:
        scores["patched"] = benchmark(params, patched["path"], "patched")
    if healed is not None:  # the same benchmark, so the promotion rule compares like with like
        scores["healed"] = benchmark(params, healed["path"], "healed")
    speed = compare_speed(params, scores) if params.benchmark.speed else None  # both models, interleaved
    release = report(params, scores, speed)
    summary: dict[str, Any] = {
        "model": params.model.source,
        "data": prepared,
        "mask_dataset": masks,
        "surrogate": surrogate,
        "contributions": contributions,
        "pruned": pruned,
        "method": params.prune.method,
        "benchmark": scores,
        "metrics": release["metrics"],
        "speed": speed,
        "plots": release["plots"],
        "output_dir": str(out),
        "started_at": started_at,
    }
    if spread is not None:
        summary["stability"] = spread
    if patched is not None:
        summary["patched"] = patched
    if healed is not None:
        summary["healed"] = healed
    if params.export.gguf:
        summary["gguf"] = export_gguf(params, pruned["path"], "pruned")
        if patched is not None:
            patched["gguf"] = export_gguf(params, patched["path"], "patched")
        if healed is not None:
            healed["gguf"] = export_gguf(params, healed["path"], "healed")
    exports = release_exports(summary)
    summary["card"] = card(params, "pruned", exports)
    if healed is not None:
        healed["card"] = card(params, "healed", exports)
    if params.registry.enabled:
        summary["registry"] = register(params, summary)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out / "summary.json", summary)
    return summary


def run(params: Params) -> dict[str, Any]:
    """Run the flow on the task runner ``params.flow`` names; raises when the flow failed."""
    state = prune_release.with_options(task_runner=task_runner(params.flow))(params, return_state=True)
    if state.is_failed():
        state.result()  # re-raises the failing task's error
    return state.result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--task-runner", choices=["threads", "dask"], default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--address", default=None, help="Dask scheduler address (default: a local cluster)")
    args = parser.parse_args(argv)
    reap_and_say()
    try:
        params = Params.load(args.params)
        overrides = {k: v for k, v in (("task_runner", args.task_runner), ("workers", args.workers),
                                       ("address", args.address)) if v is not None}
        if overrides:
            params = Params.from_dict({**params.model_dump(), "flow": {**params.flow.model_dump(), **overrides}})
        summary = run(params)
    except CoopPruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_summary(summary)
    return 0


def reap_and_say() -> None:
    """Stop the ephemeral servers of killed runs before this run starts its own (flows/orphans.py)."""
    reaped = reap_orphaned_servers()
    if reaped:
        print(f"stopped {reaped} ephemeral Prefect server(s) left by killed runs", file=sys.stderr)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def print_summary(summary: dict[str, Any]) -> None:
    bench = summary["benchmark"]
    lines = [
        f"mask dataset:    {summary['mask_dataset']['path']} ({summary['mask_dataset']['rows']} masks)",
        f"surrogate:       {summary['surrogate']['path']} (held out on "
        f"{summary['surrogate']['metrics']['overall']['n']} masks: R2 {_fmt(summary['surrogate']['metrics']['overall']['r2'])}, "
        f"Spearman {_fmt(summary['surrogate']['metrics']['overall']['spearman'])})",
        f"contributions:   {summary['pruned']['path']}/contributions.png "
        f"({contributions_tag(Path(summary['pruned']['path'])).get('contributions', 'no attribution')})",
        f"pruned model:    {summary['pruned']['path']} (removed layers {summary['pruned']['removed_layers']})",
        f"perplexity:      base {bench['base']['perplexity']['perplexity']:.2f} -> "
        f"pruned {bench['pruned']['perplexity']['perplexity']:.2f}",
    ]
    metrics = summary.get("metrics") or {}
    speedups = [f"{metrics[f'speedup_bs{b}']:.2f}x at batch {b} ({metrics[f'speedup_bs{b}_min']:.2f}-"
                f"{metrics[f'speedup_bs{b}_max']:.2f})" for b in (1, 8) if f"speedup_bs{b}" in metrics]
    if speedups:
        lines.append(f"speed-up:        {', '.join(speedups)}, median of {metrics['speed_pairs']} interleaved pairs")
    if "zero_shot" in bench["pruned"]:
        lines.append(f"zero-shot mean:  base {bench['base']['zero_shot']['mean']:.3f} -> "
                     f"pruned {bench['pruned']['zero_shot']['mean']:.3f}")
    if "stability" in summary:
        from coopprune.stability import spread_tag

        lines.append(f"seed spread:     {spread_tag(summary['stability'])} ({summary['stability']['path']})")
    if "patched" in summary:
        lines.append(f"patched model:   {summary['patched']['path']} (layers {summary['patched']['runs']} folded, "
                     f"perplexity {bench['patched']['perplexity']['perplexity']:.2f})")
    if "healed" in summary:
        lines.append(f"healed model:    {summary['healed']['path']} ({summary['healed']['steps']} steps, perplexity "
                     f"{bench['healed']['perplexity']['perplexity']:.2f})")
    if "gguf" in summary:
        lines.append(f"gguf:            {summary['gguf']['path']} ({summary['gguf']['how']})")
    if "card" in summary:
        lines.append(f"release card:    {summary['card']}")
    if "registry" in summary:
        lines.append(f"registry:        {summary['registry']}")
    lines.append(f"summary:         {summary['output_dir']}/summary.json ({summary['seconds']} s)")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
