"""How far the main job's layer contributions can be trusted: measured against a real reference.

The main job (``params.yaml``: game-search, k = 6, KL on 64 x 128 LAMBADA, its search on a seeded
10 of those windows) reports per-layer contributions. Here they are compared with a reference on
the same game (same model, utility and 10 windows), estimated from real evaluations only, with no
surrogate: ``--bases`` base masks drawn from the job's strata (k/2, k and 3k/2 layers removed),
each evaluated with every one of its single-layer flips (L + 1 passes a base), so each base gives
one exact marginal ``log v(m + i) - log v(m - i)`` of every layer: the semivalue the job reports,
on its log-utility scale, as a plain mean with its standard error. The reference grows in parts of
``--bases`` bases each, drawn apart (``--step reference --part P``, one process and one store a
part, so parts run side by side); every complete part counts.

Reported: Spearman of the job's contributions with the reference, its top five and bottom k
against the reference's, how many of its 95 % intervals cover the reference value and how many
span zero, and the held-out fit of the model behind them; ``--step budget``: the same for the
job's evaluations plus more of them, against the parts they were not taken from. Every real
evaluation is cached under ``--work`` (a killed run resumes).

    python bench/contributions.py [--step STEP] [--part P] [--bases 33] [--work bench/work/contributions]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from coopprune import pipeline
from coopprune.atomic import write_json
from coopprune.attribution import attribute, explanation_masks
from coopprune.metrics import spearman
from coopprune.shapley import exact_shapley
from coopprune.config import Params
from coopprune.dataset import MaskDataset
from coopprune.estimators.game_search import strata_around
from coopprune.game import LayerGame
from coopprune.records import Decision
from coopprune.sampling import stratified_masks

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def job_params(work: Path) -> Params:
    """The main job's params, writing under ``work``."""
    return Params.load(ROOT / "params.yaml").model_copy(update={"output_dir": str(work / "job")})


def run_job(params: Params) -> dict[str, Any]:
    """The main job's sweep and decision (cached in its output folder); its screen store holds
    every real evaluation it made on the search windows."""
    sweep = pipeline.sweep(params, progress=True)
    started = time.perf_counter()
    result = pipeline.prune_from_params(params, sweep, progress=True, decision_only=True)
    return {"removed": result.removed_layers, "seconds": round(time.perf_counter() - started, 1)}


def ablation_arm(params: Params, work: Path, k: int, surrogate: bool) -> dict[str, Any]:
    """game-search at ``k`` with or without its surrogate (same seeds, budget, sweep); the arm
    with it at the job's k is the job itself."""
    job = Path(params.output_dir)
    if surrogate and k == params.prune.remove:
        folder = job
    else:
        folder = work / "ablation" / f"{'surrogate' if surrogate else 'random'}-k{k}"
        options = {**params.prune.options.get("game-search", {}), "proposals": "surrogate" if surrogate else "random"}
        prune = params.prune.model_copy(update={"remove": k, "options": {**params.prune.options, "game-search": options}})
        params = params.model_copy(update={"output_dir": str(folder), "prune": prune})
    decision = folder / "contributions" / pipeline.DECISION_FILE
    if not decision.is_file():
        pipeline.prune_from_params(params, pipeline.merge_sweep(job / "masks"), progress=True, decision_only=True)
    d = json.loads(decision.read_text())
    search = d["scores"]["rounds"][0]["search"]
    return {"k": k, "surrogate": surrogate, "removed": sorted(d["removed_players"]), "utility": search["chosen_real"],
            "passes": d["scores"]["passes"], "evaluations": d["scores"]["evaluations"], "rounds": search["rounds"],
            "stopped": search["stopped"], "seconds": d["scores"]["seconds"]}


EXPLAIN_MASKS = 186  # the option's measured setting: 185 new evaluations, 5.3 min on 2 cores here


def part_folder(work: Path, part: int) -> Path:
    """Where part ``part`` of the reference keeps its real evaluations (part 0: the first reference)."""
    return work / ("reference" if part == 0 else f"reference-{part}")


def reference_game(params: Params, folder: Path) -> LayerGame:
    """The job's search game (its utility on its screen windows) with its own cache in ``folder``
    (one per part of the reference, so that parts run in parallel processes)."""
    setup = pipeline.sweep_setup(params)
    identity = setup.manifest.identity
    store = pipeline.empty_store(folder, setup.evaluator, identity.model_fingerprint,
                                 identity.calibration_fingerprint, params.game)
    return LayerGame(setup.evaluator, params.game.utility, store=store, progress=True)


