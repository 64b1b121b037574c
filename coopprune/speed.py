"""Inference speed and memory of a checkpoint: what a user of the pruned model gains.

Peak memory is the peak resident set size of a fresh process that loads the checkpoint and
generates, so the base and pruned models are measured alike and nothing else in the caller's
process (other models, caches) is counted.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from coopprune.errors import CoopPruneError


@dataclass(frozen=True)
class SpeedResult:
    tokens_per_second: dict[int, float]  # batch size -> generated tokens/s (greedy, KV cache on), median
    new_tokens: int
    prompt_tokens: int
    peak_rss_mb: float
    parameters: int
    threads: int = field(default_factory=torch.get_num_threads)
    repeats: int = 1

    def to_json(self) -> dict:
        data = asdict(self)
        data["tokens_per_second"] = {str(k): round(v, 2) for k, v in self.tokens_per_second.items()}
        return data


def measure_speed(
    checkpoint: str | Path, batch_sizes: tuple[int, ...] = (1, 8), new_tokens: int = 32, prompt_tokens: int = 32,
    repeats: int = 3,
) -> SpeedResult:
    """Generated tokens per second at each batch size: one warm-up, then the median of ``repeats``
    timed generates, so one stall of a shared core does not become the published number."""
    if repeats < 1:
        raise CoopPruneError(f"repeats must be at least 1, got {repeats}")
    from coopprune.models import load_model

    loaded = load_model(str(checkpoint))
    model = loaded.model.eval()
    vocab = int(model.config.vocab_size)
    generator = torch.Generator().manual_seed(0)
    rates: dict[int, float] = {}
    with torch.inference_mode():
        for batch in batch_sizes:
            prompt = torch.randint(0, vocab, (batch, prompt_tokens), generator=generator)
            kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                          attention_mask=torch.ones_like(prompt), pad_token_id=0)
            model.generate(prompt, **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                model.generate(prompt, **kwargs)
                seconds.append(time.perf_counter() - start)
            rates[batch] = batch * new_tokens / statistics.median(seconds)
    parameters = sum(p.numel() for p in model.parameters())
    return SpeedResult(rates, new_tokens, prompt_tokens, peak_rss_mb(), parameters, repeats=repeats)


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux: VmHWM, which a fresh ``exec`` resets; the
    rusage maximum is inherited from a forking parent (a 2.6 GB flow made every child read 2.6 GB)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def measure_speed_isolated(
    checkpoint: str | Path, batch_sizes: tuple[int, ...] = (1, 8), new_tokens: int = 32, prompt_tokens: int = 32,
    repeats: int = 3,
) -> SpeedResult:
    """``measure_speed`` in a fresh interpreter, so its peak memory is this model's alone."""
    command = [sys.executable, "-m", "coopprune.speed", str(checkpoint), "--new-tokens", str(new_tokens),
               "--prompt-tokens", str(prompt_tokens), "--repeats", str(repeats), "--batch", *map(str, batch_sizes)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CoopPruneError(f"speed measurement of {checkpoint} failed: {tail}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    data["tokens_per_second"] = {int(k): v for k, v in data["tokens_per_second"].items()}
    return SpeedResult(**data)


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Measure generation speed and peak memory of one checkpoint.")
    parser.add_argument("checkpoint")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed generates per batch size; the median is kept")
    args = parser.parse_args()
    result = measure_speed(args.checkpoint, tuple(args.batch), args.new_tokens, args.prompt_tokens, args.repeats)
    print(json.dumps(result.to_json()))


if __name__ == "__main__":
    _main()
