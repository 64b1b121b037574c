"""bench/quality_tables.py's table bookkeeping: a run of some arms adds to the published table."""

import importlib.util
import sys
from pathlib import Path

import pytest


def load(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "bench" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


load("quality_arms")  # the arms, which quality_tables imports by this name
quality = load("quality_tables")  # the quality bench's table code (no model)


def row(method, k, ppl):
    return {"method": method, "k": k, "ppl128": ppl}


def test_a_partial_run_replaces_its_cells_and_keeps_the_others():
    published = {"rows": [row("base", 0, 30.0), row("sleb", 3, 40.0), row("evopress", 3, 39.0), row("sleb", 9, 99.0),
                          row("random (mean of 3)", 3, 900.0)],
                 "curves": {"sleb/3": [1], "evopress/3": [2]}}
    rows, curves = quality.carry_published(published, [row("base", 0, 30.0), row("evopress-64", 9, 95.0),
                                                       row("evopress", 3, 38.0)], {"evopress/3": [3]})
    assert [(r["method"], r["k"]) for r in rows] == [
        ("base", 0), ("evopress", 3), ("sleb", 3), ("evopress-64", 9), ("sleb", 9), ("random (mean of 3)", 3)]
    assert next(r for r in rows if r["method"] == "evopress" and r["k"] == 3)["ppl128"] == 38.0
    assert curves == {"sleb/3": [1], "evopress/3": [3]}


def test_a_fresh_cell_of_the_same_model_keeps_what_it_did_not_measure_again():
    base = {**row("base", 0, 30.0), "removed": [], "zero_shot_mean": 0.43}
    moved = {**row("sleb", 3, 40.0), "removed": [1, 2, 3], "zero_shot_mean": 0.40}
    rows, _ = quality.carry_published({"rows": [base, moved]}, [
        {**row("base", 0, 31.0), "removed": []}, {**row("sleb", 3, 41.0), "removed": [1, 2, 4]}], {})
    assert rows[0] == {**base, "ppl128": 31.0}  # the base model's zero-shot is still its own
    assert "zero_shot_mean" not in rows[1]  # another set: another model, nothing carried


def test_the_calibration_note_names_the_depths_evopress_ran_at_on_64_windows():
    assert "EvoPress was not" in quality.evopress_64_runs([row("evopress", 3, 39.0)])
    assert "EvoPress at k = 3, 9 " in quality.evopress_64_runs([row("evopress-64", 9, 95.0), row("evopress-64", 3, 39.0)])


def test_the_targets_compare_an_arm_with_the_peers_on_its_own_calibration_windows():
    def cell(method, n_windows, ppl, passes, tokens):
        return {**row(method, 9, ppl), "ppl512": ppl - 10, "n_windows": n_windows, "passes": passes, "tokens": tokens}

    rows = [cell("game-search-64-f10", 64, 94.0, 40.0, 473e3), cell("evopress-64", 64, 94.0, 328.0, 2666e3),
            cell("sleb-64", 64, 100.0, 234.0, 1902e3), cell("sleb", 10, 90.0, 234.0, 297e3),  # fewer windows: not its peer
            cell("game-search", 10, 100.0, 144.0, 183e3)]
    default = quality.targets(rows)[2]
    assert default.startswith("| 9 | 94 | evopress-64 (94) |") and "| yes | 40.0 | 328.0 | 234.0 | yes | yes |" in default
    previous = quality.targets(rows, arm=quality.PREVIOUS_DEFAULT)[2]
    assert previous.startswith("| 9 | 100 | sleb (90) |") and "| no | 144.0 |  | 234.0 |  | yes |" in previous


def test_an_arm_that_removes_the_same_set_ties_whatever_its_last_float_digits():
    def cell(method, ppl, removed):
        return {**row(method, 6, ppl), "ppl512": ppl - 10, "n_windows": 64, "passes": 40.0, "tokens": 350e3,
                "removed": removed}

    same = [13, 14, 15, 16, 17, 18]
    rows = [cell("game-search-64-f10", 55.6357, same), cell("evopress-64", 55.6356, same),
            cell("sleb-64", 62.5, [4, 5, 14, 16, 17, 18])]
    assert "| yes |" in quality.targets(rows)[2]
    rows[1]["removed"] = [12, 14, 15, 16, 17, 18]  # another set a hair lower: a loss
    assert "| no |" in quality.targets(rows)[2]


def test_search_curves_share_one_axis_in_tokens_across_calibration_sizes():
    rows = [{**row("evopress", 6, 55.0), "passes": 10.0, "tokens": 12_800.0},
            {**row("evopress-64", 6, 55.0), "passes": 10.0, "tokens": 81_920.0},
            {**row("sleb-64", 6, 62.5), "passes": 165.0, "tokens": 1_351_680.0},  # no trace kept: its end point
            {**row("bi", 6, 72.6), "passes": 1.0, "tokens": 1_280.0}]  # not a search: not plotted
    curves = {"evopress/6": [{"passes": 5.0, "ppl128_test": 60.0}],
              "evopress-64/6": [{"passes": 5.0, "ppl128_test": 58.0}],
              "sleb/6": [{"passes": 1.0, "ppl128_test": 70.0}]}  # no row: nothing to scale by, left out
    assert quality.search_series(rows, curves) == {6: {"evopress": ([6.4], [60.0]), "evopress-64": ([40.96], [58.0]),
                                                       "sleb-64": ([1351.68], [62.5])}}


def test_a_random_baseline_is_known_by_its_estimator_not_its_name():
    assert quality.random_draw("random-0") and quality.random_draw("random-2")
    assert not quality.random_draw("sleb") and not quality.random_draw("random (mean of 3)")
    averaged = quality.average_random([{**row("random-0", 3, 100.0), "removed": [1]}, {**row("random-1", 3, 400.0), "removed": [2]},
                                       {**row("sleb", 3, 40.0), "removed": [3]}])
    assert [r["method"] for r in averaged] == ["sleb", "random (mean of 2)"]
    assert averaged[1]["ppl128"] == pytest.approx(200.0)  # geometric mean of the seeds' perplexities


def test_the_domains_table_shows_zero_shot_where_a_set_was_scored():
    domains = load("domains")
    scores = {d: 10.0 for split in domains.SUITE.values() for d in split}
    ppl = {"1,2": scores, "3,4": {d: v * 1.1 for d, v in scores.items()}}
    cells = {"a": {"removed": [1, 2], "tokens": 1000, "zero_shot_mean": 0.41, "zero_shot_mean_no_boolq": 0.39,
                   "zero_shot_mean_se": 0.013},
             "b": {"removed": [3, 4], "tokens": None}}
    rows, text = domains.table(2, cells, ppl)
    a, b = text.splitlines()[-2:]
    assert "0.410 +/- 0.013 (0.390)" in a and a.count("|") == b.count("|")
    assert rows[0]["zero_shot_mean"] == 0.41 and "zero_shot_mean" not in rows[1]
    assert rows[1]["worst_ratio_test"] == pytest.approx(1.1)


contributions = load("contributions")  # the contributions bench (no model until a step runs)


def test_each_reference_part_draws_its_own_bases_and_part_zero_is_the_first_reference():
    first = contributions.flip_design(30, 6, 4, seed=0)
    assert (contributions.flip_design(30, 6, 4, seed=0, part=0) == first).all()
    other = contributions.flip_design(30, 6, 4, seed=0, part=1)
    assert other.shape == (4 * 31, 30) and not (other[::31] == first[::31]).all()
    assert ((other[1:31] != other[0]).sum(axis=1) == 1).all()  # a base, then each of its single flips


def test_the_budget_table_names_its_reference_and_draws():
    row = {"extra": 0, "evaluations": 162, "draws": 1, "spearman": 0.69, "same_top5": 0.0, "top5_overlap": 4.0,
           "coverage": 0.87, "spanning_zero": 10.0, "fit_r2": 0.92, "reference_bases": 66}
    more = {**row, "extra": 186, "evaluations": 348, "draws": 5, "spearman": 0.8, "same_top5": 0.2, "top5_overlap": 4.2}
    text = "\n".join(contributions.budget_table([row, more]))
    assert "its 162 real evaluations" in text and "other 66 bases" in text and "mean over 5 draws" in text
    assert "| 186 | 348 | 0.800 | 20 % | 4.2/5 | 0.87 | 10.0/30 | 0.920 |" in text