def flip_design(n: int, k: int, bases: int, seed: int, part: int = 0) -> np.ndarray:
    """``bases`` stratified base masks, each followed by its n single-player flips; each part of the
    reference draws its own bases."""
    salt = [seed, 0xF11B] if part == 0 else [seed, 0xF11B, part]
    base = stratified_masks(n, strata_around(k, n), bases, np.random.default_rng(salt))
    rows = []
    for m in base:
        rows.append(m.copy())
        for i in range(n):
            flipped = m.copy()
            flipped[i] = ~flipped[i]
            rows.append(flipped)
    return np.stack(rows)


def base_marginals(design: np.ndarray, utilities: np.ndarray, n: int) -> np.ndarray:
    """Per base (row) and player: the exact marginal log v(m + i) - log v(m - i) its flips give."""
    logs = np.log(utilities).reshape(-1, n + 1)
    return np.where(design[:: n + 1], logs[:, :1] - logs[:, 1:], logs[:, 1:] - logs[:, :1])


def top_five(values: np.ndarray) -> set[int]:
    """The five players with the largest contributions."""
    return set(np.argsort(-values)[:5].tolist())


def part_marginals(params: Params, work: Path, part: int, bases: int) -> np.ndarray | None:
    """Per base of reference part ``part``: every player's exact marginal; None until it is complete."""
    folder = part_folder(work, part)
    if not (folder / "manifest.json").is_file():
        return None
    masks, utilities = MaskDataset.open(folder).arrays()
    n = masks.shape[1]
    design = flip_design(n, params.prune.remove, bases, params.sampling.seed, part)
    lookup = {m.tobytes(): u for m, u in zip(masks, utilities)}
    if any(m.tobytes() not in lookup for m in design):
        return None
    return base_marginals(design, np.array([lookup[m.tobytes()] for m in design]), n)


def reference_parts(params: Params, work: Path, bases: int) -> dict[int, np.ndarray]:
    """Every complete part of the reference: part -> its per-base marginals."""
    found = sorted(int(f.name.split("-")[1]) if "-" in f.name else 0 for f in work.glob("reference*") if f.is_dir())
    parts = {p: part_marginals(params, work, p, bases) for p in found}
    return {p: m for p, m in parts.items() if m is not None}


