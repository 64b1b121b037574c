"""The CLI end to end on tiny checkpoints, and every bad input: one line, exit 2, nothing written."""

import io
import json
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from unittest import mock

import pytest
import torch
from transformers import AutoModelForCausalLM, BertConfig

from coopprune.cli import main
from tiny import N_LAYERS


def cli_subprocess(*args: str) -> subprocess.CompletedProcess:
    """The real entry point, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "coopprune.cli", *args], capture_output=True, text=True, timeout=300)


def cli(*args: str) -> subprocess.CompletedProcess:
    """Same entry point (``main``) in-process: the per-process import of torch costs seconds."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with mock.patch.object(sys, "argv", ["coopprune", *args]), redirect_stdout(out), redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def assert_user_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and pattern in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def prune_args(model, out, *extra):
    return ["prune", str(model), "--out", str(out), "--n-windows", "4", "--window", "24", "-q", *extra]


def test_prune_then_eval(tiny_checkpoint, text_file, tmp_path):
    out = tmp_path / "pruned"
    proc = cli_subprocess(*prune_args(tiny_checkpoint, out, "--remove", "2", "--method", "ppl", "--calib", str(text_file)))
    assert proc.returncode == 0, proc.stderr
    assert "7 real forward passes" in proc.stdout
    record = json.loads((out / "pruning.json").read_text())
    assert record["method"] == "ppl" and len(record["removed_layers"]) == 2
    assert record["layers_after"] == N_LAYERS - 2 and record["parameters_after"] < record["parameters_before"]
    assert {"coopprune", "torch", "transformers"} <= set(record["versions"])
    assert len(record["base_fingerprint"]) == 64 and record["params"]["calibration"]["window"] == 24
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == N_LAYERS - 2
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json", "pruning.json"}

    proc = cli("eval", str(out), "--ppl-text", str(text_file), "--window", "32", "-q", "--json", str(tmp_path / "e.json"))
    assert proc.returncode == 0, proc.stderr
    assert "32-token windows" in proc.stdout
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["window"] == 32 and result["perplexity"] > 1


def test_ratio_and_protected_layers(tiny_checkpoint, text_file, tmp_path):
    out = tmp_path / "p"
    proc = cli(*prune_args(tiny_checkpoint, out, "--ratio", "0.5", "--protect", "0,-1", "--calib", str(text_file)))
    assert proc.returncode == 0, proc.stderr
    removed = json.loads((out / "pruning.json").read_text())["removed_layers"]
    assert len(removed) == 3 and 0 not in removed and N_LAYERS - 1 not in removed


def test_same_inputs_same_choice(tiny_checkpoint, text_file, tmp_path):
    """The paper's method end to end from the CLI: same params, same masks, same values, same layers."""
    choices = []
    for name in "ab":
        args = prune_args(tiny_checkpoint, tmp_path / name, "-k", "3", "--calib", str(text_file), "--bootstrap", "2")
        assert cli(*args).returncode == 0
        record = json.loads((tmp_path / name / "pruning.json").read_text())
        choices.append((record["removed_layers"], record["scores"]["rounds"][0]["values"]))
        assert {"contributions.csv", "contributions.png", "surrogate"} <= {p.name for p in (tmp_path / name).iterdir()}
    assert choices[0] == choices[1]


def test_window_2048_convention_is_checked(tiny_checkpoint, text_file):
    proc = cli("eval", str(tiny_checkpoint), "--ppl-text", str(text_file), "--window", "2048", "-q")
    assert_user_error(proc, "2048")


@pytest.fixture
def unsupported(tmp_path):
    path = tmp_path / "bert"
    path.mkdir()
    (path / "config.json").write_text(BertConfig().to_json_string())
    return path


