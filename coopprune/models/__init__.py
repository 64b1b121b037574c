"""Model loading, fingerprints and per-architecture layer-stack adapters."""

from coopprune.models.architectures import Architecture, architecture_for, supported_model_types
from coopprune.models.loading import LoadedModel, load_model, model_fingerprint

__all__ = [
    "Architecture",
    "LoadedModel",
    "architecture_for",
    "load_model",
    "model_fingerprint",
    "supported_model_types",
]
