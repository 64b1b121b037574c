"""GPT-NeoX / Pythia: ``gpt_neox.layers``."""

from coopprune.models.architectures.base import Architecture, register

GPT_NEOX = register(
    Architecture(
        name="gpt_neox",
        model_types=("gpt_neox",),
        layers_path="gpt_neox.layers",
        sublayers=(("attention", "attention.dense", True), ("mlp", "mlp.dense_4h_to_h", False)),
    )
)
