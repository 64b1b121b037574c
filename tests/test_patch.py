"""The training-free linear patch (coopprune/patch.py) on tiny random Llamas built in-process: a
removed layer that adds an exactly linear map of the preceding MLP output is recovered (T = I + B,
the base model's logits), lambda -> infinity is the identity (the plain pruned model's logits), the
patched checkpoint reloads with the plain architecture and exports to GGUF, a run at layer 0 is
left unpatched with a warning, unsupported families and bad input are one-line errors, and the flow's
``patch`` stage writes, reuses and feeds healing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import VOCAB, save_tiny, tiny_model, tiny_tokenizer, write_text
from transformers import AutoModelForCausalLM, LlamaConfig

from coopprune.calibration import Windows
from coopprune.config import Params, PatchParams
from coopprune.errors import CoopPruneError
from coopprune.mixture import Calibration
from coopprune.models import LoadedModel, load_model
from coopprune.models.architectures import architecture_for
from coopprune.patch import apply_patch, fit_patch, removed_runs
from coopprune.patch_job import patch_checkpoint
from coopprune.prune import count_parameters, make_record, prune_layers, save_pruned
from coopprune.stages import run_stage

REMOVED = [2, 3]


def settings(**values) -> PatchParams:
    return PatchParams.from_dict(values, "patch")


def loaded_of(model) -> LoadedModel:
    return LoadedModel(model, tiny_tokenizer(), architecture_for(model.config), "in-memory", "-")


def windows(n: int = 12, length: int = 24, seed: int = 0) -> Windows:
    ids = torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))
    return Windows(ids, f"random-{seed}")


def pruned_copy(model, removed, patch=None):
    pruned = copy.deepcopy(model)
    arch = architecture_for(pruned.config)
    arch.remove_layers(pruned, removed)
    if patch is not None:
        apply_patch(pruned, arch, [i for i in range(model.config.num_hidden_layers) if i not in removed], patch, base=model)
    return pruned


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits


class AddsLinearOfPreviousMLP(torch.nn.Module):
    """A decoder layer whose whole effect is ``+ M B``, M the previous layer's down_proj output."""

    def __init__(self, previous_down_proj: torch.nn.Module, b: torch.Tensor) -> None:
        super().__init__()
        self.b = torch.nn.Parameter(b, requires_grad=False)
        self.seen: dict[str, torch.Tensor] = {}
        previous_down_proj.register_forward_hook(lambda module, args, out: self.seen.__setitem__("m", out))

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states + self.seen["m"] @ self.b


def test_runs_are_maximal_and_ordered():
    assert removed_runs([13, 3, 4, 5, 12, 25, 26, 14]) == [[3, 4, 5], [12, 13, 14], [25, 26]]
    assert removed_runs([0]) == [[0]]


@pytest.mark.parametrize("mlp_bias", [False, True])
def test_an_exactly_linear_removed_layer_is_recovered(mlp_bias):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, num_hidden_layers=5, hidden_size=32, intermediate_size=64,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, mlp_bias=mlp_bias)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2) if p.ndim >= 2 else p.add_(0.1 * torch.randn_like(p))
    b = 0.3 * torch.randn(32, 32)  # not symmetric: a transposed fold would not recover it
    model.model.layers[2] = AddsLinearOfPreviousMLP(model.model.layers[1].mlp.down_proj, b)
    ids = windows().input_ids
    patch = fit_patch(loaded_of(model), [2], windows(), settings(**{"lambda": 0.0}), progress=False)
    (fit,) = patch.runs
    assert fit.folded_into == 1 and fit.layers == [2]
    torch.testing.assert_close(fit.transform, torch.eye(32, dtype=torch.float64) + b.double(), atol=2e-4, rtol=0)
    assert fit.error_after < 1e-8 * fit.error_before and fit.cosine_after > 0.999999
    patched = pruned_copy(model, [2], patch)
    torch.testing.assert_close(logits(patched, ids), logits(model, ids), atol=1e-4, rtol=0)
    assert (logits(pruned_copy(model, [2]), ids) - logits(model, ids)).abs().max() > 1e-2  # the cut alone hurts


