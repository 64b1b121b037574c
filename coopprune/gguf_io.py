"""Reading GGUF files: the checks and metadata lookups that fetching and GGUF export share.

:mod:`coopprune.fetch` checks a downloaded GGUF before dequantizing it; :mod:`coopprune.gguf_export`
reads the file it prunes. Writing lives in ``gguf_export``; ``gguf`` (gguf-py) is imported only
when a file is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coopprune.errors import CoopPruneError

#: Prefix of the metadata keys coopprune writes (what was removed, from what, how chosen).
FACTS = "coopprune."


def check_gguf_file(path: str | Path) -> Path:
    """``path`` if it is a file that starts like a GGUF, else a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise CoopPruneError(f"GGUF file not found: {path}")
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise CoopPruneError(f"not a GGUF file (no GGUF magic bytes): {path}")
    return path


def open_gguf(path: str | Path) -> Any:
    """A ``GGUFReader`` over ``path``, or a one-line error for what is not a readable GGUF."""
    from gguf import GGUFReader

    path = check_gguf_file(path)
    try:
        return GGUFReader(path)
    except Exception as exc:  # noqa: BLE001 - gguf raises many types for damaged files
        raise CoopPruneError(f"cannot read GGUF {path}: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None


def gguf_value(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def block_count(path: str | Path) -> int:
    reader = open_gguf(path)
    arch = gguf_value(reader, "general.architecture")
    return int(gguf_value(reader, f"{arch}.block_count"))


def read_facts(path: str | Path) -> dict[str, Any]:
    """The ``coopprune.*`` metadata of a GGUF (what was removed, from what, how chosen)."""
    reader = open_gguf(path)
    return {name[len(FACTS):]: field.contents() for name, field in reader.fields.items() if name.startswith(FACTS)}
