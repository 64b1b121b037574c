"""Pruning quality on SmolLM2-135M: every method at k = 3, 6, 9, 12 removed layers of 30.

Same calibration for every method (10 x 128 LAMBADA tokens, seed 0), same evaluation for every
pruned model: held-out perplexity on BoolQ passages (64 windows of 128 tokens, 16 of 512) for
every cell, zero-shot accuracy (lm-eval on the bundled data, a seeded subset of ``--limit``
items per task) at ``--zero-shot-ks``. Per cell also: parameters kept, real forward passes the
selection consumed and its wall time. Each method is selected once and its removal order read
off for every k (bottom-k of one ranking, SLEB's greedy order, the rounds of iterative pruning);
Gromov's angular block is chosen per k, and sublayer players at the parameter budget of k layers.

Resumable: selections, perplexities and zero-shot scores are cached per cell under ``--work``
(the surrogate methods' mask stores too), so a long sweep completes over several calls. Every
cell is logged to MLflow (experiment ``coopprune-quality``, one run per cell, updated in place).

    python bench/quality.py [--work bench/work/quality] [--stages select ppl zeroshot calibration]
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

from coopprune import pipeline
from coopprune.atomic import write_json
from coopprune.calibration import calibration_windows, evaluation_windows, load_texts
from coopprune.config import Params
from coopprune.dataset import MaskDataset
from coopprune.engine import MaskEvaluator
from coopprune.estimators import get_estimator
from coopprune.game import LayerGame
from coopprune.models.loading import load_model
from coopprune.plots import plot_lines
from coopprune.prune import count_parameters, prune_layers
from coopprune.select import select_layers, select_within_cost
from coopprune.strategy import select_players
from coopprune.sublayers import SublayerEvaluator, sublayer_parameters, zero_half_layers
from coopprune.surrogate import SurrogateConfig
from coopprune.zeroshot import TASKS as TASK_SPECS

RESULTS = Path(__file__).parent / "results"
METHODS = ["semivalue", "semivalue-search", "shapley-adjusted", "iterative", "sublayers", "bi", "angular", "ppl", "sleb",
           "last", "random-0", "random-1", "random-2"]
READS_SWEEP = ("semivalue", "semivalue-search", "shapley-adjusted", "iterative")  # train on the shared Stage-1 sweep
TASKS = list(TASK_SPECS)  # the seven bundled tasks, in the library's order
PPL_WINDOWS = {128: 64, 512: 16}  # the same 8,192 tokens of BoolQ passages at both lengths


class Bench:
    """The shared model, calibration and sweep, and the cached cells under ``work``."""

    def __init__(self, work: Path, ks: list[int], n_windows: int = 10, model: str = "default") -> None:
        self.work, self.ks, self.model = work, ks, model
        self.params = Params.from_dict({"model": {"source": model}, "calibration": {"n_windows": n_windows},
                                        "output_dir": str(work)})
        self.loaded = load_model(model)
        c = self.params.calibration
        self.windows = calibration_windows(self.loaded.tokenizer, load_texts(c.source), c.n_windows, c.window, c.seed)
        self.n_layers = len(self.loaded.architecture.layers(self.loaded.model))
        self.layer_params = [sum(p.numel() for p in layer.parameters())
                             for layer in self.loaded.architecture.layers(self.loaded.model)]
        self.total_params = count_parameters(self.loaded.model)

    def evaluator(self, sublayers: bool = False) -> MaskEvaluator:
        cls = SublayerEvaluator if sublayers else MaskEvaluator
        return cls(self.loaded.model, self.loaded.architecture, self.windows.input_ids, self.params.calibration.batch_size)

    def sweep(self) -> MaskDataset:
        """The paper's Stage-1 sweep (strata scaled to 30 layers, 40 masks each), evaluated once."""
        return pipeline.sweep(self.params, self.work / "masks", progress=True)

    def own_store(self, method: str) -> MaskDataset:
        """A private copy of the sweep: a method's own evaluations persist (resumable) but never leak into another's."""
        dest = self.work / "stores" / method
        if not dest.exists():
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.sweep().path, tmp)
            tmp.rename(dest)
        return MaskDataset.open(dest)


