"""GPT-2: ``transformer.h``."""

from coopprune.models.architectures.base import Architecture, register

GPT2 = register(
    Architecture(
        name="gpt2",
        model_types=("gpt2",),
        layers_path="transformer.h",
        sublayers=(("attn", "attn.c_proj", True), ("mlp", "mlp.c_proj", False)),
        unsupported_if=(
            ("scale_attn_by_inverse_layer_idx", "attention is scaled by the layer's position, so removal changes it"),
            ("add_cross_attention", "cross-attention decoders are not causal LMs"),
        ),
    )
)
