"""Calibration and evaluation text: where it comes from and how it becomes token windows."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from coopprune.errors import CoopPruneError

BUNDLED = ("lambada", "boolq")
DEFAULT_CALIBRATION = "lambada"  # BookCorpus novels, the closest to the paper's calibration set
DEFAULT_EVALUATION = "boolq"  # Wikipedia paragraphs, disjoint from the calibration text
_TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".json", ".arrow")


def load_texts(source: str, text_field: str = "text") -> list[str]:
    """Documents from a bundled name, a file, a folder, or ``hf:NAME[:CONFIG]:SPLIT`` (hub, if reachable)."""
    if source in BUNDLED or source == "default":
        from coopprune.fetch import text_source_path

        return _read_file(text_source_path(DEFAULT_CALIBRATION if source == "default" else source), text_field)
    if source.startswith("hf:"):
        return _read_hub(source[3:], text_field)
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return _read_arrow_folder(path, text_field)
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _TEXT_SUFFIXES)
        if not files:
            raise CoopPruneError(f"no text files ({', '.join(_TEXT_SUFFIXES)}) in folder {source}")
        return [doc for f in files for doc in _read_file(f, text_field)]
    if path.is_file():
        return _read_file(path, text_field)
    raise CoopPruneError(f"text source not found: {source} (a file, a folder, 'hf:NAME:SPLIT', or one of {BUNDLED})")


def _read_file(path: Path, text_field: str) -> list[str]:
    if path.suffix == ".jsonl":
        docs = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    docs.append(json.loads(line)[text_field])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise CoopPruneError(f"{path}:{n}: expected a JSON object with a '{text_field}' field") from None
        return docs
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data if isinstance(data, list) else [data]
        return [r if isinstance(r, str) else r[text_field] for r in rows]
    if path.suffix == ".arrow":
        import pyarrow as pa

        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_stream(source).read_all()
        return _column(table.column_names, lambda c: table.column(c).to_pylist(), text_field, path)
    return [doc for doc in path.read_text(encoding="utf-8").split("\n\n") if doc.strip()]


def _read_arrow_folder(path: Path, text_field: str) -> list[str]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    return _column(ds.column_names, lambda c: ds[c], text_field, path)


def _read_hub(spec: str, text_field: str) -> list[str]:
    import datasets

    parts = spec.split(":")
    name, config, split = parts[0], (parts[1] if len(parts) == 3 else None), parts[-1] if len(parts) > 1 else "train"
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # noqa: BLE001 - hub errors come in many types; all mean "not reachable"
        raise CoopPruneError(f"cannot load dataset hf:{spec}: {str(exc).splitlines()[0]}") from exc
    return _column(ds.column_names, lambda c: ds[c], text_field, spec)


def _column(names: list[str], get, text_field: str, where: object) -> list[str]:
    if text_field not in names:
        raise CoopPruneError(f"{where}: no '{text_field}' column (columns: {', '.join(names)})")
    return [t for t in get(text_field) if t]


@dataclass(frozen=True)
class Windows:
    """Token windows [N, T] and the fingerprint of exactly those tokens."""

    input_ids: torch.Tensor
    fingerprint: str
    groups: tuple[str, ...] | None = None  # the domain of each window, for a mixture

    @property
    def n_windows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    def subset(self, rows: list[int]) -> Windows:
        """Some of the windows, fingerprinted as what they are (a screen's own calibration set)."""
        ids = self.input_ids[rows]
        return Windows(ids, ids_fingerprint(ids), None if self.groups is None else tuple(self.groups[r] for r in rows))


def _tokenize_stream(tokenizer: PreTrainedTokenizerBase, docs: list[str], needed: int | None) -> list[int]:
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for doc in docs:
        stream.extend(tokenizer(doc, add_special_tokens=False)["input_ids"] + sep)
        if needed is not None and len(stream) >= needed:
            break
    return stream


def text_fingerprint(docs: list[str]) -> str:
    """sha256 of the documents as read, before any tokenizer: identifies a text source's content."""
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(doc.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def ids_fingerprint(ids: torch.Tensor) -> str:
    return hashlib.sha256(ids.numpy().astype(np.int64).tobytes() + str(tuple(ids.shape)).encode()).hexdigest()


def calibration_windows(
    tokenizer: PreTrainedTokenizerBase, docs: list[str], n_windows: int = 10, length: int = 128, seed: int = 0
) -> Windows:
    """``n_windows`` random, non-overlapping windows of ``length`` tokens (seeded), as in the paper.

    Documents are shuffled with the seed and tokenized until there are four times as many
    candidate windows as needed, so large corpora are not tokenized in full.
    """
    if n_windows < 1 or length < 2:
        raise CoopPruneError(f"need n_windows >= 1 and window >= 2 tokens (got {n_windows} x {length})")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(docs))
    stream = _tokenize_stream(tokenizer, [docs[i] for i in order], needed=4 * n_windows * length)
    slots = len(stream) // length
    if slots < n_windows:
        raise CoopPruneError(
            f"calibration text too short: {len(stream)} tokens make {slots} windows of {length}, need {n_windows}"
        )
    chosen = np.sort(rng.choice(slots, size=n_windows, replace=False))
    ids = torch.tensor([stream[s * length : (s + 1) * length] for s in chosen], dtype=torch.long)
    return Windows(ids, ids_fingerprint(ids))


def evaluation_windows(
    tokenizer: PreTrainedTokenizerBase, docs: list[str], length: int = 128, max_windows: int | None = None
) -> Windows:
    """Consecutive non-overlapping windows over the documents in order (the perplexity convention)."""
    if length < 2:
        raise CoopPruneError(f"window must be at least 2 tokens, got {length}")
    needed = None if max_windows is None else max_windows * length
    stream = _tokenize_stream(tokenizer, docs, needed)
    slots = len(stream) // length if max_windows is None else min(max_windows, len(stream) // length)
    if slots < 1:
        raise CoopPruneError(f"evaluation text too short: {len(stream)} tokens, need at least {length}")
    ids = torch.tensor(stream[: slots * length], dtype=torch.long).view(slots, length)
    return Windows(ids, ids_fingerprint(ids))


def allocate(weights: list[float], n_windows: int) -> list[int]:
    """Windows per part in proportion to the weights (largest remainder; ties to the earlier part),
    so equal weights give equal tokens."""
    total = sum(weights)
    exact = [n_windows * w / total for w in weights]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))[: n_windows - sum(counts)]:
        counts[i] += 1
    return counts
