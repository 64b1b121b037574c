"""One model built at a time in this process, and a loaded model's head checked against its config.

transformers 5 builds a model inside context managers that patch process-wide state and put it
back on exit: ``no_tie_weights`` swaps ``PreTrainedModel.tie_weights`` for a no-op,
``meta_device_safe_creation_ops`` swaps ``torch.linspace``, and accelerate's
``init_empty_weights`` swaps ``nn.Module.register_parameter``. Two threads building at once (a
Prefect thread runner evaluating shards) can each save the other's patch as "the original", and
the last to leave then restores a patch: from that moment the process never ties a head to its
embedding, so a tied model (SmolLM2, and every tied GGUF) loads with an uninitialised head and
gives garbage logits. Every model coopprune builds is built under :data:`BUILD_LOCK`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from coopprune.errors import CoopPruneError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: Re-entrant: an int8 load (``quantize.load_quantized``) runs inside ``load_model``'s build.
BUILD_LOCK = threading.RLock()


@contextmanager
def one_build_at_a_time() -> Iterator[None]:
    with BUILD_LOCK:
        yield


def check_tied(model: PreTrainedModel, source: object) -> None:
    """A model whose config ties the head to the embedding must have them share storage: if not,
    something in this process disabled transformers' tying and the head is uninitialised memory."""
    if not getattr(model.config.get_text_config(), "tie_word_embeddings", False):
        return
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or embedding is None or getattr(head, "weight", None) is None:
        return
    if head.weight.data_ptr() != embedding.weight.data_ptr():
        raise CoopPruneError(
            f"{source} loaded with its output head not tied to its embedding although its config ties them: "
            "transformers' weight tying was disabled in this process (models built in parallel threads "
            "outside coopprune?); load it in a fresh process"
        )
