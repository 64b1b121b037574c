"""`dvc repro` in a `git clone` of this repository (its committed `.dvc/`, `dvc.yaml` and `dvc.lock`,
no `dvc init`) with tiny params: a second repro does nothing, a surrogate-only change never re-runs
the sweep, metrics and plots show, git sees only what DVC leaves to git, and the mask dataset goes
to an S3 remote (moto's server on loopback) and back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coopprune.stages import STAGES

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent


def dvc(repo: Path, *args: str, env: dict[str, str]) -> str:
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture
def repo(tmp_path, tiny_checkpoint, text_file) -> tuple[Path, dict[str, str]]:
    """A fresh clone of the committed repository whose params.yaml names a tiny model, nothing else."""
    from tiny import write_text

    if not (ROOT / ".git").exists():
        pytest.skip("needs the git repository (a clone of coopprune)")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True, env=env)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"]["source"] = str(tiny_checkpoint)
    params["calibration"].update(source=str(text_file), n_windows=4, window=16, batch_size=4)
    params["sampling"] = {"remove": [1, 2, 3], "per_stratum": 4, "shard_size": 4, "seed": 0}
    params["surrogate"]["epochs"] = 50
    params["prune"].update(remove=2, bootstrap=0)
    params["evaluation"].update(text=str(write_text(tmp_path / "eval.jsonl", 40)), window=16, max_windows=8, domains=[])
    params["benchmark"] = {"tasks": [], "speed": False}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo, env


def test_a_fresh_clone_is_a_dvc_repository_with_a_reference_run(repo):
    repo, env = repo
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {s.name for s in STAGES.values() if s.in_dvc}  # every stage has a reference
    status = dvc(repo, "status", env=env)  # not "you are not inside of a DVC repository"
    assert "changed" in status or "deleted" in status or "modified" in status
    shown = json.loads(dvc(repo, "metrics", "show", "--json", env=env))
    assert "pruned_perplexity" in json.dumps(shown)  # the reference run's metrics are committed


def test_repro_twice_and_a_surrogate_change_skips_the_sweep(repo):
    repo, env = repo
    first = dvc(repo, "repro", env=env)
    for stage in ("data", "sweep", "surrogate", "contributions", "prune", "benchmark"):
        assert f"Running stage '{stage}'" in first
    out = repo / "runs" / "default"
    assert (out / "pruned" / "config.json").is_file() and (out / "plots" / "perplexity_curve.csv").is_file()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    masks_md5 = next(o["md5"] for o in lock["stages"]["sweep"]["outs"])
    assert masks_md5.endswith(".dir")

    second = dvc(repo, "repro", env=env)
    assert "Running stage" not in second
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo,
                             capture_output=True, text=True, check=True).stdout.split("\n")
    tracked_by_dvc = ("masks/", "surrogate/", "contributions/", "search/", "pruned/", "benchmark/")
    assert not [line for line in changed if any(f"runs/default/{d}" in line for d in tracked_by_dvc)], changed

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
        masks = repo / "runs" / "default" / "masks"
        before = sorted(p.name for p in masks.iterdir())
        shutil.rmtree(masks)
        shutil.rmtree(repo / ".dvc" / "cache")
        dvc(repo, "pull", "sweep", env=env)
        assert sorted(p.name for p in masks.iterdir()) == before
        from coopprune.dataset import MaskDataset

        assert len(MaskDataset.open(masks)) == 12
    finally:
        server.stop()


def test_dvc_yaml_lists_the_stage_table():
    """dvc.yaml names exactly the table's DVC stages, each run as `coopprune stage NAME`."""
    from coopprune.stages import STAGES

    stages = yaml.safe_load((Path(__file__).parent.parent / "dvc.yaml").read_text())["stages"]
    assert list(stages) == [s.name for s in STAGES.values() if s.in_dvc]
    for name, stage in stages.items():
        assert stage["cmd"].startswith(f"coopprune stage {name} ")
    for stage in STAGES.values():
        assert callable(stage.function())
