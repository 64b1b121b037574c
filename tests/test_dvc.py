"""`dvc repro` of the real dvc.yaml in a temporary git repo with a tiny model: a second repro does
nothing, a surrogate-only change never re-runs the sweep, metrics and plots show, and the mask
dataset goes to an S3 remote (moto's server on loopback) and back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent


def dvc(repo: Path, *args: str, env: dict[str, str]) -> str:
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture
def repo(tmp_path, tiny_checkpoint, text_file) -> tuple[Path, dict[str, str]]:
    from tiny import write_text

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"]["source"] = str(tiny_checkpoint)
    params["calibration"].update(source=str(text_file), n_windows=4, window=16, batch_size=4)
    params["sampling"] = {"remove": [1, 2, 3], "per_stratum": 4, "shard_size": 4, "seed": 0}
    params["surrogate"]["epochs"] = 50
    params["prune"].update(remove=2, bootstrap=0)
    params["evaluation"].update(text=str(write_text(tmp_path / "eval.jsonl", 40)), window=16, max_windows=8)
    params["benchmark"] = {"tasks": [], "speed": False}
    params["output_dir"] = "runs/tiny"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q", env=env)
    return repo, env


def test_repro_twice_and_a_surrogate_change_skips_the_sweep(repo):
    repo, env = repo
    first = dvc(repo, "repro", env=env)
    for stage in ("data", "sweep", "surrogate", "contributions", "prune", "benchmark"):
        assert f"Running stage '{stage}'" in first
    out = repo / "runs" / "tiny"
    assert (out / "pruned" / "config.json").is_file() and (out / "plots" / "perplexity_curve.csv").is_file()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    masks_md5 = next(o["md5"] for o in lock["stages"]["sweep"]["outs"])
    assert masks_md5.endswith(".dir")

    second = dvc(repo, "repro", env=env)
    assert "Running stage" not in second

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["surrogate"]["epochs"] = 60
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = dvc(repo, "repro", env=env)
    assert "Running stage 'sweep'" not in third and "Running stage 'data'" not in third
    assert all(f"Running stage '{s}'" in third for s in ("surrogate", "contributions", "prune", "benchmark"))

    metrics = json.loads(dvc(repo, "metrics", "show", "--json", env=env))
    flat = json.dumps(metrics)
    assert "pruned_perplexity" in flat and "surrogate_heldout_spearman" in flat
    dvc(repo, "plots", "show", "-o", str(repo / "plots_html"), env=env)
    assert (repo / "plots_html" / "index.html").is_file()


def test_mask_dataset_push_and_pull_through_s3(repo):
    import boto3
    from moto.server import ThreadedMotoServer

    repo, env = repo
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        env = {**env, **creds}
        boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in creds.items() if k != "AWS_DEFAULT_REGION"},
                     region_name="us-east-1").create_bucket(Bucket="coopprune-dvc")
        dvc(repo, "repro", "sweep", env=env)
        dvc(repo, "remote", "add", "-d", "store", "s3://coopprune-dvc/cache", env=env)
        dvc(repo, "remote", "modify", "store", "endpointurl", endpoint, env=env)
        dvc(repo, "push", env=env)
        masks = repo / "runs" / "tiny" / "masks"
        before = sorted(p.name for p in masks.iterdir())
        shutil.rmtree(masks)
        shutil.rmtree(repo / ".dvc" / "cache")
        dvc(repo, "pull", "sweep", env=env)
        assert sorted(p.name for p in masks.iterdir()) == before
        from coopprune.dataset import MaskDataset

        assert len(MaskDataset.open(masks)) == 12
    finally:
        server.stop()