@pytest.fixture
def bad_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + b"\x00" * 64)
    return path


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("missing_model", "model path not found"),
        ("unsupported", "unsupported architecture 'bert'"),
        ("k_too_large", f"in [1, {N_LAYERS - 1}], got {N_LAYERS}"),
        ("k_zero", "got 0"),
        ("ratio_one", "ratio must be in (0, 1)"),
        ("ratio_zero", "ratio must be in (0, 1)"),
        ("protected_impossible", "protected layers"),
        ("empty_calib", "calibration text is empty"),
        ("short_calib", "calibration text too short"),
        ("missing_calib", "text source not found"),
        ("existing_out", "output folder exists"),
        ("bad_gguf", "model.gguf"),
        ("unknown_method", "unknown method 'magic'"),
        ("k_and_ratio", "exactly one"),
        ("no_cuda", "no CUDA device"),
        ("unknown_device", "unknown device 'tpu'"),
        ("search_budget", "cannot buy one round"),
        ("search_windows", "search_windows must be at least 1"),
        ("unknown_option", "no option 'per_rnd'"),
        ("bad_option", "NAME=VALUE"),
    ],
)
def test_bad_input(case, pattern, tiny_checkpoint, text_file, tmp_path, unsupported, bad_gguf):
    out = tmp_path / "out"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("too short")
    args = {
        "missing_model": prune_args(tmp_path / "nope", out, "-k", "1"),
        "unsupported": prune_args(unsupported, out, "-k", "1"),
        "k_too_large": prune_args(tiny_checkpoint, out, "-k", str(N_LAYERS)),
        "k_zero": prune_args(tiny_checkpoint, out, "-k", "0"),
        "ratio_one": prune_args(tiny_checkpoint, out, "--ratio", "1.0"),
        "ratio_zero": prune_args(tiny_checkpoint, out, "--ratio", "0"),
        "protected_impossible": prune_args(tiny_checkpoint, out, "-k", "3", "--protect", "0,1,2,3"),
        "empty_calib": prune_args(tiny_checkpoint, out, "-k", "1", "--calib", str(empty)),
        "short_calib": prune_args(tiny_checkpoint, out, "-k", "1", "--calib", str(short)),
        "missing_calib": prune_args(tiny_checkpoint, out, "-k", "1", "--calib", str(tmp_path / "none.txt")),
        "existing_out": prune_args(tiny_checkpoint, tmp_path, "-k", "1", "--calib", str(text_file)),
        "bad_gguf": prune_args(bad_gguf, out, "-k", "1", "--calib", str(text_file)),
        "unknown_method": prune_args(tiny_checkpoint, out, "-k", "1", "--method", "magic"),
        "k_and_ratio": prune_args(tiny_checkpoint, out, "-k", "1", "--ratio", "0.5"),
        "no_cuda": prune_args(tiny_checkpoint, out, "-k", "1", "--calib", str(text_file), "--device", "cuda"),
        "unknown_device": prune_args(tiny_checkpoint, out, "-k", "1", "--calib", str(text_file), "--device", "tpu"),
        "search_budget": prune_args(tiny_checkpoint, out, "-k", "1", "--calib", str(text_file), "--budget", "3"),
        "search_windows": prune_args(tiny_checkpoint, out, "-k", "1", "--calib", str(text_file), "-o", "search_windows=0"),
        "unknown_option": prune_args(tiny_checkpoint, out, "-k", "1", "--calib", str(text_file), "-o", "per_rnd=3"),
        "bad_option": prune_args(tiny_checkpoint, out, "-k", "1", "--calib", str(text_file), "-o", "per_round"),
    }[case]
    if case == "no_cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    proc = cli(*args)
    assert_user_error(proc, pattern)
    assert not out.exists(), "nothing half-written"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_corrupt_mask_dataset_through_cli(tiny_checkpoint, text_file, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        f"model: {{source: {tiny_checkpoint}}}\n"
        f"calibration: {{source: {text_file}, n_windows: 4, window: 24}}\n"
        "sampling: {remove: [1, 2], per_stratum: 3, shard_size: 2}\n"
        f"output_dir: {tmp_path / 'run'}\n"
    )
    proc = cli("sweep", "--params", str(params), "-q")
    assert proc.returncode == 0, proc.stderr
    assert "6 masks" in proc.stdout
    next((tmp_path / "run" / "masks").glob("*.parquet")).write_bytes(b"garbage")
    assert_user_error(cli("sweep", "--params", str(params), "-q"), "corrupt mask dataset shard")


@pytest.mark.parametrize(
    "yaml_text, pattern",
    [
        ("sampling: {per_stage: 3}\n", "sampling.per_stage: unknown key"),
        ("calibration: {n_windows: many}\n", "calibration.n_windows"),
        ("game: {utility: accuracy}\n", "game.utility"),
        ("sampling: {remove: [1], remove_ratios: [0.1]}\n", "either remove or remove_ratios"),
        ("prune: {remove: 3, ratio: 0.1}\n", "exactly one of remove or ratio"),
        ("model: {device: gpu}\n", "model.device"),
        ("[1, 2\n", "not valid YAML"),
    ],
)
def test_invalid_params_rejected_before_loading(yaml_text, pattern, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("model: {source: /does/not/exist}\n" + yaml_text if not yaml_text.startswith("[") else yaml_text)
    assert_user_error(cli("sweep", "--params", str(params)), pattern)


def test_user_error_from_the_real_entry_point(tmp_path):
    assert_user_error(cli_subprocess(*prune_args(tmp_path / "nope", tmp_path / "o", "-k", "1")), "model path not found")


def test_help_everywhere():
    for command in ([], ["prune"], ["eval"], ["sweep"], ["run"], ["fetch-default"]):
        proc = cli(*command, "--help")
        assert proc.returncode == 0 and "Usage" in proc.stdout
