"""``coopprune stage``: one stage of the job on params.yaml, the step ``dvc repro`` runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from coopprune.cli.app import Quiet, app
from coopprune.errors import CoopPruneError
from coopprune.stages import stage_help


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help=f"The stage: {stage_help()}.")],
    params: Annotated[Path, typer.Option(help="Parameters file.")] = Path("params.yaml"),
    quiet: Quiet = False,
) -> None:
    """Run one stage of the job on params.yaml; `dvc repro` calls these in order."""
    from coopprune.config import Params
    from coopprune.stages import STAGES, run_stage

    if name not in STAGES:  # before the params are read
        raise CoopPruneError(f"unknown stage '{name}'; stages: {', '.join(STAGES)}")
    result = run_stage(Params.load(params), name, progress=not quiet)
    typer.echo(json.dumps(result, indent=2, default=str))
