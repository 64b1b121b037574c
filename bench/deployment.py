"""What a user of the pruned model gets: pruning plus int8 quantization, and inference speed per k.

Quantization (k = 6, the paper's method ``semivalue``), both orders, against the base model in fp32:
  - prune then quantize: the fp32 selection of bench/quality.py, then int8 dynamic quantization;
  - quantize then prune: int8 first, then the game (its own Stage-1 sweep) on the quantized model.
  Each: held-out perplexity (BoolQ, 64 x 128 tokens), zero-shot mean (``--limit`` items per task;
  the fp32 models' come from bench/quality.py's cache), tokens/s and peak memory. The int8 base model
  is a reference row (perplexity and speed only). Every quantized checkpoint is saved and loaded back
  before measuring. Two schemes (``--schemes``): the library's default (LM head and MLP output
  projections kept fp32, whose inputs carry the outliers that per-tensor int8 activations cannot
  hold) and every linear layer int8.
Inference gain: tokens/s at batch 1 and 8 (128 new tokens) and peak memory of the base model and
of the pruned model at each k (the quality bench's semivalue selections): ``--rounds`` fresh
processes per model, the models interleaved, median and range published.

Needs bench/quality.py's selections (``--stages select``) in the same ``--work``; cells are cached.

    python bench/deployment.py [--work bench/work/quality] [--stages quantization inference] [--schemes ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from coopprune import pipeline
from coopprune.atomic import write_json
from coopprune.models import load_model
from coopprune.prune import count_parameters, make_record, prune_layers, save_pruned
from coopprune.quantize import KEEP_FLOAT, quantize_int8, save_quantized
from coopprune.records import PRUNING_FILE, PruningRecord
from coopprune.speed import measure_speed_isolated
from coopprune.config import Params
from coopprune.zeroshot import TASKS as TASK_SPECS

RESULTS = Path(__file__).parent / "results"
#: timed generates per batch size; tokens/s is their median (older cells timed one get re-timed)
SPEED_REPEATS = 3
TASKS = list(TASK_SPECS)  # the seven bundled tasks, in the library's order
#: which linear layers become int8: the library's default, and every one (the literal recipe)
SCHEMES = {
    "default": (KEEP_FLOAT, "int8, LM head and MLP output projections kept fp32"),
    "all-linear": ((), "int8, every linear layer"),
}


def pruned_checkpoint(work: Path, method: str, k: int) -> Path:
    """The fp32 checkpoint of a quality-bench selection (written once)."""
    out = work / "checkpoints" / f"{method}-{k}"
    if not (out / PRUNING_FILE).is_file():
        selection = json.loads((work / "select" / f"{method}.json").read_text())
        loaded = load_model("default")
        before = count_parameters(loaded.model)
        removed = prune_layers(loaded, selection["removed"][str(k)])
        save_pruned(loaded, out, make_record(loaded, removed, method, before), overwrite=True)
    return out


def quantized(source: Path, out: Path, keep_float: tuple[str, ...]) -> Path:
    if not (out / "quantization.json").is_file():
        loaded = load_model(str(source))
        quantize_int8(loaded.model, keep_float)
        save_quantized(loaded.model, loaded.tokenizer, out, overwrite=True)
    return out


def measure(
    checkpoint: str,
    cache: Path,
    limit: int,
    perplexity: bool = True,
    zero_shot: bool = True,
    zero_shot_from: Path | None = None,
) -> dict[str, Any]:
    """Speed of a saved checkpoint (loaded back from disk) and, as asked, its perplexity and zero-shot
    mean. ``zero_shot_from``: the quality bench's result for the same weights at the same ``limit``,
    reused instead of evaluated again (five minutes a model). A cached cell whose speed was timed with
    fewer than ``SPEED_REPEATS`` generates has only its speed measured again."""
    result: dict[str, Any] = json.loads(cache.read_text()) if cache.is_file() else {}
    if result.get("speed_repeats", 1) >= SPEED_REPEATS:
        return result
    from coopprune.zeroshot import zero_shot as run_zero_shot

    want_ppl = perplexity and "ppl128" not in result
    want_zs = zero_shot and "zero_shot_mean" not in result
    if not result or want_ppl or want_zs:
        loaded = load_model(checkpoint)
        result.update(checkpoint=checkpoint, layers=loaded.num_layers)
        if want_ppl:
            result["ppl128"] = pipeline.evaluate_perplexity(checkpoint, "boolq", 128, 64, progress=False).perplexity
        if want_zs and zero_shot_from is not None and zero_shot_from.is_file():
            zs = json.loads(zero_shot_from.read_text())
            result["zero_shot_mean"] = zs["mean"]
            result["zero_shot"] = {t: r["value"] for t, r in zs["tasks"].items()}
            result["zero_shot_reused"] = str(zero_shot_from)
        elif want_zs:
            zs = run_zero_shot(loaded.model, loaded.tokenizer, TASKS, limit, 0, 8)
            result["zero_shot_mean"] = zs.mean
            result["zero_shot"] = {t: r.value for t, r in zs.tasks.items()}
        del loaded  # the speed run is a fresh process; do not hold a second copy meanwhile
    speed = measure_speed_isolated(checkpoint, (1, 8), new_tokens=128, repeats=SPEED_REPEATS)
    result["tokens_per_s"] = {str(b): v for b, v in speed.tokens_per_second.items()}
    result["speed_repeats"] = speed.repeats
    result["peak_rss_mb"] = speed.peak_rss_mb
    result["disk_mb"] = (
        sum(p.stat().st_size for p in Path(checkpoint).rglob("*") if p.is_file()) / 2**20
        if Path(checkpoint).is_dir()
        else None
    )
    write_json(cache, result)
    print(f"measured {checkpoint}: {result}", flush=True)
    return result


def quantization(work: Path, limit: int, schemes: list[str]) -> list[dict[str, Any]]:
    folder = work / "deployment"
    reuse = work / f"zeroshot-{limit}"
    rows = [
        {
            "model": "base fp32",
            **measure(str(_base_folder()), folder / "base.json", limit, zero_shot_from=reuse / "base-0.json"),
        }
    ]
    fp32 = pruned_checkpoint(work, "semivalue", 6)
    rows.append(
        {
            "model": "pruned k=6 fp32",
            **measure(str(fp32), folder / "pruned-fp32.json", limit, zero_shot_from=reuse / "semivalue-6.json"),
        }
    )
    for scheme in schemes:
        keep_float, label = SCHEMES[scheme]
        pq = quantized(fp32, work / "checkpoints" / f"semivalue-6-int8-{scheme}", keep_float)
        cache = folder / f"prune-then-quantize-{scheme}.json"
        rows.append({"model": f"prune then quantize ({label})", "scheme": scheme, **measure(str(pq), cache, limit)})
        q = quantized(_base_folder(), work / "checkpoints" / f"base-int8-{scheme}", keep_float)
        qp = work / "checkpoints" / f"int8-{scheme}-semivalue-6"
        if not (qp / PRUNING_FILE).is_file():
            start = time.perf_counter()
            params = Params.from_dict({"model": {"source": str(q)}, "game": {"utility": "ppl_ratio"},
                                       "prune": {"method": "semivalue", "remove": 6, "budget": 200}})
            result = pipeline.prune(pipeline.PruneRequest(params, qp, overwrite=True))
            print(f"game on {q}: removed {result.removed_layers} in {time.perf_counter() - start:.0f}s", flush=True)
        removed = PruningRecord.load(qp).removed_layers
        rows.append(
            {
                "model": f"quantize then prune ({label}; game on int8)",
                "scheme": scheme,
                "removed": removed,
                **measure(str(qp), folder / f"quantize-then-prune-{scheme}.json", limit),
            }
        )
        cache = folder / f"base-int8-{scheme}.json"
        rows.append(
            {"model": f"base, {label}, no pruning", "scheme": scheme, **measure(str(q), cache, limit, zero_shot=False)}
        )
    return rows


def fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rate(row: dict[str, Any], batch: str) -> str:
    low, high = row.get("tokens_per_s_range", {}).get(batch, (None, None))
    spread = "" if low is None else f" ({low:.1f}-{high:.1f})"
    return f"{row['tokens_per_s'][batch]:.1f}{spread}"


def _base_folder() -> Path:
    from coopprune.fetch import fetch_default_model

    return Path(fetch_default_model())


def inference(work: Path, ks: list[int], rounds: int) -> list[dict[str, Any]]:
    """Each model in a fresh process, ``rounds`` times, the models interleaved within a round: drift
    of a shared machine (batch-8 rates of same-size models differed by up to 30 % when each was
    timed once, one after another) lands on every model alike; the median over rounds is
    published with its range."""
    folder = work / "deployment"
    models = [("base", 0, _base_folder())] + [(f"semivalue k={k}", k, pruned_checkpoint(work, "semivalue", k)) for k in ks]
    caches = {name: folder / f"inference-{k}.json" for name, k, _ in models}
    done = {name: json.loads(c.read_text()) if c.is_file() else {"rounds": []} for name, c in caches.items()}
    for r in range(rounds):
        for name, k, checkpoint in models:
            if len(done[name]["rounds"]) > r:
                continue
            speed = measure_speed_isolated(checkpoint, (1, 8), new_tokens=128, repeats=1)
            done[name]["rounds"].append({"tokens_per_s": {str(b): v for b, v in speed.tokens_per_second.items()},
                                         "peak_rss_mb": speed.peak_rss_mb})
            write_json(caches[name], done[name])
            print(f"round {r + 1}/{rounds} {name}: {speed.tokens_per_second}", flush=True)
    rows = []
    for name, k, checkpoint in models:
        measured = done[name]["rounds"][:rounds]
        rates = {b: [m["tokens_per_s"][b] for m in measured] for b in ("1", "8")}
        rows.append({
            "model": name, "k": k, "checkpoint": str(checkpoint), "layers": pipeline.model_depth(str(checkpoint)),
            "rounds": len(measured),
            "tokens_per_s": {b: statistics.median(v) for b, v in rates.items()},
            "tokens_per_s_range": {b: [min(v), max(v)] for b, v in rates.items()},
            "peak_rss_mb": statistics.median(m["peak_rss_mb"] for m in measured),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("bench/work/quality"))
    parser.add_argument("--stages", nargs="+", default=["quantization", "inference"])
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--ks", type=int, nargs="+", default=[3, 6, 9, 12])
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    parser.add_argument("--rounds", type=int, default=3, help="inference: fresh-process measurements per model")
    args = parser.parse_args()
    # a stage not run keeps the rows it published earlier, so running one stage never drops the other
    previous = json.loads((RESULTS / "deployment.json").read_text()) if (RESULTS / "deployment.json").is_file() else {}
    out: dict[str, Any] = {**previous, "date": time.strftime("%Y-%m-%d")}
    if "quantization" in args.stages:
        out["quantization"] = quantization(args.work, args.limit, args.schemes)
    if "inference" in args.stages:
        out["inference"] = inference(args.work, args.ks, args.rounds)
    lines = []
    if "quantization" in out:
        rows = out["quantization"]
        lines += [
            "| model | layers | PPL@128 | zero-shot mean | tokens/s b=1 | tokens/s b=8 | peak RSS MB | disk MB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['model']} | {r['layers']} | {r['ppl128']:.2f} | {fmt(r.get('zero_shot_mean'), 3)} | "
            f"{r['tokens_per_s']['1']:.1f} | {r['tokens_per_s']['8']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{r['disk_mb'] or 0:.0f} |"
            for r in rows
        ]
    if "inference" in out:
        rows = out["inference"]
        base = rows[0]["tokens_per_s"]
        lines += [
            "",
            "| model | layers | tokens/s b=1 (range) | tokens/s b=8 (range) | speed-up b=1 / b=8 | peak RSS MB |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['model']} | {r['layers']} | {_rate(r, '1')} | {_rate(r, '8')} | "
            f"{r['tokens_per_s']['1'] / base['1']:.2f}x / {r['tokens_per_s']['8'] / base['8']:.2f}x | "
            f"{r['peak_rss_mb']:.0f} |"
            for r in rows
        ]
        lines += ["", f"Median of {rows[0].get('rounds', 1)} fresh-process measurements per model, models interleaved."]
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "deployment.json", out)
    (RESULTS / "deployment.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
