"""Inference speed: the numbers `benchmark` publishes are medians over repeats, measured in a fresh process."""

import json
import statistics
from types import SimpleNamespace

import pytest

from coopprune import speed
from coopprune.errors import CoopPruneError
from coopprune.speed import (
    SpeedComparison,
    SpeedResult,
    compare_speed,
    measure_speed,
    measure_speed_isolated,
    pair_order,
    spread,
)


def test_median_of_repeats_per_batch_size(tiny_checkpoint):
    result = measure_speed(tiny_checkpoint, (1, 2), new_tokens=4, prompt_tokens=4, repeats=2)
    assert result.repeats == 2
    assert set(result.tokens_per_second) == {1, 2}
    assert all(rate > 0 for rate in result.tokens_per_second.values())


def test_isolated_run_passes_repeats_through(tiny_checkpoint):
    result = measure_speed_isolated(tiny_checkpoint, (1,), new_tokens=4, prompt_tokens=4, repeats=2)
    assert result.repeats == 2 and result.peak_rss_mb > 0


def test_zero_repeats_is_refused(tiny_checkpoint):
    with pytest.raises(CoopPruneError, match="repeats"):
        measure_speed(tiny_checkpoint, (1,), repeats=0)


# --------------------------------------------------------------------------- interleaved comparison
# Every test below runs on a fake clock or a fake machine: no assertion on this machine's timings.


def test_measure_speed_takes_the_median_of_its_timed_generates(tiny_checkpoint, monkeypatch):
    """On a fake clock each timed generate lasts 2, 8, then 4 s: the median (4 s) is the figure."""
    ticks = iter([0.0, 2.0, 10.0, 18.0, 20.0, 24.0])
    monkeypatch.setattr(speed, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    result = measure_speed(tiny_checkpoint, (2,), new_tokens=4, prompt_tokens=4, repeats=3)
    assert result.tokens_per_second == {2: 2 * 4 / 4.0}


def test_spread_is_exact_on_small_samples():
    assert spread([1.3, 1.1, 1.2, 1.5, 1.0]) == {"median": 1.2, "min": 1.0, "max": 1.5, "q1": 1.1, "q3": 1.3}
    assert spread([2.0]) == {"median": 2.0, "min": 2.0, "max": 2.0, "q1": 2.0, "q3": 2.0}
    with pytest.raises(CoopPruneError):
        spread([])


def test_pairs_alternate_which_model_goes_first():
    assert pair_order(4) == [("base", "pruned"), ("pruned", "base"), ("base", "pruned"), ("pruned", "base")]


class FakeMachine:
    """A machine whose speed drifts: every measurement runs ``drift`` slower than the one before
    (another job ramping up beside it), with an occasional stall. True speeds are fixed."""

    def __init__(self, true: dict[str, float], drift: float = 0.04, stalls: tuple[int, ...] = ()):
        self.true, self.drift, self.stalls, self.calls = true, drift, stalls, []

    def __call__(self, checkpoint, batch_sizes, new_tokens, prompt_tokens, repeats):
        n = len(self.calls)
        self.calls.append(checkpoint)
        factor = (1 - self.drift) ** n * (0.5 if n in self.stalls else 1.0)
        rates = {b: self.true[checkpoint] * b ** 0.8 * factor for b in batch_sizes}
        return SpeedResult(rates, new_tokens, prompt_tokens, 900.0 if checkpoint == "base" else 800.0,
                           100 if checkpoint == "base" else 84, threads=2, repeats=repeats)


def test_interleaved_pairs_recover_the_true_ratio_under_drift():
    machine = FakeMachine({"base": 20.0, "pruned": 23.0}, drift=0.04, stalls=(3,))
    result = compare_speed("base", "pruned", (1, 8), repeats=5, measure=machine)
    assert machine.calls == ["base", "pruned", "pruned", "base"] * 2 + ["base", "pruned"] == result.order
    for batch in (1, 8):
        s = result.summary(batch)
        assert s["pairs"] == 5 and s["speedup_min"] <= 23 / 20 <= s["speedup_max"]
        assert s["speedup"] == pytest.approx(23 / 20, rel=0.05)  # one stall and 4 % drift a step
        assert s["speedup_q1"] <= s["speedup"] <= s["speedup_q3"]
    # the same fake machine, timed the old way (all of one model, then the other), reports a speed-up that is not there
    sequential = FakeMachine({"base": 20.0, "pruned": 23.0}, drift=0.04)
    old = [sequential("base", (1,), 32, 32, 1).tokens_per_second[1] for _ in range(5)]
    new = [sequential("pruned", (1,), 32, 32, 1).tokens_per_second[1] for _ in range(5)]
    assert statistics.median(new) / statistics.median(old) < 0.95  # "slower" although it is 15 % faster


def test_comparison_metrics_and_json_round_trip():
    machine = FakeMachine({"base": 10.0, "pruned": 15.0}, 0.0)
    result = compare_speed("base", "pruned", (1, 8), repeats=3, measure=machine)
    metrics = result.metrics()
    assert metrics["speedup_bs1"] == metrics["speedup_bs8"] == pytest.approx(1.5)
    assert metrics["speedup_bs1_min"] == metrics["speedup_bs1_max"] == pytest.approx(1.5)
    assert metrics["base_tokens_per_s_bs1_median"] == 10.0 and metrics["speed_pairs"] == 3
    assert metrics["base_peak_rss_mb"] == 900.0 and metrics["pruned_peak_rss_mb"] == 800.0
    assert not any(key.endswith(("_batch1", "_batch8")) for key in metrics)  # no lone absolute figures
    again = SpeedComparison.from_json(json.loads(json.dumps(result.to_json())))
    assert again.metrics() == metrics and again.order == result.order


def test_comparison_refuses_zero_repeats():
    with pytest.raises(CoopPruneError, match="repeats"):
        compare_speed("a", "b", repeats=0, measure=FakeMachine({"a": 1.0, "b": 1.0}))
