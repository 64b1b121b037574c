"""MLflow tracking and registry on a real SQLite store (and moto's S3): log, register as `candidate`,
promote by rule, load `models:/NAME@champion` back and generate; clear errors; the `promote` CLI."""

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from coopprune.cli import app
from coopprune.errors import CoopPruneError
from coopprune.models import load_model
from coopprune.prune import count_parameters, make_record, prune_layers, save_pruned
from coopprune.tracking import registry
from tiny import N_LAYERS, save_tiny

REMOVED = [1, 4]
ZS = "zero_shot_mean"


@pytest.fixture(scope="session")
def template_db(tmp_path_factory) -> Path:
    """A migrated store, made once: migrating a fresh SQLite DB takes seconds, copying it does not."""
    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def uri(tmp_path, template_db, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(template_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Path:
    """A real pruned checkpoint (weights, tokenizer, pruning.json) of a tiny Llama."""
    root = tmp_path_factory.mktemp("pruned")
    loaded = load_model(str(save_tiny(root / "base")))
    before = count_parameters(loaded.model)
    removed = prune_layers(loaded, REMOVED)

    def reports(folder: Path) -> None:  # what a surrogate method leaves beside the weights
        (folder / "contributions.csv").write_text("round,player,contribution\n0,1,0.01\n")
        (folder / "surrogate").mkdir()
        (folder / "surrogate" / "metrics.json").write_text('{"r2": 0.9}')

    return save_pruned(loaded, root / "pruned", make_record(loaded, removed, "ppl", before), extra=reports)


def publish(uri: str, pruned: Path, name: str, zero_shot: float, ppl: float, **tags) -> str:
    """What the flow does after benchmarking: one run, its checkpoint registered as the candidate."""
    run_id = registry.log_run("coopprune", "prune", {}, {ZS: zero_shot}, {"checkpoint": pruned}, {}, tracking=uri)
    return registry.register_pruned(
        run_id, "checkpoint", name, {ZS: zero_shot, "perplexity": ppl, **tags}, tracking=uri
    )


def generate(path: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("The quick brown fox", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape[1] == ids.input_ids.shape[1] + 6
    assert tokenizer.decode(out[0]).startswith("The quick brown fox")
    return out


def test_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert registry.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert registry.tracking_uri(tmp_path) == "http://mlflow.example:5000"


def test_log_register_candidate(uri, pruned, tmp_path):
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"removed_layers": REMOVED}))
    run_id = registry.log_run(
        "coopprune", "prune-1",
        params={"model": {"source": "default"}, "sampling": {"remove_ratios": [0.1, 0.2]}, "seed": 0},
        metrics={"perplexity": {"base": 10.0, "pruned": 12.5}, ZS: 0.41, "not_run": None},
        artifacts={"checkpoint": pruned, "": summary},
        tags={"stage": "test"},
        tracking=uri,
    )
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "prune-1"
    assert run.data.params == {"model.source": "default", "sampling.remove_ratios": "[0.1, 0.2]", "seed": "0"}
    assert run.data.metrics == {"perplexity.base": 10.0, "perplexity.pruned": 12.5, ZS: 0.41}
    assert run.data.tags["stage"] == "test"
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").resolve().as_uri())  # beside the DB
    assert {f.path for f in client.list_artifacts(run_id)} == {"checkpoint", "summary.json"}
    stored = {Path(f.path).name for f in client.list_artifacts(run_id, "checkpoint")}
    assert stored >= {"config.json", "model.safetensors", "tokenizer.json", "pruning.json", "contributions.csv"}
    surrogate = client.list_artifacts(run_id, "checkpoint/surrogate")
    assert [f.path for f in surrogate] == ["checkpoint/surrogate/metrics.json"]

    name = registry.registered_model_name("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert name == "SmolLM2-135M-Instruct-pruned" == registry.registered_model_name("default")
    assert registry.registered_model_name("/models/smollm2 135m.Q4_1.gguf") == "smollm2-135m.Q4_1-pruned"

    version = registry.register_pruned(run_id, "checkpoint", name, {ZS: 0.41, "perplexity": 12.5}, tracking=uri)
    assert version == "1"
    mv = client.get_model_version_by_alias(name, "candidate")
    record = json.loads((pruned / "pruning.json").read_text())
    assert str(mv.version) == "1" and mv.run_id == run_id and mv.source.endswith(f"/{run_id}/artifacts/checkpoint")
    assert mv.tags == {
        "base_model": record["base_model"], "base_fingerprint": record["base_fingerprint"], "removed_layers": "1,4",
        "method": "ppl", "parameters": str(record["parameters_after"]), ZS: "0.41", "perplexity": "12.5",
    }
    assert registry.already_pruned(name, record["base_fingerprint"], tracking=uri)
    assert not registry.already_pruned(name, "0" * 64, tracking=uri)
    assert not registry.already_pruned("Other-pruned", record["base_fingerprint"], tracking=uri)

    with pytest.raises(CoopPruneError, match="no config.json"):
        registry.register_pruned(run_id, "summary.json", name, {}, tracking=uri)
    with pytest.raises(CoopPruneError, match="artifact to log does not exist"):
        registry.log_run("coopprune", "x", {}, {}, {"checkpoint": tmp_path / "missing"}, {}, tracking=uri)
    with pytest.raises(CoopPruneError, match="metric 'method' is not a number"):
        registry.log_run("coopprune", "x", {}, {"method": "ppl"}, {}, {}, tracking=uri)


def test_promotion_rules(uri, pruned):
    name = "Tiny-pruned"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = lambda: str(client.get_model_version_by_alias(name, "champion").version)  # noqa: E731

    publish(uri, pruned, name, zero_shot=0.40, ppl=20.0)
    first = registry.promote(name, tracking=uri)
    assert first.promoted and first.candidate == "1" and first.champion is None and "first candidate" in first.reason
    again = registry.promote(name, tracking=uri)
    assert not again.promoted and "already the champion" in again.reason

    publish(uri, pruned, name, zero_shot=0.45, ppl=25.0)  # better accuracy, same size
    better = registry.promote(name, tracking=uri)
    assert better.promoted and (better.candidate, better.champion) == ("2", "1") and champion() == "2"

    publish(uri, pruned, name, zero_shot=0.43, ppl=15.0)  # worse accuracy, better perplexity
    worse = registry.promote(name, tracking=uri)
    assert not worse.promoted and champion() == "2"
    assert "0.43 is not higher than champion v2's 0.45" in worse.reason
    tags = client.get_model_version(name, "3").tags
    assert tags["promotion.decision"] == "kept champion" and tags["promotion.reason"] == worse.reason
    assert tags["promotion.rule"] == ZS and tags["promotion.champion_before"] == "2"
    by_ppl = registry.promote(name, "perplexity", tracking=uri)
    assert by_ppl.promoted and champion() == "3" and "15 is lower than champion v2's 25" in by_ppl.reason

    parameters = int(client.get_model_version(name, "3").tags["parameters"])
    publish(uri, pruned, name, zero_shot=0.60, ppl=30.0, parameters=parameters + 1)  # better but larger
    larger = registry.promote(name, tracking=uri)
    assert not larger.promoted and "more parameters" in larger.reason and champion() == "3"

    publish(uri, pruned, name, zero_shot=float("nan"), ppl=10.0)
    unmeasured = registry.promote(name, tracking=uri)
    assert not unmeasured.promoted and "no numeric 'zero_shot_mean' tag" in unmeasured.reason

    history = client.search_runs([client.get_experiment_by_name("promotions").experiment_id])
    assert len(history) == 7
    assert sorted(r.data.tags["promotion.decision"] for r in history).count("promoted") == 3

    with pytest.raises(CoopPruneError, match="unknown promotion rule 'accuracy'"):
        registry.promote(name, "accuracy", tracking=uri)
    with pytest.raises(registry.NotRegistered, match="no registered model 'Missing-pruned'"):
        registry.promote("Missing-pruned", tracking=uri)


def test_load_champion_generates(uri, pruned, tmp_path):
    name = "Tiny-pruned"
    publish(uri, pruned, name, zero_shot=0.5, ppl=9.0)
    assert registry.promote(name, tracking=uri).promoted
    path = registry.load_registered(f"models:/{name}@champion", tmp_path / "download", tracking=uri)
    assert path.is_relative_to(tmp_path / "download")
    assert AutoModelForCausalLM.from_pretrained(path).config.num_hidden_layers == N_LAYERS - len(REMOVED)
    assert torch.equal(generate(path), generate(pruned))
    by_version = registry.load_registered(f"models:/{name}/1/config.json", tmp_path / "v1", tracking=uri)
    assert json.loads(by_version.read_text())["num_hidden_layers"] == N_LAYERS - len(REMOVED)

    with pytest.raises(registry.NotRegistered, match="no 'staging' version"):
        registry.load_registered(f"models:/{name}@staging", tracking=uri)
    with pytest.raises(registry.NotRegistered, match="no version 7"):
        registry.load_registered(f"models:/{name}/7", tracking=uri)
    with pytest.raises(CoopPruneError, match="not a registered model URI"):
        registry.load_registered("runs:/abc/checkpoint", tracking=uri)


def test_s3_artifacts(uri, pruned, tmp_path, monkeypatch):
    """Artifacts in S3 (moto's real HTTP endpoint), tracking in SQLite, as with a remote bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key, value in {
            "MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="coopprune-models")

        run_id = registry.log_run(
            "remote", "prune", {}, {ZS: 0.5}, {"checkpoint": pruned}, {},
            tracking=uri, artifact_location="s3://coopprune-models/mlflow",
        )
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="coopprune-models")["Contents"]}
        assert f"mlflow/{run_id}/artifacts/checkpoint/model.safetensors" in keys
        name = "Tiny-s3-pruned"
        version = registry.register_pruned(run_id, "checkpoint", name, {ZS: 0.5}, tracking=uri)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        assert client.get_model_version(name, version).source.startswith(f"s3://coopprune-models/mlflow/{run_id}/")
        assert registry.promote(name, tracking=uri).promoted
        path = registry.load_registered(f"models:/{name}@champion", tmp_path / "download", tracking=uri)
        assert torch.equal(generate(path), generate(pruned))

        with pytest.raises(CoopPruneError, match="cannot use the artifact store at s3://no-such-bucket/"):
            registry.log_run("gone", "prune", {}, {}, {"checkpoint": pruned}, {}, tracking=uri,
                             artifact_location="s3://no-such-bucket/mlflow")
        failed = client.search_runs([client.get_experiment_by_name("gone").experiment_id])
        assert [r.info.status for r in failed] == ["FAILED"]  # a half-logged run never looks finished
    finally:
        server.stop()


def test_unreachable_server_is_one_line(monkeypatch, tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    url = f"http://127.0.0.1:{port}"
    for call in (
        lambda: registry.log_run("e", "r", {}, {}, {}, {}, tracking=url),
        lambda: registry.promote("Tiny-pruned", tracking=url),
        lambda: registry.already_pruned("Tiny-pruned", "0" * 64, tracking=url),
    ):
        with pytest.raises(CoopPruneError) as err:
            call()
        assert str(err.value) == f"cannot reach the MLflow tracking server at {url} (connection refused)"
    with pytest.raises(CoopPruneError, match="does not exist"):
        registry.promote("Tiny-pruned", tracking=f"sqlite:///{tmp_path}/missing/mlflow.db")


def test_promote_cli(uri, pruned, monkeypatch):
    runner = CliRunner()
    publish(uri, pruned, "Tiny-pruned", zero_shot=0.4, ppl=20.0)
    result = runner.invoke(app, ["promote", "Tiny-pruned", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    expected = "promoted Tiny-pruned v1 to champion: first candidate: no champion yet (zero_shot_mean 0.4)"
    assert result.stdout.strip() == expected

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the default store
    result = runner.invoke(app, ["promote", "Tiny-pruned", "--rule", "perplexity"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("not promoted: Tiny-pruned v1 (champion stays v1): v1 is already the champion")

    from test_cli import cli  # through main(): user errors exit 2 with one line

    result = cli("promote", "Missing-pruned")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: no registered model 'Missing-pruned' at {uri}"]


def test_promotion_by_the_mean_held_out_domain_perplexity(uri, pruned):
    name = "Tiny-pruned"
    publish(uri, pruned, name, zero_shot=0.40, ppl=20.0, domain_mean_perplexity=30.0, perplexity_news=25.0)
    assert registry.promote(name, "domain_mean_perplexity", tracking=uri).promoted
    publish(uri, pruned, name, zero_shot=0.50, ppl=10.0, domain_mean_perplexity=31.0)  # better on one text only
    decision = registry.promote(name, "domain_mean_perplexity", tracking=uri)
    assert not decision.promoted and "domain_mean_perplexity 31 is not lower than champion v1's 30" in decision.reason
    tags = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(name, "1").tags
    assert tags["perplexity_news"] == "25.0"
