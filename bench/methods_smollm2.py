"""Every pruning method on the default model at k layers removed: which layers, at what cost, how good.

One Stage-1 sweep (the paper's strata scaled to the model, ``--per-stratum`` masks each) is
evaluated once and shared through the mask dataset: the surrogate methods train on it, the
others add their own real evaluations to it. For each method the table gives the removed
layers, the real forward passes it consumed beyond the sweep, the sweep masks it read, wall
time, the calibration utility of the pruned model and its held-out perplexity (BoolQ passages,
128-token windows). ``random`` is averaged over seeds.

    python bench/methods_smollm2.py [--k 6] [--per-stratum 40] [--methods ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from coopprune import pipeline
from coopprune.config import Params
from coopprune.estimators import ESTIMATORS
from coopprune.records import PRUNING_FILE, PruningRecord
from coopprune.sampling import PAPER_REMOVE_RATIOS

RESULTS = Path(__file__).parent / "results"
METHODS = ["semivalue", "shapley", "shapley-adjusted", "bi", "angular", "ppl", "sleb", "last", "random"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--per-stratum", type=int, default=40)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--random-seeds", type=int, default=3)
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--work", type=Path, default=None, help="keep the sweep and checkpoints here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="coopprune-methods-"))
    params = Params.from_dict({
        "model": {"source": args.model},
        "game": {"utility": "ppl_ratio"},  # the paper's game, as this table was measured
        "sampling": {"per_stratum": args.per_stratum, "remove_ratios": list(PAPER_REMOVE_RATIOS)},
        "output_dir": str(work),
    })
    c = params.calibration
    t = time.perf_counter()
    store = pipeline.sweep(params, work / "masks")
    sweep_s = time.perf_counter() - t
    n_layers = store.manifest.identity.n_layers
    budget = len(store.manifest.plan)
    print(f"sweep: {len(store)} masks in {sweep_s:.0f}s", flush=True)
    base = pipeline.evaluate_perplexity(args.model, "boolq", 128, args.eval_windows, progress=False)

    rows = []
    for method in args.methods:
        random_draw = ESTIMATORS[method].random_draw  # a random baseline is averaged over seeds
        seeds = range(args.random_seeds) if random_draw else [0]
        runs = []
        for seed in seeds:
            out = work / f"{method}-{seed}"
            cell = out / "bench_cell.json"
            if cell.is_file():  # finished cells are cached: a long run completes over several calls
                runs.append(json.loads(cell.read_text()))
                continue
            if (out / PRUNING_FILE).is_file():  # pruned by an earlier, interrupted call
                seconds = PruningRecord.load(out).scores["seconds"]
            else:
                t = time.perf_counter()
                cell_params = params.model_copy(update={
                    "prune": params.prune.model_copy(update={"method": method, "remove": args.k, "budget": budget}),
                    "sampling": params.sampling.model_copy(update={"seed": seed if random_draw else params.sampling.seed}),
                })
                pipeline.prune(pipeline.PruneRequest(cell_params, out, masks=store.path, overwrite=True,
                                                                 progress=False))
                seconds = time.perf_counter() - t
            ppl = pipeline.evaluate_perplexity(str(out), "boolq", 128, args.eval_windows, progress=False).perplexity
            record = PruningRecord.load(out)
            rnd = record.scores["rounds"][0]
            runs.append({
                "removed": record.removed_layers, "evaluations": record.scores["evaluations"],
                "seconds": seconds, "ppl": ppl,
                "training_masks": rnd.get("training_masks"), "stability": rnd.get("bottom_k_stability"),
                "surrogate": (rnd.get("surrogate") or {}).get("metrics"),
            })
            cell.write_text(json.dumps(runs[-1]))
        row = {
            "method": method,
            "removed_layers": runs[0]["removed"] if len(runs) == 1 else [r["removed"] for r in runs],
            "new_real_evaluations": float(np.mean([r["evaluations"] for r in runs])),
            "sweep_masks_read": runs[0]["training_masks"],
            "seconds": float(np.mean([r["seconds"] for r in runs])),
            "heldout_ppl": float(np.mean([r["ppl"] for r in runs])),
            "bottom_k_stability": runs[0]["stability"],
            "surrogate_metrics": runs[0]["surrogate"],
        }
        rows.append(row)
        print(f"{method:17s} removed {row['removed_layers']} evals {row['new_real_evaluations']:.0f} "
              f"ppl {row['heldout_ppl']:.2f} ({row['seconds']:.0f}s)", flush=True)

    RESULTS.mkdir(exist_ok=True)
    out = {"model": args.model, "layers": n_layers, "k": args.k, "sweep_masks": len(store), "sweep_seconds": sweep_s,
           "base_heldout_ppl": base.perplexity, "calibration": f"{c.n_windows} x {c.window} tokens, {c.source}",
           "rows": rows, "date": time.strftime("%Y-%m-%d")}
    (RESULTS / "methods_smollm2.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"Base model held-out perplexity: {base.perplexity:.2f} (BoolQ passages, 128-token windows)", "",
             "| method | removed layers | new real evals | sweep masks read | s | held-out PPL | bottom-k stability |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        removed = r["removed_layers"] if r["method"] != "random" else f"{len(r['removed_layers'])} seeds"
        stab = "" if r["bottom_k_stability"] is None else f"{r['bottom_k_stability']:.2f}"
        lines.append(f"| {r['method']} | {removed} | {r['new_real_evaluations']:.0f} | {r['sweep_masks_read'] or 0} | "
                     f"{r['seconds']:.0f} | {r['heldout_ppl']:.2f} | {stab} |")
    (RESULTS / "methods_smollm2.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
