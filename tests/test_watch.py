"""watch_releases on a real Prefect server, SQLite MLflow and moto's S3 server: a model dropped into
a watched folder or S3 prefix is pruned and registered exactly once; the champion then loads."""

from __future__ import annotations

from pathlib import Path

import yaml

from tiny import save_tiny, write_text  # noqa: E402


def write_params(tmp_path: Path, text_file: Path) -> Path:
    params = {
        "calibration": {"source": str(text_file), "n_windows": 4, "window": 16, "batch_size": 4},
        "sampling": {"remove": [1, 2], "per_stratum": 5, "shard_size": 5},
        "surrogate": {"epochs": 40},
        "prune": {"method": "semivalue", "remove": 2, "bootstrap": 0},
        "evaluation": {"text": str(write_text(tmp_path / "eval.jsonl", 40)), "window": 16, "max_windows": 4},
        "benchmark": {"tasks": [], "speed": False},
        "registry": {"rule": "perplexity", "model_name": "tiny-llama-pruned"},
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_new_releases_are_pruned_and_registered_once(prefect_server, tmp_path, text_file, monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer
    from transformers import AutoModelForCausalLM

    from flows.watch_releases import watch_releases
    from coopprune.tracking.registry import load_registered

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = write_params(tmp_path, text_file)
    watched = tmp_path / "watched"
    watched.mkdir()
    assert watch_releases([str(watched)], str(params)) == []

    save_tiny(watched / "tiny-v1", n_layers=6, seed=0)
    first = watch_releases([str(watched)], str(params))
    assert [r["pruned"] for r in first] == [True]
    assert first[0]["registry"]["version"] == "1"
    again = watch_releases([str(watched)], str(params))
    assert [r["pruned"] for r in again] == [False]

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}"}.items():
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="releases")
        v2 = save_tiny(tmp_path / "upload" / "tiny-v2", n_layers=6, seed=1)
        for f in v2.iterdir():
            s3.upload_file(str(f), "releases", f"models/tiny-v2/{f.name}")
        sources = [str(watched), "s3://releases/models"]
        second = watch_releases(sources, str(params))
        assert [(r["release"], r["pruned"]) for r in second] == [("tiny-v1", False), ("tiny-v2", True)]
        assert second[1]["registry"]["version"] == "2"
        assert [r["pruned"] for r in watch_releases(sources, str(params))] == [False, False]
    finally:
        server.stop()

    champion = load_registered("models:/tiny-llama-pruned@champion", tmp_path / "champion")
    model = AutoModelForCausalLM.from_pretrained(champion)
    assert model.config.num_hidden_layers == 4
