"""``coopprune zeroshot``: a checkpoint's zero-shot accuracy through lm-eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coopprune.cli.app import TrustRemoteCode, app


@app.command()
def zeroshot(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint folder, .gguf file, hub id, or 'default'.")],
    tasks: Annotated[
        str,
        typer.Option(help="Comma-separated: piqa, hellaswag, winogrande, arc_easy, arc_challenge, boolq, openbookqa."),
    ] = "piqa,hellaswag,winogrande,arc_easy,arc_challenge,boolq,openbookqa",
    limit: Annotated[int | None, typer.Option(help="Seeded subset of this many items per task (default: all).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the item subset.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Requests per forward pass.")] = 8,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the result here as JSON.")] = None,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Zero-shot accuracy through lm-eval on the bundled benchmark data (offline)."""
    from coopprune.atomic import write_json
    from coopprune.zeroshot import zero_shot_checkpoint

    result = zero_shot_checkpoint(
        checkpoint, tasks.split(","), limit, seed, batch_size, trust_remote_code=trust_remote_code
    )
    if out:
        write_json(out, {"checkpoint": checkpoint, **result.to_dict()})
    typer.echo(result.summary())