def select(bench: Bench, method: str) -> dict[str, Any]:
    """Removed players for every k, with the real passes and seconds the selection took."""
    cache = bench.work / "select" / f"{method}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    k_max, ks = max(bench.ks), bench.ks
    surrogate = {"surrogate": SurrogateConfig(), "bootstrap": 10}
    sweep_masks = len(bench.sweep()) if method in READS_SWEEP else 0
    start = time.perf_counter()
    removed: dict[int, list[int]] = {}
    details: dict[str, Any] = {}
    if method in ("semivalue", "shapley-adjusted"):
        game = LayerGame(bench.evaluator(), store=bench.own_store(method), progress=True)
        c = get_estimator(method, **surrogate).estimate(game, budget=sweep_masks, seed=0, k=k_max)
        removed = {k: select_layers(c.values, k) for k in ks}
        evaluations = c.evaluations
        details = {"values": c.values.tolist(), "ci_low": c.ci_low.tolist(), "ci_high": c.ci_high.tolist(),
                   "bottom_k_stability_at_kmax": c.details.get("bottom_k_stability")}
    elif method == "semivalue-search":  # a set per k, searched on the semivalue's surrogate, verified on the model
        game = LayerGame(bench.evaluator(), store=bench.own_store(method), progress=True)
        evaluations, details = 0, {"search": {}}
        for k in ks:
            c = get_estimator(method, **surrogate).estimate(game, budget=sweep_masks, seed=0, k=k)
            removed[k], evaluations = sorted(c.removal), evaluations + c.evaluations
            details["search"][str(k)] = c.details["search"]
    elif method == "iterative":  # the paper's method in rounds of 3, the game re-run on the pruned model
        game = LayerGame(bench.evaluator(), store=bench.own_store(method), progress=True)
        s = select_players(game, get_estimator("semivalue", **surrogate), k_max, per_round=3, budget=sweep_masks)
        order = [p for r in s.rounds for p in sorted(r.removed, key=lambda p, r=r: r.contributions.values[r.players.index(p)])]
        removed = {k: sorted(order[:k]) for k in ks}
        evaluations = s.evaluations
    elif method == "sublayers":  # attention and MLP as 60 players, budgets in parameters
        game = LayerGame(bench.evaluator(sublayers=True), progress=True)
        c = get_estimator("semivalue", **surrogate).estimate(game, budget=200, seed=0)
        costs = sublayer_parameters(bench.loaded.model, bench.loaded.architecture)
        removed = {k: select_within_cost(c.values, costs, round(k * sum(costs) / bench.n_layers)) for k in ks}
        evaluations, details = c.evaluations, {"costs": costs}
    elif method == "angular":  # a contiguous block per k: chosen separately, one pass each
        evaluations = 0
        for k in ks:
            game = LayerGame(bench.evaluator())
            c = get_estimator("angular").estimate(game, k=k)
            removed[k], evaluations = sorted(c.removal), evaluations + c.evaluations
    else:  # one ranking (or SLEB's greedy order) read off for every k
        name, seed = (method.split("-")[0], int(method.split("-")[1])) if method.startswith("random") else (method, 0)
        game = LayerGame(bench.evaluator(), progress=name == "sleb")
        c = get_estimator(name).estimate(game, seed=seed, k=k_max)
        removed = {k: select_layers(c.values, k) for k in ks}
        evaluations = c.evaluations
    result = {"method": method, "removed": {str(k): v for k, v in removed.items()}, "new_evaluations": evaluations,
              "sweep_masks_read": sweep_masks, "seconds": time.perf_counter() - start, **details}
    write_json(cache, result)
    print(f"selected {method}: {removed} ({evaluations} new passes, {result['seconds']:.0f}s)", flush=True)
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
    """Held-out perplexity of every cell at both window lengths, through the engine on the base model
    (skipping a layer is exactly the pruned model; sublayer cells skip halves)."""
    cache = bench.work / "ppl.json"
    done = json.loads(cache.read_text()) if cache.is_file() else {}
    if not compute:
        return done
    docs = load_texts(bench.params.evaluation.text)
    for window, n in PPL_WINDOWS.items():
        ids = evaluation_windows(bench.loaded.tokenizer, docs, window, n).input_ids
        for sub in (False, True):
            cells = [("base", 0)] if not sub else []
            cells += [(m, k) for m, s in selections.items() for k in bench.ks if (m == "sublayers") == sub]
            todo = [(m, k) for m, k in cells if f"{m}/{k}/{window}" not in done]
            if not todo:
                continue
            players = 2 * bench.n_layers if sub else bench.n_layers
            masks = np.stack([np.ones(players, bool) if m == "base" else cell_masks(bench, selections[m], k) for m, k in todo])
            cls = SublayerEvaluator if sub else MaskEvaluator
            results = cls(bench.loaded.model, bench.loaded.architecture, ids, 8).evaluate(masks, progress=f"perplexity @ {window}")
            for (m, k), r in zip(todo, results):
                done[f"{m}/{k}/{window}"] = r.perplexity
            write_json(cache, done)
    return done


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
    bench: Bench, selections: dict[str, dict[str, Any]], ks: list[int], limit: int, compute: bool = True
) -> dict[str, Any]:
    from coopprune.zeroshot import zero_shot

    folder = bench.work / f"zeroshot-{limit}"
    cells = [("base", 0)] + [(m, k) for k in ks for m in selections]
    out = {}
    for m, k in cells:
        cache = folder / f"{m}-{k}.json"
        if not cache.is_file() and not compute:
            continue
        if not cache.is_file():
            loaded = pruned_model(bench, None if m == "base" else selections[m], k)
            start = time.perf_counter()
            result = zero_shot(loaded.model, loaded.tokenizer, TASKS, limit, 0, 8).to_dict()
            result["seconds"] = time.perf_counter() - start
            write_json(cache, result)
            print(f"zero-shot {m} k={k}: mean {result.get('mean')} ({result['seconds']:.0f}s)", flush=True)
        out[f"{m}/{k}"] = json.loads(cache.read_text())
    return out


