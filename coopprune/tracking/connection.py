"""Reaching MLflow: the store's URI (``tracking_uri``), a client on it for tracking and registry
(``_mlflow``), and what breaks on the way as one line naming the place: an unreachable tracking
server or a missing SQLite folder (``_mlflow``), a failing S3/HTTP artifact store (``_artifact_store``).

The bottom of ``coopprune.tracking``: it imports none of the package's other modules; ``runs``,
``versions`` and ``promotion`` open their clients through it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from coopprune.errors import CoopPruneError


def tracking_uri(default_dir: str | Path) -> str:
    """``$MLFLOW_TRACKING_URI``, else a SQLite store ``<default_dir>/mlflow.db`` as an absolute path,
    so every thread and process of a run writes to one store whatever its working directory."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{Path(default_dir).expanduser().resolve() / 'mlflow.db'}"


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def _unreachable_reason(exc: BaseException) -> str | None:
    """Why the server could not be reached, or None when it answered (an HTTP error is an answer)."""
    text = str(exc)
    if not ("failed with exception" in text or "failed with timeout exception" in text or
            type(exc).__module__.startswith(("requests", "urllib3"))):
        return None
    lowered = text.lower()
    if "connection refused" in lowered:
        return "connection refused"
    if "timed out" in lowered or "timeout" in lowered:
        return "timed out"
    if "name or service not known" in lowered or "failed to resolve" in lowered:
        return "unknown host"
    return _first_line(exc)


@contextlib.contextmanager
def _mlflow(uri: str) -> Iterator[MlflowClient]:
    """A client on ``uri`` for tracking and registry; an unreachable store is one line naming it."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise CoopPruneError(f"MLflow tracking store {uri}: folder {folder} does not exist")
    try:
        yield MlflowClient(tracking_uri=uri, registry_uri=uri)
    except CoopPruneError:
        raise
    except Exception as exc:
        reason = _unreachable_reason(exc)
        if reason is None:
            raise
        raise CoopPruneError(f"cannot reach the MLflow tracking server at {uri} ({reason})") from exc


@contextlib.contextmanager
def _artifact_store(location: str) -> Iterator[None]:
    """S3/HTTP failures while moving artifacts become one line naming the artifact location."""
    try:
        yield
    except Exception as exc:
        detail = _first_line(exc)
        if isinstance(exc, MlflowException) and "failures occurred while downloading" in detail:
            # MLflow gathers per-file download errors under a header line; keep the first error.
            errors = [line for line in str(exc).splitlines()[1:] if line.strip() and not line.startswith("#####")]
            detail = errors[0].strip()[:200] if errors else detail
        elif not type(exc).__module__.startswith(("botocore", "boto3", "s3transfer", "requests", "urllib3")):
            raise
        raise CoopPruneError(f"cannot use the artifact store at {location}: {detail}") from exc
