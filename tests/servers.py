"""Real servers for integration tests (Prefect, MLflow, moto's S3), each in its own process group
on loopback, so stopping one stops its children too, after a failure as well."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Until ``url`` answers 200; a process that died first fails at once with its log's tail."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited {proc.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s:\n{tail(log)}")


def tail(log: Path | None, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log is not None and log.is_file() else ""


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM to the whole group, then SIGKILL; never leaves a child behind."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived the leader
    proc.wait()


@contextlib.contextmanager
def process(command: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """A process in a session of its own, output to ``log``, stopped with its group at exit."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)


@contextlib.contextmanager
def prefect_server(home: Path, env: dict[str, str]) -> Iterator[str]:
    """`prefect server start` (SQLite under ``home``) on a free loopback port; yields its API URL."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {**env, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = home / "server.log"
    with process([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, log) as proc:
        wait_http(f"http://127.0.0.1:{port}/api/health", 180, proc, log)
        yield f"http://127.0.0.1:{port}/api"
