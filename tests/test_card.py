"""The release card (coopprune/card/): rendered from a tiny-model release run, one self-contained
page; optional parts (attribution, interactions, healing, exports, domains) shown when present and
skipped cleanly when not; its summary paragraph is the registered version's description."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_speed import FakeMachine
from tiny import write_text

from coopprune import pipeline, speed
from coopprune.card import card_file, card_summary, render_card, write_card
from coopprune.config import Params
from coopprune.errors import CoopPruneError
from coopprune.stages import run_stage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def release_params(tmp_path_factory, tiny_checkpoint, text_file) -> Params:
    out = tmp_path_factory.mktemp("release") / "run"
    held_out = write_text(out.parent / "eval.jsonl", n_docs=40)
    return Params.from_dict(
        {
            "model": {"source": str(tiny_checkpoint)},
            "calibration": {"source": str(text_file), "n_windows": 4, "window": 16, "batch_size": 4},
            "sampling": {"remove": [1, 2, 3], "per_stratum": 4, "shard_size": 6},
            "surrogate": {"epochs": 60},
            "prune": {"remove": 2, "budget": 40, "bootstrap": 2},
            "evaluation": {"text": str(held_out), "window": 16, "max_windows": 4, "domains": []},
            "benchmark": {"tasks": [], "speed": True, "new_tokens": 4, "speed_pairs": 4},
            "registry": {"enabled": False},
            "output_dir": str(out),
        }
    )


@pytest.fixture(scope="module")
def release(release_params, tiny_checkpoint) -> Path:
    """A release run on the tiny model, stage by stage as DVC runs it: game-search (the default
    method, with rounds to trace), both benchmarks, the speed comparison on a fake machine (the
    pruned model 15 % faster, the machine drifting), then the card (``run_stage("benchmark")``)."""
    params, out = release_params, Path(release_params.output_dir)
    for stage in ("data", "sweep", "surrogate", "contributions", "prune"):
        run_stage(params, stage, progress=False)
    base, pruned = str(tiny_checkpoint), str(out / "pruned")
    machine = FakeMachine({base: 20.0, pruned: 23.0}, drift=0.03)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(speed, "measure_speed_isolated", machine)
        result = run_stage(params, "benchmark", progress=False)
    assert result["card"] == str(out / "card.html")
    assert machine.calls == [base, pruned, pruned, base] * 2
    return out


def test_speed_comparison_is_kept_for_the_same_weights_and_settings(release, release_params, tiny_checkpoint):
    """A rerun (e.g. after the registry was down) reads benchmark/speed.json; other speed settings
    time again, without touching the perplexity benchmark's key."""
    scores = {label: json.loads((release / "benchmark" / f"{label}.json").read_text()) for label in ("base", "pruned")}
    path = release / "benchmark" / "speed.json"
    kept = json.loads(path.read_text())
    machine = FakeMachine({str(tiny_checkpoint): 20.0, str(release / "pruned"): 30.0}, drift=0.0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(speed, "measure_speed_isolated", machine)
        assert pipeline.compare_release_speed(release_params, scores) == kept and machine.calls == []
        fewer = release_params.model_copy(
            update={"benchmark": release_params.benchmark.model_copy(update={"speed_pairs": 1})}
        )
        again = pipeline.compare_release_speed(fewer, scores)
        assert len(machine.calls) == 2 and again["metrics"]["speedup_bs1"] == pytest.approx(1.5)
        assert pipeline.benchmark_key(fewer, "w") == pipeline.benchmark_key(release_params, "w")
        off = release_params.model_copy(
            update={"benchmark": release_params.benchmark.model_copy(update={"speed": False})}
        )
        assert pipeline.compare_release_speed(off, scores) is None
    path.write_text(json.dumps(kept))  # the run's own comparison, for the tests that follow


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("masks", "search*", "model.safetensors"))
    return dst