def calibration_size(
    bench: Bench, ks: list[int], budget: int, sizes: tuple[int, ...] = (10, 64), compute: bool = True
) -> list[dict[str, Any]]:
    """The paper's question: does more calibration text change what shapley-adjusted removes?
    Both arms get ``budget`` new real evaluations and no sweep (their own permutation chains)."""
    rows = []
    ids = evaluation_windows(bench.loaded.tokenizer, load_texts(bench.params.evaluation.text), 128, PPL_WINDOWS[128]).input_ids
    for n_windows in sizes:
        cache = bench.work / "calibration" / f"{n_windows}.json"
        if not cache.is_file() and not compute:
            continue
        if not cache.is_file():
            arm = bench if n_windows == bench.params.calibration.n_windows else Bench(bench.work, ks, n_windows, bench.model)
            game = LayerGame(arm.evaluator(), progress=True)
            start = time.perf_counter()
            c = get_estimator("shapley-adjusted", surrogate=SurrogateConfig(), bootstrap=0).estimate(game, budget=budget, seed=0)
            removed = {k: select_layers(c.values, k) for k in ks}
            masks = np.ones((len(ks), bench.n_layers), dtype=bool)
            for row, k in enumerate(ks):
                masks[row, removed[k]] = False
            ppl = [r.perplexity for r in MaskEvaluator(bench.loaded.model, bench.loaded.architecture, ids, 8).evaluate(masks, progress=False)]
            write_json(cache, {"n_windows": n_windows, "values": c.values.tolist(), "evaluations": c.evaluations,
                               "seconds": time.perf_counter() - start, "removed": {str(k): removed[k] for k in ks},
                               "ppl128": {str(k): p for k, p in zip(ks, ppl)}})
        rows.append(json.loads(cache.read_text()))
    return rows


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
    rows = [{"method": "base", "k": 0, "removed": [], "parameters_kept": bench.total_params,
             "ppl128": ppl.get("base/0/128"), "ppl512": ppl.get("base/0/512"), **zs_fields(zs.get("base/0"))}]
    for k in bench.ks:
        for m, s in selections.items():
            rows.append({
                "method": m, "k": k, "removed": s["removed"][str(k)], "parameters_kept": parameters_kept(bench, s, k),
                "new_passes": s["new_evaluations"], "sweep_masks_read": s["sweep_masks_read"],
                "selection_seconds": round(s["seconds"], 1),
                "ppl128": ppl.get(f"{m}/{k}/128"), "ppl512": ppl.get(f"{m}/{k}/512"), **zs_fields(zs.get(f"{m}/{k}")),
            })
    return rows


