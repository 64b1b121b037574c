"""Inference speed and memory of a checkpoint: what a user of the pruned model gains.

Peak memory is the peak resident set size of a fresh process that loads the checkpoint and
generates, so the base and pruned models are measured alike and nothing else in the caller's
process (other models, caches) is counted.

A speed-up is a ratio of two timings, and on a shared machine two timings taken minutes apart
are not comparable (a fresh-clone run once timed the base at 9.3 and the pruned model at 29.4
tokens/s: a "3.15x" for removing 16 % of the parameters; the committed run said 1.14x).
:func:`compare_speed` therefore times base and pruned *interleaved*, pair after pair, each
measurement in a fresh process, and reports per batch size the median of the per-pair ratios
with its spread, not two absolute figures from different moments.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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


#: A measurement: (checkpoint, batch sizes, new tokens, prompt tokens, timed generates) -> SpeedResult.
Measure = Callable[[str, tuple[int, ...], int, int, int], SpeedResult]
LABELS = ("base", "pruned")


def pair_order(repeats: int) -> list[tuple[str, str]]:
    """The order of each pair: base first, then pruned first, alternately (A B, B A, A B, ...).
    Interleaving puts the two measurements of a pair seconds apart; alternating which goes first
    also cancels a steady drift (the machine getting slower or faster across the run), which a
    fixed A B order would fold into every ratio with the same sign."""
    return [LABELS if r % 2 == 0 else LABELS[::-1] for r in range(repeats)]


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and quartiles (inclusive method: exact on the sample, any size >= 1)."""
    data = sorted(float(v) for v in values)
    if not data:
        raise CoopPruneError("no measurements to summarize")
    q1, _, q3 = statistics.quantiles(data, n=4, method="inclusive") if len(data) > 1 else (data[0],) * 3
    return {"median": statistics.median(data), "min": data[0], "max": data[-1], "q1": q1, "q3": q3}


@dataclass(frozen=True)
class SpeedComparison:
    """Base and pruned model timed in interleaved pairs (see :func:`compare_speed`).

    ``base[b][i]`` and ``pruned[b][i]`` are pair ``i``'s tokens/s at batch size ``b``, measured
    back to back; ``ratio(b)`` are their quotients pruned / base, one per pair."""

    batch_sizes: tuple[int, ...]
    base: dict[int, list[float]]
    pruned: dict[int, list[float]]
    base_peak_rss_mb: list[float]
    pruned_peak_rss_mb: list[float]
    order: list[str]  # the labels in the order their processes ran
    new_tokens: int
    prompt_tokens: int
    timed_generates: int  # per process, after one warm-up; the process's median is its figure
    parameters: dict[str, int] = field(default_factory=dict)
    threads: int = field(default_factory=torch.get_num_threads)

    @property
    def repeats(self) -> int:
        return len(self.base_peak_rss_mb)

    def ratios(self, batch: int) -> list[float]:
        return [p / b for b, p in zip(self.base[batch], self.pruned[batch])]

    def summary(self, batch: int) -> dict[str, Any]:
        """What a release states at one batch size: the median ratio with its spread over the
        pairs, and the median tokens/s of each model (measured in the same pairs)."""
        ratio = spread(self.ratios(batch))
        return {
            "speedup": ratio["median"], "speedup_min": ratio["min"], "speedup_max": ratio["max"],
            "speedup_q1": ratio["q1"], "speedup_q3": ratio["q3"],
            "base_tokens_per_s": statistics.median(self.base[batch]),
            "pruned_tokens_per_s": statistics.median(self.pruned[batch]),
            "pairs": self.repeats,
        }

    def metrics(self) -> dict[str, float]:
        """Flat numbers for metrics.json / MLflow: ``speedup_bs<b>`` (median pruned/base ratio),
        its ``_min`` / ``_max`` over the pairs, the medians of each model's tokens/s, peak RSS."""
        flat: dict[str, float] = {"speed_pairs": self.repeats}
        for b in self.batch_sizes:
            s = self.summary(b)
            flat |= {f"speedup_bs{b}": round(s["speedup"], 4), f"speedup_bs{b}_min": round(s["speedup_min"], 4),
                     f"speedup_bs{b}_max": round(s["speedup_max"], 4),
                     f"base_tokens_per_s_bs{b}_median": round(s["base_tokens_per_s"], 2),
                     f"pruned_tokens_per_s_bs{b}_median": round(s["pruned_tokens_per_s"], 2)}
        flat["base_peak_rss_mb"] = statistics.median(self.base_peak_rss_mb)
        flat["pruned_peak_rss_mb"] = statistics.median(self.pruned_peak_rss_mb)
        return flat

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_sizes": list(self.batch_sizes),
            "base": {str(b): [round(v, 3) for v in self.base[b]] for b in self.batch_sizes},
            "pruned": {str(b): [round(v, 3) for v in self.pruned[b]] for b in self.batch_sizes},
            "base_peak_rss_mb": self.base_peak_rss_mb, "pruned_peak_rss_mb": self.pruned_peak_rss_mb,
            "order": self.order, "new_tokens": self.new_tokens, "prompt_tokens": self.prompt_tokens,
            "timed_generates": self.timed_generates, "parameters": self.parameters, "threads": self.threads,
            "summary": {str(b): self.summary(b) for b in self.batch_sizes},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SpeedComparison:
        sizes = tuple(int(b) for b in data["batch_sizes"])
        base = {b: list(data["base"][str(b)]) for b in sizes}
        pruned = {b: list(data["pruned"][str(b)]) for b in sizes}
        return cls(sizes, base, pruned, list(data["base_peak_rss_mb"]), list(data["pruned_peak_rss_mb"]),
                   list(data["order"]), int(data["new_tokens"]), int(data["prompt_tokens"]),
                   int(data["timed_generates"]), dict(data.get("parameters") or {}), int(data.get("threads", 0)))


