"""Pruning quality on SmolLM2-135M: every method at k = 3, 6, 9, 12 removed layers of 30.

Same calibration for every method (10 x 128 LAMBADA tokens, seed 0), same evaluation for every
pruned model: held-out perplexity on BoolQ passages (64 windows of 128 tokens, 16 of 512) for
every cell, zero-shot accuracy (lm-eval on the bundled data, a seeded subset of ``--limit``
items per task) at ``--zero-shot-ks``. Per cell also: parameters kept, real forward passes the
selection consumed and its wall time. Each method is selected once and its removal order read
off for every k (bottom-k of one ranking, SLEB's greedy order, the rounds of iterative pruning);
Gromov's angular block is chosen per k, and sublayer players at the parameter budget of k layers.

Resumable: selections, perplexities and zero-shot scores are cached per cell under ``--work``,
and every arm's real evaluations go to its own mask store there as they are made (EvoPress's
checkpoint after each generation too), so a long sweep, or one EvoPress run of hours, completes
over several calls. Every
cell is logged to MLflow (experiment ``coopprune-quality``, one run per cell, updated in place).
A call adds its cells to the published ``bench/results/quality.json`` (the cells it did not
compute stay as published; ``--fresh`` writes only its own), so one arm at one k can be added
from a fresh checkout without recomputing the table.

    python bench/quality.py [--work bench/work/quality] [--stages select ppl zeroshot]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coopprune import pipeline
from coopprune.atomic import write_json
from coopprune.calibration import calibration_windows, evaluation_windows, load_texts
from coopprune.config import GameParams, Params
from coopprune.dataset import MaskDataset
from coopprune.engine import MaskEvaluator
from coopprune.estimators import ESTIMATORS, get_estimator
from coopprune.game import LayerGame
from coopprune.models.loading import load_model
from coopprune.objective import objective_for
from coopprune.prune import count_parameters, prune_layers
from coopprune.sampling import PAPER_REMOVE_RATIOS
from coopprune.select import select_layers, select_within_cost
from coopprune.strategy import select_players
from coopprune.sublayers import SublayerEvaluator, sublayer_parameters, zero_half_layers
from coopprune.utility import utility_spec

from quality_arms import ARMS, CURVE_ARMS, METHODS, PPL_WINDOWS, TASKS, Arm
from quality_tables import RESULTS, average_random, carry_published, write_tables, zs_fields


#: Held-out text, split so defaults are chosen on one half and reported on the other: BoolQ's
#: passages alternately (even ones validation, odd ones test), never the calibration text.
SPLITS = {"val": slice(0, None, 2), "test": slice(1, None, 2)}


class Bench:
    """The shared model, calibration and sweep, and the cached cells under ``work``."""

    def __init__(self, work: Path, ks: list[int], n_windows: int = 10, model: str = "default") -> None:
        self.work, self.ks, self.model = work, ks, model
        self.params = Params.from_dict({"model": {"source": model}, "calibration": {"n_windows": n_windows},
                                        "game": {"utility": "ppl_ratio"}, "sampling": {"remove_ratios": list(PAPER_REMOVE_RATIOS)},
                                        "output_dir": str(work)})  # the paper's Stage-1 sweep
        self.loaded = load_model(model)
        self._windows: dict[int, Any] = {}
        self.n_layers = len(self.loaded.architecture.layers(self.loaded.model))
        self.layer_params = [sum(p.numel() for p in layer.parameters())
                             for layer in self.loaded.architecture.layers(self.loaded.model)]
        self.total_params = count_parameters(self.loaded.model)

    def calibration(self, n_windows: int) -> Any:
        """The calibration windows (LAMBADA, the params' seed), built once per size."""
        if n_windows not in self._windows:
            c = self.params.calibration
            self._windows[n_windows] = calibration_windows(self.loaded.tokenizer, load_texts(c.source), n_windows, c.window, c.seed)
        return self._windows[n_windows]

    def tokens(self, n_windows: int) -> int:
        """Tokens one full pass over ``n_windows`` calibration windows scores."""
        ids = self.calibration(n_windows).input_ids
        return int(ids.shape[0] * (ids.shape[1] - 1))

    def evaluator(self, utility: str = "ppl_ratio", sublayers: bool = False, n_windows: int | None = None) -> MaskEvaluator:
        cls = SublayerEvaluator if sublayers else MaskEvaluator
        vocab = self.loaded.model.config.vocab_size
        n = n_windows or self.params.calibration.n_windows
        objective = objective_for(utility_spec(utility).objective, self.tokens(n), vocab)
        return cls(self.loaded.model, self.loaded.architecture, self.calibration(n).input_ids,
                   self.params.calibration.batch_size, objective=objective)

    def sweep(self) -> MaskDataset:
        """The paper's Stage-1 sweep (strata scaled to 30 layers, 40 masks each), evaluated once."""
        return pipeline.sweep(self.params, self.work / "masks", progress=True)

    def own_store(self, label: str) -> MaskDataset:
        """A private copy of the sweep: an arm's own evaluations persist (resumable) but never leak into another's."""
        dest = self.work / "stores" / label
        if not dest.exists():
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.sweep().path, tmp)
            tmp.rename(dest)
        return MaskDataset.open(dest)

    def game(self, label: str, arm: Arm) -> LayerGame:
        """Every arm's real evaluations (and a method's checkpoint, e.g. EvoPress's) persist under
        ``stores/<label>``, so an arm killed mid-selection resumes there."""
        evaluator = self.evaluator(arm.utility, arm.strategy == "sublayers", arm.n_windows)
        store = self.own_store(label) if arm.sweep else pipeline.empty_store(
            self.work / "stores" / label, evaluator, self.loaded.fingerprint,
            self.calibration(arm.n_windows).fingerprint, GameParams(utility=arm.utility))
        return LayerGame(evaluator, arm.utility, store=store, progress=True)

    def held_out(self, split: str, window: int) -> torch.Tensor:
        docs = load_texts(self.params.evaluation.text)[SPLITS[split]]
        return evaluation_windows(self.loaded.tokenizer, docs, window, PPL_WINDOWS[window]).input_ids


