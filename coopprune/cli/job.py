"""``coopprune sweep``, ``run`` and ``promote``: the job on params.yaml (its mask sweep, the whole
run) and the promotion of the model version a run registered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from coopprune.cli.app import Quiet, app


@app.command()
def sweep(
    params: Annotated[Path, typer.Option(help="Parameters file.")] = Path("params.yaml"),
    out: Annotated[Path | None, typer.Option(help="Mask dataset folder (default: <output_dir>/masks).")] = None,
    quiet: Quiet = False,
) -> None:
    """Evaluate the stratified mask plan into a mask-utility dataset (resumes where it stopped)."""
    from coopprune.config import Params
    from coopprune.pipeline import store

    dataset = store.sweep(Params.load(params), out, progress=not quiet)
    typer.echo(f"{len(dataset)} masks in {dataset.path}")


@app.command()
def run(
    params: Annotated[Path, typer.Option(help="Parameters file.")] = Path("params.yaml"),
    quiet: Quiet = False,
) -> None:
    """The main job on params.yaml: sweep masks, score layers, prune, compare perplexity."""
    from coopprune.config import Params
    from coopprune.pipeline import runner

    summary = runner.run(Params.load(params), progress=not quiet)
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def promote(
    model_name: Annotated[str, typer.Argument(help="Registered model, e.g. SmolLM2-135M-Instruct-pruned.")],
    rule: Annotated[
        str,
        typer.Option(help="zero_shot_mean (higher mean accuracy at equal or fewer parameters), perplexity (lower) or domain_mean_perplexity (lower mean over the held-out domains)."),
    ] = "zero_shot_mean",
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)."),
    ] = None,
) -> None:
    """Move the MLflow alias `champion` to the `candidate` version if it beats the champion on RULE."""
    from coopprune.tracking import registry

    decision = registry.promote(model_name, rule, tracking=tracking_uri or registry.tracking_uri(Path.cwd()))
    if decision.promoted:
        typer.echo(f"promoted {model_name} v{decision.candidate} to champion: {decision.reason}")
    else:
        champion = f"v{decision.champion}" if decision.champion else "none"
        typer.echo(f"not promoted: {model_name} v{decision.candidate} (champion stays {champion}): {decision.reason}")
