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
