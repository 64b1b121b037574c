"""Which removal set is best depends on the text: every arm scored on a held-out suite of domains.

The suite (``coopprune.domains.SUITE``) is split by domain: defaults are chosen on the validation
domains and reported on the test domains, never the reverse. Every domain is scored on its
evaluation documents only (64 windows of 128 tokens, documents in a fixed seeded order), which no
calibration ever reads. Perplexity of a removal set is the pruned model's (dropped layers skipped:
the exact logits of the pruned checkpoint), the same windows for every arm.

Arms are data (``ARMS``): a method with its calibration (LAMBADA alone, as every published arm of
``bench/quality.py``, or a mixture of domains) and utility. An arm with ``published`` reads its sets
from ``bench/results/quality.json`` instead of selecting again (those are the peers on their
published calibration, LAMBADA); every other arm is selected here through the library's own
``pipeline.prune`` (decision only), its real evaluations cached under ``--work`` so a killed run
resumes. Per k the table gives each arm's perplexity per domain, its mean over the test (and the
validation) domains, and its worst ratio to the best arm on any test domain.

    python bench/domains.py --arms mix sleb-mix --ks 6 9 12 [--zero-shot-ks 6 12]

``--zero-shot-ks`` adds each arm's zero-shot mean (7 tasks x 200 items, with its standard error,
and without BoolQ) at those ks, read from ``quality.json`` where that script scored the same set.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coopprune import pipeline
from coopprune.atomic import write_json
from coopprune.calibration import evaluation_windows
from coopprune.config import Params
from coopprune.domains import DEFAULT_MIX, SUITE, evaluation_texts
from coopprune.engine import MaskEvaluator, masks_from_kept
from coopprune.models.loading import load_model
from coopprune.prune import prune_layers

from quality_arms import TASKS
from quality_tables import zs_fields

RESULTS = Path(__file__).parent / "results"
WINDOWS, LENGTH = 64, 128
ZERO_SHOT_ITEMS = 200  # per task, seed 0: the items bench/quality.py scores, so its scores are reused
ZERO_SHOT_FIELDS = ("zero_shot_mean", "zero_shot_mean_no_boolq", "zero_shot_mean_se")


@dataclass(frozen=True)
class Arm:
    """A row of the tables. ``published``: read the sets of this ``bench/quality.py`` arm (LAMBADA
    calibration) instead of selecting. Otherwise ``mix`` (None: LAMBADA) is the calibration,
    ``n_windows`` x 128 tokens, seed ``seed``; ``game`` and ``options`` go to the params as they are."""

    method: str = "game-search"
    published: str | None = None
    mix: dict[str, float] | None = None
    utility: str = "kl"
    n_windows: int = 64
    seed: int = 0
    game: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def tokens_per_pass(self) -> int:
        """Real tokens one pass over the calibration reads: windows x 127 predicted tokens, or for
        ``mc_margin`` the items' rows without their padding."""
        if self.utility != "mc_margin":
            return self.n_windows * (LENGTH - 1)
        from coopprune.choices import CHOICE_TASKS, ChoiceCalibration

        windows = ChoiceCalibration(CHOICE_TASKS, self.n_windows, self.seed).windows(load_model("default").tokenizer)
        assert windows.objective is not None
        return int(windows.objective.end.sum())

    def params(self, k: int, work: Path) -> Params:
        calibration = {"mix": self.mix} if self.mix else {"source": "lambada"}
        return Params.from_dict({
            "calibration": {**calibration, "n_windows": self.n_windows, "seed": self.seed},
            "game": {"utility": self.utility, **self.game},
            "sampling": {"seed": self.seed},
            "prune": {"method": self.method, "remove": k, "options": {self.method: self.options}},
            "output_dir": str(work),
        })


