"""Mamba (state-space, no attention): ``backbone.layers``; the SSM cache is indexed by ``layer_idx``."""

from coopprune.models.architectures.base import Architecture, register

MAMBA = register(Architecture(name="mamba", model_types=("mamba",), layers_path="backbone.layers"))
