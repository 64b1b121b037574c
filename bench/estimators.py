"""Estimator accuracy per budget on a real game solved exactly: a 12-layer subgame of SmolLM2.

Players are 12 consecutive layers of the default model (the other 18 always kept), utility
PPL_full / PPL_mask on a small LAMBADA calibration set. All 4,096 coalitions go through the
engine once and the table is saved (``--work``, resumable in chunks), so exact Shapley values are
computed once. Every estimator then plays a lookup of that table, which counts its real
evaluations exactly as on the live model, for each budget and seed. Reported per
(estimator, budget): Spearman against the exact values, recall of the exact bottom-3 and
bottom-6 sets, and the true utility of the set the estimator would remove.

    python bench/estimators.py [--work bench/work/estimators] [--budgets 64 128 256 512 1024] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from coopprune.atomic import atomic_path, write_json
from coopprune.calibration import calibration_windows, load_texts
from coopprune.engine import MaskEvaluator
from coopprune.estimators import get_estimator
from coopprune.game import FunctionGame
from coopprune.models.loading import load_model
from coopprune.plots import plot_lines
from coopprune.select import select_layers
from coopprune.shapley import all_coalitions, exact_shapley
from coopprune.utility import ppl_ratio

RESULTS = Path(__file__).parent / "results"
METHODS = ("shapley-adjusted", "shapley", "semivalue", "permutation", "kernelshap")
SURROGATE = ("shapley-adjusted", "shapley", "semivalue")
CHUNK = 256


def exact_table(work: Path, first: int, n_players: int, n_windows: int, window: int) -> np.ndarray:
    """Utility of every coalition (row c keeps player j iff bit j of c), saved after every chunk."""
    table_file = work / "table.npy"
    meta = {"model": "default", "players": list(range(first, first + n_players)), "calibration": "lambada",
            "n_windows": n_windows, "window": window, "seed": 0, "utility": "ppl_ratio"}
    if (work / "meta.json").is_file() and json.loads((work / "meta.json").read_text()) != meta:
        raise SystemExit(f"{work} holds a different game; use another --work folder")
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / "meta.json", meta)
    saved = RESULTS / "estimators_game.npz"  # the finished game, committed: nobody enumerates it twice
    if not table_file.is_file() and saved.is_file() and json.loads(str(np.load(saved)["meta"])) == meta:
        return np.load(saved)["table"]
    table = np.load(table_file) if table_file.is_file() else np.full(2**n_players, np.nan)
    todo = [c for c in range(0, 2**n_players, CHUNK) if np.isnan(table[c : c + CHUNK]).any()]
    if not todo:
        return table
    loaded = load_model("default")
    windows = calibration_windows(loaded.tokenizer, load_texts("lambada"), n_windows, window, seed=0)
    evaluator = MaskEvaluator(loaded.model, loaded.architecture, windows.input_ids, batch_size=n_windows)
    coalitions = all_coalitions(n_players)
    full = evaluator.full_loss
    for start in tqdm(todo, desc=f"exact game ({len(todo)} chunks of {CHUNK})"):
        masks = np.ones((CHUNK, evaluator.n_players), dtype=bool)
        masks[:, first : first + n_players] = coalitions[start : start + CHUNK]
        losses = [r.loss for r in evaluator.evaluate(masks, progress=False)]
        table[start : start + CHUNK] = [ppl_ratio(loss, full) for loss in losses]
        with atomic_path(table_file) as tmp, open(tmp, "wb") as f:
            np.save(f, table)
    with atomic_path(saved) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, table=table, meta=json.dumps(meta))
    return table


def lookup(table: np.ndarray, n: int):
    codes = 1 << np.arange(n)
    return lambda masks: table[np.atleast_2d(masks).astype(np.int64) @ codes]


def set_utility(table: np.ndarray, removed: list[int]) -> float:
    """True utility of the model with ``removed`` players taken out."""
    full = len(table) - 1  # every player kept
    return float(table[full - sum(1 << i for i in removed)])


def run_cell(table: np.ndarray, truth: np.ndarray, method: str, budget: int, seed: int) -> dict:
    n = len(truth)
    options = {"bootstrap": 0} if method in SURROGATE else {}
    game = FunctionGame(n, lookup(table, n))
    c = get_estimator(method, **options).estimate(game, budget=budget, seed=seed)
    row = {"method": method, "budget": budget, "seed": seed, "evaluations": c.evaluations, "seconds": c.seconds,
           "spearman": float(spearmanr(c.values, truth).statistic)}
    for k in (3, 6):
        exact_set, chosen = set(select_layers(truth, k)), select_layers(c.values, k)
        row[f"recall_bottom{k}"] = len(exact_set & set(chosen)) / k
        row[f"utility_removed{k}"] = set_utility(table, chosen)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench/work/estimators"))
    parser.add_argument("--first-layer", type=int, default=9)
    parser.add_argument("--players", type=int, default=12)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()
    n = args.players
    start = time.perf_counter()
    table = exact_table(args.work, args.first_layer, n, args.windows, args.window)
    truth = exact_shapley(lookup(table, n), n)
    print(f"exact game ready ({time.perf_counter() - start:.0f}s); exact Shapley: {np.round(truth, 4)}", flush=True)

    cells_file = args.work / "cells.json"
    cells = json.loads(cells_file.read_text()) if cells_file.is_file() else {}
    for method in args.methods:
        for budget in args.budgets:
            for seed in range(args.seeds):
                key = f"{method}/{budget}/{seed}"
                if key not in cells:
                    cells[key] = run_cell(table, truth, method, budget, seed)
                    write_json(cells_file, cells)
            rows = [cells[f"{method}/{budget}/{s}"] for s in range(args.seeds)]
            print(f"{method:17s} budget {budget:5d}: Spearman {np.mean([r['spearman'] for r in rows]):.3f} "
                  f"(min {np.min([r['spearman'] for r in rows]):.3f})", flush=True)
    summarize(args, table, truth, cells)


def summarize(args: argparse.Namespace, table: np.ndarray, truth: np.ndarray, cells: dict) -> None:
    n = len(truth)
    best = {k: float(max(table[c] for c in range(2**n) if bin(c).count("1") == n - k)) for k in (3, 6)}
    exact_pick = {k: set_utility(table, select_layers(truth, k)) for k in (3, 6)}
    summary = []
    for method in args.methods:
        for budget in args.budgets:
            rows = [cells[f"{method}/{budget}/{s}"] for s in range(args.seeds)]
            mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0] if key not in ("method", "seed", "budget")}
            mean["budget"] = budget
            summary.append({"method": method, **mean, "spearman_min": float(min(r["spearman"] for r in rows))})
    need = {}
    for method in args.methods:
        reached = [r["budget"] for r in summary if r["method"] == method and r["spearman"] >= 0.9]
        need[method] = min(reached) if reached else None
    out = {"players": [args.first_layer + i for i in range(n)], "calibration": f"{args.windows} x {args.window} LAMBADA tokens",
           "exact_shapley": truth.tolist(), "best_utility_removing": best, "exact_shapley_pick_utility": exact_pick,
           "budget_for_spearman_0.9": need, "seeds": args.seeds, "rows": summary, "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "estimators.json", out)
    lines = [
        f"Exact game: layers {out['players'][0]}-{out['players'][-1]} of SmolLM2-135M as players, {out['calibration']}, "
        f"utility PPL_full/PPL_mask. Best possible utility removing 3 / 6: {best[3]:.4f} / {best[6]:.4f}; "
        f"exact Shapley's picks: {exact_pick[3]:.4f} / {exact_pick[6]:.4f}.", "",
        "| estimator | budget | Spearman (mean / min) | recall bottom-3 | recall bottom-6 | utility of removed-3 set | "
        "utility of removed-6 set | real evals | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['method']} | {r['budget']} | {r['spearman']:.3f} / {r['spearman_min']:.3f} | {r['recall_bottom3']:.2f} | "
        f"{r['recall_bottom6']:.2f} | {r['utility_removed3']:.4f} | {r['utility_removed6']:.4f} | {r['evaluations']:.0f} | "
        f"{r['seconds']:.1f} |"
        for r in summary
    ]
    lines += ["", "Smallest budget with mean Spearman >= 0.9: " + ", ".join(f"{m} {b}" for m, b in need.items())]
    (RESULTS / "estimators.md").write_text("\n".join(lines) + "\n")
    plot_lines(
        {m: ([r["budget"] for r in summary if r["method"] == m], [r["spearman"] for r in summary if r["method"] == m])
         for m in args.methods},
        RESULTS / "estimators.png", xlabel="real evaluations (budget)", ylabel="Spearman vs exact Shapley",
        title="Estimator accuracy, 12-layer SmolLM2 subgame", logx=True,
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
