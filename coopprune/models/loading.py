"""Load a causal LM from a hub id, a local checkpoint folder, or a GGUF file.

Safetensors only and ``trust_remote_code`` off unless asked for: a checkpoint is data, not code.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from coopprune.building import check_tied, one_build_at_a_time
from coopprune.errors import CoopPruneError
from coopprune.models.architectures import Architecture, architecture_for
from coopprune.quantize import is_quantized, load_quantized

DEFAULT_SOURCE = "default"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model with what the rest of coopprune needs to know about it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    architecture: Architecture
    source: str
    fingerprint: str

    @property
    def num_layers(self) -> int:
        return self.architecture.num_layers(self.model)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_source(source: str, revision: str | None = None) -> tuple[str, str | None]:
    """Return ``(folder_or_hub_id, gguf_file)``; GGUF files are materialized once to safetensors."""
    if source == DEFAULT_SOURCE:
        from coopprune.fetch import fetch_default_model

        return str(fetch_default_model()), None
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise CoopPruneError(f"model file not found: {source}")
        from coopprune.fetch import materialize_gguf

        from coopprune.paths import data_home

        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return str(materialize_gguf(path, data_home() / "models" / f"{path.stem}-{key}")), None
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CoopPruneError(f"not a model checkpoint (no config.json): {source}")
        return str(path), None
    if path.exists():
        raise CoopPruneError(f"not a model folder or .gguf file: {source}")
    if source.startswith((".", "/", "~")) or not _HUB_ID.match(source):
        raise CoopPruneError(f"model path not found: {source}")
    return source, None


def load_config(source: str, revision: str | None = None, trust_remote_code: bool = False):
    """Load only the config, so unsupported architectures fail before any weights are read."""
    location, _ = resolve_source(source, revision)
    try:
        return location, AutoConfig.from_pretrained(location, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise CoopPruneError(f"cannot load model config from {source}: {str(exc).splitlines()[0]}") from exc


def load_model(
    source: str = DEFAULT_SOURCE,
    revision: str | None = None,
    trust_remote_code: bool = False,
    dtype: str = "float32",
    device: str = "cpu",
) -> LoadedModel:
    """Load model + tokenizer in eval mode; fp32 by default (faster than bf16 on CPUs).

    ``device``: where the model runs (``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``); the
    fingerprint is taken before the move, so it names the weights wherever they run.
    """
    if dtype not in _DTYPES:
        raise CoopPruneError(f"unknown dtype '{dtype}'; choose one of {', '.join(_DTYPES)}")
    target = resolve_device(device)
    location, config = load_config(source, revision, trust_remote_code)
    architecture = architecture_for(config)
    try:
        with one_build_at_a_time():
            if is_quantized(location):
                model = load_quantized(location, trust_remote_code=trust_remote_code)
            else:
                model = AutoModelForCausalLM.from_pretrained(
                    location,
                    revision=revision,
                    trust_remote_code=trust_remote_code,
                    dtype=_DTYPES[dtype],
                    use_safetensors=True,
                )
        tokenizer = AutoTokenizer.from_pretrained(location, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise CoopPruneError(f"cannot load model from {source}: {str(exc).splitlines()[0]}") from exc
    check_tied(model, source)
    model.eval()
    fingerprint = model_fingerprint(model)
    if target.type != "cpu":
        if is_quantized(location):
            raise CoopPruneError(f"{source} is int8-quantized (PyTorch dynamic quantization): it runs on the CPU only")
        model.to(target)
    return LoadedModel(model, tokenizer, architecture, source, fingerprint)


def resolve_device(device: str) -> torch.device:
    """The torch device for ``device``; ``auto`` is the first CUDA device if there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise CoopPruneError(f"unknown device '{device}'; use cpu, cuda, cuda:N, mps or auto") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise CoopPruneError(f"device '{device}' asked for, but torch sees no CUDA device here")
    if target.type == "cuda" and (target.index or 0) >= torch.cuda.device_count():
        raise CoopPruneError(f"device '{device}' asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    if target.type == "mps" and not torch.backends.mps.is_available():
        raise CoopPruneError(f"device '{device}' asked for, but torch sees no MPS device here")
    if target.type not in ("cpu", "cuda", "mps"):
        raise CoopPruneError(f"unknown device '{device}'; use cpu, cuda, cuda:N, mps or auto")
    return target


def model_fingerprint(model: PreTrainedModel) -> str:
    """sha256 of the config and every weight: what made a result, independent of where it was loaded."""
    config = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        _hash_value(digest, value)
    return digest.hexdigest()


def _hash_value(digest: Any, value: object) -> None:
    """Tensors by their bytes; int8-quantized ones by values, scale and zero point; packed tuples item by item."""
    if isinstance(value, (tuple, list)):
        for item in value:
            _hash_value(digest, item)
    elif isinstance(value, torch.Tensor):
        digest.update(str(value.dtype).encode())
        if value.is_quantized:  # per-channel int8: values, then each row's scale and zero point
            for part in (value.q_per_channel_scales(), value.q_per_channel_zero_points()):
                digest.update(part.contiguous().numpy().tobytes())
            value = value.int_repr()
        digest.update(value.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy())  # no copy
    else:
        digest.update(str(value).encode())
