"""The training-free linear patch (``coopprune/patch.py``, ReplaceMe-style) on SmolLM2-135M.

For each removal set (``--sets``; defaults: the mixture's k = 6 set and a k = 12 set of three runs),
the pruned model and the pruned model with the patch fitted at each ``--lambdas`` value, on the
default calibration mixture (``coopprune.domains.DEFAULT_MIX``: books, science, how-to, code, equal
tokens, their calibration pools) and, as a comparison arm, on LAMBADA alone; ``--objectives cosine``
adds ReplaceMe's cosine objective, ``--inputs pruned`` the fit of each run on the model with the
earlier runs already cut and patched. Every model is scored on the held-out suite
(``coopprune.domains.SUITE``: each domain's evaluation documents only, which no calibration reads,
``--eval-windows`` x 128 tokens, the same windows for every model), with the means over the
validation and the test domains, and the minutes each fit took. Defaults are chosen on the
validation domains only.

Cells (one perplexity per model and domain, one fit per arm) are cached under ``--work``, so a killed
run resumes where it stopped; ``bench/results/patch.{json,md}`` are rewritten from every cell.

    python bench/patch.py [--sets 13,14,15,16,17,18 3,4,5,12,13,14,15,16,17,18,25,26]
                          [--lambdas 0 0.01 0.1 1] [--calibs mix lambada] [--objectives lstsq]
                          [--inputs unpruned pruned]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coopprune.atomic import write_json
from coopprune.calibration import Windows, evaluation_windows
from coopprune.config import CalibrationParams, PatchParams
from coopprune.domains import DEFAULT_MIX, SUITE, evaluation_texts
from coopprune.evaluate import perplexity
from coopprune.mixture import Calibration
from coopprune.models.loading import load_model
from coopprune.patch import apply_patch, fit_patch

RESULTS = Path(__file__).parent / "results"
LENGTH = 128
DEFAULT_SETS = ["13,14,15,16,17,18", "3,4,5,12,13,14,15,16,17,18,25,26"]
CALIBRATIONS: dict[str, dict[str, Any]] = {"mix": {"mix": DEFAULT_MIX}, "lambada": {"source": "lambada"}}


def parse_set(text: str) -> list[int]:
    return sorted(int(x) for x in text.split(",") if x.strip())


def fmt_lambda(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"


class Cells:
    """One JSON file of every computed cell, rewritten after each (a killed run loses one cell)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> Any:
        self.data[key] = value
        write_json(self.path, self.data)
        return value


def score(model: torch.nn.Module, suite: dict[str, Windows], cells: Cells, key: str, batch_size: int) -> dict[str, float]:
    """Perplexity per domain, each domain a cell of its own."""
    out = {}
    for domain, windows in suite.items():
        cell = f"ppl|{key}|{domain}|{windows.fingerprint[:16]}"
        value = cells.get(cell)
        if value is None:
            value = cells.put(cell, perplexity(model, windows, batch_size, progress=False).perplexity)
        out[domain] = value
    return out


def row(name: str, removed: list[int], ppl: dict[str, float], **extra: Any) -> dict[str, Any]:
    validation = [ppl[d] for d in SUITE["validation"] if d in ppl]
    test = [ppl[d] for d in SUITE["test"] if d in ppl]
    return {"arm": name, "k": len(removed), "removed": removed, **extra, **ppl,
            "mean_validation": float(np.mean(validation)) if validation else None,
            "mean_test": float(np.mean(test)) if test else None}


