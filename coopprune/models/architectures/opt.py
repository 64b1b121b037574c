"""OPT: ``model.decoder.layers``."""

from coopprune.models.architectures.base import Architecture, register

OPT = register(Architecture(name="opt", model_types=("opt",), layers_path="model.decoder.layers"))
