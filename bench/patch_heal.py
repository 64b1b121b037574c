"""Patch + LoRA against LoRA alone at the same wall time, on SmolLM2-135M.

The question: with a fixed training budget, does spending part of it on the training-free patch
(``coopprune/patch.py``) before LoRA heal more than LoRA alone? For each removal set (``--sets``,
the patch bench's: the mixture's k = 6 set and its k = 12 set):

- **LoRA**: the pruned checkpoint healed for ``--steps`` steps (``coopprune.heal``, the paper's
  setting: r = 8, alpha = 16, lr 1e-4, LM loss on bundled LAMBADA, seeded);
- **patch + LoRA**: the default patch (``PatchParams()``, fitted on the default calibration mixture
  ``coopprune.domains.DEFAULT_MIX``, which healing's LAMBADA text is not part of) and then LoRA for
  the steps its fit leaves of the same time: ``steps - ceil(fit seconds / LoRA's seconds per step)``,
  the seconds per step read off the LoRA arm's own run;
- **patch** alone and the **pruned** model, for reference.

Every model is scored on the held-out suite (``coopprune.domains.SUITE``: each domain's evaluation
documents only, ``--eval-windows`` x 128 tokens, the same windows as ``bench/patch.py``), with the
means over the validation and test domains, and the minutes of patching and of training.
Wall time on a 2-core machine shared with other work is noisy, so the equal-time rule is applied
in steps (a step costs the same in both arms: same model shape, same batch), and both arms'
measured minutes are printed beside it.

Cells (one per model and domain, one per fit or heal) are cached under ``--work``; a killed run
resumes where it stopped. Writes ``bench/results/patch_heal.{json,md}``.

    python bench/patch_heal.py [--sets 13,14,15,16,17,18 3,4,5,12,13,14,15,16,17,18,25,26] [--steps 100]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

from patch import DEFAULT_SETS, LENGTH, RESULTS, Cells, parse_set, row, score

from coopprune.atomic import write_json
from coopprune.calibration import evaluation_windows
from coopprune.config import CalibrationParams, HealParams, PatchParams
from coopprune.domains import DEFAULT_MIX, SUITE, evaluation_texts
from coopprune.heal import heal
from coopprune.mixture import Calibration
from coopprune.models.loading import load_model
from coopprune.patch_job import patch_checkpoint
from coopprune.prune import count_parameters, make_record, prune_layers, save_pruned


def pruned_checkpoint(work: Path, removed: list[int]) -> Path:
    out = work / "pruned" / "-".join(map(str, removed))
    if not (out / "config.json").is_file():
        loaded = load_model("default")
        before = count_parameters(loaded.model)
        prune_layers(loaded, removed)
        save_pruned(loaded, out, make_record(loaded, removed, "given", before))
    return out


def patched_checkpoint(work: Path, pruned: Path, cells: Cells, key: str) -> tuple[Path, float]:
    out = work / "patched" / pruned.name
    fit = cells.get(f"patch|{key}")
    if fit is None or not (out / "config.json").is_file():
        settings = PatchParams()
        calibration = Calibration.from_params(CalibrationParams.from_dict(
            {"mix": DEFAULT_MIX, "n_windows": settings.n_windows, "window": LENGTH, "seed": 0}, "calibration"))
        started = time.perf_counter()
        result = patch_checkpoint("default", pruned, out, settings, calibration, overwrite=True)
        fit = cells.put(f"patch|{key}", {"seconds": time.perf_counter() - started, "runs": result.record["runs"]})
    return out, fit["seconds"]


def healed(work: Path, source: Path, steps: int, cells: Cells, key: str) -> tuple[Path, dict[str, Any]]:
    out = work / "healed" / f"{source.parent.name}-{source.name}-{steps}"
    done = cells.get(f"heal|{key}|{steps}")
    if done is None or not (out / "config.json").is_file():
        started = time.perf_counter()
        result = heal(source, out, HealParams(steps=steps), overwrite=True)
        done = cells.put(f"heal|{key}|{steps}", {"seconds": time.perf_counter() - started,
                                                 "train_minutes": result.record["train_minutes"],
                                                 "tokens": result.record["tokens"]})
    return out, done


def scored(path: Path, suite: dict, cells: Cells, key: str, batch_size: int) -> dict[str, float]:
    missing = any(f"ppl|{key}|{d}|{w.fingerprint[:16]}" not in cells.data for d, w in suite.items())
    return score(load_model(str(path)).model if missing else None, suite, cells, key, batch_size)


def markdown(rows: list[dict[str, Any]], domains: list[str], settings: dict[str, Any]) -> str:
    lines = ["# Patch + LoRA against LoRA alone at the same time (`bench/patch_heal.py`)", "",
             f"SmolLM2-135M-Instruct. LoRA: the paper's setting (r = 8, alpha = 16, lr 1e-4, LM loss, 4 x 2 x 128 "
             f"tokens of bundled LAMBADA per step, seed 0). Patch: the default (`PatchParams()`), fitted on the default "
             f"mixture ({', '.join(DEFAULT_MIX)}). Patch + LoRA gets the steps the patch's fit leaves of LoRA's "
             f"{settings['steps']}: steps - ceil(fit seconds / LoRA's seconds per step). Held-out perplexity on "
             f"{settings['eval_windows']} x {LENGTH} tokens per domain, evaluation documents only; validation domains "
             f"{', '.join(SUITE['validation'])}, test domains {', '.join(SUITE['test'])}. Minutes measured on "
             f"{settings['machine']}.", ""]
    for removed in dict.fromkeys(tuple(r["removed"]) for r in rows):
        sub = [r for r in rows if tuple(r["removed"]) == removed]
        lines += [f"### k = {len(removed)}: removed {' '.join(map(str, removed))}", "",
                  "| arm | LoRA steps | " + " | ".join(f"{d} (val)" if d in SUITE["validation"] else d for d in domains)
                  + " | mean val | mean test | patch min | LoRA min | total min |", "|" + "---|" * (len(domains) + 7)]
        for r in sub:
            cells = " | ".join(f"{r[d]:.2f}" for d in domains)
            lines.append(f"| {r['arm']} | {r['lora_steps']} | {cells} | {r['mean_validation']:.2f} | {r['mean_test']:.2f} "
                         f"| {r['patch_minutes']:.2f} | {r['lora_minutes']:.2f} | {r['patch_minutes'] + r['lora_minutes']:.2f} |")
        lora = next(r for r in sub if r["arm"] == "LoRA")
        both = next(r for r in sub if r["arm"] == "patch + LoRA")
        better = [d for d in domains if both[d] < lora[d]]
        lines += ["", f"Patch + LoRA is lower than LoRA alone on {len(better)} of {len(domains)} domains "
                      f"(mean test {both['mean_test']:.2f} vs {lora['mean_test']:.2f}, "
                      f"{100 * (both['mean_test'] / lora['mean_test'] - 1):+.1f} %).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=DEFAULT_SETS, help="removal sets, comma-separated layers")
    parser.add_argument("--steps", type=int, default=100, help="LoRA alone: training steps (the time budget)")
    parser.add_argument("--eval-windows", type=int, default=32, help="evaluation windows of 128 tokens per domain")
    parser.add_argument("--domains", nargs="+", default=[*SUITE["validation"], *SUITE["test"]])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("bench/work/patch_heal"))
    parser.add_argument("--out", type=Path, default=RESULTS / "patch_heal", help="writes OUT.json and OUT.md")
    args = parser.parse_args()

    cells = Cells(args.work / "cells.json")
    tokenizer = load_model("default").tokenizer
    suite = {d: evaluation_windows(tokenizer, evaluation_texts(d), LENGTH, args.eval_windows) for d in args.domains}
    rows = []
    for text in args.sets:
        removed = parse_set(text)
        key = ",".join(map(str, removed))
        pruned = pruned_checkpoint(args.work, removed)
        patched, fit_seconds = patched_checkpoint(args.work, pruned, cells, key)
        lora, lora_run = healed(args.work, pruned, args.steps, cells, f"pruned|{key}")
        per_step = lora_run["train_minutes"] * 60 / args.steps
        left = max(args.steps - math.ceil(fit_seconds / per_step), 0)
        both, both_run = ((patched, {"train_minutes": 0.0}) if left == 0  # the fit took the whole time
                          else healed(args.work, patched, left, cells, f"patched|{key}"))
        arms = [("pruned", pruned, 0, 0.0, 0.0), ("patch", patched, 0, fit_seconds / 60, 0.0),
                ("LoRA", lora, args.steps, 0.0, lora_run["train_minutes"]),
                ("patch + LoRA", both, left, fit_seconds / 60, both_run["train_minutes"])]
        for name, path, steps, patch_min, lora_min in arms:
            ppl = scored(path, suite, cells, f"{name}|{key}|{steps}", args.batch_size)
            rows.append(row(name, removed, ppl, lora_steps=steps, patch_minutes=patch_min, lora_minutes=lora_min))
            print(f"k={len(removed)} {name} ({steps} LoRA steps): " + ", ".join(f"{d} {v:.2f}" for d, v in ppl.items()),
                  flush=True)
    settings = {"steps": args.steps, "eval_windows": args.eval_windows,
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
                           f"with {torch.get_num_threads()} thread(s)"}
    write_json(args.out.with_suffix(".json"), {"suite": SUITE, "settings": settings, "rows": rows,
                                               "date": time.strftime("%Y-%m-%d")})
    args.out.with_suffix(".md").write_text(markdown(rows, args.domains, settings))
    print(markdown(rows, args.domains, settings))


if __name__ == "__main__":
    main()
