"""Healing on SmolLM2-135M: LM loss vs distillation, for the default method's and SLEB's sets.

The pruned models are the quality bench's (`bench/quality.py`, its cached selections: the same
10 x 128 calibration for both methods). Each is healed with LoRA (the paper's r = 8, alpha = 16,
lr 1e-4, every linear projection of the kept layers) on bundled LAMBADA text, seeded, with the
LM loss and with distillation from the unpruned model; held-out perplexity (BoolQ passages, the
quality bench's validation and test halves, 64 x 128 tokens) before and after, and on the test
half every ``--every`` steps (the curve); zero-shot (7 tasks, ``--limit`` items) before and after where asked. Every cell is
cached under ``--work``, so the sweep completes over several calls.

    python bench/heal.py [--ks 6 12] [--methods game-search sleb] [--losses lm distill] [--steps 100]
                         [--zero-shot-ks 6]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from quality import RESULTS, TASKS, Bench, pruned_model

from coopprune.atomic import write_json
from coopprune.calibration import Windows
from coopprune.config import HealParams
from coopprune.evaluate import perplexity
from coopprune.heal import heal
from coopprune.models import load_model
from coopprune.plots import plot_lines
from coopprune.prune import count_parameters, make_record, save_pruned
from coopprune.zeroshot import zero_shot


def held_out_ppl(model: Any, splits: dict[str, Windows]) -> dict[str, float]:
    return {split: perplexity(model, w, 8, progress=False).perplexity for split, w in splits.items()}


def cell(bench: Bench, work: Path, method: str, k: int, loss: str, steps: int, every: int,
         splits: dict[str, Windows]) -> dict[str, Any]:
    cache = work / f"{method}-{k}-{loss}-{steps}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    selection = json.loads((bench.work / "select" / f"{method}.json").read_text())
    pruned_dir = work / "pruned" / f"{method}-{k}"
    if not pruned_dir.is_dir():
        loaded = pruned_model(bench, selection, k)
        save_pruned(loaded, pruned_dir, make_record(loaded, selection["removed"][str(k)], method, bench.total_params))
    before = held_out_ppl(load_model(str(pruned_dir)).model, splits)
    curve = [{"step": 0, **before}]

    def measure(step: int, model: Any) -> None:  # the curve: the test half only (a measurement costs ~30 s here)
        if step % every == 0 and step < steps:
            curve.append({"step": step, **held_out_ppl(model, {"test": splits["test"]})})

    start = time.perf_counter()
    out = work / "healed" / f"{method}-{k}-{loss}-{steps}"
    result = heal(pruned_dir, out, HealParams(steps=steps, loss=loss, save_every=every), overwrite=True, on_step=measure)
    row = {"method": method, "k": k, "loss": loss, "steps": steps, "removed": selection["removed"][str(k)],
           "tokens": result.record["tokens"], "train_minutes": result.record["train_minutes"],
           "minutes_with_curve": round((time.perf_counter() - start) / 60, 2), "before": before,
           "after": held_out_ppl(load_model(str(out)).model, splits), "curve": curve,
           "losses": result.record["losses"], "checkpoint": str(out), "pruned": str(pruned_dir)}
    curve.append({"step": steps, **row["after"]})
    write_json(cache, row)
    print(f"healed {method} k={k} {loss}: test PPL {before['test']:.2f} -> {row['after']['test']:.2f} "
          f"({row['train_minutes']:.1f} min)", flush=True)
    return row


def zero_shot_of(work: Path, label: str, checkpoint: str, limit: int) -> dict[str, Any]:
    cache = work / f"zeroshot-{limit}" / f"{label}.json"
    if not cache.is_file():
        loaded = load_model(checkpoint)
        start = time.perf_counter()
        result = zero_shot(loaded.model, loaded.tokenizer, TASKS, limit, 0, 8).to_dict()
        result["seconds"] = time.perf_counter() - start
        write_json(cache, result)
    return json.loads(cache.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench/work/heal"))
    parser.add_argument("--quality-work", type=Path, default=Path("bench/work/quality"))
    parser.add_argument("--ks", type=int, nargs="+", default=[6, 12])
    parser.add_argument("--methods", nargs="+", default=["game-search", "sleb"])
    parser.add_argument("--losses", nargs="+", default=["lm", "distill"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--zero-shot-ks", type=int, nargs="*", default=[6])
    parser.add_argument("--zero-shot-methods", nargs="+", default=None, help="zero-shot for these methods only (default: all)")
    parser.add_argument("--limit", type=int, default=200)
    args = parser.parse_args()
    bench = Bench(args.quality_work, args.ks)
    splits = {split: Windows(bench.held_out(split, 128), "") for split in ("val", "test")}
    rows = [cell(bench, args.work, m, k, loss, args.steps, args.every, splits)
            for k in args.ks for m in args.methods for loss in args.losses]
    for row in rows:
        if row["k"] in args.zero_shot_ks and (args.zero_shot_methods is None or row["method"] in args.zero_shot_methods):
            # before healing: the quality bench's cell for the same pruned model, when it has one
            q = args.quality_work / f"zeroshot-{args.limit}" / f"layers-{'-'.join(map(str, row['removed']))}.json"
            row["zero_shot_before"] = (json.loads(q.read_text()) if q.is_file()
                                       else zero_shot_of(args.work, f"{row['method']}-{row['k']}", row["pruned"], args.limit))["mean"]
            row["zero_shot_after"] = zero_shot_of(args.work, Path(row["checkpoint"]).name, row["checkpoint"], args.limit)["mean"]
    base = args.quality_work / f"zeroshot-{args.limit}" / "layers-none.json"
    lines = [f"Healing SmolLM2-135M with LoRA (r=8, alpha=16, lr 1e-4, every linear projection of the kept layers), "
             f"{args.steps} steps of 4 x 2 x 128 tokens of LAMBADA, seeded; held-out PPL on BoolQ passages "
             f"(64 x 128 tokens per split; base test {held_out_ppl(bench.loaded.model, splits)['test']:.2f})"
             + (f", zero-shot {len(TASKS)} tasks x {args.limit} items (base {json.loads(base.read_text())['mean']:.3f})"
                if base.is_file() else "") + ".", "",
             "| k | method | loss | removed | PPL val before -> after | PPL test before -> after | zero-shot before -> after | train CPU min |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        zs = (f"{r['zero_shot_before']:.3f} -> {r['zero_shot_after']:.3f}" if "zero_shot_after" in r else "")
        lines.append(f"| {r['k']} | {r['method']} | {r['loss']} | {r['removed']} | {r['before']['val']:.2f} -> "
                     f"{r['after']['val']:.2f} | {r['before']['test']:.2f} -> {r['after']['test']:.2f} | {zs} | "
                     f"{r['train_minutes']:.1f} |")
    table = "\n".join(lines)
    print(table)
    (RESULTS / "heal.md").write_text(table + "\n")
    write_json(RESULTS / "heal.json", {"rows": rows, "parameters": count_parameters(bench.loaded.model)})
    series = {f"{r['method']} k={r['k']} {r['loss']}": ([c["step"] for c in r["curve"]], [c["test"] for c in r["curve"]])
              for r in rows}
    plot_lines(series, RESULTS / "heal_curve.png", xlabel="healing steps", ylabel="held-out perplexity (test, 128)",
               title="SmolLM2-135M: held-out PPL during healing")


if __name__ == "__main__":
    main()