def test_card_of_a_tiny_release_run(release):
    page = (release / "card.html").read_text()
    record = json.loads((release / "pruned" / "pruning.json").read_text())
    metrics = json.loads((release / "metrics.json").read_text())
    # one file is the whole card: every image inline, nothing fetched from anywhere
    assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") >= 2
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    # removed layers and why
    assert "Removed, and why" in page and "2 of 6 layers" in page
    for layer in record["removed_layers"]:
        assert f"<span>{layer}</span>" in page
    assert "best removal set the search measured" in page
    # the contributions with intervals, from contributions.csv
    rows = (release / "pruned" / "contributions.csv").read_text().splitlines()[1:]
    assert len(rows) == 6 and all(f"layer {i}" in page for i in range(6))
    assert page.count("95 % interval") >= 2
    # the search: its trace plotted, the peers' seed sets listed
    search = record["scores"]["rounds"][0]["search"]
    assert search["rounds"] >= 1 and "The search" in page and 'alt="search trace"' in page
    assert "The peers' sets it evaluated" in page and all(f"<td>{peer}</td>" in page for peer in search["peer_seeds"])
    # scores before and after, and the speed-up as a ratio with its spread
    assert "held-out perplexity" in page and f"{metrics['base_perplexity']:.4g}" in page
    assert metrics["speed_pairs"] == 4 and metrics["speedup_bs1_min"] <= 1.15 <= metrics["speedup_bs1_max"]
    assert f"{metrics['speedup_bs1']:.2f}x" in page and "4 interleaved pairs" in page
    assert not any("tokens_per_s_batch" in key for key in metrics)  # no lone absolute figures any more
    # the attribution of game-search's real evaluations: its summary and heatmap
    attribution = json.loads((release / "pruned" / "attribution.json").read_text())
    assert "Attribution" in page and html.escape(attribution["summary"]) in page
    # absent parts are skipped cleanly
    assert "Healing" not in page and "Exports" not in page
    # the DVC stage's output list names the card
    assert "${output_dir}/card.html" in (ROOT / "dvc.yaml").read_text()


def test_summary_is_one_plain_paragraph(release):
    text = card_summary(release)
    assert "\n" not in text and "<" not in text
    assert text.startswith("llama: 2 of 6 layers removed") and "by game-search" in text
    assert "Held-out perplexity" in text and "interleaved timing pairs" in text and "x at batch 1" in text
    assert text in html.unescape(render_card(release))  # the card opens with it


def test_a_wide_speed_spread_is_flagged(release, tmp_path):
    """Pairs that disagree (a busy machine) are shown with a warning, and the summary says not to quote them."""
    assert "The timing pairs disagree" not in (release / "card.html").read_text()  # the fake machine only drifts
    run = copy_run(release, tmp_path / "run")
    data = json.loads((run / "benchmark" / "speed.json").read_text())
    data["summary"]["1"] |= {"speedup": 0.54, "speedup_min": 0.43, "speedup_max": 1.86}
    (run / "benchmark" / "speed.json").write_text(json.dumps(data))
    page = render_card(run)
    assert (
        "The timing pairs disagree (batch 1: 0.43-1.86x)" in page and "batch 8:" not in page.split("disagree")[1][:40]
    )
    assert card_summary(run).count("re-time before quoting it") == 1


def test_attribution_and_interactions_when_present(release, tmp_path):
    run = copy_run(release, tmp_path / "run")
    attribution = {
        "summary": "Layers 4 and 5 <interact> weakly (pairwise share 3 %).",
        "warnings": ["interaction fit R2 below 0.5 on held-out masks", "few masks at depth 3"],
        "fit": {"r2": 0.41, "order": 2, "held_out": {"spearman": 0.7, "n": 40}},
    }
    (run / "pruned" / "attribution.json").write_text(json.dumps(attribution))
    shutil.copyfile(run / "pruned" / "contributions.png", run / "pruned" / "interactions.png")
    page = write_card(run).read_text()
    assert "Attribution and interactions" in page and 'alt="interaction heatmap"' in page
    assert "Layers 4 and 5 &lt;interact&gt; weakly (pairwise share 3 %)." in page  # verbatim, escaped
    assert all(w in page for w in attribution["warnings"])
    assert "held_out.spearman" in page and "0.41" in page
    assert card_summary(run).endswith("Layers 4 and 5 <interact> weakly (pairwise share 3 %).")
    # a summary-only attribution (no warnings, no fit) and no heatmap: shown, nothing else
    (run / "pruned" / "interactions.png").unlink()
    (run / "pruned" / "attribution.json").write_text(json.dumps({"summary": "No interaction stands out."}))
    page = render_card(run)
    assert "No interaction stands out." in page and "Warnings" not in page and "interaction heatmap" not in page


