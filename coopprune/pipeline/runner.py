"""``coopprune run``: the job without an orchestrator, in one call."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from coopprune.atomic import write_json
from coopprune.config import Params
from coopprune.pipeline.benchmarking import evaluate_perplexity
from coopprune.pipeline.job import prune_from_params
from coopprune.pipeline.store import sweep


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