def cost_up_to(c: Any, k: int) -> float | None:
    """Passes a greedy order needed to reach k (SLEB's first k steps), when it says."""
    steps = c.details.get("steps")
    return float(sum(len(s["candidates"]) for s in steps[:k])) if steps else None


def select(bench: Bench, label: str) -> dict[str, Any]:
    """Removed players for every k, with the real passes and seconds the selection took (one
    interface for every arm: the registry's ``estimate``, then its set or its bottom k)."""
    cache = bench.work / "select" / f"{label}.json"
    arm = ARMS[label]
    if cache.is_file() and not arm.per_k:  # per-k arms are assembled from their per-k parts, for these ks
        return json.loads(cache.read_text())
    options = {**ESTIMATORS[arm.method].options_from_params(bench.params, bench.n_layers), **dict(arm.options)}
    sweep_masks = len(bench.sweep()) if arm.sweep else 0
    start = time.perf_counter()
    removed: dict[int, list[int]] = {}
    cost: dict[int, dict[str, float]] = {}
    details: dict[str, Any] = {}
    k_max, ks = max(bench.ks), bench.ks
    if arm.strategy == "iterative":  # the paper's method in rounds of 3, the game re-run on the pruned model
        game = bench.game(label, arm)
        s = select_players(game, get_estimator(arm.method, **options), k_max, per_round=3, budget=sweep_masks)
        order = [p for r in s.rounds for p in sorted(r.removed, key=lambda p, r=r: r.contributions.values[r.players.index(p)])]
        removed = {k: sorted(order[:k]) for k in ks}
        total = {"evaluations": s.evaluations, "passes": float(s.evaluations)}
        cost = {k: total for k in ks}
    elif arm.strategy == "sublayers":  # attention and MLP as 60 players, budgets in parameters
        game = bench.game(label, arm)
        c = get_estimator(arm.method, **options).estimate(game, budget=200, seed=0)
        costs = sublayer_parameters(bench.loaded.model, bench.loaded.architecture)
        removed = {k: select_within_cost(c.values, costs, round(k * sum(costs) / bench.n_layers)) for k in ks}
        cost = {k: {"evaluations": c.evaluations, "passes": c.passes} for k in ks}
        details = {"costs": costs}
    elif arm.per_k:  # a set per k, each from a game of its own (nothing carried between k)
        details = {"per_k": {}}
        for k in ks:  # each k cached on its own: a long search completes over several calls
            part = bench.work / "select" / "per_k" / f"{label}-{k}.json"
            if not part.is_file():
                game = bench.game(f"{label}-{k}", arm)
                c = get_estimator(arm.method, **options).estimate(game, budget=sweep_masks or None, seed=arm.seed, k=k)
                write_json(part, {
                    "removed": sorted(c.removal) if c.removal is not None else select_layers(c.values, k),
                    "cost": {"evaluations": c.evaluations, "passes": c.passes}, "seconds": c.seconds,
                    "details": {key: v for key, v in c.details.items() if key in ("search", "trace", "chosen_real")}})
                print(f"  {label} k={k}: {c.removal} ({c.passes:.1f} passes, {c.seconds:.0f}s)", flush=True)
            done = json.loads(part.read_text())
            removed[k], details["per_k"][str(k)] = done["removed"], done["details"]
            cost[k] = {**done["cost"], "seconds": done["seconds"]}
    else:  # one ranking (or SLEB's greedy order) read off for every k
        game = bench.game(label, arm)
        c = get_estimator(arm.method, **options).estimate(game, budget=sweep_masks or None, seed=arm.seed, k=k_max)
        removed = {k: select_layers(c.values, k) for k in ks}
        cost = {k: {"evaluations": c.evaluations, "passes": cost_up_to(c, k) or c.passes} for k in ks}
        if c.ci_low is not None:
            details = {"values": c.values.tolist(), "ci_low": c.ci_low.tolist(), "ci_high": c.ci_high.tolist(),
                       "bottom_k_stability_at_kmax": c.details.get("bottom_k_stability")}
    for k in ks:  # the Stage-1 sweep an arm trained on is part of its cost
        cost[k]["passes"] = cost[k]["passes"] + sweep_masks
        cost[k]["tokens"] = cost[k]["passes"] * bench.tokens(arm.n_windows)
    result = {"method": label, "registry_method": arm.method, "utility": arm.utility, "n_windows": arm.n_windows,
              "removed": {str(k): v for k, v in removed.items()}, "cost": {str(k): v for k, v in cost.items()},
              "sweep_masks_read": sweep_masks, "seconds": time.perf_counter() - start, **details}
    if arm.per_k and cache.is_file():  # keep the ks an earlier call measured (runs per k accumulate)
        earlier = json.loads(cache.read_text())
        for key in ("removed", "cost"):
            result[key] = {**earlier.get(key, {}), **result[key]}
        result["per_k"] = {**earlier.get("per_k", {}), **result.get("per_k", {})}
    write_json(cache, result)
    print(f"selected {label}: {removed} ({result['seconds']:.0f}s)", flush=True)
    return result


