import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
sys.path.insert(0, str(Path(__file__).parent))
# Every process a test starts inherits this mark; pytest_sessionfinish fails the run if one survives.
SESSION_MARK = "COOPPRUNE_TEST_SESSION"
os.environ[SESSION_MARK] = f"{os.getpid()}-{os.urandom(4).hex()}"

from tiny import save_tiny, write_text  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's model/data cache."""
    monkeypatch.setenv("COOPPRUNE_HOME", str(tmp_path_factory.mktemp("coopprune_home")))
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "llama", "llama", n_layers=6)


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    return write_text(tmp_path_factory.mktemp("text") / "calib.jsonl")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One ephemeral Prefect server (SQLite) for every flow test of the session (~20 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect_home"))
    with prefect_test_harness(server_startup_timeout=120):
        yield


# Helpers multiprocessing starts for this process; they exit with it.
_OWN_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def surviving_processes() -> list:
    """Processes started during this session (flows, servers, watchers, their children) still alive."""
    import psutil

    mark, me, found = os.environ[SESSION_MARK], os.getpid(), []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.pid == me or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(SESSION_MARK) != mark:
                continue
            cmdline = " ".join(proc.info["cmdline"] or [])
            if proc.ppid() == me and any(helper in cmdline for helper in _OWN_HELPERS):
                continue
            found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def pytest_sessionfinish(session, exitstatus):
    """No test may leave a process behind (a SIGKILLed flow's server was once found 40 minutes on)."""
    import psutil

    survivors = surviving_processes()
    if not survivors:
        return
    lines = [f"  pid {p.pid}: {' '.join(p.cmdline())[:200]}" for p in survivors if p.is_running()]
    for proc in survivors:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(survivors, timeout=10)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"{len(survivors)} process(es) started by tests outlived them (now killed):\n" + "\n".join(lines)
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_sep("=", "processes left behind", red=True)
        reporter.write_line(message, red=True)
    else:
        print(message, file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
