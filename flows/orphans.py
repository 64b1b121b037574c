"""Stop the ephemeral Prefect servers that killed runs left behind.

Without ``PREFECT_API_URL`` a flow starts a temporary API server as a child process and stops it
at exit; a run killed with SIGKILL (an OOM kill, ``kill -9``, a CI timeout) cannot, and its server
keeps running, reparented, holding memory and a port. The next run does not need it (it starts its
own and shares the SQLite database under ``PREFECT_HOME``), so each entry point reaps, before it
starts, the orphans of its own ``PREFECT_HOME``: ephemeral servers whose parent is no longer a
Python process (every live one was started by the Python client that uses it).
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

_APP = "prefect.server.api.server:create_app"


def _prefect_home() -> str:
    from prefect.settings import get_current_settings

    return str(Path(get_current_settings().home).expanduser().resolve())


def _is_python(proc: psutil.Process | None) -> bool:
    """By the interpreter binary, so that ``pytest`` or ``coopprune`` (shebang scripts) count too."""
    try:
        return proc is not None and "python" in Path(proc.exe()).name.lower()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return False


def orphaned_servers(prefect_home: str | None = None) -> list[psutil.Process]:
    """Ephemeral Prefect servers of ``prefect_home`` (default: this process's) without a live client."""
    home = prefect_home or _prefect_home()
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if _APP not in (proc.info["cmdline"] or []) or proc.pid == os.getpid():
                continue
            env = proc.environ()
            if env.get("PREFECT__SERVER_EPHEMERAL") != "1":
                continue
            if str(Path(env.get("PREFECT_HOME", "~/.prefect")).expanduser().resolve()) != home:
                continue
            if not _is_python(proc.parent()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def reap_orphaned_servers(prefect_home: str | None = None, timeout: float = 5.0) -> int:
    """Terminate (then kill) the orphans; returns how many there were. Skipped with PREFECT_API_URL set."""
    if os.environ.get("PREFECT_API_URL"):
        return 0
    orphans = orphaned_servers(prefect_home)
    for proc in orphans:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(orphans, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=timeout)
    return len(orphans)