ARMS: dict[str, Arm] = {
    # the default before this bench: game-search, KL on 64 x 128 LAMBADA (its published sets)
    "lambada": Arm(published="game-search-64-f10"),
    "evopress-64": Arm(published="evopress-64"),
    "evopress": Arm(published="evopress"),  # its public script's setting: KL on 10 x 128
    "sleb-64": Arm(published="sleb-64"),
    "sleb": Arm(published="sleb"),  # SLEB's own setting: PPL on 10 x 128
    "bi": Arm(published="bi"),
    "angular": Arm(published="angular"),
    "ppl": Arm(published="ppl"),
    "semivalue": Arm(published="semivalue"),  # the paper's one-shot ranking
    # on the mixture of every calibration domain, equal tokens each
    "mix": Arm(mix=DEFAULT_MIX),
    "mix-softmax": Arm(mix=DEFAULT_MIX, game={"aggregate": "softmax", "temperature": 0.1}),
    "mix-worst": Arm(mix=DEFAULT_MIX, game={"aggregate": "worst"}),
    "mix-seed1": Arm(mix=DEFAULT_MIX, seed=1),
    "mix-seed2": Arm(mix=DEFAULT_MIX, seed=2),
    # the default on other LAMBADA windows (calibration and sampling seeds 1 and 2)
    "lambada-seed1": Arm(seed=1),
    "lambada-seed2": Arm(seed=2),
    # the multiple-choice objective: 24 reserved zero-shot items (about the default's tokens a pass)
    "mc": Arm(utility="mc_margin", n_windows=24),
    # prune for your own domain: calibrated on code alone
    "code-only": Arm(mix={"code": 1.0}),
    # the peers on the same mixture windows
    "sleb-mix": Arm("sleb", mix=DEFAULT_MIX, utility="ppl_ratio"),
    "bi-mix": Arm("bi", mix=DEFAULT_MIX, utility="ppl_ratio"),
    "angular-mix": Arm("angular", mix=DEFAULT_MIX, utility="ppl_ratio"),
    "ppl-mix": Arm("ppl", mix=DEFAULT_MIX, utility="ppl_ratio"),
    "evopress-mix": Arm("evopress", mix=DEFAULT_MIX),
}


def published_sets(name: str) -> dict[int, list[int]]:
    rows = json.loads((RESULTS / "quality.json").read_text())["rows"]
    return {r["k"]: r["removed"] for r in rows if r["method"] == name and isinstance(r.get("removed"), list)}


def select(name: str, arm: Arm, k: int, work: Path) -> dict[str, Any]:
    """The arm's set at k, cached under ``work/cells``; selected with the library's prune job."""
    cell = work / "cells" / f"{name}-k{k}.json"
    if cell.is_file():
        return json.loads(cell.read_text())
    if arm.published:
        sets = published_sets(arm.published)
        if k not in sets:
            raise SystemExit(f"{arm.published} has no published set at k = {k} in bench/results/quality.json")
        result = {"removed": sorted(sets[k]), "published": arm.published}
    else:
        params = arm.params(k, work / "runs" / name)
        start = time.perf_counter()
        request = pipeline.PruneRequest(params, work / "decisions" / f"{name}-k{k}", masks=work / "stores" / name,
                                        create_masks=True, overwrite=True, decision_only=True)
        pruned = pipeline.prune(request)
        passes = sum(r.contributions.passes for r in pruned.selection.rounds) if pruned.selection else None
        result = {"removed": sorted(pruned.removed_layers), "passes": passes,
                  "tokens": None if passes is None else round(passes * arm.tokens_per_pass()),
                  "seconds": round(time.perf_counter() - start, 1)}
    write_json(cell, result)
    return result


def domain_perplexities(sets: dict[str, list[int]], work: Path) -> dict[str, dict[str, float]]:
    """{set key: {domain: perplexity}} for every set, cached per (set, domain) in ``work/ppl.json``."""
    cache_file = work / f"ppl-{WINDOWS}x{LENGTH}.json"
    cache: dict[str, dict[str, float]] = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    domains = [d for split in SUITE.values() for d in split]
    todo = {d: [key for key in sets if d not in cache.get(key, {})] for d in domains}
    if any(todo.values()):
        loaded = load_model("default")
        n_layers = len(loaded.architecture.layers(loaded.model))
        for domain, keys in todo.items():
            if not keys:
                continue
            ids = evaluation_windows(loaded.tokenizer, evaluation_texts(domain), LENGTH, WINDOWS).input_ids
            evaluator = MaskEvaluator(loaded.model, loaded.architecture, ids, batch_size=8)
            masks = masks_from_kept([[i for i in range(n_layers) if i not in sets[key]] for key in keys], n_layers)
            for key, result in zip(keys, evaluator.evaluate(masks, progress=f"ppl {domain}"), strict=True):
                cache.setdefault(key, {})[domain] = result.perplexity
            write_json(cache_file, cache)
    return cache


