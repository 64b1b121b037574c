"""What a person sees in the MLflow UI: the model version page, rendered by headless Chromium.

Starts ``mlflow server`` over the local registry that ``make run`` writes (``sqlite:///mlflow.db``;
``--tracking-uri`` looks at a running server instead), opens the page of ``models:/NAME@ALIAS`` in
Debian's Chromium (``apt-get install chromium``), and checks that the rendered page shows what the
registry holds: every alias of the version, its scores (zero-shot mean, perplexity), the removed
layers, method and base model, its description (the release card's summary), its lineage (the source run, by the name the flow gave it) and the signature's
schema. Saves a screenshot and a table:

    python bench/registry_ui.py [--backend-store-uri sqlite:///mlflow.db] [--model NAME] [--alias champion]
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from servers import BIN, free_port, process, wait_http

RESULTS = Path(__file__).parent / "results"
SCORES = ("zero_shot_mean", "perplexity", "removed_layers", "method", "base_model")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def render(url: str, screenshot: Path | None = None, budget_ms: int = 20000) -> str:
    """The page's visible text once its scripts have run (``--virtual-time-budget`` lets the single-page
    app fetch from the server before the DOM is read)."""
    browser = chromium()
    if browser is None:
        raise SystemExit("no Chromium on this machine: apt-get install chromium")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--virtual-time-budget={budget_ms}", "--window-size=1400,1100"]
    with tempfile.TemporaryDirectory(prefix="coopprune-chromium-") as profile:
        flags.append(f"--user-data-dir={profile}")
        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True)
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.DOTALL)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


def expectations(tracking: str, name: str, alias: str) -> tuple[str, dict[str, str]]:
    """The version behind ``alias`` and what its page must show, read from the registry's API."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking, registry_uri=tracking)
    version = client.get_model_version_by_alias(name, alias)
    run = client.get_run(version.run_id)
    expected = {f"alias @{a}": a for a in client.get_model_version(name, version.version).aliases}
    for key in SCORES:
        if key in version.tags:
            expected[f"tag {key}"] = version.tags[key]
    if version.description:  # the release card's summary paragraph (coopprune/card/wording.py)
        expected["description: the release card's summary"] = version.description[:60]
    expected["lineage: source run"] = run.info.run_name
    if version.source.startswith("models:/"):  # a logged model: the page links it as the source model
        expected["lineage: source (logged) model"] = "Source Model"
    expected["signature schema"] = "Inputs (1)"
    return version.version, expected


def check_version_page(ui: str, name: str, alias: str = "champion", screenshot: Path | None = None) -> list[dict[str, str]]:
    """One row per expectation: what the page must show, and whether it does."""
    version, expected = expectations(ui, name, alias)
    text = render(f"{ui}/#/models/{name}/versions/{version}", screenshot)
    return [{"check": check, "expected": value, "shown": "yes" if value in text else "NO"}
            for check, value in expected.items()]


@contextmanager
def mlflow_ui(backend_store_uri: str, log: Path) -> Iterator[str]:
    """``mlflow server`` over an existing store on a free loopback port."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_store_uri,
               "--host", "127.0.0.1", "--port", str(port)]
    with process(command, env, log) as proc:
        wait_http(f"http://127.0.0.1:{port}/health", 180, proc, log)
        yield f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend-store-uri", default=f"sqlite:///{Path('mlflow.db').resolve()}")
    parser.add_argument("--tracking-uri", help="a running MLflow server (then none is started)")
    parser.add_argument("--model", help="registered model (default: the first one)")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.tracking_uri is None and args.backend_store_uri.startswith("sqlite:///") \
            and not Path(args.backend_store_uri.removeprefix("sqlite:///")).is_file():
        raise SystemExit(f"no registry at {args.backend_store_uri}: run `make run` first, or pass --tracking-uri")
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="coopprune-ui-") as tmp, (
        mlflow_ui(args.backend_store_uri, Path(tmp) / "server.log") if args.tracking_uri is None
        else _given(args.tracking_uri)
    ) as ui:
        name = args.model or MlflowClient(ui, registry_uri=ui).search_registered_models(max_results=1)[0].name
        rows = check_version_page(ui, name, args.alias, args.out / "registry_ui.png")
    lines = [f"Model version page of `models:/{name}@{args.alias}` in headless Chromium ({chromium()}):", "",
             "| check | expected text | shown |", "|---|---|---|"]
    lines += [f"| {r['check']} | {r['expected']} | {r['shown']} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    (args.out / "registry_ui.md").write_text(table + "\n")
    if any(r["shown"] != "yes" for r in rows):
        raise SystemExit("the page does not show everything the registry holds")


@contextmanager
def _given(uri: str) -> Iterator[str]:
    yield uri.rstrip("/")


if __name__ == "__main__":
    main()
