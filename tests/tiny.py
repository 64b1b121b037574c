"""Tiny random models of every supported family and a byte-level BPE tokenizer, built offline."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MambaConfig,
    MistralConfig,
    OPTConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
    RwkvConfig,
)

VOCAB = 384
N_LAYERS = 6
CORPUS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps by the fire.",
    "Layer pruning removes whole decoder blocks from a language model to make it faster.",
    "Shapley values share the value of a coalition fairly among its players.",
    "She opened the door, looked at the rain, and decided to stay home with a book.",
    "Numbers like 3, 14, 159 and 2653 appear in text about mathematics and physics.",
] * 20

_ATTN = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8)


def _configs(n: int) -> dict[str, PretrainedConfig]:
    common = dict(vocab_size=VOCAB, num_hidden_layers=n, max_position_embeddings=512)
    return {
        "llama": LlamaConfig(**common, **_ATTN),
        "mistral": MistralConfig(**common, **_ATTN, sliding_window=16),
        "qwen2": Qwen2Config(**common, **_ATTN, use_sliding_window=True, sliding_window=16, max_window_layers=n // 2),
        "qwen3": Qwen3Config(**common, **_ATTN),
        "gemma2": Gemma2Config(**common, **_ATTN, sliding_window=16),
        "gemma3_text": Gemma3TextConfig(**common, **_ATTN, sliding_window=16, sliding_window_pattern=2),
        "gpt2": GPT2Config(vocab_size=VOCAB, n_layer=n, n_embd=32, n_head=4, n_positions=512),
        "gpt_neox": GPTNeoXConfig(**common, hidden_size=32, intermediate_size=64, num_attention_heads=4),
        "opt": OPTConfig(**common, hidden_size=32, ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=32),
        "mamba": MambaConfig(vocab_size=VOCAB, num_hidden_layers=n, hidden_size=32, state_size=8, expand=2),
        # rescale_every=2 (released checkpoints: 6) so six layers see three rescaling depths
        "rwkv": RwkvConfig(vocab_size=VOCAB, num_hidden_layers=n, hidden_size=32, attention_hidden_size=32,
                           intermediate_size=64, context_length=512, rescale_every=2),
    }


ARCHITECTURES = list(_configs(2))


def tiny_model(arch: str = "llama", n_layers: int = N_LAYERS, seed: int = 0):
    """A random model whose layers actually matter (weights scaled up from the tiny init)."""
    config = _configs(n_layers)[arch]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.2)
    return model.eval()


@lru_cache(maxsize=1)
def graded_llama(n_layers: int = N_LAYERS, seed: int = 0):
    """A tiny Llama whose layers differ in importance, as trained LLMs' do.

    Random layers are near-interchangeable, so their Shapley values nearly tie and any ranking
    test measures noise; scaling each layer's residual writes (``o_proj``, ``down_proj``) by a
    seeded factor between 1/4 and 4 spreads the contributions while keeping real interactions.
    """
    import numpy as np

    model = tiny_model("llama", n_layers=n_layers, seed=seed)
    scales = np.random.default_rng(seed).permutation(np.geomspace(0.25, 4.0, n_layers))
    with torch.no_grad():
        for scale, layer in zip(scales, model.model.layers):
            layer.self_attn.o_proj.weight.mul_(float(scale))
            layer.mlp.down_proj.weight.mul_(float(scale))
    return model


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def save_tiny(path: Path, arch: str = "llama", n_layers: int = N_LAYERS, seed: int = 0) -> Path:
    """A tiny checkpoint folder, as a user would pass it to the CLI."""
    model = tiny_model(arch, n_layers, seed)
    model.config.eos_token_id = model.config.pad_token_id = tiny_tokenizer().eos_token_id
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def write_text(path: Path, n_docs: int = 60) -> Path:
    """A jsonl text source."""
    import json

    with open(path, "w") as fh:
        for i in range(n_docs):
            fh.write(json.dumps({"text": f"{CORPUS[i % 5]} Document {i} ends here."}) + "\n")
    return path


def prune_request(model, out, method="ppl", *, remove=None, calib="lambada", n_windows=10, window=128, seed=0,
                  utility="ppl_ratio", budget=None, iterative=None, players="layers", masks=None, epochs=None,
                  bootstrap=10, options=None, device="cpu", **fields):
    """A :class:`~coopprune.pipeline.PruneRequest` from the keywords the tests vary (PPL-ratio
    utility unless a test asks for another, so older expectations keep their meaning)."""
    from coopprune.config import Params
    from coopprune.pipeline import PruneRequest

    params = Params.from_dict({
        "model": {"source": str(model), "device": device},
        "calibration": {"source": str(calib), "n_windows": n_windows, "window": window, "seed": seed},
        "game": {"utility": utility},
        "sampling": {"seed": seed},
        "surrogate": {"epochs": epochs},
        "prune": {"method": method, "remove": remove, "ratio": None if remove is not None else 0.3, "budget": budget,
                  "iterative": iterative, "players": players, "bootstrap": bootstrap, "options": {method: options or {}}},
    })
    return PruneRequest(params, out, masks=masks, **fields)