def zs_fields(result: dict[str, Any] | None) -> dict[str, float]:
    if not result:
        return {}
    fields = {"zero_shot_mean": result["mean"]}
    fields |= {f"acc_{t}": v["value"] for t, v in result["tasks"].items()}
    others = [v["value"] for t, v in result["tasks"].items() if t != "boolq"]
    if len(others) < len(result["tasks"]):  # BoolQ's yes/no prior moves the mean most at this size (RESULTS.md)
        fields["zero_shot_mean_no_boolq"] = float(np.mean(others))
    errors = [v[f"{v['metric']}_stderr"] for v in result["tasks"].values()]
    if all(e is not None for e in errors):  # the mean of independent task means: sqrt(sum se^2) / n
        fields["zero_shot_mean_se"] = float(np.sqrt(np.sum(np.square(errors))) / len(errors))
    return fields


def average_random(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Random removal as one row per k: the mean over its seeds (geometric for perplexity)."""
    out = [r for r in rows if not r["method"].startswith("random-")]
    for k in sorted({r["k"] for r in rows if r["method"].startswith("random-")}):
        seeds = [r for r in rows if r["method"].startswith("random-") and r["k"] == k]
        avg: dict[str, Any] = {"method": f"random (mean of {len(seeds)})", "k": k, "removed": "-"}
        for key in seeds[0]:
            values = [r.get(key) for r in seeds]
            if key in avg or not all(isinstance(v, (int, float)) for v in values):
                continue
            avg[key] = float(np.exp(np.mean(np.log(values)))) if key.startswith("ppl") else float(np.mean(values))
        out.append(avg)
    return out


def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e4 and digits == 2:
        return str(int(v))  # counts averaged over seeds (random) stay counts
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) >= 1e4 else f"{v:.{digits}f}"
    return str(v)


def write_tables(rows: list[dict[str, Any]], calibration: list[dict[str, Any]], results: Path = RESULTS) -> None:
    results.mkdir(parents=True, exist_ok=True)
    write_json(results / "quality.json", {"rows": rows, "calibration_size": calibration, "date": time.strftime("%Y-%m-%d")})
    lines = ["| k | method | removed | params kept (M) | new passes | sweep masks read | selection s | PPL@128 | PPL@512 | zero-shot mean |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['k']} | {r['method']} | {r['removed']} | {r['parameters_kept'] / 1e6:.1f} | {fmt(r.get('new_passes'))} | "
                     f"{fmt(r.get('sweep_masks_read'))} | {fmt(r.get('selection_seconds'), 0)} | {fmt(r.get('ppl128'))} | "
                     f"{fmt(r.get('ppl512'))} | {fmt(r.get('zero_shot_mean'), 3)} |")
    lines += ["", "New passes and selection seconds are each method's whole selection up to the largest k: ranked methods "
              "and SLEB's greedy order are computed once and read off for every k; iterative's rounds of 3 reach k = 3, "
              "6, 9, 12 in turn. Sweep masks read: the shared 200-mask Stage-1 sweep, evaluated once."]
    zs_rows = [r for r in rows if "zero_shot_mean" in r]
    if zs_rows:
        lines += ["", "| k | method | " + " | ".join(TASKS) + " | mean | mean without BoolQ |",
                  "|---|---|" + "---|" * (len(TASKS) + 2)]
        lines += [f"| {r['k']} | {r['method']} | " + " | ".join(fmt(r.get(f"acc_{t}"), 3) for t in TASKS)
                  + f" | {fmt(r['zero_shot_mean'], 3)} | {fmt(r.get('zero_shot_mean_no_boolq'), 3)} |" for r in zs_rows]
        lines += ["", "Headline metric per task (acc_norm for PIQA, HellaSwag, ARC, OpenBookQA; acc for WinoGrande and "
                  f"BoolQ) on the same seeded 200 items per task for every model. Standard error of a mean over 7 tasks: "
                  f"about {np.mean([r['zero_shot_mean_se'] for r in zs_rows if 'zero_shot_mean_se' in r]):.3f}; a difference "
                  "between two models' means below about 0.02 is within one standard error of that difference "
                  "(unpaired; the shared items make it somewhat tighter)."]
    if len(calibration) == 2:
        lines += ["", "| calibration | new passes | selection s | " + " | ".join(f"removed at k={k} | PPL@128 at k={k}" for k in calibration[0]["ppl128"]) + " |",
                  "|---|---|---|" + "---|---|" * len(calibration[0]["ppl128"])]
        lines += [f"| {c['n_windows']} x 128 | {c['evaluations']} | {c['seconds']:.0f} | "
                  + " | ".join(f"{c['removed'][k]} | {fmt(c['ppl128'][k])}" for k in c["ppl128"]) + " |" for c in calibration]
    (results / "quality.md").write_text("\n".join(lines) + "\n")
    # drop-last and random sit orders of magnitude above (table); the plot compares the informed methods
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "base" and m != "last" and not m.startswith("random")]
    base = next(r for r in rows if r["method"] == "base")
    if base.get("ppl128") is None:
        print("\n".join(lines))
        return
    plot_lines({m: ([0] + [r["k"] for r in rows if r["method"] == m and r.get("ppl128")],
                    [base["ppl128"]] + [r["ppl128"] for r in rows if r["method"] == m and r.get("ppl128")])
                for m in methods},
               results / "quality_ppl.png", xlabel="layers removed (of 30)", ylabel="held-out perplexity (128-token windows)",
               title="SmolLM2-135M: perplexity vs layers removed", logy=True)
    if base.get("zero_shot_mean") is not None:  # every method with zero-shot cells, random as its mean
        zs = {m: ([0] + [r["k"] for r in zs_rows if r["method"] == m], [base["zero_shot_mean"]]
                  + [r["zero_shot_mean"] for r in zs_rows if r["method"] == m])
              for m in dict.fromkeys(r["method"] for r in zs_rows) if m != "base"}
        plot_lines({m: xy for m, xy in zs.items() if len(xy[0]) > 1}, results / "quality_zeroshot.png",
                   xlabel="layers removed (of 30)", ylabel="zero-shot mean accuracy (7 tasks)",
                   title="SmolLM2-135M: zero-shot accuracy vs layers removed")
    print("\n".join(lines))


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
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--stages", nargs="+", default=["select", "ppl", "zeroshot", "calibration"])
    parser.add_argument("--zero-shot-ks", type=int, nargs="+", default=[6, 12])
    parser.add_argument("--limit", type=int, default=200, help="zero-shot items per task (seeded subset)")
    parser.add_argument("--calibration-budget", type=int, default=200)
    parser.add_argument("--calibration-ks", type=int, nargs="+", default=[6, 12])
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args()
    bench = Bench(args.work, args.ks, model=args.model)
    cached = {m: json.loads(f.read_text()) for m in args.methods if (f := args.work / "select" / f"{m}.json").is_file()}
    selections = {m: select(bench, m) for m in args.methods} if "select" in args.stages else cached
    # a stage not asked for still contributes the cells it cached earlier, so the tables stay complete
    ppl = perplexities(bench, selections, compute="ppl" in args.stages)
    zs = zero_shots(bench, selections, args.zero_shot_ks, args.limit, compute="zeroshot" in args.stages)
    calibration = calibration_size(bench, args.calibration_ks, args.calibration_budget, compute="calibration" in args.stages)
    rows = average_random(build_table(bench, selections, ppl, zs))
    # a smoke test on another model writes beside its cells, never over the published results
    results = RESULTS if args.model == "default" else args.work / "results"
    write_tables(rows, calibration, results)
    plot_selections(selections, 6 if 6 in args.ks else max(args.ks), results)
    if not args.no_mlflow:
        log_to_mlflow(rows)


if __name__ == "__main__":
    main()
