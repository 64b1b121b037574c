"""What coopprune must know about an architecture family: where its layer stack lives and
which per-layer state has to follow a layer when the stack changes.

One small `Architecture` per family (a file each, registered by ``model_type``); adding an
architecture means adding one file and one tiny-model test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from coopprune.errors import CoopPruneError


@dataclass(frozen=True)
class Architecture:
    """How to find and rewrite the decoder stack of one model family.

    ``layers_path``: dotted attribute path from the causal-LM object to the ``nn.ModuleList``.
    ``per_layer_config``: config attributes holding one entry per layer (sliced with the stack).
    ``sublayers``: for sublayer players, ``(module attribute, output projection, returns a tuple)``
    of the attention and the MLP, in that order; empty where a layer cannot be split (OPT's MLP is
    inline, Mamba has a single mixer).
    """

    name: str
    model_types: tuple[str, ...]
    layers_path: str
    num_layers_attr: str = "num_hidden_layers"
    per_layer_config: tuple[str, ...] = ()
    unsupported_if: tuple[tuple[str, str], ...] = field(default=())
    sublayers: tuple[tuple[str, str, bool], ...] = ()

    def check_config(self, config: PretrainedConfig) -> None:
        """Refuse configs whose computation depends on a layer's absolute position."""
        for attr, why in self.unsupported_if:
            if getattr(config, attr, False):
                raise CoopPruneError(f"{config.model_type} with {attr}=True is not supported: {why}")

    def _parent_and_name(self, model: nn.Module) -> tuple[nn.Module, str]:
        *parents, name = self.layers_path.split(".")
        obj = model
        for part in parents:
            obj = getattr(obj, part)
        return obj, name

    def layers(self, model: nn.Module) -> nn.ModuleList:
        parent, name = self._parent_and_name(model)
        return getattr(parent, name)

    def num_layers(self, model: PreTrainedModel) -> int:
        return len(self.layers(model))

    def _set_stack(self, model: PreTrainedModel, modules: Sequence[nn.Module], config_slice: Sequence[int]) -> None:
        parent, name = self._parent_and_name(model)
        setattr(parent, name, nn.ModuleList(modules))
        setattr(model.config, self.num_layers_attr, len(modules))
        for attr in self.per_layer_config:
            values = getattr(model.config, attr, None)
            if values is not None:
                setattr(model.config, attr, [values[i] for i in config_slice])

    @contextlib.contextmanager
    def stack_view(
        self,
        model: PreTrainedModel,
        modules: Sequence[nn.Module],
        original_indices: Sequence[int],
        first_position: int = 0,
    ) -> Iterator[None]:
        """Temporarily run ``model`` with ``modules`` as its stack (no weight copies).

        ``original_indices[j]`` is the original position of ``modules[j]``: per-layer config
        lists follow it, so layer j keeps its own attention type (sliding vs full).
        ``first_position`` is the depth ``modules[0]`` has in the pruned model: non-zero when the
        engine replays a shared prefix of kept layers as one module. Only families whose
        computation depends on a layer's depth in the stack use it (RWKV's rescaling).
        """
        parent, name = self._parent_and_name(model)
        saved_stack = getattr(parent, name)
        saved_config = {a: getattr(model.config, a, None) for a in (self.num_layers_attr, *self.per_layer_config)}
        self._set_stack(model, modules, original_indices)
        try:
            yield
        finally:
            setattr(parent, name, saved_stack)
            for attr, value in saved_config.items():
                setattr(model.config, attr, value)

    def canonicalize(self, model: PreTrainedModel) -> None:
        """Undo any in-place, inference-only rewrite of the weights, so that they are the ones
        ``from_pretrained`` expects; called before saving. A no-op except for RWKV, whose
        transformers model divides some weights in place on its first forward in eval mode."""

    def remove_layers(self, model: PreTrainedModel, removed: Sequence[int]) -> None:
        """Delete layers for good, leaving a model that ``from_pretrained`` rebuilds identically.

        Every ``layer_idx`` inside a kept layer is renumbered: KV caches are indexed by it, and a
        stale index silently corrupts cached generation.
        """
        n = self.num_layers(model)
        drop = set(removed)
        kept = [i for i in range(n) if i not in drop]
        if not kept:
            raise CoopPruneError("cannot remove every layer")
        old = self.layers(model)
        modules = [old[i] for i in kept]
        for new_idx, module in enumerate(modules):
            for sub in module.modules():
                if hasattr(sub, "layer_idx"):
                    sub.layer_idx = new_idx
        self._set_stack(model, modules, kept)


_REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    for model_type in arch.model_types:
        _REGISTRY[model_type] = arch
    return arch


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def splittable_model_types() -> list[str]:
    """Model types whose layers split into attention + MLP (sublayer players)."""
    return sorted(t for t, arch in _REGISTRY.items() if len(arch.sublayers) == 2)


def architecture_for(config: PretrainedConfig) -> Architecture:
    """The family adapter for ``config``, or a one-line error listing what is supported."""
    arch = _REGISTRY.get(getattr(config, "model_type", ""))
    if arch is None:
        raise CoopPruneError(
            f"unsupported architecture '{config.model_type}'; supported: {', '.join(supported_model_types())}"
        )
    arch.check_config(config)
    return arch
