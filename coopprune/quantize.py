"""Int8 dynamic quantization of a model's linear layers (PyTorch, CPU), saved as safetensors.

Pruning removes layers, quantization shrinks the ones left; the two compose in either order (the
engine skips layers of a quantized model just as of a float one). PyTorch's dynamic int8 Linear
keeps a packed weight that ``save_pretrained`` cannot write, so the quantized checkpoint stores
each weight as int8 values plus its per-row scales and zero points in ``model.safetensors`` (no pickle) and
``quantization.json`` names the quantized modules; :func:`load_quantized` rebuilds the same
modules bit for bit. ``coopprune.models.load_model`` reads such folders transparently.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from coopprune.atomic import atomic_dir, write_json
from coopprune.errors import CoopPruneError

QUANT_FILE = "quantization.json"
WEIGHTS_FILE = "model.safetensors"
METHOD = "int8-dynamic"


@contextmanager
def _quiet() -> Iterator[None]:
    """torch.ao's deprecation notices, once per call, say nothing about this use."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, message=".*quantize_per_tensor.*")
        yield


#: Linear layers left in float by default (matched by the last part of the module name): the LM
#: head and the MLP output projections (down_proj: Llama, Qwen, Mistral, Gemma; fc2: OPT;
#: dense_4h_to_h: GPT-NeoX). Dynamic int8 quantizes each layer's input with one scale per tensor,
#: and these inputs carry the outlier features such a scale cannot represent. Measured on
#: SmolLM2-135M (BoolQ, 32 x 128 tokens): fp32 32.7; every linear layer int8 128.4; down_proj kept
#: 42.1; down_proj and lm_head kept 39.0; int8 rounding of the weights alone 32.8.
KEEP_FLOAT = ("lm_head", "down_proj", "fc2", "dense_4h_to_h")


def quantize_int8(model: PreTrainedModel, keep_float: Sequence[str] = KEEP_FLOAT) -> PreTrainedModel:
    """Replace the ``nn.Linear`` layers by PyTorch's dynamic int8 Linear, in place (CPU inference),
    except those whose name ends in one of ``keep_float`` (``()``: every linear layer)."""
    kept = set(keep_float)
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] not in kept]
    if not names:
        raise CoopPruneError(
            f"no linear layer to quantize (kept in float: {', '.join(keep_float) or 'none'}); "
            "GPT-2's Conv1D layers are not nn.Linear"
        )
    _quantize_modules(model, names)
    return model


def _quantize_modules(model: PreTrainedModel, names: Sequence[str]) -> None:
    with _quiet():
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig  # one scale per output row
        torch.ao.quantization.quantize_dynamic(model, dict.fromkeys(names, qconfig), dtype=torch.qint8, inplace=True)
    model.config.coopprune_quantization = METHOD


def _quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    qlinear = torch.ao.nn.quantized.dynamic.Linear
    return {name: m for name, m in model.named_modules() if isinstance(m, qlinear)}


def is_quantized(folder: str | Path) -> bool:
    return (Path(folder) / QUANT_FILE).is_file()


def has_quantized_layers(model: nn.Module) -> bool:
    return bool(_quantized_modules(model))


def write_quantized(model: PreTrainedModel, tokenizer: object, folder: Path) -> None:
    """Weights (int8 values + scales for quantized layers, float for the rest), config, tokenizer into ``folder``."""
    modules = _quantized_modules(model)
    if not modules:
        raise CoopPruneError("model has no quantized linear layers: call quantize_int8 first")
    tensors: dict[str, torch.Tensor] = {}
    for name, m in modules.items():
        weight, bias = m.weight(), m.bias()
        if weight.qscheme() != torch.per_channel_affine or weight.q_per_channel_axis() != 0:
            raise CoopPruneError(f"{name}: only per-output-channel int8 weights are saved, got {weight.qscheme()}")
        tensors[f"{name}.weight_int8"] = weight.int_repr().contiguous()
        tensors[f"{name}.weight_scale"] = weight.q_per_channel_scales().contiguous()
        tensors[f"{name}.weight_zero_point"] = weight.q_per_channel_zero_points().contiguous()
        if bias is not None:
            tensors[f"{name}.bias"] = bias.detach().contiguous()
    inside = tuple(f"{name}." for name in modules)
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor) and not value.is_quantized and not key.startswith(inside):
            tensors.setdefault(key, value.detach().clone().contiguous())  # clone: tied weights share storage
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "coopprune": METHOD})
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # type: ignore[attr-defined]
    write_json(folder / QUANT_FILE, {"method": METHOD, "modules": sorted(modules)})


def save_quantized(model: PreTrainedModel, tokenizer: object, out_dir: str | Path, overwrite: bool = False) -> Path:
    """:func:`write_quantized` into ``out_dir`` atomically (the counterpart of :func:`load_quantized`)."""
    out = Path(out_dir)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_quantized(model, tokenizer, Path(tmp))
    return out


def load_quantized(folder: str | Path, trust_remote_code: bool = False) -> PreTrainedModel:
    """The model :func:`save_quantized` wrote: float skeleton from the config, quantized, weights restored."""
    folder = Path(folder)
    spec = json.loads((folder / QUANT_FILE).read_text())
    if spec.get("method") != METHOD:
        raise CoopPruneError(f"{folder}: unknown quantization '{spec.get('method')}', expected {METHOD}")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if any(name.rsplit(".", 1)[-1] == "lm_head" for name in spec["modules"]):
        config.tie_word_embeddings = False  # a quantized head no longer shares the embedding's storage
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    _quantize_modules(model, spec["modules"])
    tensors = load_file(str(folder / WEIGHTS_FILE))
    modules = _quantized_modules(model)
    if sorted(modules) != spec["modules"]:
        raise CoopPruneError(f"{folder}: quantized modules do not match the config's architecture")
    for name, m in modules.items():
        with _quiet():
            weight = torch._make_per_channel_quantized_tensor(
                tensors.pop(f"{name}.weight_int8"), tensors.pop(f"{name}.weight_scale"),
                tensors.pop(f"{name}.weight_zero_point"), 0,
            )
        m.set_weight_bias(weight, tensors.pop(f"{name}.bias", None))
    state = model.state_dict()  # the quantized modules' entries, as just set; float ones replaced below
    inside = tuple(f"{name}." for name in modules)
    expected = {k for k in state if not k.startswith(inside)}
    if set(tensors) != expected:
        diff = sorted(set(tensors) ^ expected)[:3]
        raise CoopPruneError(f"{folder}: weights do not match the model's architecture (e.g. {diff})")
    state.update(tensors)  # in place: the state dict's version metadata tells torch how to unpack int8 modules
    model.load_state_dict(state)
    return model.eval()