def cell_masks(bench: Bench, selection: dict[str, Any], k: int) -> np.ndarray:
    sub = selection["method"] == "sublayers"
    mask = np.ones(2 * bench.n_layers if sub else bench.n_layers, dtype=bool)
    mask[selection["removed"][str(k)]] = False
    return mask


def parameters_kept(bench: Bench, selection: dict[str, Any], k: int) -> int:
    removed = selection["removed"][str(k)]
    if selection["method"] == "sublayers":
        return bench.total_params - sum(selection["costs"][i] for i in removed)
    return bench.total_params - sum(bench.layer_params[i] for i in removed)


def perplexities(bench: Bench, selections: dict[str, dict[str, Any]], compute: bool = True) -> dict[str, float]:
    """Held-out perplexity of every cell at both window lengths on both splits, through the engine on
    the base model (skipping a layer is exactly the pruned model; sublayer cells skip halves).
    Keys ``method/k/split/window``."""
    cache = bench.work / "ppl.json"
    done = json.loads(cache.read_text()) if cache.is_file() else {}
    if not compute:
        return done

    def chosen(m: str, k: int) -> str:  # a cell is stale when its method now picks another set
        return "" if m == "base" else ",".join(map(str, selections[m]["removed"][str(k)]))

    for split in SPLITS:
        for window in PPL_WINDOWS:
            ids = bench.held_out(split, window)
            for sub in (False, True):
                cells = [("base", 0)] if not sub else []
                cells += [(m, k) for m, s in selections.items() for k in bench.ks
                          if str(k) in s["removed"] and (ARMS[m].strategy == "sublayers") == sub]
                todo = [(m, k) for m, k in cells if f"{m}/{k}/{split}/{window}" not in done
                        or done.get(f"{m}/{k}/{split}/{window}/set", chosen(m, k)) != chosen(m, k)]
                if not todo:
                    continue
                players = 2 * bench.n_layers if sub else bench.n_layers
                masks = np.stack([np.ones(players, bool) if m == "base" else cell_masks(bench, selections[m], k) for m, k in todo])
                unique, where = np.unique(masks, axis=0, return_inverse=True)  # methods often agree on a set
                cls = SublayerEvaluator if sub else MaskEvaluator
                results = cls(bench.loaded.model, bench.loaded.architecture, ids, 8).evaluate(
                    unique, progress=f"perplexity {split} @ {window}")
                for (m, k), j in zip(todo, where.reshape(-1)):
                    done[f"{m}/{k}/{split}/{window}"] = results[j].perplexity
                    done[f"{m}/{k}/{split}/{window}/set"] = chosen(m, k)
                write_json(cache, done)
    return done