def zero_shots(sets: dict[str, list[int]], work: Path) -> dict[str, dict[str, float]]:
    """{set key: zero-shot fields} (7 tasks x 200 items). A score belongs to a pruned model, so a set
    ``bench/quality.py`` already scored is read from ``quality.json``; others run once, cached per set."""
    from coopprune.zeroshot import zero_shot

    published = {set_key(r["removed"]): {f: r[f] for f in ZERO_SHOT_FIELDS if f in r}
                 for r in json.loads((RESULTS / "quality.json").read_text())["rows"]
                 if r.get("zero_shot_mean") is not None and isinstance(r.get("removed"), list)}
    out = {}
    for key, removed in sets.items():
        if key in published:
            out[key] = published[key]
            continue
        cache = work / f"zeroshot-{ZERO_SHOT_ITEMS}" / f"layers-{key.replace(',', '-')}.json"
        if not cache.is_file():
            loaded = load_model("default")
            if removed:
                prune_layers(loaded, removed)
            start = time.perf_counter()
            result = zero_shot(loaded.model, loaded.tokenizer, TASKS, ZERO_SHOT_ITEMS, 0, 8).to_dict()
            write_json(cache, {**result, "seconds": time.perf_counter() - start, "removed": removed})
            print(f"zero-shot {removed}: mean {result['mean']:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
        fields = zs_fields(json.loads(cache.read_text()))
        out[key] = {f: fields[f] for f in ZERO_SHOT_FIELDS if f in fields}
    return out


def set_key(removed: list[int]) -> str:
    return ",".join(map(str, sorted(removed))) or "base"


def table(k: int, cells: dict[str, dict[str, Any]], ppl: dict[str, dict[str, float]]) -> tuple[list[dict], str]:
    """Rows of one k (arms in order) and their Markdown table."""
    rows = []
    for name, cell in cells.items():
        scores = ppl[set_key(cell["removed"])]
        row = {"arm": name, "k": k, "removed": cell["removed"], **{d: scores[d] for d in scores},
               "mean_test": float(np.mean([scores[d] for d in SUITE["test"]])),
               "mean_validation": float(np.mean([scores[d] for d in SUITE["validation"]])),
               "tokens": cell.get("tokens"), **{f: cell[f] for f in ZERO_SHOT_FIELDS if f in cell}}
        rows.append(row)
    for split in ("test", "validation"):
        best = {d: min(r[d] for r in rows) for d in SUITE[split]}
        for r in rows:
            r[f"worst_ratio_{split}"] = max(r[d] / best[d] for d in SUITE[split])
    domains = [*SUITE["validation"], *SUITE["test"]]
    head = ("| arm | removed | " + " | ".join(f"{d} (val)" for d in SUITE["validation"]) + " | "
            + " | ".join(SUITE["test"]) + " | mean val | mean test | worst test ratio | zero-shot (without BoolQ) | tokens |")
    lines = [f"### k = {k}", "", head, "|" + "---|" * (len(domains) + 7)]
    best_mean = min(r["mean_test"] for r in rows)
    for r in rows:
        mark = " **best**" if r["mean_test"] == best_mean else ""
        lines.append(
            f"| {r['arm']} | {' '.join(map(str, r['removed']))} | " + " | ".join(f"{r[d]:.2f}" for d in domains)
            + f" | {r['mean_validation']:.2f} | {r['mean_test']:.2f}{mark} | {r['worst_ratio_test']:.3f} | "
            + _zero_shot_cell(r) + " | " + (f"{r['tokens'] / 1000:,.0f} k" if r.get("tokens") else "-") + " |")
    return rows, "\n".join(lines)


def _zero_shot_cell(row: dict[str, Any]) -> str:
    if "zero_shot_mean" not in row:
        return "-"
    se = f" +/- {row['zero_shot_mean_se']:.3f}" if "zero_shot_mean_se" in row else ""
    return f"{row['zero_shot_mean']:.3f}{se} ({row.get('zero_shot_mean_no_boolq', math.nan):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", nargs="+", default=["lambada", "evopress-64", "sleb-64", "sleb", "bi", "angular",
                                                      "ppl", "mix", "bi-mix", "angular-mix", "ppl-mix"],
                        choices=list(ARMS))
    parser.add_argument("--ks", nargs="+", type=int, default=[6, 9, 12])
    parser.add_argument("--work", type=Path, default=Path("bench/work/domains"))
    parser.add_argument("--select-only", action="store_true", help="select the sets, score nothing")
    parser.add_argument("--zero-shot-ks", nargs="*", type=int, default=[],
                        help=f"also score these ks' sets on the 7 zero-shot tasks ({ZERO_SHOT_ITEMS} items each)")
    parser.add_argument("--windows", type=int, default=WINDOWS, help="evaluation windows of 128 tokens per domain")
    args = parser.parse_args()
    globals()["WINDOWS"] = args.windows
    cells = {k: {name: select(name, ARMS[name], k, args.work) for name in args.arms} for k in args.ks}
    if args.select_only:
        return
    sets = {set_key(c["removed"]): c["removed"] for by_arm in cells.values() for c in by_arm.values()}
    sets["base"] = []
    ppl = domain_perplexities(sets, args.work)
    scored = {set_key(c["removed"]): c["removed"] for k in args.zero_shot_ks for c in cells.get(k, {}).values()}
    scores = zero_shots(scored, args.work)
    for k in args.zero_shot_ks:
        for cell in cells.get(k, {}).values():
            cell.update(scores[set_key(cell["removed"])])
    out_json = RESULTS / "domains.json"
    published = json.loads(out_json.read_text()) if out_json.is_file() else {"rows": []}
    keep = [r for r in published["rows"] if not (r["k"] in args.ks and r["arm"] in args.arms)]
    rows, texts = [], []
    base = {"arm": "base", "k": 0, **ppl["base"]}
    for k in args.ks:
        k_rows, text = table(k, cells[k], ppl)
        rows += k_rows
        texts.append(text)
    order = list(ARMS)
    all_rows = sorted(keep + rows, key=lambda r: (r["k"], order.index(r["arm"]) if r["arm"] in order else len(order)))
    write_json(out_json, {"suite": SUITE, "windows": f"{WINDOWS} x {LENGTH}", "base": base, "rows": all_rows,
                          "date": time.strftime("%Y-%m-%d")})
    by_k: dict[int, dict[str, Any]] = {}
    for r in all_rows:
        by_k.setdefault(r["k"], {})[r["arm"]] = {"removed": r["removed"], "tokens": r.get("tokens"),
                                                 **{f: r[f] for f in ZERO_SHOT_FIELDS if f in r}}
    md = ["# Held-out perplexity across domains (`bench/domains.py`)", "",
          f"SmolLM2-135M-Instruct, {WINDOWS} x {LENGTH} evaluation tokens per domain, evaluation documents only. "
          f"Validation domains: {', '.join(SUITE['validation'])}; test domains: {', '.join(SUITE['test'])}. "
          "Base model: " + ", ".join(f"{d} {v:.2f}" for d, v in ppl["base"].items() if not math.isnan(v)) + ".", ""]
    for k in sorted(by_k):
        md += [table(k, by_k[k], ppl)[1] if all(set_key(c["removed"]) in ppl for c in by_k[k].values())
               else f"### k = {k}\n\n(rerun with every arm of this k to print its table)", ""]
    (RESULTS / "domains.md").write_text("\n".join(md))
    print("\n\n".join(texts))


if __name__ == "__main__":
    main()
