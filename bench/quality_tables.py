"""The quality bench's tables and plots, from its result rows alone (``bench/results/quality.json``).

Apart from ``bench/quality.py`` so that the tables can be rebuilt, tested and extended without
loading a model or running a stage: nothing here evaluates anything, it only reads rows (and the
searches' curves) and writes ``quality.md``, ``quality.json`` and the plots.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from coopprune.atomic import write_json
from coopprune.estimators import ESTIMATORS
from coopprune.plots import plot_lines

from quality_arms import ARMS, CURVE_ARMS, METHODS, PPL_WINDOWS, TASKS

RESULTS = Path(__file__).parent / "results"


def random_draw(label: str) -> bool:
    """True for an arm that is one seed of a random baseline (its rows are averaged per k)."""
    return label in ARMS and ESTIMATORS[ARMS[label].method].random_draw


def average_random(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Random removal as one row per k: the mean over its seeds (geometric for perplexity)."""
    out = [r for r in rows if not random_draw(r["method"])]
    for k in sorted({r["k"] for r in rows if random_draw(r["method"])}):
        seeds = [r for r in rows if random_draw(r["method"]) and r["k"] == k]
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


DEFAULT_ARM = "game-search-64-f10"  # the product's default (params.yaml), compared against every other arm
PREVIOUS_DEFAULT = "game-search"  # the default on the paper's 10 x 128 calibration tokens, until 2026-12-03
PEERS = ("sleb", "sleb-kl", "evopress", "evopress-ppl", "angular", "bi", "ppl", "semivalue")
#: The cost targets' peers per calibration size: EvoPress (its KL fitness) and SLEB (its PPL ratio).
COST_PEERS = {10: ("evopress", "sleb"), 64: ("evopress-64", "sleb-64")}