def set_perplexities(bench: Bench, sets: list[tuple[int, ...]], split: str = "test", window: int = 128) -> dict[tuple[int, ...], float]:
    """Held-out perplexity of removal sets (the searches' best-so-far), cached by set."""
    cache = bench.work / "ppl_sets.json"
    done = json.loads(cache.read_text()) if cache.is_file() else {}
    key = lambda s: f"{','.join(map(str, s))}/{split}/{window}"  # noqa: E731
    todo = sorted({tuple(s) for s in sets if key(s) not in done})
    if todo:
        masks = np.ones((len(todo), bench.n_layers), dtype=bool)
        for row, s in enumerate(todo):
            masks[row, list(s)] = False
        ids = bench.held_out(split, window)
        for s, r in zip(todo, MaskEvaluator(bench.loaded.model, bench.loaded.architecture, ids, 8).evaluate(
                masks, progress=f"search traces {split} @ {window}")):
            done[key(s)] = r.perplexity
        write_json(cache, done)
    return {tuple(s): done[key(s)] for s in sets}


def search_curves(bench: Bench, selections: dict[str, dict[str, Any]], compute: bool = True) -> dict[str, Any]:
    """Held-out perplexity (test, 128) of the set each search holds as its best on calibration,
    against real passes spent, per k: the searches' traces (after each round or generation) and
    SLEB's greedy path (one point per k)."""
    curves: dict[str, Any] = {}
    for k in bench.ks:
        for label in CURVE_ARMS:
            s = selections.get(label)
            if s is None or str(k) not in s["removed"]:  # an arm measured at some k only
                continue
            per_k = s.get("per_k", {}).get(str(k), {})
            trace = (per_k.get("search") or {}).get("trace") or per_k.get("trace")
            if trace:
                points = [(t["passes"], tuple(t["removed"])) for t in trace if t["removed"]]
            else:
                points = [(s["cost"][str(k)]["passes"], tuple(s["removed"][str(k)]))]
            if not compute and not (bench.work / "ppl_sets.json").is_file():
                continue
            ppl = set_perplexities(bench, [p for _, p in points])
            curves[f"{label}/{k}"] = [{"passes": c, "removed": list(p), "ppl128_test": ppl[p]} for c, p in points]
    return curves


