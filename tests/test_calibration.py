import json

import datasets
import pytest
import torch

from coopprune.calibration import calibration_windows, evaluation_windows, load_texts
from coopprune.errors import CoopPruneError
from tiny import CORPUS, tiny_tokenizer


def test_text_sources(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph\n\nsecond paragraph\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "a json line"}) + "\n\n")
    (tmp_path / "c.json").write_text(json.dumps([{"text": "x"}, "y"]))
    assert load_texts(str(tmp_path / "a.txt")) == ["first paragraph", "second paragraph\n"]
    assert load_texts(str(tmp_path / "b.jsonl")) == ["a json line"]
    assert load_texts(str(tmp_path / "c.json")) == ["x", "y"]
    assert len(load_texts(str(tmp_path))) == 5  # a folder: every text file in it

    saved = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": ["one", "two", ""]}).save_to_disk(str(saved))
    assert load_texts(str(saved)) == ["one", "two"]
    arrow = next(saved.glob("*.arrow"))
    assert load_texts(str(arrow)) == ["one", "two"]


def test_bad_sources(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"body": "no text field"}\n')
    with pytest.raises(CoopPruneError, match="bad.jsonl:1: expected a JSON object with a 'text' field"):
        load_texts(str(tmp_path / "bad.jsonl"))
    with pytest.raises(CoopPruneError, match="text source not found"):
        load_texts(str(tmp_path / "missing.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CoopPruneError, match="no text files"):
        load_texts(str(tmp_path / "empty"))
    with pytest.raises(CoopPruneError, match="cannot load dataset hf:"):
        load_texts("hf:surely-not-a-dataset-xyz:train")


def test_calibration_windows_are_seeded_and_fingerprinted():
    tok = tiny_tokenizer()
    a = calibration_windows(tok, CORPUS, n_windows=5, length=16, seed=0)
    b = calibration_windows(tok, CORPUS, n_windows=5, length=16, seed=0)
    c = calibration_windows(tok, CORPUS, n_windows=5, length=16, seed=1)
    assert a.input_ids.shape == (5, 16) and a.input_ids.dtype == torch.long
    assert torch.equal(a.input_ids, b.input_ids) and a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint
    assert len({tuple(row.tolist()) for row in a.input_ids}) == 5


def test_too_short_text():
    with pytest.raises(CoopPruneError, match="calibration text too short"):
        calibration_windows(tiny_tokenizer(), ["just a few words"], n_windows=10, length=128)
    with pytest.raises(CoopPruneError, match="evaluation text too short"):
        evaluation_windows(tiny_tokenizer(), ["few words"], length=128)


def test_evaluation_windows_are_consecutive():
    w = evaluation_windows(tiny_tokenizer(), CORPUS, length=32, max_windows=3)
    assert w.input_ids.shape == (3, 32)
    stream = torch.cat([w.input_ids[i] for i in range(3)])
    assert torch.equal(stream[:32], w.input_ids[0])
