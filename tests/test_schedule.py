"""The release watcher as a scheduled deployment on a real `prefect server start`, with SQLite
MLflow and moto's S3 server: a scheduled run prunes and registers each new release exactly once,
the next run does nothing, a release that fails fails its run visibly and is retried by the next;
overlapping watchers never prune one release twice (the registry claim)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from servers import prefect_server, process, tail
from test_watch import write_params
from tiny import save_tiny

ROOT = Path(__file__).parent.parent
MODEL = "tiny-llama-pruned"


def versions(tracking: str) -> list:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking, registry_uri=tracking).search_model_versions(f"name = '{MODEL}'")


def release_counts(tracking: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in versions(tracking):
        fp = v.tags.get("release_fingerprint", "")
        counts[fp] = counts.get(fp, 0) + 1
    return counts


def broken_release(folder: Path, like: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text((like / "config.json").read_text())
    (folder / "model.safetensors").write_bytes(b"not a safetensors file" * 10)
    return folder


class Runs:
    """The deployment's finished runs (completed or failed; ticks cancelled by the limit aside)."""

    def __init__(self, api: str) -> None:
        self.api = api

    @contextlib.contextmanager
    def _client(self):
        """A client on this server, whatever the test process's own Prefect settings are."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api}), get_client(sync_client=True) as client:
            yield client

    def finished(self) -> list:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

        with self._client() as client:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["watch-releases"])))
        done = [r for r in runs if r.state is not None and r.state.type.value in ("COMPLETED", "FAILED")]
        return sorted(done, key=lambda r: r.end_time)

    def wait(self, n: int, timeout: float, log: Path) -> list:
        deadline = time.time() + timeout
        while time.time() < deadline:
            done = self.finished()
            if len(done) >= n:
                return done
            time.sleep(1)
        raise TimeoutError(f"{n} finished runs expected, {len(self.finished())} after {timeout:.0f}s:\n{tail(log)}")

    def logs(self, run, expect: str, timeout: float = 30) -> str:
        """The run's logs once they contain ``expect`` (a run's last logs reach the server in batches)."""
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        deadline, text = time.time() + timeout, ""
        while time.time() < deadline:
            with self._client() as client:
                found = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            text = "\n".join(log.message for log in found)
            if expect in text:
                break
            time.sleep(1)
        return text

    def overlapped(self) -> bool:
        """Whether two finished runs were ever running at the same time."""
        spans = sorted((r.start_time, r.end_time) for r in self.finished() if r.start_time)
        return any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))


@pytest.fixture
def s3(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env
    server.stop()


def test_the_scheduled_watcher_prunes_each_release_once_and_retries_a_failure(tmp_path, text_file, s3):
    import boto3

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = write_params(tmp_path, text_file)
    watched = tmp_path / "watched"
    watched.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PREFECT_LOGGING_LEVEL": "INFO"}
    with prefect_server(tmp_path / "prefect", env) as api:
        served_env = {**env, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "prefect")}
        log = tmp_path / "serve.log"
        v1 = save_tiny(watched / "tiny-v1", n_layers=6, seed=0)
        s3_client = boto3.client("s3")
        s3_client.create_bucket(Bucket="releases")
        v2 = save_tiny(tmp_path / "upload" / "tiny-v2", n_layers=6, seed=1)
        for f in v2.iterdir():
            s3_client.upload_file(str(f), "releases", f"models/tiny-v2/{f.name}")
        command = [sys.executable, "-m", "flows.watch_releases", "--serve", "--interval", "5", "--params", str(params),
                   "--source", str(watched), "--source", "s3://releases/models"]
        with process(command, served_env, log, cwd=ROOT):
            runs = Runs(api)
            first = runs.wait(1, 400, log)[0]
            assert first.state.type.value == "COMPLETED", runs.logs(first, "Finished", 5)
            counts = release_counts(tracking)
            assert sorted(counts.values()) == [1, 1], counts  # v1 and v2, once each

            second = runs.wait(2, 300, log)[1]
            assert second.state.type.value == "COMPLETED"
            assert runs.logs(second, "tiny-v2").count("already pruned") == 2
            assert release_counts(tracking) == counts

            broken_release(watched / "tiny-broken", v1)
            failed = [r for r in runs.wait(4, 400, log) if r.state.type.value == "FAILED"]
            assert len(failed) >= 1
            logs = runs.logs(failed[0], "pruning failed")
            assert "tiny-broken" in logs and "pruning failed" in logs
            assert "failed to prune and will be retried" in (failed[0].state.message or "") + logs
            assert len(failed) == 2 or runs.wait(5, 300, log)[-1].state.type.value == "FAILED"  # tried again
            assert release_counts(tracking) == counts  # nothing registered or marked done for it
            assert not runs.overlapped()  # the deployment's limit of one


def test_a_release_claimed_by_another_run_is_skipped_and_two_watchers_prune_it_once(tmp_path, text_file):
    from coopprune.tracking.registry import claim_release

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = write_params(tmp_path, text_file)
    watched = tmp_path / "watched"
    save_tiny(watched / "tiny-v1", n_layers=6, seed=0)
    from coopprune.releases import local_releases

    release = local_releases(watched)[0]

    def watcher(name: str) -> subprocess.Popen:
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PREFECT_HOME": str(tmp_path / f"prefect-{name}")}
        env.pop("PREFECT_API_URL", None)
        return subprocess.Popen([sys.executable, "-m", "flows.watch_releases", "--params", str(params), "--source", str(watched)],
                                env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    with claim_release(release.fingerprint, owner="test", tracking=tracking) as mine:
        assert mine
        out, err = watcher("held").communicate(timeout=300)
        assert "'claimed_elsewhere': True" in out, err[-2000:]
    assert release_counts(tracking) == {}

    first, second = watcher("a"), watcher("b")
    outputs = [p.communicate(timeout=400) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], [e[-2000:] for _, e in outputs]
    assert release_counts(tracking) == {release.fingerprint: 1}
    assert sum("'pruned': True" in out for out, _ in outputs) == 1


def test_claims_are_exclusive_released_on_failure_and_taken_over_when_stale(tmp_path):
    from coopprune.tracking.registry import claim_release

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    versions_seen: list[bool] = []
    barrier = threading.Barrier(4)
    hold = threading.Event()

    def contender() -> None:
        barrier.wait()
        with claim_release("fp-1", owner=threading.current_thread().name, tracking=tracking) as mine:
            versions_seen.append(mine)
            hold.wait(5)

    threads = [threading.Thread(target=contender) for _ in range(4)]
    for t in threads:
        t.start()
    while len(versions_seen) < 4:
        time.sleep(0.05)
    hold.set()
    for t in threads:
        t.join()
    assert sorted(versions_seen) == [False, False, False, True]

    with pytest.raises(RuntimeError), claim_release("fp-2", owner="a", tracking=tracking) as mine:
        assert mine
        raise RuntimeError("pruning failed")
    with claim_release("fp-2", owner="b", tracking=tracking) as mine:
        assert mine  # the failed holder released it

    with claim_release("fp-3", owner="killed", tracking=tracking) as mine, \
            claim_release("fp-3", owner="late", tracking=tracking, stale_after_s=0) as taken:
        assert mine and taken  # a claim older than stale_after_s is taken over
