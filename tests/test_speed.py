"""Inference speed: the numbers `benchmark` publishes are medians over repeats, measured in a fresh process."""

import pytest

from coopprune.errors import CoopPruneError
from coopprune.speed import measure_speed, measure_speed_isolated


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
