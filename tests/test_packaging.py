"""The package as pip sees it: a wheel built from a copy of the checkout holds the library only
(``coopprune/``, no top-level ``tasks/`` or ``flows/`` to shadow another project's), states the
Python range and the ``pipeline`` extra, and its ``coopprune`` command runs from a fresh virtualenv
outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel of a copy of the checkout (the build's own files stay out of the repository); the
    copy keeps tasks/ and flows/, so leaving them out is the package configuration's doing."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("coopprune", "tasks", "flows"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(out), str(src)])
    (built,) = out.glob("coopprune-*.whl")
    return built


def test_the_wheel_holds_the_library_only_with_its_python_range_and_the_pipeline_extra(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(zf.read(meta_name).decode())
    tops = {n.split("/")[0] for n in names}
    assert tops == {"coopprune", meta_name.split("/")[0]}, tops
    cli = {f"coopprune/cli/{m}.py" for m in ("__init__", "__main__", "app", "cut", "after_cut", "job", "accuracy",
                                             "stage")}
    assert cli | {"coopprune/tracking/__init__.py", "coopprune/tracking/registry.py",
                  "coopprune/tracking/mlflow_model.py", "coopprune/estimators/__init__.py"} <= set(names)
    assert not [n for n in names if n.startswith(("tasks/", "flows/"))]

    assert SpecifierSet(meta["Requires-Python"]) == SpecifierSet(">=3.11,<3.14")
    assert "pipeline" in meta.get_all("Provides-Extra")
    pipeline = {r.split(";")[0].strip() for r in meta.get_all("Requires-Dist") if 'extra == "pipeline"' in r}
    assert {"prefect==3.8.8", "mlflow==3.17.2", "peft==0.21.2", "boto3==1.43.117"} <= pipeline
    assert any(r.startswith("lm-eval[hf]") for r in pipeline) and any(r.startswith("dvc[s3]") for r in pipeline)
    base = {r for r in meta.get_all("Requires-Dist") if "extra ==" not in r}
    assert not [r for r in base if r.split("=")[0].split("[")[0].strip() in ("prefect", "mlflow", "dvc")]


def test_the_installed_command_runs_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", "-q",
         str(wheel)])
    if sys.prefix != sys.base_prefix:
        # Run from a virtualenv (make's .venv): the new one's "system" packages are the base
        # interpreter's, not this one's, where the dependencies are; add this one's after the wheel
        # is installed (plain path entries: the editable checkout's finder is not loaded).
        purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        site = Path(run([str(python), "-c", purelib]).stdout.strip())
        ours = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
        (site / "zz-test-deps.pth").write_text("\n".join(ours) + "\n")
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = run([str(venv / "bin" / "coopprune"), "--help"], cwd=workdir, env=env)
    assert "fetch-default" in done.stdout and "promote" in done.stdout
    where = run([str(python), "-c", "import coopprune, coopprune.tracking; print(coopprune.__file__)"],
                cwd=workdir, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    missing = run([str(python), "-c", "import importlib.util as u; print(u.find_spec('tasks'), u.find_spec('flows'))"],
                  cwd=workdir, env=env)
    assert missing.stdout.split() == ["None", "None"], missing.stdout