def targets(rows: list[dict[str, Any]], split: str = "", arm: str = DEFAULT_ARM) -> list[str]:
    """Issue 13's targets per k for ``arm``: lowest held-out perplexity (test split unless ``_val``)
    among the arms on its calibration windows, and cost against EvoPress and SLEB there."""
    lines = ["| k | default PPL@128 | best other (PPL@128) | default PPL@512 | best other (PPL@512) | lowest at both | "
             "default passes | EvoPress passes | SLEB passes | <= 1/3 EvoPress tokens | <= 2x SLEB passes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k in sorted({r["k"] for r in rows if r["k"]}):
        cells = {r["method"]: r for r in rows if r["k"] == k and r.get("ppl128" + split) is not None}
        if arm not in cells:
            continue
        ours = cells[arm]
        variants = {label for label, a in ARMS.items() if a.method == ARMS[arm].method}  # not its own peers
        others = {m: r for m, r in cells.items()  # the peers on the arm's calibration windows
                  if m not in variants and r["n_windows"] == ours["n_windows"]}
        if not others:  # nothing to compare with yet
            continue
        best = {w: min(others.items(), key=lambda mr: mr[1][f"ppl{w}{split}"]) for w in PPL_WINDOWS}
        # an arm removing the same set ties: the same model evaluated in another run differs in the
        # last float digits (thread-order reductions), which is no ranking
        rivals = [r for r in others.values() if r.get("removed") is None or r["removed"] != ours.get("removed")]
        wins = all(ours[f"ppl{w}{split}"] <= r[f"ppl{w}{split}"] for r in rivals for w in PPL_WINDOWS)
        evo, sleb = (cells.get(m) for m in COST_PEERS.get(ours["n_windows"], ("", "")))
        lines.append(
            f"| {k} | {fmt(ours['ppl128' + split])} | {best[128][0]} ({fmt(best[128][1]['ppl128' + split])}) | "
            f"{fmt(ours['ppl512' + split])} | {best[512][0]} ({fmt(best[512][1]['ppl512' + split])}) | {'yes' if wins else 'no'} | "
            f"{fmt(ours['passes'], 1)} | {fmt(evo['passes'], 1) if evo else ''} | {fmt(sleb['passes'], 1) if sleb else ''} | "
            f"{('yes' if ours['tokens'] <= evo['tokens'] / 3 else 'no') if evo else ''} | "
            f"{('yes' if ours['passes'] <= 2 * sleb['passes'] else 'no') if sleb else ''} |")
    return lines


#: Target 4: the default's search with either utility on 10 x 128 and on 64 x 128 calibration tokens.
CALIBRATION_ARMS = ("game-search", "game-search-ppl", "sleb", "game-search-64", "game-search-ppl-64",
                    "game-search-64-f10", "game-search-64-f10-noref", "sleb-64", "bi-64", "angular-64", "evopress-64")


def calibration_question(rows: list[dict[str, Any]]) -> list[str]:
    """The default's sets per calibration size and utility (and SLEB's), where 64 x 128 arms were run."""
    measured = {r["k"] for r in rows
                if r["method"] in CALIBRATION_ARMS and r["n_windows"] != ARMS[PREVIOUS_DEFAULT].n_windows}
    lines = ["| k | arm | calibration | utility | removed | tokens (k) | "
             "PPL@128 val | PPL@128 test | PPL@512 val | PPL@512 test |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["k"] in measured and r["method"] in CALIBRATION_ARMS:
            searched = dict(ARMS[r["method"]].options).get("search_windows")
            calibration = f"{r['n_windows']} x 128" + (f", search on {searched}" if searched else "")
            lines.append(f"| {r['k']} | {r['method']} | {calibration} | {r['utility']} | {r['removed']} | "
                         f"{fmt(r['tokens'] / 1e3, 0)} | "
                         f"{fmt(r.get('ppl128_val'))} | {fmt(r.get('ppl128'))} | {fmt(r.get('ppl512_val'))} | {fmt(r.get('ppl512'))} |")
    return lines if len(lines) > 2 else []


def evopress_64_runs(rows: list[dict[str, Any]]) -> str:
    """Which depths the EvoPress-on-64-windows peer has run at (an hour or more a depth on this CPU)."""
    ks = sorted(r["k"] for r in rows if r["method"] == "evopress-64")
    if not ks:
        return "EvoPress was not (evopress-64: 40 minutes to over an hour a k here)"
    return f"EvoPress at k = {', '.join(map(str, ks))} (evopress-64; 40 minutes to over an hour a k here)"


def search_series(rows: list[dict[str, Any]], curves: dict[str, Any]) -> dict[int, dict[str, tuple[list[float], list[float]]]]:
    """Per k, each search's held-out perplexity of the set it would return if stopped there, against
    the calibration tokens spent so far: a pass on 64 windows costs 6.4 on 10, so arms on either
    calibration share one axis only in tokens (each arm's tokens per pass read from its own row).
    A plotted arm whose trace was not kept is drawn at its end point, the one point SLEB has anyway."""
    series: dict[int, dict[str, tuple[list[float], list[float]]]] = {}
    for r in rows:
        if not (r.get("passes") and r.get("tokens")) or r["method"] not in CURVE_ARMS:
            continue
        points = curves.get(f"{r['method']}/{r['k']}") or [{"passes": r["passes"], "ppl128_test": r["ppl128"]}]
        scale = r["tokens"] / r["passes"]
        series.setdefault(int(r["k"]), {})[r["method"]] = ([pt["passes"] * scale / 1e3 for pt in points],
                                                          [pt["ppl128_test"] for pt in points])
    return dict(sorted(series.items()))


def write_tables(rows: list[dict[str, Any]], results: Path = RESULTS, curves: dict[str, Any] | None = None) -> None:
    results.mkdir(parents=True, exist_ok=True)
    write_json(results / "quality.json", {"rows": rows, "curves": curves or {}, "date": time.strftime("%Y-%m-%d")})
    lines = ["| k | method | utility | removed | params kept (M) | real passes | tokens (k) | selection s | "
             "PPL@128 val | PPL@128 test | PPL@512 val | PPL@512 test | zero-shot mean |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tokens = r.get("tokens")
        lines.append(f"| {r['k']} | {r['method']} | {r.get('utility', '')} | {r['removed']} | {r['parameters_kept'] / 1e6:.1f} | "
                     f"{fmt(r.get('passes'), 1)} | {fmt(tokens / 1e3 if tokens is not None else None, 0)} | "
                     f"{fmt(r.get('selection_seconds'), 0)} | {fmt(r.get('ppl128_val'))} | {fmt(r.get('ppl128'))} | "
                     f"{fmt(r.get('ppl512_val'))} | {fmt(r.get('ppl512'))} | {fmt(r.get('zero_shot_mean'), 3)} |")
    lines += ["", "Real passes: full-calibration forward passes (10 x 128 tokens; 64 x 128 for the -64 arms) the selection consumed for that k, a "
              "screen on a share of the windows counted as that share, and the 200-mask Stage-1 sweep included for the arms "
              "that train on it. Ranked methods are computed once up to the largest k (their cost is that run's); SLEB's "
              "greedy order costs its first k steps. Held-out text: BoolQ passages split alternately, even ones "
              "validation (defaults are chosen on it), odd ones test (reported); 64 x 128 and 16 x 512 tokens each.",
              "", f"Targets (test split), the default {DEFAULT_ARM} against the arms on its 64 x 128 windows:", "",
              *targets(rows), "", "The same on the validation split:", "", *targets(rows, "_val"),
              "", f"The default until 2026-12-03, {PREVIOUS_DEFAULT} on 10 x 128, against the arms on those windows (test split):",
              "", *targets(rows, arm=PREVIOUS_DEFAULT), "", "The same on the validation split:", "",
              *targets(rows, "_val", PREVIOUS_DEFAULT)]
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
    question = calibration_question(rows)
    if question:
        lines += ["", "Calibration (target 4): the default's search with the KL utility and with the PPL ratio, on 10 x 128 "
                  "and on 64 x 128 LAMBADA calibration tokens (the same seed), and the multi-fidelity option on 64 x 128 "
                  "(the search on a seeded 10 of the 64 windows, its 8 best sets confirmed on all 64, then refined there; "
                  "-noref: without the refinement); tokens: the selection's, as above. Of the peers SLEB, ShortGPT's BI "
                  f"and the angular block were run on 64 x 128 (sleb-64, bi-64, angular-64); {evopress_64_runs(rows)}.",
                  "", *question]
    (results / "quality.md").write_text("\n".join(lines) + "\n")
    if curves:
        for k, series in search_series(rows, curves).items():
            plot_lines(series, results / f"quality_search_k{k}.png",
                       xlabel="calibration tokens evaluated (thousands)",
                       ylabel="held-out perplexity (test, 128)", title=f"SmolLM2-135M, k={k}: held-out PPL of the best calibration set so far",
                       logx=True, logy=True)
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m in ARMS and ARMS[m].in_plots]
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


def carry_published(
    published: dict[str, Any], rows: list[dict[str, Any]], curves: dict[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The published table with this call's cells in place of theirs: a run of some arms at some k
    (hours each on a CPU, and a fresh checkout has no cell cache) adds to the table, never shrinks it.
    A fresh cell of the same model (removed set) keeps the published measurements it did not
    repeat (e.g. the base model's zero-shot scores under ``--stages ppl``)."""
    earlier = {(r["method"], r["k"]): r for r in published.get("rows", [])}
    rows = [{**old, **r} if (old := earlier.get((r["method"], r["k"]))) and old.get("removed") == r.get("removed") else r
            for r in rows]
    fresh = {(r["method"], r["k"]) for r in rows}
    order = {m: i for i, m in enumerate(METHODS)}

    def position(r: dict[str, Any]) -> tuple[bool, bool, int, int]:  # base, per k in registry order, random last
        seeds = random_draw(r["method"]) or r["method"] not in ARMS  # a seed, or the mean over seeds
        return (r["k"] > 0, seeds, r["k"], order.get(r["method"], len(order)))

    kept = [r for r in published.get("rows", []) if (r["method"], r["k"]) not in fresh]
    return sorted(kept + rows, key=position), {**published.get("curves", {}), **curves}


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
