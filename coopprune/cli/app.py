"""The ``coopprune`` Typer app, the options several commands share (``Overwrite``, ``Quiet``,
``Device``, ``TrustRemoteCode``) and the parsers of the arguments that are lists or mappings in text
(``--protect``/``--remove`` layers, ``--mix``, ``--option``). The command modules register on ``app``."""

from __future__ import annotations

import sys
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
Device = Annotated[str, typer.Option(help="Where the forward passes run: cpu, cuda, cuda:N, mps or auto.")]
TrustRemoteCode = Annotated[
    bool, typer.Option("--trust-remote-code", help="Allow model code from the hub (off: checkpoints are data).")
]


def _method_help() -> str:
    """``--method``'s help: every registered method and its summary. The registry imports torch
    (seconds), so it is read only for ``coopprune prune --help``, the one place the line shows."""
    if sys.argv[1:2] != ["prune"] or "--help" not in sys.argv:
        return "A registered method; `coopprune prune --help` lists them."
    from coopprune.estimators import ESTIMATORS

    return "; ".join(f"{name}: {ESTIMATORS[name].summary}" for name in sorted(ESTIMATORS)) + "."


def _parse_layers(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CoopPruneError(f"layers are comma-separated indices (e.g. 3,5,7), got '{text}'") from None


def _parse_mix(text: str) -> dict[str, float]:
    """``books=1,code=2`` (a weight of 1 where none is given) as a calibration mix."""
    mix: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, weight = part.rpartition("=") if "=" in part else (part, "", "1")
        try:
            mix[name.strip()] = float(weight)
        except ValueError:
            raise CoopPruneError(f"--mix: weight of '{name.strip()}' is not a number: {weight!r}") from None
    return mix


def _parse_options(items: list[str] | None) -> dict[str, object]:
    """``NAME=VALUE`` pairs; values are read as YAML scalars (8, 0.5, true, null), else kept as text."""
    import yaml

    options: dict[str, object] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise CoopPruneError(f"--option takes NAME=VALUE, got '{item}'")
        options[name.strip()] = yaml.safe_load(value)
    return options