def compare_speed(
    base: str | Path, pruned: str | Path, batch_sizes: tuple[int, ...] = (1, 8), new_tokens: int = 32,
    prompt_tokens: int = 32, repeats: int = 5, timed_generates: int = 1, measure: Measure | None = None,
    on_measured: Callable[[str, int, SpeedResult], None] | None = None,
) -> SpeedComparison:
    """Time ``base`` and ``pruned`` in ``repeats`` interleaved pairs (:func:`pair_order`), each
    measurement in a fresh process (``measure_speed_isolated``): a process per model keeps the
    two models' memory, allocator and thread-pool state apart, so neither pays for the other and
    each peak RSS is its own; the process start and model load are outside the timed region.
    Within a process, one warm-up then ``timed_generates`` timed generates (median).

    ``measure`` replaces the real measurement (tests use a fake clock); ``on_measured(label,
    pair, result)`` is told after each one (progress)."""
    if repeats < 1:
        raise CoopPruneError(f"repeats must be at least 1, got {repeats}")
    run = measure or measure_speed_isolated
    paths = {"base": str(base), "pruned": str(pruned)}
    rates: dict[str, dict[int, list[float]]] = {label: {b: [] for b in batch_sizes} for label in LABELS}
    rss: dict[str, list[float]] = {label: [] for label in LABELS}
    parameters: dict[str, int] = {}
    order: list[str] = []
    threads = torch.get_num_threads()
    for pair, labels in enumerate(pair_order(repeats)):
        for label in labels:
            result = run(paths[label], tuple(batch_sizes), new_tokens, prompt_tokens, timed_generates)
            for b in batch_sizes:
                rates[label][b].append(float(result.tokens_per_second[b]))
            rss[label].append(float(result.peak_rss_mb))
            parameters[label] = int(result.parameters)
            threads = result.threads
            order.append(label)
            if on_measured is not None:
                on_measured(label, pair, result)
    return SpeedComparison(tuple(batch_sizes), rates["base"], rates["pruned"], rss["base"], rss["pruned"], order,
                           new_tokens, prompt_tokens, timed_generates, parameters, threads)


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
