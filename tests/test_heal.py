"""Healing with LoRA on a tiny pruned model: the merged output is a plain checkpoint (no adapter
files, the pruned model's own keys), training lowers the loss, both objectives run, a stopped run
resumes to the very weights of an uninterrupted one, and bad settings fail before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import save_tiny

from coopprune.config import HealParams
from coopprune.errors import CoopPruneError
from coopprune.heal import HEALING_FILE, distill_loss, heal, lora_targets
from coopprune.models import load_model
from coopprune.prune import count_parameters, make_record, prune_layers, save_pruned
from coopprune.stages import run_stage


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("heal")
    loaded = load_model(str(save_tiny(root / "base", "llama", n_layers=4)))
    before = count_parameters(loaded.model)
    removed = prune_layers(loaded, [1])
    return save_pruned(loaded, root / "pruned", make_record(loaded, removed, "sleb", before))


def config(text_file: Path, **overrides) -> HealParams:
    return HealParams.from_dict({"data": str(text_file), "steps": 6, "seq_len": 16, "batch_size": 2, "grad_accum": 2,
                         "lr": 5e-3, "save_every": 2, **overrides}, "heal")


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_healing_merges_into_a_plain_checkpoint_and_lowers_the_loss(pruned, text_file, tmp_path):
    result = heal(pruned, tmp_path / "healed", config(text_file, steps=12), progress=False)
    out = result.out_dir
    assert not list(out.glob("adapter*")) and set(weights(out)) == set(weights(pruned))
    assert json.loads((out / "pruning.json").read_text()) == json.loads((pruned / "pruning.json").read_text())
    record = json.loads((out / HEALING_FILE).read_text())
    assert record["steps"] == 12 and record["tokens"] == 12 * 2 * 2 * 16 and record["loss"] == "lm"
    assert len(record["data_fingerprint"]) == 64 and record["seed"] == 0
    losses = record["losses"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    changed = [k for k, v in weights(out).items() if not torch.equal(v, weights(pruned)[k])]
    assert changed and all(any(p in k for p in ("proj",)) for k in changed)  # only the adapted projections
    assert not (tmp_path / "healed.heal-state").exists()


def test_lora_targets_every_linear_projection_of_the_kept_layers(pruned):
    names = lora_targets(load_model(str(pruned)))
    assert len(names) == 3 * 7 and all(n.startswith("model.layers.") for n in names)


def test_distillation_runs_against_the_base_model(pruned, text_file, tmp_path):
    record = heal(pruned, tmp_path / "healed", config(text_file, loss="distill", steps=2), progress=False).record
    assert record["loss"] == "distill" and record["teacher"] == json.loads((pruned / "pruning.json").read_text())["base_model"]
    logits = torch.randn(2, 3, 10)
    assert float(distill_loss(logits, logits, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(torch.zeros(2, 3, 10), logits, 2.0)) > 0


def test_a_stopped_run_resumes_to_the_same_weights(pruned, text_file, tmp_path):
    whole = heal(pruned, tmp_path / "whole", config(text_file), progress=False)

    def stop_at_3(step, model):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        heal(pruned, tmp_path / "resumed", config(text_file), progress=False, on_step=stop_at_3)
    state = json.loads((tmp_path / "resumed.heal-state" / "state.json").read_text())
    assert state["step"] == 2 and not (tmp_path / "resumed").exists()
    seen = []
    resumed = heal(pruned, tmp_path / "resumed", config(text_file), progress=False, on_step=lambda s, m: seen.append(s))
    assert seen == [3, 4, 5, 6]  # steps 1-2 were not repeated
    assert resumed.record["losses"] == whole.record["losses"]
    a, b = weights(whole.out_dir), weights(resumed.out_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CoopPruneError, match="other settings"):
        (tmp_path / "other.heal-state").mkdir()
        (tmp_path / "other.heal-state" / "state.json").write_text(json.dumps({"key": "x", "step": 1}))
        heal(pruned, tmp_path / "other", config(text_file), progress=False)


def test_bad_settings_fail_before_any_work(pruned, text_file, tmp_path):
    with pytest.raises(CoopPruneError, match="heal: steps: Input should be greater than or equal to 1"):
        config(text_file, steps=0)
    with pytest.raises(CoopPruneError, match="heal: loss: Input should be 'lm' or 'distill'"):
        config(text_file, loss="mse")
    with pytest.raises(CoopPruneError, match="no config.json"):
        heal(tmp_path, tmp_path / "out", config(text_file), progress=False)
    (tmp_path / "exists").mkdir()
    with pytest.raises(CoopPruneError, match="exists"):
        heal(pruned, tmp_path / "exists", config(text_file), progress=False)


def test_the_cli_heals_and_reports(pruned, text_file, tmp_path):
    from test_cli import assert_user_error, cli

    result = cli("heal", str(pruned), "--out", str(tmp_path / "healed"), "--data", str(text_file), "--steps", "2",
                 "--seq-len", "16", "--batch-size", "2", "--grad-accum", "1", "-q")
    assert result.returncode == 0, result.stderr
    assert "2 steps, 64 tokens" in result.stdout and (tmp_path / "healed" / HEALING_FILE).is_file()
    assert_user_error(cli("heal", str(pruned), "--out", str(tmp_path / "x"), "--loss", "mse"), "'lm' or 'distill'")


def test_the_heal_stage_heals_and_benchmarks_or_records_that_it_is_off(pruned, text_file, tmp_path):
    import shutil

    from tiny import write_text

    from coopprune import pipeline
    from coopprune.config import Params

    shutil.copytree(pruned, tmp_path / "run" / "pruned")
    values = {"model": {"source": json.loads((pruned / "pruning.json").read_text())["base_model"]},
              "evaluation": {"text": str(write_text(tmp_path / "eval.jsonl", 40)), "window": 16, "max_windows": 4},
              "benchmark": {"tasks": [], "speed": False}, "output_dir": str(tmp_path / "run")}
    off = run_stage(Params.from_dict(values), "heal")
    assert off == {"enabled": False} and json.loads((tmp_path / "run" / "heal_metrics.json").read_text()) == {"healed": False}
    values["heal"] = {"enabled": True, "data": str(text_file), "steps": 2, "seq_len": 16, "batch_size": 2, "grad_accum": 1}
    on = run_stage(Params.from_dict(values), "heal", progress=False)
    metrics = json.loads((tmp_path / "run" / "heal_metrics.json").read_text())
    assert on["steps"] == 2 and metrics["healed"] and metrics["heal_steps"] == 2 and metrics["healed_perplexity"] > 1
    assert (tmp_path / "run" / "healed" / "model.safetensors").is_file()
