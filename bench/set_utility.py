"""Calibration utility of the sets the quality bench's arms chose: did a search lose by search
(a peer's set scores better on the calibration windows it optimised) or by objective (its own
set scores better there and worse on held-out text)?

Reads the selections `bench/quality.py` cached under ``--work``; evaluates each distinct set once
on the same 10 x 128 LAMBADA calibration windows with the KL objective (mean per-token
KL(base || pruned); utility exp(-KL)). Prints and saves a table per k.

    python bench/set_utility.py [--methods game-search sleb evopress] [--ks 3 6 9 12]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from quality import Bench  # noqa: E402

from coopprune.atomic import write_json  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "work" / "quality")
    parser.add_argument("--methods", nargs="+", default=["game-search", "game-search-nogreedy", "sleb", "sleb-kl", "evopress"])
    parser.add_argument("--ks", nargs="+", type=int, default=[3, 6, 9, 12])
    args = parser.parse_args()
    bench = Bench(args.work, args.ks)
    chosen = {}
    for m in args.methods:
        path = args.work / "select" / f"{m}.json"
        if path.is_file():
            removed = json.loads(path.read_text())["removed"]
            chosen.update({(m, k): tuple(removed[str(k)]) for k in args.ks if str(k) in removed})
    sets = sorted(set(chosen.values()))
    masks = np.ones((len(sets), bench.n_layers), dtype=bool)
    for row, s in enumerate(sets):
        masks[row, list(s)] = False
    results = bench.evaluator("kl").evaluate(masks, progress="calibration KL")
    kl = {s: r.loss for s, r in zip(sets, results)}
    lines = ["| k | method | removed | calibration mean KL | utility exp(-KL) |", "|---|---|---|---|---|"]
    for (m, k), s in sorted(chosen.items(), key=lambda item: (item[0][1], kl[item[1]])):
        lines.append(f"| {k} | {m} | {' '.join(map(str, s))} | {kl[s]:.3f} | {np.exp(-kl[s]):.3f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "set_utility.md").write_text(table)
    write_json(RESULTS / "set_utility.json", [{"method": m, "k": k, "removed": list(s), "calibration_kl": kl[s]}
                                              for (m, k), s in chosen.items()])


if __name__ == "__main__":
    main()
