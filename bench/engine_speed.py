"""Masks per second: coopprune's engine vs the reference approach, same masks, one run.

Reference (the paper's code): zero the dropped layers' weights and run the full model.
Ours: run a view of the kept layers only, resuming each mask from the deepest layer it shares
with the previous one. The plan is the paper's strata scaled to the model's depth; shards are
evaluated exactly as a sweep evaluates them, alternating which method goes first (ABBA), and
a spread-out subset of shards stands for the whole plan (each shard is independent work).

    python bench/engine_speed.py [--per-stratum 160] [--shards 4] [--model default]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from coopprune.calibration import calibration_windows, load_texts
from coopprune.dataset import bits_to_mask
from coopprune.engine import MaskEvaluator, token_nll
from coopprune.models import load_model
from coopprune.sampling import StrataPlan
from coopprune.sweep import plan_manifest
from coopprune.utility import ppl_ratio

RESULTS = Path(__file__).parent / "results"


def reference_losses(model, layers, windows: torch.Tensor, masks: np.ndarray) -> tuple[list[float], float]:
    """Zero every dropped layer's parameters, run the full model, restore; time the forwards only."""
    losses, seconds = [], 0.0
    tokens = windows.shape[0] * (windows.shape[1] - 1)
    with torch.inference_mode():
        for mask in masks:
            dropped = [p for j in np.flatnonzero(~mask) for p in layers[j].parameters()]
            saved = [p.detach().clone() for p in dropped]
            for p in dropped:
                p.zero_()
            start = time.perf_counter()
            losses.append(float(token_nll(model(input_ids=windows, use_cache=False).logits, windows)) / tokens)
            seconds += time.perf_counter() - start
            for p, s in zip(dropped, saved):
                p.copy_(s)
    return losses, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--per-stratum", type=int, default=160, help="masks per stratum (PAPER_NOTES: 160)")
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--shards", type=int, default=4, help="evenly spread shards to measure")
    parser.add_argument("--n-windows", type=int, default=10)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model(args.model)
    windows = calibration_windows(loaded.tokenizer, load_texts("lambada"), args.n_windows, args.window, seed=0)
    ours = MaskEvaluator(loaded.model, loaded.architecture, windows.input_ids, batch_size=args.n_windows)
    plan = StrataPlan.build(loaded.num_layers, per_stratum=args.per_stratum, seed=0)
    manifest = plan_manifest(ours, plan, loaded.fingerprint, windows.fingerprint, shard_size=args.shard_size)
    chosen = np.unique(np.linspace(0, manifest.n_shards - 1, args.shards).round().astype(int))
    full = ours.full_loss

    t_ours = t_ref = 0.0
    n = 0
    max_abs = max_rel = 0.0
    for k, shard in enumerate(chosen):
        ids = range(shard * args.shard_size, min((shard + 1) * args.shard_size, len(manifest.plan)))
        masks = np.array([bits_to_mask(manifest.plan[i]) for i in ids])
        runs = {}
        for method in (("ours", "ref") if k % 2 == 0 else ("ref", "ours")):
            if method == "ours":
                start = time.perf_counter()
                runs["ours"] = [r.loss for r in ours.evaluate(masks, progress=f"ours shard {shard}")]
                t_ours += time.perf_counter() - start
            else:
                runs["ref"], seconds = reference_losses(loaded.model, ours.layers, windows.input_ids, masks)
                t_ref += seconds
        u_ours = np.array([ppl_ratio(x, full) for x in runs["ours"]])
        u_ref = np.array([ppl_ratio(x, full) for x in runs["ref"]])
        max_abs = max(max_abs, float(np.abs(u_ours - u_ref).max()))
        max_rel = max(max_rel, float((np.abs(u_ours - u_ref) / np.maximum(np.abs(u_ref), 1e-12)).max()))
        n += len(masks)
        print(f"shard {shard}: {len(masks)} masks, ours {t_ours:.1f}s, reference {t_ref:.1f}s so far", flush=True)

    result = {
        "model": args.model,
        "layers": loaded.num_layers,
        "strata_removed": list(plan.removals),
        "plan_masks": len(manifest.plan),
        "measured_masks": n,
        "measured_shards": chosen.tolist(),
        "calibration": f"{args.n_windows} x {args.window} tokens",
        "ours_masks_per_s": n / t_ours,
        "reference_masks_per_s": n / t_ref,
        "speedup": t_ref / t_ours,
        "max_abs_utility_diff": max_abs,
        "max_rel_utility_diff": max_rel,
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n| method | masks/s | speedup | max abs utility diff | max rel diff |")
    print("|---|---|---|---|---|")
    print(f"| reference (zeroed weights, full model) | {result['reference_masks_per_s']:.3f} | 1.00x | | |")
    print(
        f"| coopprune (skip + shared prefixes) | {result['ours_masks_per_s']:.3f} | {result['speedup']:.2f}x | "
        f"{max_abs:.2e} | {max_rel:.2e} |"
    )


if __name__ == "__main__":
    main()
