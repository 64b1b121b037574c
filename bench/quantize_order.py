"""4-bit weights and pruning in both orders on SmolLM2-135M (GGUF, gguf-py's quantizers).

Per k (default sets: the default search's, ``bench/results/quality.json``'s game-search-64-f10):

- ``base``: the bundled model as coopprune prunes it (the Q4_1 GGUF dequantized to f32);
- ``pruned``: its checkpoint without the k layers;
- ``4-bit``: the base checkpoint exported as Q4_0 (``export_gguf(dtype="q4_0")``);
- ``pruned -> 4-bit``: the pruned checkpoint exported as Q4_0;
- ``4-bit -> pruned``: the Q4_0 base file with the k blocks removed (``prune_gguf``: tensors copied
  in their quantization, no re-quantization);
- ``Q4_1 -> pruned``: the bundled Q4_1 file pruned directly (what ``make run`` exports).

Held-out perplexity per domain (evaluation documents only, ``--windows`` x 128 tokens, the same
windows for every row) through transformers (GGUF files dequantized on load: the weights' 4-bit
error, not a 4-bit kernel's speed), and size on disk. No GPTQ row: see README "Quantization".

    python bench/quantize_order.py [--ks 6 12] [--windows 16]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from coopprune.calibration import evaluation_windows
from coopprune.domains import evaluation_texts
from coopprune.evaluate import perplexity
from coopprune.fetch import default_gguf, fetch_default_model
from coopprune.gguf_export import export_gguf, prune_gguf
from coopprune.models import load_model
from coopprune.prune import count_parameters, make_record, prune_layers, save_pruned

RESULTS = Path(__file__).parent / "results"
SETS = {6: [13, 14, 15, 16, 17, 18], 12: [3, 4, 5, 6, 7, 13, 14, 15, 16, 17, 18, 26]}
DOMAINS = ("howto", "news", "wikipedia", "science", "code")


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.suffix == ".safetensors"]
    return sum(p.stat().st_size for p in files) / 1e6


def load(path: Path) -> torch.nn.Module:
    if path.suffix == ".gguf":
        return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[6, 12])
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--work", type=Path, default=Path("bench/work/quantize_order"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = fetch_default_model(progress=False)
    q41 = default_gguf(progress=False)
    base = load_model(str(checkpoint))
    windows = {d: evaluation_windows(base.tokenizer, evaluation_texts(d), 128, args.windows) for d in DOMAINS}

    def scores(path: Path) -> dict[str, float]:
        model = load(path)
        return {d: perplexity(model, w, batch_size=8, progress=False).perplexity for d, w in windows.items()}

    files: dict[str, tuple[Path, float]] = {}

    def made(name: str, build) -> Path:  # noqa: ANN001
        start = time.perf_counter()
        path = build()
        files[name] = (path, time.perf_counter() - start)
        return path

    base_q4 = made("4-bit", lambda: export_gguf(checkpoint, args.work / "base.q4_0.gguf", dtype="q4_0",
                                                vocab_from=q41, overwrite=True))
    rows = [{"k": 0, "model": "base", "path": checkpoint}, {"k": 0, "model": "4-bit (Q4_0)", "path": base_q4},
            {"k": 0, "model": "bundled Q4_1", "path": q41}]
    for k in args.ks:
        removed = SETS[k]
        loaded = load_model(str(checkpoint))
        before = count_parameters(loaded.model)
        prune_layers(loaded, removed)
        pruned = args.work / f"pruned-k{k}"
        if not (pruned / "config.json").is_file():
            save_pruned(loaded, pruned, make_record(loaded, removed, "given", before), overwrite=True)
        rows.append({"k": k, "model": "pruned (f32)", "path": pruned})
        rows.append({"k": k, "model": "pruned -> 4-bit (Q4_0)", "path": made(
            f"p4-{k}", lambda: export_gguf(pruned, args.work / f"pruned-k{k}.q4_0.gguf", dtype="q4_0",
                                           vocab_from=q41, overwrite=True))})
        rows.append({"k": k, "model": "4-bit (Q4_0) -> pruned", "path": made(
            f"4p-{k}", lambda: prune_gguf(base_q4, removed, args.work / f"q4_0-pruned-k{k}.gguf", overwrite=True))})
        rows.append({"k": k, "model": "bundled Q4_1 -> pruned", "path": made(
            f"q41-{k}", lambda: prune_gguf(q41, removed, args.work / f"q4_1-pruned-k{k}.gguf", overwrite=True))})
    for row in rows:
        row["ppl"] = scores(Path(row["path"]))
        row["mean"] = float(np.mean(list(row["ppl"].values())))
        row["MB"] = size_mb(Path(row["path"]))
        print(row["k"], row["model"], round(row["mean"], 2), round(row["MB"], 1), flush=True)
    lines = [f"Held-out perplexity ({args.windows} x 128 tokens of each domain's evaluation documents) and size on disk; "
             "GGUF files are dequantized on load (the weights' error, not a kernel's speed).", "",
             "| k | model | " + " | ".join(DOMAINS) + " | mean | MB |", "|---|---|" + "---|" * (len(DOMAINS) + 2)]
    for r in rows:
        lines.append(f"| {r['k']} | {r['model']} | " + " | ".join(f"{r['ppl'][d]:.2f}" for d in DOMAINS)
                     + f" | {r['mean']:.2f} | {r['MB']:.0f} |")
    table = "\n".join(lines)
    print(table)
    (RESULTS / "quantize_order.md").write_text(table + "\n")
    (RESULTS / "quantize_order.json").write_text(json.dumps(
        [{k: (str(v) if k == "path" else v) for k, v in r.items()} for r in rows], indent=1))


if __name__ == "__main__":
    main()
