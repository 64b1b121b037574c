"""The registry on a real `mlflow server` (SQLite backend, artifacts proxied to S3 on moto's
server): the flow logs, registers and promotes through it, the model's files land in the
bucket, and `models:/NAME@champion` loads back through the server: as a checkpoint
(`load_registered`), with `mlflow.pyfunc.load_model`, and served by `mlflow models serve`."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest
from servers import BIN, free_port, process, wait_http
from test_flow import eval_text, flow_params  # noqa: F401  (fixture)


@pytest.fixture
def mlflow_server(tmp_path):
    from moto.server import ThreadedMotoServer

    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    s3.start()
    host, s3_port = s3.get_host_and_port()
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    endpoint = f"http://{host}:{s3_port}"
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket="coopprune-models")
    port = free_port()
    env = {**os.environ, **creds, "MLFLOW_S3_ENDPOINT_URL": endpoint, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = tmp_path / "mlflow-server.log"
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
               "--artifacts-destination", "s3://coopprune-models/mlartifacts", "--host", "127.0.0.1", "--port", str(port)]
    try:
        with process(command, env, log) as proc:
            wait_http(f"http://127.0.0.1:{port}/health", 180, proc, log)
            yield f"http://127.0.0.1:{port}", client
    finally:
        s3.stop()


def test_the_flow_registers_through_a_tracking_server_with_s3_artifacts(prefect_server, mlflow_server, tmp_path,
                                                                        tiny_checkpoint, text_file, eval_text,  # noqa: F811
                                                                        monkeypatch):
    from transformers import AutoModelForCausalLM

    from flows.prune_release import run
    from coopprune.tracking.registry import load_registered

    uri, s3 = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)  # the client never needs S3 credentials: the server proxies
    params = flow_params(tmp_path, tiny_checkpoint, text_file, eval_text, benchmark={"speed": False},
                         registry={"enabled": True, "model_name": "tiny-pruned", "rule": "perplexity"})
    summary = run(params)
    assert summary["registry"]["version"] == "1" and summary["registry"]["promotion"]["promoted"]

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="coopprune-models")["Contents"]}
    model = [k for k in keys if "/models/m-" in k]  # the logged model's own artifact location
    assert any(k.endswith("/artifacts/MLmodel") for k in model), sorted(keys)[:20]
    assert any(k.endswith("/artifacts/model/config.json") for k in model)
    assert any(k.endswith(".safetensors") for k in model)

    folder = load_registered("models:/tiny-pruned@champion", tmp_path / "champion")
    assert AutoModelForCausalLM.from_pretrained(folder).config.num_hidden_layers == 4
    assert json.loads((folder / "pruning.json").read_text())["removed_layers"] == summary["pruned"]["removed_layers"]

    import mlflow

    info = mlflow.models.get_model_info("models:/tiny-pruned@champion")
    assert info.signature.inputs.input_types() == [mlflow.types.DataType.string]
    assert {p.name for p in info.signature.params.params} >= {"max_new_tokens", "do_sample"}
    assert json.loads(info.metadata["coopprune.removed_layers"]) == summary["pruned"]["removed_layers"]
    generated = mlflow.pyfunc.load_model("models:/tiny-pruned@champion").predict(["hello"], params={"max_new_tokens": 3})
    assert len(generated) == 1 and isinstance(generated[0], str)

    port = free_port()  # what a user runs to serve the champion; --env-manager local: no virtualenv build
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}:{os.environ['PATH']}"}
    command = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/tiny-pruned@champion", "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "serve.log"
    with process(command, env, log) as proc:
        wait_http(f"http://127.0.0.1:{port}/ping", 180, proc, log)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", headers={"Content-Type": "application/json"},
            data=json.dumps({"inputs": ["hello", "world"], "params": {"max_new_tokens": 3}}).encode())
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
    assert len(predictions) == 2 and all(isinstance(p, str) for p in predictions)
