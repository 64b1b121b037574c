"""Architecture families; importing this package registers every family."""

from coopprune.models.architectures import gpt2, gpt_neox, llama, mamba, opt, rwkv  # noqa: F401  (registration)
from coopprune.models.architectures.base import Architecture, architecture_for, supported_model_types

__all__ = ["Architecture", "architecture_for", "supported_model_types"]