def test_lambda_to_infinity_is_the_identity():
    model = tiny_model("llama", 6)
    ids = windows().input_ids
    plain = logits(pruned_copy(model, REMOVED), ids)
    exact = fit_patch(loaded_of(model), REMOVED, windows(), settings(**{"lambda": float("inf")}), progress=False)
    assert torch.equal(exact.runs[0].transform, torch.eye(32, dtype=torch.float64))
    assert torch.equal(logits(pruned_copy(model, REMOVED, exact), ids), plain)
    previous = None
    for lam in (0.0, 1.0, 1e3, 1e9):  # the patch shrinks toward the identity as lambda grows
        fit = fit_patch(loaded_of(model), REMOVED, windows(), settings(**{"lambda": lam}), progress=False).runs[0]
        distance = float(torch.linalg.matrix_norm(fit.transform - torch.eye(32, dtype=torch.float64)))
        assert previous is None or distance < previous
        assert fit.error_after <= fit.error_before * (1 + 1e-9)  # never worse on the calibration tokens
        previous = distance
    far = fit_patch(loaded_of(model), REMOVED, windows(), settings(**{"lambda": 1e9}), progress=False)
    torch.testing.assert_close(logits(pruned_copy(model, REMOVED, far), ids), plain, atol=1e-4, rtol=0)


def test_the_cosine_objective_improves_the_cosine_and_its_infinity_is_the_identity():
    model = tiny_model("llama", 6)
    lstsq = fit_patch(loaded_of(model), REMOVED, windows(), settings(**{"lambda": 0.01}), progress=False).runs[0]
    cosine = fit_patch(loaded_of(model), REMOVED, windows(), settings(**{"lambda": 0.01, "objective": "cosine",
                                                                            "steps": 20}), progress=False).runs[0]
    assert cosine.cosine_after > cosine.cosine_before and cosine.cosine_after >= lstsq.cosine_after - 1e-6
    inf = fit_patch(loaded_of(model), REMOVED, windows(), settings(**{"lambda": float("inf"), "objective": "cosine"}),
                    progress=False).runs[0]
    assert torch.equal(inf.transform, torch.eye(32, dtype=torch.float64))


def test_with_pruned_inputs_later_runs_are_fitted_on_the_model_with_the_earlier_ones_patched():
    model = tiny_model("llama", 7)
    removed = [1, 2, 5]
    ids = windows().input_ids
    seq = fit_patch(loaded_of(model), removed, windows(), settings(inputs="pruned"), progress=False)
    independent = fit_patch(loaded_of(model), removed, windows(), settings(), progress=False)
    assert [r.folded_into for r in seq.runs] == [0, 4] and seq.to_json()["inputs"].startswith("the pruned model")
    assert independent.to_json()["inputs"] == "the unpruned model"
    torch.testing.assert_close(seq.runs[0].transform, independent.runs[0].transform)  # the first run: same inputs
    assert not torch.allclose(seq.runs[1].transform, independent.runs[1].transform)
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, tiny_model("llama", 7).model.layers[0].mlp.down_proj.weight)
    base = logits(model, ids)
    plain = float((logits(pruned_copy(model, removed), ids) - base).pow(2).mean())
    assert float((logits(pruned_copy(model, removed, seq), ids) - base).pow(2).mean()) < plain


def test_a_run_at_layer_0_stays_unpatched_with_a_warning():
    model = tiny_model("llama", 6)
    with pytest.warns(UserWarning, match=r"layers 0\.\.1 stay unpatched \(no layer before it"):
        patch = fit_patch(loaded_of(model), [0, 1, 4], windows(), settings(), progress=False)
    skipped, fitted = patch.runs
    assert skipped.transform is None and skipped.folded_into is None and fitted.folded_into == 3
    assert patch.to_json()["skipped"] == [[0, 1]]
    pruned = pruned_copy(model, [0, 1, 4], patch)  # kept 2, 3, 5: layer 3's down_proj is the one changed
    assert not torch.equal(pruned.model.layers[1].mlp.down_proj.weight, model.model.layers[3].mlp.down_proj.weight)
    assert torch.equal(pruned.model.layers[0].mlp.down_proj.weight, model.model.layers[2].mlp.down_proj.weight)


@pytest.mark.parametrize("arch", ["gemma2", "gpt2", "opt", "mamba"])
def test_unsupported_families_are_one_line_errors(arch):
    model = tiny_model(arch, 4)
    with pytest.raises(CoopPruneError, match=f"does not support '{model.config.model_type}'") as err:
        fit_patch(loaded_of(model), [2], windows(), settings(), progress=False)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("patch")
    base = save_tiny(root / "base", "llama", n_layers=6)
    loaded = load_model(str(base))
    before = count_parameters(loaded.model)
    removed = prune_layers(loaded, REMOVED)
    return base, save_pruned(loaded, root / "pruned", make_record(loaded, removed, "sleb", before))


