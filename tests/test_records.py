"""``pruning.json`` through :class:`~coopprune.records.PruningRecord`: save and load are inverses
byte for byte, a checkpoint written before the record had its own module loads unchanged, and a
folder without a record (or with a damaged one) is a one-line error."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from tiny import save_tiny

from coopprune.errors import CoopPruneError
from coopprune.models import load_model
from coopprune.prune import count_parameters, make_record, prune_layers, save_pruned
from coopprune.records import DECISION_FILE, PRUNING_FILE, Decision, PruningRecord

#: ``pruning.json`` of a tiny Llama pruned by ``coopprune prune --method shapley`` (commit 9b4facf),
#: the code before PruningRecord moved to coopprune/records.py.
WRITTEN_BEFORE = Path(__file__).parent / "data" / PRUNING_FILE


def test_save_load_save_gives_the_same_bytes(tmp_path):
    record = PruningRecord(
        base_model="org/model", base_fingerprint="f" * 64, removed_layers=[1, 4], kept_layers=[0, 2, 3, 5],
        layers_before=6, layers_after=4, parameters_before=100, parameters_after=70, method="shapley",
        scores={"evaluations": 12, "rounds": [{"values": [0.5, None, -1.25e-7], "removed": [1, 4]}]},
        params={"calibration": {"window": 24, "source": "lambada"}, "budget": None},
    )
    first = record.save(tmp_path / "a")
    loaded = PruningRecord.load(tmp_path / "a")
    assert loaded == record
    second = loaded.save(tmp_path / "b")
    assert first == tmp_path / "a" / PRUNING_FILE and second.read_bytes() == first.read_bytes()


def test_a_pruned_checkpoint_record_round_trips(tmp_path):
    loaded = load_model(str(save_tiny(tmp_path / "base", "llama", n_layers=4)))
    before = count_parameters(loaded.model)
    removed = prune_layers(loaded, [1, 2])
    record = make_record(loaded, removed, "ppl", before, scores={"evaluations": 3}, params={"seed": 0})
    pruned = save_pruned(loaded, tmp_path / "pruned", record)
    again = PruningRecord.load(pruned)
    assert again == record and again.removed_layers == [1, 2] and again.kept_layers == [0, 3]
    assert again.save(tmp_path / "copy").read_bytes() == (pruned / PRUNING_FILE).read_bytes()


def test_a_record_written_by_the_earlier_code_loads_unchanged(tmp_path):
    shutil.copy(WRITTEN_BEFORE, tmp_path / PRUNING_FILE)
    record = PruningRecord.load(tmp_path)
    assert record.method == "shapley" and record.removed_layers == [4, 5] and record.layers_after == 4
    assert record.scores["rounds"][0]["removed"] == [4, 5] and record.params["calibration"]["window"] == 24
    assert list(asdict(record)) == list(json.loads(WRITTEN_BEFORE.read_text()))  # same keys, same order
    assert record.save(tmp_path / "again").read_bytes() == WRITTEN_BEFORE.read_bytes()


def test_a_folder_without_a_record_is_a_one_line_error(tmp_path):
    with pytest.raises(CoopPruneError) as err:
        PruningRecord.load(tmp_path)
    assert str(err.value) == f"no pruning.json in {tmp_path}"
    assert PruningRecord.load_if_present(tmp_path) is None


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"base_model": "x"}'])
def test_a_damaged_record_is_a_one_line_error(tmp_path, text):
    (tmp_path / PRUNING_FILE).write_text(text)
    with pytest.raises(CoopPruneError, match=r"^corrupt .*pruning\.json: ") as err:
        PruningRecord.load(tmp_path)
    assert "\n" not in str(err.value)


def test_reading_a_record_or_a_gguf_imports_no_torch():
    code = "import sys, coopprune.fetch, coopprune.gguf_io, coopprune.records; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


def test_a_decision_saves_and_loads_symmetrically(tmp_path):
    decision = Decision("game-search", [3, 4], False, "f" * 64, {"evaluations": 12, "rounds": []}, {"prune": {"remove": 2}})
    first = decision.save(tmp_path).read_bytes()
    loaded = Decision.load(tmp_path)
    assert loaded == decision and loaded.players == [3, 4]
    loaded.save(tmp_path)
    assert (tmp_path / DECISION_FILE).read_bytes() == first


def test_a_sublayer_decision_names_its_players_as_the_checkpoint_will():
    decision = Decision("semivalue", [1, 3], True, "f" * 64, {"removed_players": ["0.mlp", "1.attn"]})
    assert decision.players == ["0.mlp", "1.attn"] and decision.removed_players == [1, 3]


def test_a_missing_or_damaged_decision_is_a_one_line_error(tmp_path):
    with pytest.raises(CoopPruneError, match=f"no {DECISION_FILE} in"):
        Decision.load(tmp_path)
    (tmp_path / DECISION_FILE).write_text(json.dumps({"method": "sleb"}))
    with pytest.raises(CoopPruneError, match="corrupt .*missing removed_players, sublayers, base_fingerprint"):
        Decision.load(tmp_path)


def test_a_checkpoint_record_and_a_decision_name_their_players_alike():
    record = PruningRecord("m", "f" * 64, [1], [0, 2], 3, 2, 30, 20, "semivalue", {"removed_players": ["1.mlp"]})
    assert record.players == ["1.mlp"] == Decision("semivalue", [1], True, "f" * 64, record.scores).players
    assert PruningRecord("m", "f" * 64, [1], [0, 2], 3, 2, 30, 20, "sleb").players == [1]