def summarize(marginals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per player: mean and standard error of its marginal over the bases."""
    return marginals.mean(0), marginals.std(0, ddof=1) / np.sqrt(len(marginals))


def reliability(params: Params, work: Path, bases: int, sizes: tuple[int, ...] = (3, 6, 11, 16, 33, 49),
                draws: int = 500) -> list[dict[str, Any]]:
    """How far the reference agrees with itself: its bases (every part) split at random into ``m``
    and the rest, the Spearman and top five of the part's means against the rest's. That is the
    reference's own sampling noise, which bounds how well any estimator can be seen to agree with it."""
    marginals = np.concatenate(list(reference_parts(params, work, bases).values()))
    total, n = marginals.shape
    rng = np.random.default_rng([params.sampling.seed, 0x5E1F])
    rows = []
    for m in (m for m in sizes if 2 * m <= total + 1):
        rho, same = [], []
        for _ in range(draws):
            order = rng.permutation(total)
            a, b = marginals[order[:m]].mean(0), marginals[order[m:]].mean(0)
            rho.append(spearman(a, b))
            same.append(top_five(a) == top_five(b))
        rows.append({"bases": m, "evaluations": m * (n + 1), "rest": total - m, "spearman_mean": float(np.mean(rho)),
                     "spearman_p10": float(np.percentile(rho, 10)), "spearman_p90": float(np.percentile(rho, 90)),
                     "same_top5": float(np.mean(same)), "draws": draws})
    return rows


def budget_curve(params: Params, work: Path, bases: int, sizes: tuple[int, ...] = (0, 93, 186, 372, 744),
                 draws: int = 5) -> list[dict[str, Any]]:
    """What the job's contributions would need: its own real evaluations plus ``r`` masks drawn at
    random from reference part 0 (stratified bases and their flips: sizes 2 to 10 removed), fitted
    exactly as the job fits them, against the reference of the other parts (none of those masks)."""
    parts = reference_parts(params, work, bases)
    if 0 not in parts or len(parts) < 2:
        raise SystemExit("the budget curve needs reference part 0 and at least one more part (--step reference --part P)")
    ref, se = summarize(np.concatenate([m for p, m in parts.items() if p != 0]))
    k = params.prune.remove
    strata = strata_around(k, len(ref))
    jm, ju = MaskDataset.open(Path(params.output_dir) / "search-screen").arrays()
    pm, pu = MaskDataset.open(part_folder(work, 0)).arrays()
    rng = np.random.default_rng([params.sampling.seed, 0xB0D6])
    rows = []
    for r in sizes:
        per = []
        for _ in range(draws if r else 1):
            pick = rng.choice(len(pm), r, replace=False)
            a = attribute(np.concatenate([jm, pm[pick]]), np.concatenate([ju, pu[pick]]), strata, params.sampling.seed)
            st = interval_stats(a.semivalue, *a.semivalue_ci, ref, k, se)
            per.append([st["spearman"], st["top5_same"], st["top5_overlap"], st["coverage"], st["spanning_zero"], a.fit["r2"]])
        m = np.mean(per, axis=0)
        rows.append({"extra": r, "evaluations": len(jm) + r, "draws": len(per), "spearman": m[0], "same_top5": m[1],
                     "top5_overlap": m[2], "coverage": m[3], "spanning_zero": m[4], "fit_r2": m[5],
                     "reference_bases": sum(len(v) for p, v in parts.items() if p != 0)})
    return rows


def interval_stats(values: np.ndarray, low: np.ndarray, high: np.ndarray, ref: np.ndarray, k: int,
                   ref_se: np.ndarray | None = None) -> dict[str, Any]:
    """A contributions vector against the reference: rank agreement, top five, bottom k, coverage.

    The reference is itself an estimate: an interval that is right about the true value misses the
    reference's value more often than its nominal rate. ``agreement`` is the share of layers whose
    difference from the reference is within 1.96 of both errors combined (the interval's half-width
    read as 1.96 standard errors), which is 95 % when both are right."""
    bottom = lambda v: set(np.argsort(v)[:k].tolist())  # noqa: E731
    out = {"spearman": spearman(values, ref), "top5_same": top_five(values) == top_five(ref),
           "top5_overlap": len(top_five(values) & top_five(ref)), "bottom_k_overlap": len(bottom(values) & bottom(ref)),
           "top5": sorted(top_five(values)), "bottom_k": sorted(bottom(values))}
    if low is not None:
        out["coverage"] = float(np.mean((low <= ref) & (ref <= high)))
        out["spanning_zero"] = int(np.sum((low < 0) & (high > 0)))
        if ref_se is not None:
            se = (high - low) / (2 * 1.96)
            out["agreement"] = float(np.mean(np.abs(values - ref) <= 1.96 * np.sqrt(se**2 + ref_se**2)))
    return out


def compare(params: Params, work: Path, bases: int) -> dict[str, Any]:
    """The job's contributions, before (its surrogate's), now (read off its real evaluations) and
    with ``explain_masks`` (its own store, ``explain``), against every complete part of the
    reference; the same numbers for the reference's own masks as a ceiling."""
    parts = reference_parts(params, work, bases)
    mean, se = summarize(np.concatenate(list(parts.values())))
    k = params.prune.remove
    job = Path(params.output_dir)
    decision = Decision.load(job / "contributions")
    rnd = decision.scores["rounds"][0]
    arms: dict[str, Any] = {}
    before = np.array(rnd["values"], dtype=float)
    arms["before: MLP surrogate, clipped log target"] = interval_stats(
        before, np.array(rnd["ci_low"], float), np.array(rnd["ci_high"], float), mean, k, se)
    store = MaskDataset.open(job / "search-screen")
    masks, utilities = store.arrays()
    strata = strata_around(k, len(mean))
    started = time.perf_counter()
    a = attribute(masks, utilities, strata, params.sampling.seed)
    seconds = time.perf_counter() - started
    arms["now: second-order fit on the job's real evaluations"] = {
        **interval_stats(a.semivalue, *a.semivalue_ci, mean, k, se), "evaluations": a.evaluations,
        "fit": a.fit, "seconds": round(seconds, 1), "warnings": a.warnings}
    game = reference_game(params, work / "explain")  # the option as the job runs it: same draw, same windows
    extra = explanation_masks(game.n_players, strata, EXPLAIN_MASKS, params.sampling.seed, game.protected_players)
    seen = {m.tobytes() for m in masks}
    extra = extra[[m.tobytes() not in seen for m in extra]]  # the job would not evaluate a mask it knows
    em, eu = np.concatenate([masks, extra]), np.concatenate([utilities, game.value_function(extra)])
    e = attribute(em, eu, strata, params.sampling.seed)
    arms[f"option: the job plus explain_masks={EXPLAIN_MASKS}"] = {
        **interval_stats(e.semivalue, *e.semivalue_ci, mean, k, se), "evaluations": e.evaluations, "fit": e.fit}
    stores = [MaskDataset.open(part_folder(work, p)).arrays() for p in parts]
    rm, ru = np.concatenate([m for m, _ in stores]), np.concatenate([u for _, u in stores])
    r = attribute(rm, ru, strata, params.sampling.seed)
    arms["ceiling: the same fit on the reference's own masks"] = {
        **interval_stats(r.semivalue, *r.semivalue_ci, mean, k, se), "evaluations": r.evaluations, "fit": r.fit}
    total = sum(len(m) for m in parts.values())
    return {"reference": {"bases": total, "parts": sorted(parts), "evaluations": total * (len(mean) + 1), "top5": sorted(np.argsort(-mean)[:5].tolist()),
                          "bottom_k": sorted(np.argsort(mean)[:k].tolist()),
                          "spanning_zero_2se": int(np.sum(np.abs(mean) < 2 * se))},
            "arms": arms, "job_removed": sorted(decision.removed_players)}


def subgame(seeds: int = 5, budgets: tuple[int, ...] = (60, 100, 150, 300)) -> list[dict[str, Any]]:
    """Interactions against exact ones: the committed 12-layer subgame of SmolLM2 (every coalition
    evaluated, ``bench/estimators.py``), its log-utility game solved exactly (Moebius transform,
    pairwise Shapley interaction index), and the fit given ``budget`` stratified masks of it."""
    table = np.load(RESULTS / "estimators_game.npz")["table"]
    n = 12
    logs = np.log(table)
    moebius = logs.copy()
    ids = np.arange(1 << n)
    for i in range(n):
        has = (ids >> i) & 1 == 1
        moebius[has] -= moebius[ids[has] ^ (1 << i)]
    size = np.array([bin(c).count("1") for c in ids])
    exact = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            both = ((ids >> i) & 1 == 1) & ((ids >> j) & 1 == 1)
            exact[i, j] = exact[j, i] = float((moebius[both] / (size[both] - 1)).sum())
    shap_exact = exact_shapley(lambda m: logs[(m.astype(int) << np.arange(n)).sum(1)], n)
    iu = np.triu_indices(n, 1)
    worst = set(zip(*np.unravel_index(np.argsort(np.where(np.triu(np.ones((n, n)), 1) > 0, exact, np.inf), axis=None)[:5], (n, n))))
    rows = []
    for budget in budgets:
        per = []
        for seed in range(seeds):
            masks = stratified_masks(n, [1, 2, 3, 4, 5], budget, np.random.default_rng([seed, budget]))
            a = attribute(masks, table[(masks.astype(int) << np.arange(n)).sum(1)], [2, 3, 5], seed, bootstrap=100)
            est = a.interactions[iu]
            low, high = a.interactions_ci[0][iu], a.interactions_ci[1][iu]
            found = set(zip(*np.unravel_index(np.argsort(np.where(np.triu(np.ones((n, n)), 1) > 0, a.interactions, np.inf), axis=None)[:5], (n, n))))
            per.append([np.corrcoef(est, exact[iu])[0, 1], spearman(est, exact[iu]), float(np.mean((low <= exact[iu]) & (exact[iu] <= high))),
                        len(found & worst), spearman(a.shapley, shap_exact), a.fit["r2"]])
        m = np.mean(per, axis=0)
        rows.append({"budget": budget, "seeds": seeds, "interaction_pearson": m[0], "interaction_spearman": m[1],
                     "interaction_coverage": m[2], "most_redundant5_overlap": m[3], "shapley_spearman": m[4], "fit_r2": m[5]})
    return rows


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def reliability_table(rows: list[dict[str, Any]]) -> list[str]:
    """The reference split against itself, with what that means for a target set against it."""
    half = max(rows, key=lambda r: r["bases"])
    r_full = 2 * half["spearman_mean"] / (1 + half["spearman_mean"])  # Spearman-Brown: two halves -> the whole
    parts = ["The reference against itself (`--step reliability`): its bases split at random into a part and the "
              f"rest ({half['draws']} draws), the part's means against the rest's. This is the reference's own sampling noise "
              "(a layer's marginal differs from one base mask to the next): two near-halves of the same design "
              f"agree at Spearman {half['spearman_mean']:.3f} and on the top five in "
              f"{100 * half['same_top5']:.0f} % of splits, so the whole reference is expected to correlate with "
              f"its own many-base limit at about sqrt(2r / (1 + r)) = {np.sqrt(r_full):.2f} (Spearman-Brown). "
              + ("A Spearman target near that, or \"the same top five\", measures the reference's noise as much "
                 "as the method:" if np.sqrt(r_full) < 0.97 else
                 "An exact estimator would reach Spearman 0.95 against it, so a 0.95 target can be judged:"), "",
              "| bases in the part | real evaluations | Spearman with the rest (mean) | 10th-90th percentile | "
              "same top 5 |", "|---|---|---|---|---|"]
    for r in rows:
        parts.append(f"| {r['bases']} of {r['bases'] + r['rest']} | {r['evaluations']} | {_f(r['spearman_mean'])} | "
                     f"{_f(r['spearman_p10'])}-{_f(r['spearman_p90'])} | {_f(100 * r['same_top5'], 0)} % |")
    parts.append("")
    return parts


def budget_table(rows: list[dict[str, Any]]) -> list[str]:
    """The job's fit given more real evaluations, against the reference parts it was not given."""
    parts = [f"What the job's contributions would need (`--step budget`): its {rows[0]['evaluations']} real evaluations "
             "plus that many masks drawn at random from reference part 0, fitted as the job fits them, against the "
             f"reference's other {rows[0]['reference_bases']} bases (none of those masks); mean over "
             f"{max(r['draws'] for r in rows)} draws:", "",
             "| extra real evaluations | in all | Spearman vs reference | same top 5 | top-5 overlap | "
             "95 % intervals covering the reference | intervals spanning zero | held-out R2 of the fit |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        parts.append(f"| {r['extra']} | {r['evaluations']} | {_f(r['spearman'])} | {_f(100 * r['same_top5'], 0)} % | "
                     f"{_f(r['top5_overlap'], 1)}/5 | {_f(r['coverage'], 2)} | {_f(r['spanning_zero'], 1)}/30 | {_f(r['fit_r2'])} |")
    parts.append("")
    return parts


def tables(work: Path) -> str:
    """``bench/results/contributions.md`` from the cached steps (whatever has run)."""
    parts = ["# How far the main job's contributions can be trusted (`bench/contributions.py`)", ""]
    if (work / "compare.json").is_file():
        c = json.loads((work / "compare.json").read_text())["compare"]
        ref = c["reference"]
        drawn = f" in {len(ref['parts'])} parts drawn apart" if len(ref.get("parts", [0])) > 1 else ""
        parts += [f"Reference: {ref['evaluations']} real evaluations ({ref['bases']} stratified base masks{drawn}, each with its "
                  f"30 single-layer flips), no surrogate; its top five {ref['top5']}, bottom 6 {ref['bottom_k']}; "
                  f"{ref['spanning_zero_2se']} of 30 reference values are within 2 standard errors of zero. "
                  f"The job removed {c['job_removed']}.", "",
                  "| contributions | real evaluations | Spearman vs reference | same top 5 | top-5 overlap | bottom-6 overlap | "
                  "95 % intervals covering the reference | within 95 % of the reference, both errors | "
                  "intervals spanning zero | held-out R2 of the fit |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, a in c["arms"].items():
            fit = a.get("fit") or {}
            parts.append(f"| {name} | {a.get('evaluations', 'n/a')} | {_f(a['spearman'])} | {'yes' if a['top5_same'] else 'no'} | "
                         f"{a['top5_overlap']}/5 | {a['bottom_k_overlap']}/6 | {_f(a.get('coverage'), 2)} | {_f(a.get('agreement'), 2)} | "
                         f"{a.get('spanning_zero', 'n/a')}/30 | {_f(fit.get('r2'))} |")
        parts.append("")
    if (work / "reliability.json").is_file():
        parts += reliability_table(json.loads((work / "reliability.json").read_text())["reliability"])
    if (work / "budget.json").is_file():
        parts += budget_table(json.loads((work / "budget.json").read_text())["budget"])
    if (work / "subgame.json").is_file():
        rows = json.loads((work / "subgame.json").read_text())["subgame"]
        parts += ["Pairwise interactions against exact ones: the 12-layer subgame of SmolLM2 (layers 9-20, every one of its "
                  "4,096 coalitions evaluated, `bench/estimators.py`; PPL ratio on 3 x 128 LAMBADA tokens), the fit given "
                  "that many stratified masks of it (1-5 of 12 removed), mean over 5 seeds:", "",
                  "| masks | interaction Pearson | interaction Spearman | interval coverage (95 % nominal) | "
                  "5 most redundant pairs found | Shapley Spearman | fit R2 |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            parts.append(f"| {r['budget']} | {_f(r['interaction_pearson'])} | {_f(r['interaction_spearman'])} | "
                         f"{_f(r['interaction_coverage'], 2)} | {_f(r['most_redundant5_overlap'], 1)}/5 | "
                         f"{_f(r['shapley_spearman'])} | {_f(r['fit_r2'])} |")
        parts.append("")
    if (work / "ablation.json").is_file():
        rows = json.loads((work / "ablation.json").read_text())["ablation"]
        parts += ["game-search with and without its surrogate (same sweep, seeds and budget; without: each round's sets "
                  "drawn at random from the same candidates, the hill-climb's neighbours too):", "",
                  "| k | proposals | set found | utility (exp -KL, 64 windows) | passes | real evaluations | rounds | stopped | seconds |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            parts.append(f"| {r['k']} | {'surrogate' if r['surrogate'] else 'random'} | {r['removed']} | {_f(r['utility'], 4)} | "
                         f"{_f(r['passes'], 1)} | {r['evaluations']} | {r['rounds']} | {r['stopped']} | {_f(r['seconds'], 0)} |")
        parts.append("")
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "contributions")
    parser.add_argument("--bases", type=int, default=33)
    parser.add_argument("--step", choices=("job", "reference", "ablation", "compare", "subgame", "reliability", "budget", "tables", "all"),
                        default="all")
    parser.add_argument("--part", type=int, default=0, help="reference step: which part of the reference to evaluate "
                        "(each --bases bases; parts run in parallel processes)")
    parser.add_argument("--ks", type=int, nargs="+", default=[3, 6, 9, 12])
    args = parser.parse_args()
    params = job_params(args.work)
    k = params.prune.remove
    out: dict[str, Any] = {}
    if args.step in ("job", "all"):
        out["job"] = run_job(params)
    if args.step in ("reference", "all"):
        game = reference_game(params, part_folder(args.work, args.part))
        design = flip_design(game.n_players, k, args.bases, params.sampling.seed, args.part)
        started = time.perf_counter()
        utilities = game.value_function(design)
        mean, se = summarize(base_marginals(design, utilities, game.n_players))
        out["reference"] = {"values": mean.tolist(), "se": se.tolist(), "bases": args.bases,
                            "evaluations": len(design), "seconds": round(time.perf_counter() - started, 1)}
    if args.step in ("ablation", "all"):
        rows = [ablation_arm(params, args.work, k, flag) for k in args.ks for flag in (True, False)]
        done = args.work / "ablation.json"  # rows of other k stay: each k is its own run
        kept = [r for r in json.loads(done.read_text())["ablation"] if r["k"] not in args.ks] if done.is_file() else []
        out["ablation"] = sorted(kept + rows, key=lambda r: (r["k"], not r["surrogate"]))
    if args.step in ("compare", "all"):
        out["compare"] = compare(params, args.work, args.bases)
    if args.step in ("subgame", "all"):
        out["subgame"] = subgame()
    if args.step in ("reliability", "all"):
        out["reliability"] = reliability(params, args.work, args.bases)
    if args.step in ("budget", "all"):
        out["budget"] = budget_curve(params, args.work, args.bases)
    if args.step == "tables":
        text = tables(args.work)
        (RESULTS / "contributions.md").write_text(text + "\n")
        merged = {name: json.loads((args.work / f"{name}.json").read_text())[name]
                  for name in ("compare", "reliability", "budget", "subgame", "ablation") if (args.work / f"{name}.json").is_file()}
        write_json(RESULTS / "contributions.json", merged)
        print(text)
        return
    name = f"reference-part{args.part}" if args.step == "reference" and args.part else args.step
    write_json(args.work / f"{name}.json", out)
    print(json.dumps(out, indent=1)[:3000])


if __name__ == "__main__":
    main()