def markdown(rows: list[dict[str, Any]], domains: list[str], settings: dict[str, Any]) -> str:
    lines = ["# The linear patch after the cut (`bench/patch.py`)", "",
             f"SmolLM2-135M-Instruct; the patch (coopprune/patch.py: ridge toward the identity, lambda relative to "
             f"the mean eigenvalue of M^T M, folded into the preceding layer's down_proj) fitted on "
             f"{settings['n_windows']} x {LENGTH} calibration tokens (mix: {', '.join(DEFAULT_MIX)} calibration "
             f"pools, equal tokens; lambada: LAMBADA alone, seed {settings['seed']}). Held-out perplexity on "
             f"{settings['eval_windows']} x {LENGTH} tokens per domain, evaluation documents only; validation "
             f"domains {', '.join(SUITE['validation'])} (defaults are chosen there), test domains "
             f"{', '.join(SUITE['test'])}. Fit: minutes of the patch's fit on this machine ({settings['machine']}).", ""]
    for k_set in dict.fromkeys(tuple(r["removed"]) for r in rows if r["arm"] != "base"):
        sub = [r for r in rows if tuple(r["removed"]) == k_set or r["arm"] == "base"]
        lines += [f"### k = {len(k_set)}: removed {' '.join(map(str, k_set))}", "",
                  "| arm | calibration | objective | inputs | lambda | " + " | ".join(
                      f"{d} (val)" if d in SUITE["validation"] else d for d in domains)
                  + " | mean val | mean test | fit min |", "|" + "---|" * (len(domains) + 8)]
        best = min((r["mean_validation"] for r in sub if r["arm"] not in ("base",) and r["mean_validation"] is not None),
                   default=None)
        for r in sub:
            mark = " **best**" if r["mean_validation"] == best and r["arm"] != "base" else ""
            cells = " | ".join(f"{r[d]:.2f}" if d in r else "-" for d in domains)
            val = f"{r['mean_validation']:.2f}{mark}" if r["mean_validation"] is not None else "-"
            test = f"{r['mean_test']:.2f}" if r["mean_test"] is not None else "-"
            fit = f"{r['fit_minutes']:.2f}" if r.get("fit_minutes") is not None else "-"
            lines.append(f"| {r['arm']} | {r.get('calibration', '-')} | {r.get('objective', '-')} | "
                         f"{r.get('inputs', '-')} | {r.get('lambda', '-')} | {cells} | {val} | {test} | {fit} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=DEFAULT_SETS, help="removal sets, comma-separated layers")
    parser.add_argument("--lambdas", nargs="+", type=float, default=[0.0, 0.01, 0.1, 1.0])
    parser.add_argument("--calibs", nargs="+", default=["mix", "lambada"], choices=list(CALIBRATIONS))
    parser.add_argument("--objectives", nargs="+", default=["lstsq"], choices=["lstsq", "cosine"])
    parser.add_argument("--inputs", nargs="+", default=["unpruned"], choices=["unpruned", "pruned"],
                        help="where each run's inputs come from (patch.inputs)")
    parser.add_argument("--n-windows", type=int, default=64, help="calibration windows of 128 tokens for the fit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-windows", type=int, default=64, help="evaluation windows of 128 tokens per domain")
    parser.add_argument("--domains", nargs="+", default=[*SUITE["validation"], *SUITE["test"]])
    parser.add_argument("--steps", type=int, default=100, help="cosine: L-BFGS iterations")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("bench/work/patch"))
    parser.add_argument("--out", type=Path, default=RESULTS / "patch", help="writes OUT.json and OUT.md")
    args = parser.parse_args()

    import os
    import platform

    cells = Cells(args.work / f"cells-{args.n_windows}x{LENGTH}-seed{args.seed}.json")
    base = load_model("default")
    suite = {d: evaluation_windows(base.tokenizer, evaluation_texts(d), LENGTH, args.eval_windows) for d in args.domains}
    calibrations: dict[str, Windows] = {}
    for name in args.calibs:
        params = CalibrationParams.from_dict({**CALIBRATIONS[name], "n_windows": args.n_windows, "window": LENGTH,
                                              "seed": args.seed}, "calibration")
        calibrations[name] = Calibration.from_params(params).windows(base.tokenizer)
    rows = [row("base", [], score(base.model, suite, cells, "base", args.batch_size))]
    n = base.num_layers
    for text in args.sets:
        removed = parse_set(text)
        set_key = ",".join(map(str, removed))
        pruned = copy.deepcopy(base.model)
        base.architecture.remove_layers(pruned, removed)
        kept = [i for i in range(n) if i not in removed]
        rows.append(row("pruned", removed, score(pruned, suite, cells, f"pruned|{set_key}", args.batch_size)))
        arms = [(c, o, lam, i) for i in args.inputs for c in args.calibs for o in args.objectives for lam in args.lambdas]
        for calib, objective, lam, inputs in arms:
            windows = calibrations[calib]
            settings = PatchParams.from_dict({"lambda": lam, "objective": objective, "inputs": inputs,
                                              "n_windows": args.n_windows, "steps": args.steps}, "patch")
            tag = "ind" if inputs == "unpruned" else "seq"
            arm_key = f"{set_key}|{calib}|{objective}|{fmt_lambda(lam)}|{tag}|{windows.fingerprint[:16]}"
            fit_cell = cells.get(f"fit|{arm_key}")
            model = None
            if fit_cell is None or any(f"ppl|patched|{arm_key}|{d}|{w.fingerprint[:16]}" not in cells.data
                                       for d, w in suite.items()):
                started = time.perf_counter()
                patch = fit_patch(base, removed, windows, settings, batch_size=args.batch_size, progress=True)
                minutes = (time.perf_counter() - started) / 60
                fit_cell = cells.put(f"fit|{arm_key}", {"minutes": minutes, "runs": patch.to_json()["runs"]})
                model = copy.deepcopy(pruned)
                apply_patch(model, base.architecture, kept, patch, base=base.model)
            ppl = score(model, suite, cells, f"patched|{arm_key}", args.batch_size) if model is not None else {
                d: cells.get(f"ppl|patched|{arm_key}|{d}|{w.fingerprint[:16]}") for d, w in suite.items()}
            name = "patch"
            rows.append(row(name, removed, ppl, calibration=calib, objective=objective, inputs=inputs,
                            **{"lambda": fmt_lambda(lam)}, fit_minutes=fit_cell["minutes"], fit=fit_cell["runs"]))
            del model
            print(f"k={len(removed)} {name} {calib} {objective} inputs={inputs} lambda={fmt_lambda(lam)}: "
                  + ", ".join(f"{d} {v:.2f}" for d, v in ppl.items()) + f" ({fit_cell['minutes']:.2f} min fit)", flush=True)
    settings_info = {"n_windows": args.n_windows, "seed": args.seed, "eval_windows": args.eval_windows,
                     "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"}
    write_json(args.out.with_suffix(".json"), {"suite": SUITE, "windows": f"{args.eval_windows} x {LENGTH}",
                                               "settings": settings_info, "rows": rows,
                                               "date": time.strftime("%Y-%m-%d")})
    args.out.with_suffix(".md").write_text(markdown(rows, args.domains, settings_info))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
