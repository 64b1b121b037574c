"""The engine and the pruning paths on a CUDA device: skipped without one (CI has none); run them
on a GPU machine with ``pytest tests/test_device.py``."""

import numpy as np
import pytest
import torch

from coopprune import pipeline
from coopprune.engine import MaskEvaluator
from coopprune.models import load_model
from tiny import prune_request

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_engine_on_cuda_matches_the_cpu(tiny_checkpoint):
    cpu, gpu = load_model(str(tiny_checkpoint)), load_model(str(tiny_checkpoint), device="cuda")
    assert gpu.model.device.type == "cuda" and gpu.fingerprint == cpu.fingerprint  # same weights, same name
    ids = torch.randint(cpu.model.config.vocab_size, (6, 24), generator=torch.Generator().manual_seed(0))
    masks = np.random.default_rng(0).random((24, cpu.num_layers)) < 0.6
    losses = [
        [r.loss for r in MaskEvaluator(m.model, m.architecture, ids, batch_size=4).evaluate(masks, progress=False)]
        for m in (cpu, gpu)
    ]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)


@pytest.mark.parametrize("method", ["ppl", "bi", "semivalue"])
def test_prune_on_cuda_saves_a_cpu_checkpoint(method, tiny_checkpoint, text_file, tmp_path):
    common = dict(remove=2, calib=str(text_file), n_windows=4, window=16, progress=False, budget=30)
    on_gpu = pipeline.prune(prune_request(tiny_checkpoint, tmp_path / "gpu", method, device="cuda", **common))
    on_cpu = pipeline.prune(prune_request(tiny_checkpoint, tmp_path / "cpu", method, **common))
    assert on_gpu.removed_layers == on_cpu.removed_layers
    reloaded = load_model(str(tmp_path / "gpu"))
    assert reloaded.num_layers == load_model(str(tiny_checkpoint)).num_layers - 2
    ppl = pipeline.evaluate_perplexity(str(tmp_path / "gpu"), str(text_file), 16, 8, progress=False, device="cuda")
    assert ppl.perplexity == pytest.approx(
        pipeline.evaluate_perplexity(str(tmp_path / "gpu"), str(text_file), 16, 8, progress=False).perplexity, rel=1e-4
    )
