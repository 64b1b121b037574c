"""The KL utility on SmolLM2-135M: exact vs top-K, and its speed against the NLL objective.

Same calibration as `make run` (10 x 128 LAMBADA tokens, seed 0), the same seeded masks for every
objective (random 6-, 9- and 12-layer removals), evaluated through the prefix-sharing engine. Per
top-K: the largest absolute and relative error of the mean per-token KL, the Spearman correlation
of the two rankings, the memory of the kept base log-probabilities; per objective: seconds per mask.

    python bench/kl_topk.py [--masks 24]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from coopprune.atomic import write_json
from coopprune.calibration import calibration_windows, load_texts
from coopprune.engine import MaskEvaluator
from coopprune.metrics import spearman
from coopprune.models.loading import load_model
from coopprune.objective import KLToBase, NextTokenNLL
from coopprune.sampling import StrataPlan

RESULTS = Path(__file__).parent / "results"


def reference_bytes(evaluator: MaskEvaluator) -> int:
    total = 0
    for ref in evaluator.references():
        for t in ref if isinstance(ref, tuple) else [ref]:
            total += t.numel() * t.element_size()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--masks", type=int, default=24)
    parser.add_argument("--top-k", type=int, nargs="+", default=[512, 1024, 4096])
    args = parser.parse_args()
    loaded = load_model("default")
    ids = calibration_windows(loaded.tokenizer, load_texts("lambada"), 10, 128, 0).input_ids
    n = len(loaded.architecture.layers(loaded.model))
    masks = StrataPlan.build(n, remove=[6, 9, 12], per_stratum=args.masks // 3, seed=0).sample()
    runs = {}
    for label, objective in [("nll", NextTokenNLL()), ("kl", KLToBase())] + [(f"kl@top{k}", KLToBase(k)) for k in args.top_k]:
        evaluator = MaskEvaluator(loaded.model, loaded.architecture, ids, 10, objective=objective)
        memory = reference_bytes(evaluator) if objective.needs_reference else 0
        start = time.perf_counter()
        losses = np.array([r.loss for r in evaluator.evaluate(masks, progress=label)])
        runs[label] = {"losses": losses, "seconds_per_mask": (time.perf_counter() - start) / len(masks), "reference_mb": memory / 2**20}
    exact = runs["kl"]["losses"]
    rows = []
    for label, r in runs.items():
        row = {"objective": label, "seconds_per_mask": r["seconds_per_mask"], "reference_mb": r["reference_mb"]}
        if label.startswith("kl@"):
            row |= {"max_abs_error": float(np.abs(r["losses"] - exact).max()),
                    "max_rel_error": float((np.abs(r["losses"] - exact) / exact).max()),
                    "spearman_vs_exact": spearman(r["losses"], exact),
                    "never_above_exact": bool((r["losses"] <= exact + 1e-6).all())}
        rows.append(row)
    write_json(RESULTS / "kl_topk.json", {"masks": len(masks), "calibration": "10 x 128 LAMBADA, seed 0",
                                          "mean_exact_kl": float(exact.mean()), "rows": rows, "date": time.strftime("%Y-%m-%d")})
    lines = ["| objective | s / mask | base log-probs kept (MB) | max abs error | max rel error | Spearman vs exact |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['objective']} | {row['seconds_per_mask']:.2f} | {row['reference_mb']:.0f} | "
                     + " | ".join(f"{row[key]:.2e}" if key in row and key != "spearman_vs_exact" else
                                  (f"{row[key]:.4f}" if key in row else "") for key in
                                  ("max_abs_error", "max_rel_error", "spearman_vs_exact")) + " |")
    lines.append(f"\n{len(masks)} masks (random 6/9/12-layer removals), mean exact KL {exact.mean():.3f} nats per token.")
    (RESULTS / "kl_topk.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
