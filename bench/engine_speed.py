"""Masks per second: coopprune's engine vs the reference approach, same masks, one run.

Reference (the paper's code): zero the dropped layers' weights and run the full model.
Ours: run a view of the kept layers only, resuming each mask from the deepest layer it shares
with the previous one. The plan is the paper's strata scaled to the model's depth; shards are
evaluated exactly as a sweep evaluates them, alternating which method goes first (ABBA), and
a spread-out subset of shards stands for the whole plan (each shard is independent work).

On an accelerator (``--device cuda``, ``--dtype bfloat16``) the first ``--check-masks`` masks are
also evaluated on the CPU in fp32, so the table says how far the device's utilities are from the
CPU's. ``--random-weights CONFIG`` builds the model from a config.json with seeded random weights
and random tokens: the same shapes and work where the checkpoint and calibration text are not at
hand (a rented GPU box that cannot download them); its utilities mean nothing, its speed does.

    python bench/engine_speed.py [--per-stratum 160] [--shards 4] [--model default]
    python bench/engine_speed.py --device cuda [--dtype bfloat16] [--random-weights config.json] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from coopprune.dataset import bits_to_mask
from coopprune.engine import MaskEvaluator, token_nll
from coopprune.metrics import spearman
from coopprune.models import LoadedModel, architecture_for, load_model, model_fingerprint
from coopprune.models.loading import resolve_device
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


def random_model(config_file: Path, dtype: str, device: str) -> LoadedModel:
    """The config's architecture with weights drawn from seed 0 (same weights on every machine)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = json.loads(Path(config_file).read_text())
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    fingerprint = model_fingerprint(model)
    model.to(dtype=getattr(torch, dtype), device=resolve_device(device))
    return LoadedModel(model, None, architecture_for(config), f"random weights, {config_file}", fingerprint)


def calibration(loaded: LoadedModel, n_windows: int, window: int) -> tuple[torch.Tensor, str]:
    """The LAMBADA windows of a real model; seeded random tokens for random weights."""
    if loaded.tokenizer is None:
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(loaded.model.config.vocab_size, (n_windows, window), generator=generator)
        return ids, f"random tokens {n_windows}x{window} seed 0"
    from coopprune.calibration import calibration_windows, load_texts

    windows = calibration_windows(loaded.tokenizer, load_texts("lambada"), n_windows, window, seed=0)
    return windows.input_ids, windows.fingerprint


def device_agreement(args: argparse.Namespace, ids: torch.Tensor, masks: np.ndarray, device_losses: list[float],
                     device_full: float) -> dict[str, float | None]:
    """Utilities of the same masks on the CPU in fp32, against the device's."""
    cpu = random_model(args.random_weights, "float32", "cpu") if args.random_weights else load_model(args.model)
    evaluator = MaskEvaluator(cpu.model, cpu.architecture, ids, batch_size=args.n_windows)
    full = evaluator.full_loss
    u_cpu = np.array([ppl_ratio(r.loss, full) for r in evaluator.evaluate(masks, progress="cpu check")])
    u_dev = np.array([ppl_ratio(x, device_full) for x in device_losses])
    return {"check_masks": len(masks), "max_abs_utility_diff_vs_cpu_fp32": float(np.abs(u_dev - u_cpu).max()),
            "spearman_vs_cpu_fp32": spearman(u_dev, u_cpu)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--per-stratum", type=int, default=160, help="masks per stratum (PAPER_NOTES: 160)")
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--shards", type=int, default=4, help="evenly spread shards to measure")
    parser.add_argument("--n-windows", type=int, default=10)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--random-weights", type=Path, help="config.json: seeded random weights, random tokens")
    parser.add_argument("--check-masks", type=int, default=20, help="masks also run on the CPU (off the CPU/fp32 only)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.random_weights:
        loaded = random_model(args.random_weights, args.dtype, args.device)
    else:
        loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    ids, text_fingerprint = calibration(loaded, args.n_windows, args.window)
    ours = MaskEvaluator(loaded.model, loaded.architecture, ids, batch_size=args.n_windows)
    windows_on_device = ids.to(loaded.model.device)  # the reference runs where ours does
    plan = StrataPlan.build(loaded.num_layers, per_stratum=args.per_stratum, seed=0)
    manifest = plan_manifest(ours, plan, loaded.fingerprint, text_fingerprint, shard_size=args.shard_size)
    chosen = np.unique(np.linspace(0, manifest.n_shards - 1, args.shards).round().astype(int))
    full = ours.full_loss

    t_ours = t_ref = 0.0
    n = 0
    max_abs = max_rel = 0.0
    first: tuple[np.ndarray, list[float]] | None = None
    for k, shard in enumerate(chosen):
        rows = range(shard * args.shard_size, min((shard + 1) * args.shard_size, len(manifest.plan)))
        masks = np.array([bits_to_mask(manifest.plan[i]) for i in rows])
        runs = {}
        for method in (("ours", "ref") if k % 2 == 0 else ("ref", "ours")):
            if method == "ours":
                start = time.perf_counter()
                runs["ours"] = [r.loss for r in ours.evaluate(masks, progress=f"ours shard {shard}")]
                synchronize(loaded.model.device)
                t_ours += time.perf_counter() - start
            else:
                runs["ref"], seconds = reference_losses(loaded.model, ours.layers, windows_on_device, masks)
                t_ref += seconds
        u_ours = np.array([ppl_ratio(x, full) for x in runs["ours"]])
        u_ref = np.array([ppl_ratio(x, full) for x in runs["ref"]])
        max_abs = max(max_abs, float(np.abs(u_ours - u_ref).max()))
        max_rel = max(max_rel, float((np.abs(u_ours - u_ref) / np.maximum(np.abs(u_ref), 1e-12)).max()))
        n += len(masks)
        first = first or (masks[: args.check_masks], runs["ours"][: args.check_masks])
        print(f"shard {shard}: {len(masks)} masks, ours {t_ours:.1f}s, reference {t_ref:.1f}s so far", flush=True)

    off_cpu_fp32 = loaded.model.device.type != "cpu" or args.dtype != "float32"
    agreement = device_agreement(args, ids, *first, full) if off_cpu_fp32 and args.check_masks and first else {}
    result = {
        "model": loaded.source if args.random_weights else args.model,
        "device": str(loaded.model.device),
        "device_name": torch.cuda.get_device_name(loaded.model.device) if loaded.model.device.type == "cuda" else None,
        "dtype": args.dtype,
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
        **agreement,
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    name = "engine_speed" if not off_cpu_fp32 else f"engine_speed_{loaded.model.device.type}_{args.dtype}"
    if (args.n_windows, args.window) != (10, 128):
        name += f"_{args.n_windows}x{args.window}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n| method | masks/s | speedup | max abs utility diff | max rel diff |")
    print("|---|---|---|---|---|")
    print(f"| reference (zeroed weights, full model) | {result['reference_masks_per_s']:.3f} | 1.00x | | |")
    print(
        f"| coopprune (skip + shared prefixes) | {result['ours_masks_per_s']:.3f} | {result['speedup']:.2f}x | "
        f"{max_abs:.2e} | {max_rel:.2e} |"
    )
    if agreement:
        print(f"vs the CPU in fp32 on {agreement['check_masks']} masks: max abs utility diff "
              f"{agreement['max_abs_utility_diff_vs_cpu_fp32']:.2e}, Spearman {agreement['spearman_vs_cpu_fp32']}")


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a timer stops when the work is done, not when it was queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