def test_domains_zero_shot_healing_and_exports(release, tmp_path):
    run = copy_run(release, tmp_path / "run")
    metrics = json.loads((run / "metrics.json").read_text())
    metrics |= {
        "base_perplexity_news": 40.0,
        "pruned_perplexity_news": 50.0,
        "base_perplexity_code": 10.0,
        "pruned_perplexity_code": 12.0,
        "base_domain_mean_perplexity": 25.0,
        "pruned_domain_mean_perplexity": 31.0,
        "base_zero_shot_mean": 0.43,
        "pruned_zero_shot_mean": 0.436,
        "base_parameters": 80288,
        "pruned_parameters": 61728,
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "heal_metrics.json").write_text(
        json.dumps(
            {"healed": True, "healed_perplexity": 700.0, "healed_perplexity_news": 45.0, "healed_zero_shot_mean": 0.44}
        )
    )
    (run / "healed").mkdir()
    (run / "healed" / "healing.json").write_text(
        json.dumps(
            {
                "loss": "lm",
                "steps": 100,
                "tokens": 102400,
                "data": "lambada",
                "data_fingerprint": "ab" * 32,
                "minutes": 6.5,
                "losses": [3.2, 2.9],
            }
        )
    )
    (run / "gguf").mkdir()
    (run / "gguf" / "llama-pruned.f16.gguf").write_bytes(b"GGUF" + bytes(2**20))
    page = write_card(run).read_text()
    for text in (
        "perplexity: news",
        "perplexity: code",
        "mean over the 2 held-out domains",
        "zero-shot mean accuracy",
        "0.436",
        "+25.0 %",
        "Healing",
        "102,400",
        "Exports",
        "llama-pruned.f16.gguf",
        "1.0 MiB",
    ):
        assert text in page, text
    assert "<th>healed</th>" in page  # the healed column beside base and pruned
    summary = card_summary(run)
    assert (
        "mean perplexity over 2 held-out domains 25 -> 31" in summary
        and "zero-shot mean accuracy 0.430 -> 0.436" in summary
    )
    assert "A healed variant (100 LoRA steps) reaches perplexity 700" in summary
    assert summary.endswith("GGUF for llama.cpp: llama-pruned.f16.gguf.")
    healed = write_card(run, "healed")
    assert healed.name == card_file("healed") == "card-healed.html"
    assert "(healed)" in healed.read_text() and "Healed with LoRA (lm loss) for 100 steps" in card_summary(
        run, "healed"
    )


def test_missing_record_or_healed_model_is_one_clear_error(release, tmp_path):
    with pytest.raises(CoopPruneError, match="no pruning.json"):
        render_card(tmp_path)
    with pytest.raises(CoopPruneError, match="no healed model"):
        render_card(release, "healed")
    with pytest.raises(CoopPruneError, match="not 'quantized'"):
        card_file("quantized")


def test_registered_version_description_is_the_card_summary(release, tmp_path):
    from mlflow import MlflowClient

    from coopprune.tracking import registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = card_summary(release)
    run_id = registry.log_run(
        "cards", "tiny", {}, {}, {"checkpoint": release / "pruned", "card": release / "card.html"}, {}, tracking=uri
    )
    version = registry.register_pruned(run_id, "checkpoint", "tiny-pruned", {}, tracking=uri, description=summary)
    client = MlflowClient(uri, registry_uri=uri)
    assert client.get_model_version("tiny-pruned", version).description == summary
    assert [a.path for a in client.list_artifacts(run_id, "card")] == ["card/card.html"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(chromium() is None, reason="no Chromium on this machine (apt-get install chromium)")
def test_card_opens_in_headless_chromium(release, tmp_path):
    """bench/card_screenshot.py: the card as a browser renders it (every section shown) and a PNG of it."""
    png, md = tmp_path / "card.png", tmp_path / "card.md"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "card_screenshot.py"),
            str(release / "card.html"),
            "--out",
            str(png),
            "--md",
            str(md),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 1200 and 1000 < height < 12000  # the whole page, blank rows below it cropped
    table = md.read_text()
    assert "| Removed, and why | yes |" in table and "NO" not in table
