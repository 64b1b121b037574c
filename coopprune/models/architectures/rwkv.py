"""RWKV-4 (transformers' ``RwkvForCausalLM``, model_type ``rwkv``): ``rwkv.blocks``.

A recurrent family like Mamba, with three things that depend on a block's place in the stack;
each is handled so that skipping a block is exactly the checkpoint with that block removed:

- **The recurrent state** (five ``[batch, hidden, num_hidden_layers]`` tensors: the token-shift
  inputs of the channel and time mixing, and the WKV numerator, denominator and running max) is
  indexed by the ``layer_id`` every block, ``attention`` and ``feed_forward`` carry. Removal
  renumbers all three and sets ``num_hidden_layers``, so cached generation sizes and indexes the
  state like the reloaded checkpoint does; the engine runs without a state (``use_cache=False``).
- **``pre_ln``**: block 0 owns the LayerNorm applied to the embeddings (``layer_id == 0``). It
  belongs to the embeddings, not to block 0's computation: when block 0 is dropped it moves to
  the new first block (weights included), which ``from_pretrained`` then loads as its own. The
  engine lends it to the first kept block for the duration of a view.
- **``rescale_every``** (6 in the released checkpoints): in eval mode transformers divides the
  ``attention.output`` and ``feed_forward.value`` weights of block ``i`` by ``2 ** (i //
  rescale_every)``, in place, on the first forward, and halves the hidden state after every
  ``rescale_every`` blocks; ``.train()`` multiplies them back. The two computations agree only up
  to the LayerNorms' epsilon (about 1e-3 in the logits of a tiny random model), and the factors
  follow the *new* depth once blocks are removed. So a view rescales its blocks by their depth in
  the pruned model (a replayed prefix stands at its own depth: ``first_position``, with
  pass-through placeholders before it) and restores the weights on exit: bitwise the pruned
  checkpoint's eval-mode logits, in fp32 and bf16 (powers of two scale exactly). Two
  transformers behaviours are worked around: ``save_pretrained`` after an eval-mode forward writes
  the divided weights (a reload divides them again, so its logits are wrong), hence
  :meth:`canonicalize` before saving and before removing blocks; and in training mode no
  rescaling happens at all, which the view keeps.

What a real checkpoint (RWKV-4-World-7B, the paper's model, or RWKV-4-Pile-*) needs that a
tiny one does not show:

- **Weights**: the official checkpoints (World included) are BlinkDL ``.pth`` files for the RWKV
  runtime. transformers' ``convert_rwkv_checkpoint_to_hf.py`` (in its source repository, not in
  the wheel) renames them (``blocks.0.ln0`` becomes ``pre_ln``) but writes pickled
  ``pytorch_model*.bin`` shards and a default config (``rescale_every=6``, ``context_length``
  1024); coopprune loads safetensors only, so load the converted folder once with
  ``from_pretrained`` and ``save_pretrained`` it (safetensors) before pruning. The
  ``RWKV/rwkv-4-*-pile`` folders on the hub are already in the HF format.
- **Tokenizer**: the Pile models use the GPT-NeoX tokenizer (50,277 tokens; the converter's
  default). The World models use the RWKV "world" trie tokenizer (65,536 tokens), which the
  converter cannot build (it needs a ``tokenizer.json``) and which, where published in the HF
  format, ships as Python code: pass ``--trust-remote-code`` for it, or convert the vocabulary
  to a ``tokenizer.json`` first. A wrong tokenizer does not fail, it only makes every
  calibration loss meaningless.
- **fp16**: the rescaling exists so fp16 hidden states do not overflow; keep ``rescale_every``
  there (fp32 and bf16 have the range; views are bitwise exact in both, tested). Dividing an
  fp16 weight by ``2**k`` rounds it once the result is subnormal (``|w| < 2**(k - 14)``, e.g.
  ``|w| < 2**-9`` at ``k = 5``, the deepest blocks of a 32-block model): transformers' own
  eval-mode forward already rounds those weights in place, and a view makes the same round trip
  with a factor never larger (no block sits deeper in a view than in the base model), so the
  small weights can lose low bits during a run and the saved checkpoint carries them. Masked
  logits then match the pruned checkpoint to that rounding, not bit for bit (bitwise on the tiny
  model, whose weights are too large to round; not measured on a real one).
- **Memory and speed**: 7B in bf16 is about 15 GB of weights. Without the ``kernels`` package
  and a CUDA device the WKV recurrence runs as a Python loop over time steps, so a 2048-token
  window costs 2048 small steps per block; calibrate with shorter windows on CPU.
- **RWKV-5/6/7** (``rwkv5``, ``rwkv6``, ``rwkv7``: Eagle, Finch, Goose) are not in transformers:
  their modeling code comes with the checkpoint (``trust_remote_code``) and is a different stack
  (multi-head state, data-dependent decay, ``state`` laid out per layer in their own way); they
  are refused as unsupported architectures until each has its own adapter and test.
- Not supported for RWKV yet: sublayer players (the time and channel mixing write through
  ``attention.output`` and ``feed_forward.value``, but the sublayer stand-ins would hide the
  modules the rescaling reaches), int8 quantization of ``attention.output`` /
  ``feed_forward.value`` (transformers rescales their ``.weight`` in place, which a dynamic int8
  Linear does not have), and healing (LoRA wraps the rescaled projections) is untested.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from coopprune.errors import CoopPruneError
from coopprune.models.architectures.base import Architecture, register


class _Placeholder(nn.Module):
    """Holds a depth before a replayed prefix; its input is ignored by the replay that follows."""

    def forward(self, hidden: torch.Tensor, state: object = None, use_cache: bool = False,
                output_attentions: bool = False) -> tuple[torch.Tensor, object, None]:
        return hidden, state, None


def _is_block(module: nn.Module) -> bool:
    from transformers.models.rwkv.modeling_rwkv import RwkvBlock

    return isinstance(module, RwkvBlock)


def _rescaled(block: nn.Module) -> list[torch.Tensor]:
    """The weights transformers rescales in eval mode (those of the halves still in place)."""
    from transformers.models.rwkv.modeling_rwkv import RwkvFeedForward, RwkvSelfAttention

    weights = []
    halves = ((block.attention, RwkvSelfAttention, "output"), (block.feed_forward, RwkvFeedForward, "value"))
    for owner, cls, attr in halves:
        if not isinstance(owner, cls):
            continue
        weight = getattr(getattr(owner, attr), "weight", None)
        if not isinstance(weight, torch.Tensor) or hasattr(weight, "SCB") or hasattr(weight, "quant_state"):
            raise CoopPruneError(
                "RWKV with rescale_every > 0 needs float output projections (quantized ones are not supported)"
            )
        weights.append(weight)
    return weights


def _targets(blocks: Sequence[tuple[int, nn.Module]], every: int) -> list[tuple[int, list[torch.Tensor]]]:
    """``(2 ** (depth // every), weights)`` of every block whose factor is not 1; all checked
    before any weight is touched."""
    return [(2 ** (depth // every), _rescaled(block)) for depth, block in blocks if depth // every > 0]


def _scale(targets: Sequence[tuple[int, list[torch.Tensor]]], up: bool) -> None:
    """Divide (``up=False``) or multiply back (``up=True``) the weights by their factors, in place."""
    with torch.no_grad():
        for factor, weights in targets:
            for weight in weights:
                weight.mul_(factor) if up else weight.div_(factor)


@dataclass(frozen=True)
class RwkvArchitecture(Architecture):
    def _base(self, model: nn.Module) -> nn.Module:
        return self._parent_and_name(model)[0]

    def canonicalize(self, model: PreTrainedModel) -> None:
        base = self._base(model)
        every = int(getattr(model.config, "rescale_every", 0) or 0)
        if getattr(base, "layers_are_rescaled", False):
            if every > 0:
                _scale(_targets(list(enumerate(self.layers(model))), every), up=True)
            base.layers_are_rescaled = False

    @contextlib.contextmanager
    def stack_view(
        self,
        model: PreTrainedModel,
        modules: Sequence[nn.Module],
        original_indices: Sequence[int],
        first_position: int = 0,
    ) -> Iterator[None]:
        self.canonicalize(model)
        base = self._base(model)
        stack = self.layers(model)
        view = [_Placeholder() for _ in range(first_position)] + list(modules)
        blocks = [(depth, m) for depth, m in enumerate(view) if _is_block(m)]
        every = int(getattr(model.config, "rescale_every", 0) or 0)
        rescale = every > 0 and not model.training
        targets = _targets(blocks, every) if rescale else []
        saved_ids = [(m, m.layer_id, m.attention.layer_id, m.feed_forward.layer_id) for _, m in blocks]
        # the first block at depth 0 applies the embeddings' LayerNorm (block 0 owns it)
        lent_pre_ln = blocks[0][1] if blocks and blocks[0][0] == 0 and not hasattr(blocks[0][1], "pre_ln") else None
        scaled = False
        try:
            if lent_pre_ln is not None:
                lent_pre_ln.pre_ln = stack[0].pre_ln
            for depth, m in blocks:
                m.layer_id = m.attention.layer_id = m.feed_forward.layer_id = depth
            _scale(targets, up=False)
            scaled = True
            base.layers_are_rescaled = rescale  # transformers then leaves the weights alone and halves by depth
            with super().stack_view(model, view, list(original_indices[:1]) * first_position + list(original_indices)):
                yield
        finally:
            if scaled:
                _scale(targets, up=True)
            base.layers_are_rescaled = False
            for m, block_id, attention_id, feed_forward_id in saved_ids:
                m.layer_id, m.attention.layer_id, m.feed_forward.layer_id = block_id, attention_id, feed_forward_id
            if lent_pre_ln is not None and "pre_ln" in lent_pre_ln._modules:
                del lent_pre_ln.pre_ln

    def remove_layers(self, model: PreTrainedModel, removed: Sequence[int]) -> None:
        self.canonicalize(model)
        pre_ln = self.layers(model)[0].pre_ln
        super().remove_layers(model, removed)
        kept = self.layers(model)
        for depth, block in enumerate(kept):
            block.layer_id = block.attention.layer_id = block.feed_forward.layer_id = depth
            if depth > 0 and hasattr(block, "pre_ln"):
                del block.pre_ln
        if not hasattr(kept[0], "pre_ln"):
            kept[0].pre_ln = pre_ln


RWKV = register(RwkvArchitecture(name="rwkv", model_types=("rwkv",), layers_path="rwkv.blocks"))
