"""The removed set's spread across calibration seeds (coopprune/stability.py, ``stability.seeds``): bad
seeds are one-line errors; on a tiny model the release's decision is repeated per seed into
``stability.json``, a second call reads every seed back (no evaluation), a seed decided again
finds every mask in its stores, ``seeds: []`` runs and writes nothing, and ``run_stage`` runs it;
the metrics, the registry tag and the card's sentence say whether the set held."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
from tiny import write_text

from coopprune.config import Params
from coopprune.dataset import MaskDataset
from coopprune.engine import MaskEvaluator
from coopprune.errors import CoopPruneError
from coopprune.records import PruningRecord
from coopprune.stability import (
    STABILITY_FILE,
    read_spread,
    seed_spread,
    spread_metrics,
    spread_tag,
    summarize,
)
from coopprune.stages import run_stage


def tiny_values(tiny_checkpoint: Path, text_file: Path, out: Path) -> dict:
    return {
        "model": {"source": str(tiny_checkpoint)},
        "calibration": {"source": str(text_file), "n_windows": 4, "window": 16, "batch_size": 4},
        "sampling": {"remove": [1, 2, 3], "per_stratum": 4, "shard_size": 4},
        "surrogate": {"epochs": 50},
        "prune": {"remove": 2, "bootstrap": 0},  # game-search, the default method
        "evaluation": {"text": str(write_text(out.parent / "eval.jsonl", 30)), "window": 16, "max_windows": 4,
                       "domains": []},
        "benchmark": {"tasks": [], "speed": False},
        "output_dir": str(out),
    }


def test_params_validate_the_stability_seeds():
    assert Params().stability.seeds == []
    assert Params.from_dict({"stability": {"seeds": [2, 1]}}).stability.seeds == [2, 1]
    for values, message in (({"stability": {"seeds": [1, -1]}}, "stability.seeds: seeds must be >= 0, got -1"),
                            ({"stability": {"seeds": [1, 2, 1]}}, "stability.seeds: seed 1 is listed twice"),
                            ({"stability": {"seeds": [0]}}, "0 is calibration.seed, the release's own draw"),
                            ({"calibration": {"seed": 5}, "stability": {"seeds": [1, 5]}}, "5 is calibration.seed"),
                            ({"stability": {"seed": [1]}}, "stability.seed: unknown key")):
        with pytest.raises(CoopPruneError, match=message) as caught:
            Params.from_dict(values)
        assert "\n" not in str(caught.value)
    again = Params.from_dict(Params.from_dict({"calibration": {"seed": 3}, "stability": {"seeds": [0]}}).model_dump())
    assert again.stability.seeds == [0] and again.calibration.seed == 3


def store_sizes(root: Path) -> dict[str, int]:
    return {str(d.relative_to(root)): len(MaskDataset.open(d)) for d in sorted(root.glob("seed-*/*"))
            if (d / "manifest.json").is_file()}


def test_seed_spread_decides_each_seed_once_and_costs_nothing_when_off(tiny_checkpoint, text_file, tmp_path,
                                                                       monkeypatch):
    out = tmp_path / "run"
    values = tiny_values(tiny_checkpoint, text_file, out)
    params = Params.from_dict(values)
    for stage in ("sweep", "contributions", "prune"):
        run_stage(params, stage, progress=False)
    release = PruningRecord.load(out / "pruned").removed_layers

    assert seed_spread(params, progress=False) == {"enabled": False}  # seeds: [] (the default)
    assert not (out / STABILITY_FILE).exists() and not (out / "stability").exists()

    on = Params.from_dict({**values, "stability": {"seeds": [1, 2]}})
    result = seed_spread(on, progress=False)
    written = json.loads((out / STABILITY_FILE).read_text())
    assert result["decided"] == [1, 2] and result["path"] == str(out / STABILITY_FILE)
    assert written == {k: v for k, v in result.items() if k not in ("path", "decided")}
    assert written["seeds"] == [0, 1, 2] and list(written["sets"]) == ["0", "1", "2"]
    assert written["sets"]["0"] == sorted(release) and all(len(s) == 2 for s in written["sets"].values())
    assert written["distinct_sets"] == len({tuple(s) for s in written["sets"].values()})
    assert written["same_as_release"] == [s for s in (1, 2) if written["sets"][str(s)] == written["sets"]["0"]]
    union = set().union(*map(set, written["sets"].values()))
    assert set(written["layers_always_removed"]) | set(written["layers_sometimes_removed"]) == union
    for seed in (1, 2):  # the main job's files, in the seed's own folder, on its own windows
        seed_dir = out / "stability" / f"seed-{seed}"
        decision = json.loads((seed_dir / "contributions" / "decision.json").read_text())
        assert decision["params"]["calibration"]["seed"] == seed
        assert sorted(decision["removed_players"]) == written["sets"][str(seed)]
    decisions = [json.loads((d / "contributions" / "decision.json").read_text())
                 for d in (out, out / "stability" / "seed-1", out / "stability" / "seed-2")]
    fingerprints = {d["params"]["calibration"]["fingerprint"] for d in decisions}
    assert len(fingerprints) == 3  # three draws of windows from the same text
    text, sizes = (out / STABILITY_FILE).read_bytes(), store_sizes(out / "stability")
    assert set(sizes) == {f"seed-{s}/{store}" for s in (1, 2) for store in ("masks", "search")}

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a finished seed was evaluated again")

    with monkeypatch.context() as m:  # a second call: every seed read back, not a single forward pass
        m.setattr(MaskEvaluator, "evaluate", no_evaluation)
        assert seed_spread(on, progress=False)["decided"] == []
    assert (out / STABILITY_FILE).read_bytes() == text

    for seed in (1, 2):  # forget the finished decisions: decided again, every mask found in the stores
        (out / "stability" / f"seed-{seed}" / "seed.json").unlink()
    assert seed_spread(on, progress=False)["decided"] == [1, 2]
    assert store_sizes(out / "stability") == sizes and (out / STABILITY_FILE).read_bytes() == text

    # the stage: the same file; with no seeds it records that the step is off, which nothing reads as a spread
    assert run_stage(on, "stability", progress=False)["sets"] == written["sets"]
    assert read_spread(out) == written
    from coopprune.pipeline.benchmarking import release_metrics

    assert release_metrics(out, {})["calibration_seeds"] == 3
    assert run_stage(params, "stability", progress=False) == {"enabled": False}
    assert json.loads((out / STABILITY_FILE).read_text()) == {"enabled": False}
    assert read_spread(out) is None and "calibration_seeds" not in release_metrics(out, {})
    assert store_sizes(out / "stability") == sizes  # the seeds' stores are kept for next time


def fake_release(out: Path, sets: dict[int, list[int]]) -> Path:
    """An output folder with a pruned checkpoint's record and a stability.json of ``sets``."""
    import hashlib

    record = PruningRecord(base_model="tiny", base_fingerprint="f" * 64, removed_layers=sets[0],
                           kept_layers=[i for i in range(8) if i not in sets[0]], layers_before=8,
                           layers_after=8 - len(sets[0]), parameters_before=800, parameters_after=600,
                           method="game-search")
    path = record.save(out / "pruned")
    checkpoint = hashlib.sha256(path.read_bytes()).hexdigest()
    (out / STABILITY_FILE).write_text(json.dumps(summarize(0, sets, checkpoint)))
    return out


