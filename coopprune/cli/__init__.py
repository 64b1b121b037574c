"""``coopprune`` command line: parses arguments and calls ``coopprune.pipeline``; nothing else.

One module per job: ``app`` (the Typer app, the shared options and the argument parsers), then the
commands, which register on ``app`` when imported: ``cut`` (fetch-default, prune, eval), ``after_cut``
(quantize, heal, patch, export-gguf), ``job`` (sweep, run, promote), ``accuracy`` (zeroshot) and
``stage``. Heavy modules (torch, transformers, the pipeline) are imported inside the commands, so the
command line starts fast.
"""

from __future__ import annotations

import sys

import typer

# _method_help is imported from here (the estimator contract's test)
from coopprune.cli.app import _method_help, app  # noqa: F401
from coopprune.errors import CoopPruneError

# `coopprune --help` lists the commands in the order they register: keep these imports in this order.
# isort: off
from coopprune.cli import cut, after_cut, job, accuracy, stage  # noqa: F401
# isort: on


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