def pruned_model(bench: Bench, selection: dict[str, Any] | None, k: int):  # noqa: ANN201 - a LoadedModel
    loaded = load_model(bench.model)
    if selection is None:
        return loaded
    removed = selection["removed"][str(k)]
    if selection["method"] == "sublayers":
        removed = zero_half_layers(loaded.model, loaded.architecture, removed)
    if removed:
        prune_layers(loaded, removed)
    return loaded


def zero_shots(
    bench: Bench, selections: dict[str, dict[str, Any]], ks: list[int], limit: int, compute: bool = True,
    methods: list[str] | None = None,
) -> dict[str, Any]:
    """Zero-shot cells (and the base model's), cached per pruned model (players and removed set), so
    methods that pick the same set share one run; ``methods`` limits which missing ones are computed."""
    from coopprune.zeroshot import zero_shot

    folder = bench.work / f"zeroshot-{limit}"
    wanted = set(selections if methods is None else methods)
    cells = [("base", 0)] + [(m, k) for k in ks for m in selections if str(k) in selections[m]["removed"]]
    out = {}
    for m, k in cells:
        removed = [] if m == "base" else selections[m]["removed"][str(k)]
        players = "sublayers" if m != "base" and selections[m]["method"] == "sublayers" else "layers"
        cache = folder / f"{players}-{'-'.join(map(str, removed)) or 'none'}.json"  # a score belongs to a model
        if not cache.is_file() and not (compute and (m == "base" or m in wanted)):
            continue
        if not cache.is_file():
            loaded = pruned_model(bench, None if m == "base" else selections[m], k)
            start = time.perf_counter()
            result = zero_shot(loaded.model, loaded.tokenizer, TASKS, limit, 0, 8).to_dict()
            result.update(seconds=time.perf_counter() - start, removed=removed, players=players)
            write_json(cache, result)
            print(f"zero-shot {m} k={k} {removed}: mean {result.get('mean')} ({result['seconds']:.0f}s)", flush=True)
        out[f"{m}/{k}"] = json.loads(cache.read_text())
    return out


def log_to_mlflow(table: list[dict[str, Any]]) -> None:
    """One MLflow run per cell (found again by its ``cell`` tag and updated, never duplicated)."""
    import mlflow

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))  # as `make run`
    mlflow.set_experiment("coopprune-quality")
    for row in table:
        cell = f"{row['method']}/k{row['k']}"
        found = mlflow.search_runs(filter_string=f"tags.cell = '{cell}'", output_format="list")
        with mlflow.start_run(run_id=found[0].info.run_id if found else None, run_name=cell.replace("/", "-")):
            mlflow.set_tags({"cell": cell, "model": "SmolLM2-135M-Instruct", "bench": "quality"})
            if not found:
                mlflow.log_params({"method": row["method"], "k": row["k"], "removed": str(row["removed"])})
            mlflow.log_metrics({key: float(v) for key, v in row.items()
                                if isinstance(v, (int, float)) and key != "k" and np.isfinite(v)})


