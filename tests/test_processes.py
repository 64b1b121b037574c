"""The session-end check (conftest.pytest_sessionfinish) sees every process a test started, an
orphan included, and nothing that was stopped."""

from __future__ import annotations

import subprocess
import sys

from conftest import surviving_processes


def test_a_process_a_test_started_is_seen_until_it_is_stopped():
    # an orphan: the shell that started it exits at once, so it is no child of pytest
    shell = subprocess.run(["bash", "-c", f"{sys.executable} -c 'import time; time.sleep(60)' >/dev/null 2>&1 & echo $!"],
                           capture_output=True, text=True, check=True)
    pid = int(shell.stdout.strip())
    try:
        assert pid in {p.pid for p in surviving_processes()}
    finally:
        subprocess.run(["kill", "-9", str(pid)], check=False)
    import psutil

    psutil.wait_procs([psutil.Process(pid)] if psutil.pid_exists(pid) else [], timeout=10)
    assert pid not in {p.pid for p in surviving_processes()}