def calibration(text_file: Path, n: int = 8) -> Calibration:
    return Calibration(((str(text_file), 1.0),), n, 16, 0)


def test_the_patched_checkpoint_reloads_with_the_plain_architecture_and_exports(checkpoints, text_file, tmp_path):
    from coopprune.gguf_export import export_gguf

    base, pruned = checkpoints
    result = patch_checkpoint(str(base), pruned, tmp_path / "patched", settings(), calibration(text_file), progress=False)
    out = result.out_dir
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4
    assert {k: v for k, v in json.loads((out / "config.json").read_text()).items() if k != "transformers_version"} == \
        {k: v for k, v in json.loads((pruned / "config.json").read_text()).items() if k != "transformers_version"}
    mine, theirs = load_file(str(out / "model.safetensors")), load_file(str(pruned / "model.safetensors"))
    assert set(mine) == set(theirs)
    assert [k for k in mine if not torch.equal(mine[k], theirs[k])] == ["model.layers.1.mlp.down_proj.weight"]
    record = json.loads((out / "pruning.json").read_text())
    entry = record["params"]["patch"]
    assert record["removed_layers"] == REMOVED and entry["runs"][0]["layers"] == REMOVED
    assert entry["runs"][0]["folded_into"] == 1 and entry["runs"][0]["relative_error"] < 1
    assert entry["calibration"]["n_windows"] == 8 and len(entry["calibration"]["fingerprint"]) == 64
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 4
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    gguf = export_gguf(out, tmp_path / "patched.gguf", dtype="f32")
    back = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    torch.testing.assert_close(logits(back, ids), logits(model, ids), atol=1e-5, rtol=0)

    identity = patch_checkpoint(str(base), pruned, tmp_path / "identity", settings(**{"lambda": float("inf")}),
                                calibration(text_file), progress=False).out_dir
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(identity), ids),
                       logits(AutoModelForCausalLM.from_pretrained(pruned), ids))


def test_bad_input_is_one_line_and_writes_nothing(checkpoints, text_file, tmp_path):
    base, pruned = checkpoints
    other = save_tiny(tmp_path / "other", "llama", n_layers=6, seed=1)
    cases = [
        ((str(other), pruned), {}, "is not the model"),
        ((str(base), tmp_path), {}, "no config.json"),
        ((str(base), base), {}, "no pruning.json"),
        ((str(base), pruned), {"calibration": Calibration((("boolq", 1.0),), 4, 16, 0)}, "held-out evaluation text"),
    ]
    for (src, folder), extra, message in cases:
        with pytest.raises(CoopPruneError, match=message) as err:
            patch_checkpoint(src, folder, tmp_path / "out", settings(), extra.get("calibration", calibration(text_file)),
                             progress=False)
        assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
    (tmp_path / "exists").mkdir()
    with pytest.raises(CoopPruneError, match="output folder exists"):
        patch_checkpoint(str(base), pruned, tmp_path / "exists", settings(), calibration(text_file), progress=False)
    done = patch_checkpoint(str(base), pruned, tmp_path / "once", settings(), calibration(text_file), progress=False)
    with pytest.raises(CoopPruneError, match="already patched"):
        patch_checkpoint(str(base), done.out_dir, tmp_path / "twice", settings(), calibration(text_file), progress=False)


