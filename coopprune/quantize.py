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
from coopprune.building import one_build_at_a_time
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
    with _quiet():
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig  # one scale per output row
        torch.ao.quantization.quantize_dynamic(model, dict.fromkeys(names, qconfig), dtype=torch.qint8, inplace=True)
    model.config.coopprune_quantization = METHOD
    return model


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
    tied: dict[str, str] = {}  # a weight shared by two modules (embedding and float LM head) is written once
    owner: dict[tuple[int, torch.Size], str] = {}
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor) and not value.is_quantized and not key.startswith(inside):
            first = owner.setdefault((value.data_ptr(), value.shape), key)
            if first != key:
                tied[key] = first
            else:
                tensors[key] = value.detach().clone().contiguous()  # clone: views may share storage
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "coopprune": METHOD})
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # type: ignore[attr-defined]
    write_json(folder / QUANT_FILE, {"method": METHOD, "modules": sorted(modules), "tied": tied})


def save_quantized(model: PreTrainedModel, tokenizer: object, out_dir: str | Path, overwrite: bool = False) -> Path:
    """:func:`write_quantized` into ``out_dir`` atomically (the counterpart of :func:`load_quantized`)."""
    out = Path(out_dir)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_quantized(model, tokenizer, Path(tmp))
    return out


def load_quantized(folder: str | Path, trust_remote_code: bool = False) -> PreTrainedModel:
    """The model :func:`save_quantized` wrote. The skeleton is built on the meta device, so no float
    copy of the layers that become int8 is ever allocated (an int8 model loads in less memory than
    its float original, not more)."""
    with one_build_at_a_time():  # accelerate's init_empty_weights patches nn.Module process-wide
        return _load_quantized(Path(folder), trust_remote_code)


def _load_quantized(folder: Path, trust_remote_code: bool) -> PreTrainedModel:
    from accelerate import init_empty_weights

    spec = json.loads((folder / QUANT_FILE).read_text())
    if spec.get("method") != METHOD:
        raise CoopPruneError(f"{folder}: unknown quantization '{spec.get('method')}', expected {METHOD}")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if any(name.rsplit(".", 1)[-1] == "lm_head" for name in spec["modules"]):
        config.tie_word_embeddings = False  # a quantized head no longer shares the embedding's storage
    with init_empty_weights():  # parameters on meta; buffers (rotary frequencies) built for real
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    tensors = load_file(str(folder / WEIGHTS_FILE))
    for name in spec["modules"]:
        model.set_submodule(name, _int8_linear(model, name, tensors, folder))
    tied: dict[str, str] = spec.get("tied", {})
    inside = tuple(f"{name}." for name in spec["modules"])
    state = model.state_dict()  # int8 modules' entries as just set, meta placeholders for the float ones
    expected = {k for k in state if not k.startswith(inside)} - set(tied)
    if set(tensors) != expected:
        diff = sorted(set(tensors) ^ expected)[:3]
        raise CoopPruneError(f"{folder}: weights do not match the model's architecture (e.g. {diff})")
    state.update(tensors)  # in place: the state dict's version metadata tells torch how to unpack int8 modules
    model.load_state_dict(state, assign=True)  # take the loaded tensors, copy nothing
    for alias, target in tied.items():
        parent, _, attr = alias.rpartition(".")
        setattr(model.get_submodule(parent), attr, model.get_parameter(target))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CoopPruneError(f"{folder}: no weights for {left[:3]}")
    model.config.coopprune_quantization = METHOD
    return model.eval()


def _int8_linear(model: nn.Module, name: str, tensors: dict[str, torch.Tensor], folder: Path) -> nn.Module:
    """The dynamic int8 Linear that replaces float module ``name``, from its saved int8 values and scales."""
    try:
        shape = model.get_submodule(name)
    except AttributeError:
        shape = None
    if not isinstance(shape, nn.Linear) or f"{name}.weight_int8" not in tensors:
        raise CoopPruneError(f"{folder}: quantized module {name} does not match the config's architecture")
    with _quiet():
        layer = torch.ao.nn.quantized.dynamic.Linear(shape.in_features, shape.out_features, dtype=torch.qint8)
        weight = torch._make_per_channel_quantized_tensor(
            tensors.pop(f"{name}.weight_int8"), tensors.pop(f"{name}.weight_scale"),
            tensors.pop(f"{name}.weight_zero_point"), 0,
        )
        layer.set_weight_bias(weight, tensors.pop(f"{name}.bias", None))
    return layer