def build_table(bench: Bench, selections: dict, ppl: dict, zs: dict) -> list[dict[str, Any]]:
    def ppl_fields(m: str, k: int) -> dict[str, Any]:  # ppl128 / ppl512: the test split, reported; _val: tuned on
        return {f"ppl{w}{suffix}": ppl.get(f"{m}/{k}/{split}/{w}") for w in PPL_WINDOWS
                for split, suffix in (("test", ""), ("val", "_val"))}

    rows = [{"method": "base", "k": 0, "removed": [], "parameters_kept": bench.total_params,
             **ppl_fields("base", 0), **zs_fields(zs.get("base/0"))}]
    for k in bench.ks:
        for m, s in selections.items():
            if str(k) not in s["removed"]:  # an arm measured at some k only
                continue
            rows.append({
                "method": m, "k": k, "removed": s["removed"][str(k)], "parameters_kept": parameters_kept(bench, s, k),
                "utility": s["utility"], "n_windows": s.get("n_windows", 10), "passes": s["cost"][str(k)]["passes"], "tokens": s["cost"][str(k)]["tokens"],
                "sweep_masks_read": s["sweep_masks_read"],
                "selection_seconds": round(s["cost"][str(k)].get("seconds", s["seconds"]), 1),
                **ppl_fields(m, k), **zs_fields(zs.get(f"{m}/{k}")),
            })
    return rows


def plot_selections(selections: dict[str, dict[str, Any]], k: int = 6, results: Path = RESULTS) -> None:
    """Contributions with bootstrap intervals of the game-theoretic selections, removed set at k in red."""
    from coopprune.plots import plot_contributions

    for m, s in selections.items():
        if s.get("ci_low") is not None:
            plot_contributions(np.array(s["values"]), np.array(s["ci_low"]), np.array(s["ci_high"]), s["removed"][str(k)],
                               results / f"contributions_{m}.png", names=[str(i) for i in range(len(s["values"]))],
                               title=f"{m}: contributions with 95% bootstrap intervals (red: removed at k={k})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench/work/quality"))
    parser.add_argument("--model", default="default", help="checkpoint (a tiny one smoke-tests this script)")
    parser.add_argument("--ks", type=int, nargs="+", default=[3, 6, 9, 12])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--stages", nargs="+", default=["select", "ppl", "zeroshot"], choices=["select", "ppl", "zeroshot"])
    parser.add_argument("--zero-shot-ks", type=int, nargs="+", default=[6, 12])
    parser.add_argument("--limit", type=int, default=200, help="zero-shot items per task (seeded subset)")
    parser.add_argument("--zero-shot-methods", nargs="+", choices=METHODS, default=None,
                        help="compute zero-shot cells for these methods only (default: all)")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--fresh", action="store_true",
                        help="write only this call's cells (default: add them to the published table)")
    args = parser.parse_args()
    bench = Bench(args.work, args.ks, model=args.model)
    cached = {m: json.loads(f.read_text()) for m in args.methods if (f := args.work / "select" / f"{m}.json").is_file()}
    selections = {m: select(bench, m) for m in args.methods} if "select" in args.stages else cached
    if "ppl" not in args.stages and "zeroshot" not in args.stages:  # selections only: the published tables stay
        print("selections cached; the tables are written by a run with --stages ppl (and zeroshot)")
        return
    # a stage not asked for still contributes the cells it cached earlier, so the tables stay complete
    ppl = perplexities(bench, selections, compute="ppl" in args.stages)
    zs = zero_shots(bench, selections, args.zero_shot_ks, args.limit, compute="zeroshot" in args.stages,
                    methods=args.zero_shot_methods)
    curves = search_curves(bench, selections, compute="ppl" in args.stages)
    rows = average_random(build_table(bench, selections, ppl, zs))
    # a smoke test on another model writes beside its cells, never over the published results
    results = RESULTS if args.model == "default" else args.work / "results"
    if not args.fresh and (results / "quality.json").is_file():
        rows, curves = carry_published(json.loads((results / "quality.json").read_text()), rows, curves)
    write_tables(rows, results, curves)
    plot_selections(selections, 6 if 6 in args.ks else max(args.ks), results)
    if not args.no_mlflow:
        log_to_mlflow(rows)


if __name__ == "__main__":
    main()