def test_the_cli_patches_and_its_errors_are_one_line(checkpoints, text_file, tmp_path):
    from test_cli import assert_user_error, cli

    base, pruned = checkpoints
    common = ["--calib", str(text_file), "--n-windows", "6", "--window", "16", "-q"]
    done = cli("patch", str(base), str(pruned), str(tmp_path / "p"), "--lambda", "0.5", *common)
    assert done.returncode == 0, done.stderr
    assert "layers 2..3 folded into layer 1" in done.stdout and "lambda 0.5" in done.stdout
    assert json.loads((tmp_path / "p" / "pruning.json").read_text())["params"]["patch"]["lambda"] == 0.5
    assert cli("patch", "--help").returncode == 0
    for args, message in (
        ([str(base), str(pruned), str(tmp_path / "p"), *common], "output folder exists"),
        ([str(base), str(pruned), str(tmp_path / "q"), "--lambda", "-1", *common], "patch: lambda"),
        ([str(base), str(pruned), str(tmp_path / "q"), "--objective", "l1", *common], "patch: objective"),
        ([str(base), str(pruned), str(tmp_path / "q"), "--inputs", "base", *common], "patch: inputs"),
        ([str(base), str(pruned), str(tmp_path / "q"), "--mix", "wikipedia=1", "-q"], "held-out evaluation domain"),
        ([str(base), str(pruned), str(tmp_path / "q"), "--calib", "boolq", "-q"], "held-out evaluation text"),
        ([str(base), str(tmp_path / "nope"), str(tmp_path / "q"), *common], "no config.json"),
        ([str(tmp_path / "nope"), str(pruned), str(tmp_path / "q"), *common], "model path not found"),
    ):
        assert_user_error(cli("patch", *args), message)
    assert not (tmp_path / "q").exists()
    gpt2 = load_model(str(save_tiny(tmp_path / "gpt2", "gpt2", n_layers=4)))
    before = count_parameters(gpt2.model)
    save_pruned(gpt2, tmp_path / "gpt2-pruned", make_record(gpt2, prune_layers(gpt2, [2]), "sleb", before))
    assert_user_error(cli("patch", str(tmp_path / "gpt2"), str(tmp_path / "gpt2-pruned"), str(tmp_path / "q"), *common),
                      "does not support 'gpt2'")
    # a patched checkpoint is exported as itself: pruning the base GGUF "like" it would drop the patch
    assert_user_error(cli("export-gguf", "default", "--like", str(tmp_path / "p"), "--out", str(tmp_path / "x.gguf")),
                      "is patched")


def test_params_validate_the_patch_section():
    assert Params().patch.enabled is False and Params().patch.objective == "lstsq"
    assert Params.from_dict({"patch": {"lambda": 2.0}}).patch.lambda_ == 2.0
    for section, message in (({"lambda": -1.0}, "patch.lambda"), ({"objective": "l1"}, "patch.objective"),
                             ({"inputs": "base"}, "patch.inputs"),
                             ({"n_windows": 0}, "patch.n_windows"), ({"alpha": 1}, "patch.alpha: unknown key")):
        with pytest.raises(CoopPruneError, match=message):
            Params.from_dict({"patch": section})
    with pytest.raises(CoopPruneError, match="too few for the 4 parts"):
        Params.from_dict({"calibration": {"mix": {"books": 1, "science": 1, "howto": 1, "code": 1}},
                          "patch": {"enabled": True, "n_windows": 2}})
    again = Params.from_dict(Params.from_dict({"patch": {"lambda": 3.0}}).model_dump())  # the flow's override path
    assert again.patch.lambda_ == 3.0


def test_the_patch_stage_writes_reuses_and_feeds_healing(checkpoints, text_file, tmp_path):
    import shutil

    from coopprune import pipeline

    base, pruned = checkpoints
    run = tmp_path / "run"
    shutil.copytree(pruned, run / "pruned")
    values = {"model": {"source": str(base)}, "calibration": {"source": str(text_file), "window": 16},
              "evaluation": {"text": str(write_text(tmp_path / "eval.jsonl", 30)), "window": 16, "max_windows": 4,
                             "domains": []},
              "benchmark": {"tasks": [], "speed": False}, "output_dir": str(run)}
    off = run_stage(Params.from_dict(values), "patch")
    assert off == {"enabled": False} and json.loads((run / "patch_metrics.json").read_text()) == {"patched": False}
    assert pipeline.heal_source(Params.from_dict(values)) == run / "pruned"

    params = Params.from_dict({**values, "patch": {"enabled": True, "n_windows": 6},
                               "heal": {"enabled": True, "data": str(text_file), "steps": 1, "seq_len": 16,
                                        "batch_size": 2, "grad_accum": 1}})
    result = run_stage(params, "patch")
    metrics = json.loads((run / "patch_metrics.json").read_text())
    assert result["runs"] == [REMOVED] and metrics["patched"] is True and "patched_perplexity" in metrics
    entry = json.loads((run / "patched" / "pruning.json").read_text())["params"]["patch"]
    assert entry["calibration"]["n_windows"] == 6 and entry["release_key"]["removed"] == REMOVED
    stamp = (run / "patched" / "model.safetensors").stat().st_mtime_ns
    pipeline.patch_release(params)  # the same settings: nothing is fitted again
    assert (run / "patched" / "model.safetensors").stat().st_mtime_ns == stamp

    healed = pipeline.heal_release(params, progress=False)
    record = json.loads((Path(healed["path"]) / "pruning.json").read_text())
    assert record["params"]["patch"]["key"] == entry["key"]  # healed from the patched checkpoint
    exported = pipeline.export_release(params, run / "patched")
    assert Path(exported["path"]).parent.name == "gguf-patched" and "patched checkpoint" in exported["how"]
