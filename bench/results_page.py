"""Regenerate docs/RESULTS.md from the saved benchmark results (bench/results/*).

Tables and plots come from the JSON/Markdown the bench scripts wrote; the hand-written
discussion between the ``discussion`` markers of the existing file is kept. A section whose
script has not been run says so, with the command that fills it.

    python bench/results_page.py
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "RESULTS.md"
START, END = "<!-- discussion:start -->", "<!-- discussion:end -->"


def machine() -> str:
    mem = ""
    if Path("/proc/meminfo").is_file():
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 2**20:.0f} GiB RAM"
    packages = ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "lm_eval", "shapiq", "mlflow", "prefect"))
    return f"{platform.machine()}, {os.cpu_count()} CPU cores{mem}, no GPU; Python {platform.python_version()}; {packages}"


def section(title: str, command: str, result: str, body: str | None, images: tuple[str, ...] = ()) -> str:
    lines = [f"## {title}", "", f"Command: `{command}`", ""]
    if body is None:
        lines.append(f"Not run yet: `{result}` is missing.")
    else:
        lines.append(body.strip())
        lines += [f"\n![{Path(i).stem}](../bench/results/{i})" for i in images if (RESULTS / i).is_file()]
    return "\n".join(lines) + "\n"


def read(name: str) -> str | None:
    path = RESULTS / name
    return path.read_text() if path.is_file() else None


def engine_speed() -> str | None:
    text = read("engine_speed.json")
    if text is None:
        return None
    r = json.loads(text)
    return (
        "| engine | masks/s |\n|---|---|\n"
        f"| coopprune (skip dropped layers, resume from the deepest shared prefix) | {r['ours_masks_per_s']:.3f} |\n"
        f"| reference (zero the dropped layers' weights, run the full model) | {r['reference_masks_per_s']:.3f} |\n\n"
        f"Speed-up {r['speedup']:.2f}x on the same {r['measured_masks']} masks ({r['calibration']}, interleaved per shard); "
        f"largest utility difference {r['max_abs_utility_diff']:.1e} ({r['date']})."
    )


def engine_on_accelerators() -> str | None:
    runs = [json.loads(f.read_text()) for f in sorted(RESULTS.glob("engine_speed_*.json"))]
    if not runs:
        return None
    lines = [
        "| device | dtype | calibration | coopprune masks/s | reference masks/s | speed-up | "
        "max utility diff vs CPU fp32 | Spearman vs CPU fp32 (masks) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        rho = r.get("spearman_vs_cpu_fp32")
        lines.append(
            f"| {r.get('device_name') or r['device']} | {r['dtype']} | {r['calibration']} | {r['ours_masks_per_s']:.1f} | "
            f"{r['reference_masks_per_s']:.1f} | {r['speedup']:.2f}x | {r.get('max_abs_utility_diff_vs_cpu_fp32', 0):.1e} | "
            f"{'-' if rho is None else f'{rho:.3f}'} ({r.get('check_masks', 0)}) |"
        )
    model = runs[0]["model"]
    return "\n".join(lines) + (
        f"\n\nModel: {model} (SmolLM2-135M's config, seeded random weights and random tokens: the GPU machine could "
        f"not download the checkpoint; speed depends on shapes, not values). {runs[0]['measured_masks']} masks of the "
        f"paper's strata per run; torch {runs[0]['torch']}; {runs[0]['date']}. tests/test_device.py passed on the same machine."
    )


def page(discussion: str) -> list[str]:
    """The whole page: the header, the kept discussion and one section per bench script."""
    return [
        "# Results",
        "",
        "SmolLM2-135M-Instruct (30 layers, the bundled default) on this repository's benchmark scripts. Every number "
        "below is read from `bench/results/`, written by the command shown; `python bench/results_page.py` regenerates "
        "this file (the discussion is kept).",
        "",
        f"Machine: {machine()}. Generated {time.strftime('%Y-%m-%d')}.",
        "",
        discussion,
        "",
        section("1. Pruning quality", ".venv/bin/python bench/quality.py", "quality.md", read("quality.md"),
                ("quality_ppl.png", *sorted((p.name for p in RESULTS.glob("quality_search_k*.png")), key=lambda n: int(n[16:-4])), "quality_zeroshot.png",
                 "contributions_semivalue.png", "contributions_shapley-adjusted.png")),
        section("1b. The KL utility: exact vs top-K, and its cost", ".venv/bin/python bench/kl_topk.py", "kl_topk.md",
                read("kl_topk.md")),
        section("2. Estimator accuracy per budget (exact 12-layer subgame)", ".venv/bin/python bench/estimators.py",
                "estimators.md", read("estimators.md"), ("estimators.png",)),
        section("2b. Estimator accuracy on a tiny model (L = 8, all 256 coalitions)", ".venv/bin/python bench/estimator_accuracy.py",
                "estimator_accuracy.md", read("estimator_accuracy.md")),
        section("3. Cost: mask evaluation engine", ".venv/bin/python bench/engine_speed.py", "engine_speed.json", engine_speed()),
        section("3b. All methods at k = 6 on one shared sweep", ".venv/bin/python bench/methods_smollm2.py --work DIR",
                "methods_smollm2.md", read("methods_smollm2.md")),
        section("3c. Cost: where one `make run` spends its time", "make run && PREFECT_HOME=.prefect PREFECT_SERVER_ANALYTICS_ENABLED=false .venv/bin/python bench/profile_run.py",
                "run_profile.md", read("run_profile.md")),
        section("3d. The engine on a GPU", ".venv/bin/python bench/engine_speed.py --device cuda --random-weights "
                "config.json [--dtype bfloat16] [--n-windows 64]", "engine_speed_cuda_*.json", engine_on_accelerators()),
        section("3e. Shards on a Dask cluster vs the thread runner", ".venv/bin/python bench/dask_sweep.py",
                "dask_sweep.md", read("dask_sweep.md")),
        section("4-5. Pruning plus quantization; inference gain", ".venv/bin/python bench/deployment.py",
                "deployment.md", read("deployment.md")),
        section("6. Healing with LoRA: LM loss vs distillation", ".venv/bin/python bench/heal.py", "heal.md",
                read("heal.md"), ("heal_curve.png",)),
        section("7. GGUF for llama.cpp: pruned directly and exported", ".venv/bin/python bench/gguf_export.py",
                "gguf_export.md", read("gguf_export.md")),
        section("8. The registry as a person sees it (MLflow UI, headless Chromium)",
                "make run && .venv/bin/python bench/registry_ui.py", "registry_ui.md", read("registry_ui.md"),
                ("registry_ui.png",)),
        section("9. Held-out perplexity across domains (calibration mixtures)",
                ".venv/bin/python bench/domains.py --arms ARM ... --ks K --zero-shot-ks K --windows 32 (one call per k)", "domains.md",
                read("domains.md")),
        section("10. The job's contributions against a reference; the search without its surrogate",
                ".venv/bin/python bench/contributions.py --step job|reference|compare|reliability|budget|subgame|ablation "
                "(the reference in parts: --step reference --part 0, 1, 2, in parallel processes), then --step tables",
                "contributions.md", read("contributions.md")),
        section("11. The release card as a person sees it (headless Chromium)",
                "make run && .venv/bin/python bench/card_screenshot.py runs/default", "card.md", read("card.md"),
                ("card.png",)),
        section("12. 4-bit weights and pruning in both orders (GGUF)", ".venv/bin/python bench/quantize_order.py --ks 6 12",
                "quantize_order.md", read("quantize_order.md")),
        section("13. The training-free patch after the cut", ".venv/bin/python bench/patch.py --sets 13,14,15,16,17,18 "
                "3,4,5,12,13,14,15,16,17,18,25,26 --lambdas 0.01 --calibs mix --eval-windows 32", "patch.md", read("patch.md")),
        section("13b. Patch + LoRA against LoRA alone at the same time", ".venv/bin/python bench/patch_heal.py",
                "patch_heal.md", read("patch_heal.md")),
    ]


def main() -> None:
    old = DOC.read_text() if DOC.is_file() else ""
    discussion = old[old.index(START) : old.index(END) + len(END)] if START in old and END in old else (
        f"{START}\n_Discussion: written by hand after a run; kept when this file is regenerated._\n{END}"
    )
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text("\n".join(page(discussion)))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
