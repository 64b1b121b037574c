"""Models built in parallel threads (a Prefect thread runner's shards) leave transformers' process-wide
patches as they found them, and a model whose head lost its tie is refused, not used."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from tiny import save_tiny
from transformers import PreTrainedModel

from coopprune.errors import CoopPruneError
from coopprune.models import load_model


def _globals() -> dict[str, object]:
    return {
        "tie_weights": PreTrainedModel.tie_weights,
        "linspace": torch.linspace,
        "register_parameter": torch.nn.Module.register_parameter,
        "register_buffer": torch.nn.Module.register_buffer,
    }


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tied") / "gpt2", "gpt2", n_layers=2)


def test_loads_in_parallel_threads_keep_transformers_patches_intact(tied):
    """Before the build lock, two threads inside ``from_pretrained`` at once could leave
    ``PreTrainedModel.tie_weights`` a no-op for the rest of the process (the GGUF export test then
    read an uninitialised head in the full suite)."""
    before = _globals()
    with ThreadPoolExecutor(4) as pool:
        models = list(pool.map(lambda _: load_model(str(tied)).model, range(12)))
    assert _globals() == before
    for model in models:
        assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_a_head_that_lost_its_tie_is_refused(tied, monkeypatch):
    monkeypatch.setattr(PreTrainedModel, "tie_weights", lambda self, *a, **k: None)
    with pytest.raises(CoopPruneError, match="not tied to its embedding"):
        load_model(str(tied))
