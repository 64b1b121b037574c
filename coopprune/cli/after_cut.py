"""``coopprune quantize``, ``heal``, ``patch`` and ``export-gguf``: what is done to a checkpoint
after the cut (int8 weights, LoRA healing, a training-free linear patch, a GGUF for llama.cpp)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from coopprune.cli.app import Device, Overwrite, Quiet, TrustRemoteCode, _parse_layers, _parse_mix, app
from coopprune.errors import CoopPruneError


@app.command()
def quantize(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint folder (pruned or not), hub id or 'default'.")],
    out: Annotated[Path, typer.Option(help="Where to write the int8 checkpoint.")],
    all_linear: Annotated[
        bool, typer.Option(help="Quantize the LM head and MLP output projections too (measured: far worse perplexity).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    trust_remote_code: Annotated[bool, typer.Option(help="Run the model repository's own code.")] = False,
) -> None:
    """Int8 dynamic quantization of the linear layers (CPU), the LM head and MLP output projections
    kept in float unless --all-linear; loads anywhere a checkpoint does."""
    from coopprune.models import load_model
    from coopprune.prune import check_output_dir, count_parameters
    from coopprune.quantize import KEEP_FLOAT, quantize_int8, save_quantized

    check_output_dir(out, overwrite)
    loaded = load_model(checkpoint, trust_remote_code=trust_remote_code)
    parameters = count_parameters(loaded.model)
    quantize_int8(loaded.model, keep_float=() if all_linear else KEEP_FLOAT)
    save_quantized(loaded.model, loaded.tokenizer, out, overwrite=overwrite)
    typer.echo(f"int8 checkpoint of {checkpoint} ({parameters / 1e6:.1f} M parameters) written to {out}")


@app.command()
def heal(
    checkpoint: Annotated[Path, typer.Argument(help="A pruned checkpoint folder.")],
    out: Annotated[Path, typer.Option(help="Where to write the healed (merged) checkpoint.")],
    data: Annotated[str, typer.Option(help="Healing text: any source --calib takes (default: bundled LAMBADA, "
                                            "disjoint from every evaluation set).")] = "lambada",
    loss: Annotated[str, typer.Option(help="lm (the paper) or distill (KL to the base model's next-token distribution).")] = "lm",
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 200,
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Sequences per micro-batch.")] = 4,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per step.")] = 2,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (the paper: 1e-4).")] = 1e-4,
    rank: Annotated[int, typer.Option(help="LoRA rank (the paper: 8).")] = 8,
    alpha: Annotated[int, typer.Option(help="LoRA alpha (the paper: 16).")] = 16,
    teacher: Annotated[str | None, typer.Option(help="distill: the teacher (default: the base model in pruning.json).")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the adapters' init, the batches and dropout.")] = 0,
    save_every: Annotated[int, typer.Option(help="Steps between resumable saves (<out>.heal-state/).")] = 50,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    quiet: Quiet = False,
) -> None:
    """Heal a pruned model: LoRA adapters on every linear projection of the kept layers, merged back
    into a plain checkpoint with healing.json; an interrupted run resumes from its last save."""
    from coopprune.config import HealParams
    from coopprune.heal import heal as run_heal

    settings = HealParams.from_dict(
        {"data": data, "steps": steps, "seq_len": seq_len, "batch_size": batch_size, "grad_accum": grad_accum, "lr": lr,
         "rank": rank, "alpha": alpha, "loss": loss, "teacher": teacher, "seed": seed, "save_every": save_every}, "heal")
    result = run_heal(checkpoint, out, settings, overwrite=overwrite, progress=not quiet)
    r = result.record
    typer.echo(f"healed {checkpoint} -> {out}: {r['steps']} steps, {r['tokens']} tokens, loss "
               f"{r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}, {r['minutes']:.1f} min")


@app.command()
def patch(
    base_model: Annotated[str, typer.Argument(help="The unpruned model the checkpoint was pruned from (hub id, folder, "
                                                   ".gguf or 'default').")],
    pruned_dir: Annotated[Path, typer.Argument(help="The pruned checkpoint folder (with pruning.json), not yet healed.")],
    out_dir: Annotated[Path, typer.Argument(help="Where to write the patched checkpoint.")],
    lambda_: Annotated[float | None, typer.Option("--lambda", help="Ridge toward the identity, relative to the MLP "
                                                  "output's scale (0: ReplaceMe's plain least squares; inf: no patch). "
                                                  "Default: the measured one in coopprune/config.py.")] = None,
    objective: Annotated[str, typer.Option(help="lstsq (closed form) or cosine (mean cosine distance, L-BFGS).")] = "lstsq",
    inputs: Annotated[str, typer.Option(help="Where each run's inputs come from: unpruned (ReplaceMe) or pruned "
                                             "(the model with the earlier runs already cut and patched).")] = "unpruned",
    calib: Annotated[str, typer.Option("--calib", help="Calibration text: file, folder, hf:NAME:SPLIT, lambada.")] = "lambada",
    mix: Annotated[str | None, typer.Option(help="Fit on a mixture instead of --calib: NAME=WEIGHT,... of bundled "
                                            "calibration domains (books, science, howto, code) or sources.")] = None,
    n_windows: Annotated[int, typer.Option(help="Calibration windows the fit reads.")] = 64,
    window: Annotated[int, typer.Option(help="Tokens per calibration window.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of the calibration windows.")] = 0,
    steps: Annotated[int, typer.Option(help="cosine: L-BFGS iterations.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 8,
    dtype: Annotated[str, typer.Option(help="dtype the base model is loaded in (as it was pruned).")] = "float32",
    device: Device = "cpu",
    overwrite: Overwrite = False,
    trust_remote_code: TrustRemoteCode = False,
    quiet: Quiet = False,
) -> None:
    """Patch a pruned checkpoint without training: each run of removed layers becomes a linear map
    fitted on calibration text and folded into the preceding layer's down_proj (ReplaceMe); the
    result is a plain checkpoint whose pruning.json gains a patch entry."""
    import warnings

    from coopprune.config import CalibrationParams, PatchParams
    from coopprune.mixture import Calibration
    from coopprune.patch_job import patch_checkpoint

    settings = PatchParams.from_dict({"objective": objective, "inputs": inputs, "n_windows": n_windows, "steps": steps,
                                      **({} if lambda_ is None else {"lambda": lambda_})}, "patch")
    calibration = Calibration.from_params(CalibrationParams.from_dict(
        {**({"mix": _parse_mix(mix)} if mix else {"source": calib}), "n_windows": n_windows, "window": window,
         "seed": seed}, "calibration"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = patch_checkpoint(base_model, pruned_dir, out_dir, settings, calibration, overwrite=overwrite,
                                  progress=not quiet, device=device, dtype=dtype, batch_size=batch_size,
                                  trust_remote_code=trust_remote_code)
    for warning in caught:
        if "unpatched" in str(warning.message):
            typer.echo(f"warning: {warning.message}", err=True)
    for run in result.record["runs"]:
        if run.get("folded_into") is not None:
            typer.echo(f"layers {run['layers'][0]}..{run['layers'][-1]} folded into layer {run['folded_into']}: "
                       f"residual error x{run['relative_error']:.3f}, cosine {run['cosine_before']:.4f} -> "
                       f"{run['cosine_after']:.4f}")
    typer.echo(f"patched {pruned_dir} -> {out_dir} ({settings.objective}, lambda {settings.lambda_:g}, "
               f"{result.record['seconds'] / 60:.1f} min)")


@app.command("export-gguf")
def export_gguf(
    source: Annotated[str, typer.Argument(help=(
        "A pruned (or healed) checkpoint folder to write as GGUF, or a .gguf file to prune directly "
        "('default': the bundled SmolLM2 Q4_1)."))],
    out: Annotated[Path, typer.Option(help="The .gguf file to write.")],
    remove: Annotated[str | None, typer.Option(help="GGUF source: the blocks to drop, e.g. 3,5,7.")] = None,
    like: Annotated[Path | None, typer.Option(help=(
        "GGUF source: drop the layers a pruned checkpoint removed (its pruning.json; its facts travel too)."))] = None,
    dtype: Annotated[str, typer.Option(help=(
        "Checkpoint source: f16 (matrices; norms stay f32), f32, q8_0 or q4_0 (gguf-py's quantizers; "
        "norms f32, q4_0 keeps the output head in q8_0, rows not a multiple of 32 in f16)."))] = "f16",
    vocab_from: Annotated[Path | None, typer.Option(help=(
        "Checkpoint source: copy the tokenizer from this GGUF (default: the base model's GGUF, when it was one)."))] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
) -> None:
    """A GGUF for llama.cpp: prune a GGUF keeping its quantization, or export a checkpoint (f16, f32, q8_0, q4_0).
    The removed layers, base fingerprint and method travel in its metadata (coopprune.*)."""
    from coopprune import gguf_export
    from coopprune.fetch import base_gguf, default_gguf
    from coopprune.gguf_io import block_count
    from coopprune.records import PruningRecord

    gguf_export.check_output(out, overwrite)
    if source == "default" or source.endswith(".gguf"):
        if (remove is None) == (like is None):
            raise CoopPruneError("pruning a GGUF needs exactly one of --remove LAYERS or --like CHECKPOINT")
        facts: dict[str, object] = {}
        if like is not None:
            record = PruningRecord.load(like)
            if "patch" in record.params:  # the GGUF's own blocks would lose the folded transform
                raise CoopPruneError(f"{like} is patched (its down_proj weights changed): export the checkpoint "
                                     f"itself, `coopprune export-gguf {like} --out FILE`")
            facts = gguf_export.record_facts(asdict(record))
            removed = list(facts.pop("removed_layers"))
        else:
            removed = _parse_layers(remove)
        src = default_gguf() if source == "default" else Path(source)
        if like is not None and facts.get("layers_before") != (n := block_count(src)):
            raise CoopPruneError(f"{like} was pruned from a {facts.get('layers_before')}-layer model, {src} has {n} blocks")
        gguf_export.prune_gguf(src, removed, out, facts=facts, overwrite=overwrite)
        typer.echo(f"{src.name} without blocks {sorted(removed)} written to {out} (tensors copied in their own quantization)")
        return
    if remove is not None or like is not None:
        raise CoopPruneError("--remove and --like apply to a GGUF source; a checkpoint already is pruned")
    checkpoint = Path(source)
    if vocab_from is None:
        vocab_from = base_gguf(checkpoint)
    gguf_export.export_gguf(checkpoint, out, dtype=dtype, vocab_from=vocab_from, overwrite=overwrite)
    typer.echo(f"{checkpoint} written to {out} ({dtype}" + (f", tokenizer from {vocab_from.name})" if vocab_from else ")"))
