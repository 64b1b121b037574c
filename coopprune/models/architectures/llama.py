"""Llama-style decoders: ``model.layers``; Qwen2/Gemma3 also carry a per-layer ``layer_types``."""

from coopprune.models.architectures.base import Architecture, register

LLAMA = register(
    Architecture(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text"),
        layers_path="model.layers",
        per_layer_config=("layer_types",),
        sublayers=(("self_attn", "self_attn.o_proj", True), ("mlp", "mlp.down_proj", False)),
    )
)
