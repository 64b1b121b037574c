"""The pruned checkpoint as an MLflow model in the transformers flavor.

What the registry holds is what MLflow's own tools load: ``mlflow models serve -m
models:/NAME@champion`` and ``mlflow.pyfunc.load_model`` build a text-generation pipeline from it.
The flavor keeps the weights in ``model/`` and the tokenizer in ``components/tokenizer/``; we also put
the tokenizer files and ``pruning.json`` (the reports beside them too) into ``model/``, so that
folder alone is still the plain checkpoint ``from_pretrained`` and ``coopprune`` load.

An int8-quantized checkpoint (PyTorch dynamic quantization, our own layout) is not a transformers
model; it is registered as its plain folder, as before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from coopprune.atomic import atomic_dir
from coopprune.building import one_build_at_a_time
from coopprune.errors import CoopPruneError
from coopprune.records import PruningRecord
from coopprune.quantize import is_quantized

#: The flavor's folder for the weights (``model_binary`` in MLmodel), our checkpoint inside the model.
CHECKPOINT_DIR = "model"
MLMODEL = "MLmodel"
#: What the served model needs; versions are the ones it was saved with.
REQUIREMENTS = ("transformers", "torch", "tokenizers", "safetensors")
_WEIGHTS = ("*.safetensors", "*.safetensors.index.json", "*.bin")


def signature(max_new_tokens: int = 32) -> Any:
    """Prompt strings in, generated strings out; generation settings as inference params."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([
            ParamSpec("max_new_tokens", "long", max_new_tokens),
            ParamSpec("do_sample", "boolean", False),
            ParamSpec("return_full_text", "boolean", False),
        ]),
    )


@contextlib.contextmanager
def _quiet_hub_lookups() -> Iterator[None]:
    """mlflow looks for a model card and license on the hub under the model's local path; for a pruned
    checkpoint there is none, and the two warnings say nothing a user can act on."""
    log = logging.getLogger("mlflow.transformers")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def save_mlflow_model(checkpoint: str | Path, dst: str | Path, *, max_new_tokens: int = 32, overwrite: bool = True) -> Path:
    """Write ``checkpoint`` (a pruned folder) as an MLflow transformers model at ``dst``, atomically.

    ``pruning.json``'s facts (base model, fingerprint, removed layers, method) go into the MLmodel's
    metadata, so they travel with the model wherever MLflow copies it.
    """
    import mlflow.transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(checkpoint)
    if not (src / "config.json").is_file():
        raise CoopPruneError(f"not a checkpoint folder (no config.json): {src}")
    if is_quantized(src):
        raise CoopPruneError(f"{src} is int8-quantized (our own layout), not a transformers model")
    found = PruningRecord.load_if_present(src)
    record = asdict(found) if found is not None else {}
    with one_build_at_a_time():
        model = AutoModelForCausalLM.from_pretrained(src, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
    facts = {f"coopprune.{key}": json.dumps(record[key]) if isinstance(record[key], list) else str(record[key])
             for key in ("base_model", "base_fingerprint", "removed_layers", "method") if record.get(key) is not None}
    with atomic_dir(dst, overwrite=overwrite) as tmp:
        tmp.rmdir()  # mlflow creates the folder itself and refuses an existing one
        with _quiet_hub_lookups():
            mlflow.transformers.save_model(
                {"model": model, "tokenizer": tokenizer}, str(tmp), task="text-generation",
                signature=signature(max_new_tokens),
                pip_requirements=[f"{name}=={metadata.version(name)}" for name in REQUIREMENTS],
                metadata=facts,
            )
        inner = tmp / CHECKPOINT_DIR
        for item in src.iterdir():  # tokenizer, pruning.json, reports: everything but the weights
            if (inner / item.name).exists() or any(item.match(p) for p in _WEIGHTS):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, inner / item.name)
    return Path(dst)


def checkpoint_in(folder: str | Path) -> Path:
    """The plain checkpoint inside a downloaded registry folder: ``model/`` of an MLflow model, else
    the folder itself (a plain checkpoint, as registered before the flavor or when quantized)."""
    folder = Path(folder)
    if (folder / MLMODEL).is_file() and (folder / CHECKPOINT_DIR / "config.json").is_file():
        return folder / CHECKPOINT_DIR
    return folder
