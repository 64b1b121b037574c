"""The library's layering, read from the source with ``ast`` (nothing is imported): ``coopprune/``
never imports the orchestration (``tasks``, ``flows``, Prefect), and only ``coopprune/tracking/``
imports MLflow, which the rest reaches lazily, inside a function (the CLI's ``promote``); the
modules of ``coopprune.pipeline``, of ``coopprune.card``, of ``coopprune.tracking``, of
``coopprune.zeroshot`` and of ``coopprune.cli`` import one another bottom-up only (``PIPELINE_LAYERS``,
``CARD_LAYERS``, ``TRACKING_LAYERS``, ``ZEROSHOT_LAYERS``, ``CLI_LAYERS``), so no cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "coopprune"
TRACKING = LIBRARY / "tracking"
FORBIDDEN = ("tasks", "flows", "prefect")
PIPELINE = LIBRARY / "pipeline"
# coopprune.pipeline's modules, bottom first: each imports only modules before it (no cycles)
PIPELINE_LAYERS = ("inputs", "store", "job", "benchmarking", "release", "dvc_stages", "runner")
# coopprune.card's modules, bottom first, the same rule: the facts, the words, the shared markup, the
# sections, the search section, the page
CARD_LAYERS = ("facts", "wording", "markup", "sections", "search", "page")
# coopprune.tracking's modules, bottom first, the same rule: reaching MLflow, the checkpoint as an MLflow
# model, logging a run, registering versions, promotion, and registry.py's re-exports on top
TRACKING_LAYERS = ("connection", "mlflow_model", "runs", "versions", "promotion", "registry")
# coopprune.zeroshot's modules, bottom first, the same rule: the task table, the items drawn or reserved,
# the subsets and lm-eval configs, the results, and running lm-eval
ZEROSHOT_LAYERS = ("tasks", "items", "data", "results", "run")
# coopprune.cli's modules, bottom first, the same rule: the app with its shared options and parsers, then
# the commands, which import only the app (the package's __init__ imports them in their --help order, and
# __main__, `python -m coopprune.cli`, imports the package)
CLI_LAYERS = ("app", "cut", "after_cut", "job", "accuracy", "stage")


def imports(tree: ast.Module) -> Iterator[tuple[ast.stmt, str]]:
    """Each import statement anywhere in the module (functions included) with each dotted name it
    imports (``from a import b`` gives ``a.b``: ``b`` may be a module)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                yield node, f"{node.module}.{alias.name}"


def top(name: str) -> str:
    return name.split(".")[0]


def sources() -> list[Path]:
    files = sorted(LIBRARY.rglob("*.py"))
    assert len(files) > 20 and TRACKING / "registry.py" in files
    return files


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(LIBRARY.parent)))
def test_the_library_imports_no_orchestration_and_only_tracking_imports_mlflow(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    names = [name for _, name in imports(tree)]
    assert not [n for n in names if top(n) in FORBIDDEN], f"{path} imports the orchestration"
    if not path.is_relative_to(TRACKING):
        assert not [n for n in names if top(n) == "mlflow"], f"{path} imports mlflow outside coopprune/tracking/"
        module_level = [name for node, name in imports(tree) if node in tree.body]
        assert not [n for n in module_level if n.startswith("coopprune.tracking")], (
            f"{path} imports coopprune.tracking at module level: import it where it is used")


def test_the_check_sees_imports_inside_functions():
    tree = ast.parse("import os\ndef f():\n    from flows import orphans\n    import mlflow.artifacts\n"
                     "from coopprune import tracking\n")
    names = sorted(name for _, name in imports(tree))
    assert names == ["coopprune.tracking", "flows.orphans", "mlflow.artifacts", "os"]


def test_params_save_and_load_round_trip(tmp_path):
    from coopprune.config import Params

    params = Params.from_dict({"prune": {"remove": 4, "options": {"game-search": {"proposals": "random"}}},
                               "calibration": {"mix": {"books": 1, "code": 2}}})
    assert Params.load(params.save(tmp_path / "p.yaml")) == params


def package_imports(path: Path, package: str, layers: tuple[str, ...]) -> set[str]:
    """The modules of ``package`` (one of ``layers``) that ``path`` imports (``"__init__"``: the package itself)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level], f"{path}: a relative import"
    found = set()
    for _, name in imports(tree):
        if name == package or name.startswith(f"{package}."):
            part = name.removeprefix(package).removeprefix(".").split(".")[0]
            found.add(part if part in layers else "__init__")
    return found


def pipeline_imports(path: Path) -> set[str]:
    """The modules of ``coopprune.pipeline`` that ``path`` imports (``"__init__"``: the package itself)."""
    return package_imports(path, "coopprune.pipeline", PIPELINE_LAYERS)


def test_the_pipeline_modules_import_only_the_ones_below_them():
    assert sorted(p.stem for p in PIPELINE.glob("*.py")) == sorted(("__init__", *PIPELINE_LAYERS))
    for i, name in enumerate(PIPELINE_LAYERS):
        above = pipeline_imports(PIPELINE / f"{name}.py") - set(PIPELINE_LAYERS[:i])
        assert not above, f"coopprune/pipeline/{name}.py imports {sorted(above)}, not below it"


def test_the_pipeline_check_sees_the_package_and_its_modules(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from coopprune import pipeline\nfrom coopprune.pipeline import job\n"
                    "def f():\n    from coopprune.pipeline.store import sweep\n")
    assert pipeline_imports(path) == {"__init__", "job", "store"}


@pytest.mark.parametrize("package, layers", [("card", CARD_LAYERS), ("tracking", TRACKING_LAYERS),
                                             ("zeroshot", ZEROSHOT_LAYERS), ("cli", CLI_LAYERS)])
def test_a_split_package_imports_only_the_modules_below_each_one(package, layers):
    folder = LIBRARY / package
    entries = ("__init__", "__main__") if package == "cli" else ("__init__",)  # above every layer
    assert sorted(p.stem for p in folder.glob("*.py")) == sorted((*entries, *layers))
    for i, name in enumerate(layers):
        above = package_imports(folder / f"{name}.py", f"coopprune.{package}", layers) - set(layers[:i])
        assert not above, f"coopprune/{package}/{name}.py imports {sorted(above)}, not below it"
