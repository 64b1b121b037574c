"""A small, deterministic sweep, runnable in a subprocess so tests can SIGKILL it."""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from coopprune.engine import MaskEvaluator  # noqa: E402
from coopprune.models import architecture_for  # noqa: E402
from coopprune.sampling import StrataPlan  # noqa: E402
from coopprune.sweep import plan_manifest, run_sweep  # noqa: E402
from tiny import tiny_model  # noqa: E402


class CountingEvaluator(MaskEvaluator):
    """Counts (and optionally slows) real mask evaluations."""

    delay = 0.0
    count = 0

    def _run(self, *args, **kwargs):
        time.sleep(self.delay)
        return super()._run(*args, **kwargs)

    def evaluate(self, masks, *args, **kwargs):
        CountingEvaluator.count += len(masks)
        return super().evaluate(masks, *args, **kwargs)


def build(delay: float = 0.0):
    model = tiny_model("llama", n_layers=6)
    ids = torch.randint(0, 300, (4, 24), generator=torch.Generator().manual_seed(3))
    evaluator = CountingEvaluator(model, architecture_for(model.config), ids, batch_size=2)
    evaluator.delay = delay
    plan = StrataPlan.build(6, remove=[1, 2, 3], per_stratum=8, seed=7)
    return evaluator, plan_manifest(evaluator, plan, "model-fp", "calib-fp", shard_size=5)


def sweep(out: Path, delay: float = 0.0):
    evaluator, manifest = build(delay)
    return run_sweep(evaluator, manifest, out, progress=False)


if __name__ == "__main__":
    sweep(Path(sys.argv[1]), delay=float(sys.argv[2]))