def test_a_changed_set_in_the_metrics_the_registry_tag_and_the_card(tmp_path):
    from coopprune.card import card_summary, render_card
    from coopprune.pipeline.benchmarking import release_metrics
    from tasks.prune_release import seed_spread_tag

    out = fake_release(tmp_path / "run", {0: [3, 4], 1: [4, 3], 2: [3, 5], 7: [5, 6]})
    spread = read_spread(out)
    assert spread["seeds"] == [0, 1, 2, 7] and spread["sets"]["1"] == [3, 4] and spread["same_as_release"] == [1]
    assert spread["layers_always_removed"] == [] and spread["layers_sometimes_removed"] == [3, 4, 5, 6]
    assert spread_metrics(spread) == {"calibration_seeds": 4, "calibration_seed_distinct_sets": 3}
    assert {k: v for k, v in release_metrics(out, {}).items() if k.startswith("calibration_")} == spread_metrics(spread)
    tag = "4 seeds, 3 sets: layers 3, 4, 5, 6 vary; seed 1 matches the release's seed 0"
    assert spread_tag(spread) == tag and seed_spread_tag(out) == {"calibration_seed_spread": tag}
    sentence = ("Decided again on 3 other calibration draws (calibration.seed 1, 2, 7; the release used 0), the "
                "removed set changed: 3 distinct sets over 4 seeds, layers 3-6 removed under some seeds only (no "
                "layer under every one), and seed 1 chose the release's set.")
    assert sentence in card_summary(out)
    page = render_card(out)
    assert html.escape(sentence) in page and "The removed set by calibration seed" in page

    fake_release(out, {0: [3, 4], 2: [3, 5]})
    assert spread_tag(read_spread(out)).endswith("layers 4, 5 vary; none matches the release's seed 0")
    assert "(3 under every one), and no other seed chose the release's set." in card_summary(out)


def test_a_held_set_and_a_stale_or_absent_file(tmp_path):
    from coopprune.card import card_summary
    from tasks.prune_release import seed_spread_tag

    out = fake_release(tmp_path / "run", {0: [3, 4], 1: [3, 4], 2: [4, 3]})
    assert spread_tag(read_spread(out)) == "3 seeds, 1 set"
    assert ("Decided again on 2 other calibration draws (calibration.seed 1, 2; the release used 0), the removed "
            "set held: every seed chose 3-4.") in card_summary(out)
    record = json.loads((out / "pruned" / "pruning.json").read_text())
    (out / "pruned" / "pruning.json").write_text(json.dumps({**record, "created": "later"}))  # pruned again since
    assert read_spread(out) is None and seed_spread_tag(out) == {} and "calibration draw" not in card_summary(out)
    (out / STABILITY_FILE).unlink()
    assert read_spread(out) is None and spread_metrics(None) == {} and spread_tag(None) is None
