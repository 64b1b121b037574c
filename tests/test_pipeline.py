"""The main job (`coopprune run`) on a tiny model: every artifact where the summary says."""

import json

import pytest

from coopprune import pipeline
from coopprune.config import Params
from coopprune.dataset import MaskDataset
from coopprune.stages import run_stage
from tiny import prune_request


def test_run_on_tiny_model(tiny_checkpoint, text_file, tmp_path):
    params = Params.from_dict(
        {
            "model": {"source": str(tiny_checkpoint)},
            "calibration": {"source": str(text_file), "n_windows": 4, "window": 24},
            "sampling": {"remove": [1, 3], "per_stratum": 5, "shard_size": 4},
            "prune": {"remove": 2, "method": "semivalue"},
            "evaluation": {"text": str(text_file), "window": 24, "max_windows": 5},
            "output_dir": str(tmp_path / "run"),
        }
    )
    summary = pipeline.run(params, progress=False)
    assert summary["mask_dataset"]["rows"] == 10 == len(MaskDataset.open(summary["mask_dataset"]["path"]))
    assert len(summary["pruned"]["removed_layers"]) == 2
    assert summary["benchmark"]["pruned"]["perplexity"]["window"] == 24
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["method"] == "semivalue" and summary["pruned"]["evaluations"] == 0  # trains on the sweep
    assert (tmp_path / "run" / "pruned" / "contributions.csv").read_text().startswith("round,player,name,contribution")
    # a second run reuses the finished sweep
    again = pipeline.run(params, progress=False)
    assert again["pruned"]["removed_layers"] == summary["pruned"]["removed_layers"]


@pytest.mark.parametrize("players", ["layers", "sublayers"])
def test_decision_then_apply_equals_one_shot_prune(players, tiny_checkpoint, text_file, tmp_path):
    """The contributions and prune stages, run apart, give the one-call checkpoint exactly."""
    from safetensors.torch import load_file

    from coopprune.errors import CoopPruneError

    common = dict(method="ppl", remove=2, calib=str(text_file), n_windows=4, window=16, progress=False, players=players)
    direct = pipeline.prune(prune_request(tiny_checkpoint, tmp_path / "direct", **common))
    decided = pipeline.prune(prune_request(tiny_checkpoint, tmp_path / "decision", decision_only=True, **common))
    assert decided.evaluations == direct.evaluations
    assert (tmp_path / "decision" / "decision.json").is_file() and not (tmp_path / "decision" / "config.json").exists()
    applied = pipeline.apply_decision(str(tiny_checkpoint), tmp_path / "decision", tmp_path / "applied")
    assert applied.removed_layers == direct.removed_layers and applied.evaluations == direct.evaluations
    a, b = load_file(tmp_path / "direct" / "model.safetensors"), load_file(tmp_path / "applied" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert (tmp_path / "applied" / "contributions.csv").read_text() == (tmp_path / "direct" / "contributions.csv").read_text()
    with pytest.raises(CoopPruneError, match="run the contributions step first"):
        pipeline.apply_decision(str(tiny_checkpoint), tmp_path / "nowhere", tmp_path / "x")


def test_stages_in_bfloat16_agree_on_the_model(tiny_checkpoint, text_file, tmp_path):
    """``model.dtype`` reaches every stage: the contributions step reuses the bf16 sweep (same
    fingerprint) and the pruned checkpoint is written in the dtype the decision was made in."""
    from safetensors.torch import load_file

    params = Params.from_dict(
        {
            "model": {"source": str(tiny_checkpoint), "dtype": "bfloat16", "device": "cpu"},
            "calibration": {"source": str(text_file), "n_windows": 4, "window": 16},
            "sampling": {"remove": [1, 3], "per_stratum": 6, "shard_size": 4},
            "prune": {"remove": 2},
            "benchmark": {"tasks": [], "speed": False},
            "output_dir": str(tmp_path / "run"),
        }
    )
    for stage in ("sweep", "surrogate", "contributions"):
        run_stage(params, stage, progress=False)
    result = run_stage(params, "prune", progress=False)
    assert len(result["removed_layers"]) == 2
    weights = load_file(tmp_path / "run" / "pruned" / "model.safetensors")
    assert {str(t.dtype) for t in weights.values()} == {"torch.bfloat16"}


def test_unavailable_device_is_one_clear_error(tiny_checkpoint):
    import torch

    from coopprune.errors import CoopPruneError
    from coopprune.models import load_model

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(CoopPruneError, match="no CUDA device"):
        load_model(str(tiny_checkpoint), device="cuda")
    with pytest.raises(CoopPruneError, match="unknown device"):
        load_model(str(tiny_checkpoint), device="gpu0")
    assert load_model(str(tiny_checkpoint), device="auto").model.device.type == "cpu"
