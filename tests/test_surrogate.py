"""Stage 2 surrogate on synthetic games: determinism, NaN handling, held-out validation,
persistence, and the figures. Epochs are cut so each test takes a few seconds."""

import dataclasses
import json
import sys
import time

import numpy as np
import pytest
import torch

from coopprune.errors import CoopPruneError
from coopprune.metrics import regression_metrics, spearman
from coopprune.plots import plot_contributions, plot_lines, plot_surrogate_fit
from coopprune.surrogate import (
    Surrogate,
    SurrogateConfig,
    evaluate_surrogate,
    fit_validated,
    holdout_split,
    json_safe,
)

L = 16
STRATA = (14, 12, 10, 8)  # kept layers
FAST = SurrogateConfig(epochs=300, seed=0)  # the default 1,500 epochs fit no better on these games
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def stratified_masks(kept, per_stratum: int, n_layers: int = L, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = []
    for k in kept:
        for _ in range(per_stratum):
            mask = np.zeros(n_layers, dtype=bool)
            mask[rng.choice(n_layers, size=k, replace=False)] = True
            rows.append(mask)
    return np.array(rows)


def game(seed: int = 1):
    """Utility = sigmoid(additive + pairwise), with heterogeneous weights so that masks are
    distinguishable within a stratum, not only across strata."""
    rng = np.random.default_rng(seed)
    weights = rng.gamma(2.0, 0.3, L)
    interactions = np.triu(rng.normal(0, 0.08, (L, L)), 1)

    def utility(masks: np.ndarray) -> np.ndarray:
        m = masks.astype(float)
        z = m @ weights + np.einsum("ni,ij,nj->n", m, interactions, m) - 0.8 * weights.sum()
        return 1 / (1 + np.exp(-z))

    return utility


@pytest.fixture(scope="module")
def data():
    utility = game()
    masks = stratified_masks(STRATA, 80)
    outside = stratified_masks((13, 9), 20, seed=5)
    return masks, utility(masks), (outside, utility(outside))


@pytest.fixture(scope="module")
def validated(data):
    masks, utilities, outside = data
    return fit_validated(masks, utilities, FAST, out_of_strata=outside)


def test_fit_is_deterministic_and_leaves_global_state_alone(data):
    masks, utilities, _ = data
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    config = dataclasses.replace(FAST, epochs=60)
    a = Surrogate.fit(masks, utilities, config).predict(masks)
    b = Surrogate.fit(masks, utilities, config).predict(masks)
    c = Surrogate.fit(masks, utilities, dataclasses.replace(config, seed=1)).predict(masks)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads


def test_non_finite_utilities_are_skipped_with_their_masks(data):
    masks, utilities, _ = data
    config = dataclasses.replace(FAST, epochs=40)
    bad = stratified_masks((11,), 3, seed=9)
    noisy_masks = np.concatenate([bad[:1], masks, bad[1:]])
    noisy_utilities = np.concatenate([[np.nan], utilities, [np.inf, -np.inf]])
    clean = Surrogate.fit(masks, utilities, config).predict(masks)
    assert np.array_equal(Surrogate.fit(noisy_masks, noisy_utilities, config).predict(masks), clean)
    metrics = evaluate_surrogate(Surrogate.fit(masks, utilities, config), noisy_masks, noisy_utilities)
    assert metrics["overall"]["n"] == len(masks)
    with pytest.raises(CoopPruneError, match="at least 2 finite"):
        Surrogate.fit(bad, np.full(len(bad), np.nan), config)
    with pytest.raises(CoopPruneError, match=r"masks \[n, L\]"):
        Surrogate.fit(masks, utilities[:-1], config)


def test_fit_validated_holds_out_strata_and_reports_metrics(data, validated):
    masks, utilities, (outside, outside_utilities) = data
    m = validated.metrics
    assert set(m) == {"overall", "per_stratum", "mean_within_stratum_spearman", "out_of_strata", "n_train", "holdout"}
    assert set(m["per_stratum"]) == {str(k) for k in STRATA}
    assert all(s["n"] == 16 for s in m["per_stratum"].values())  # 20% of 80 per stratum
    assert m["overall"]["n"] == 64 and m["n_train"] == 256
    assert m["overall"]["spearman"] > 0.95 and m["overall"]["r2"] > 0.9
    assert m["mean_within_stratum_spearman"] > 0.8
    assert set(m["out_of_strata"]["per_stratum"]) == {"13", "9"}
    assert m["out_of_strata"]["overall"]["spearman"] > 0.9
    assert json.loads(json.dumps(m, allow_nan=False)) == m  # strict JSON, round-trips unchanged
    # The returned surrogate is refitted on everything: it differs from a fit on the training part.
    train = ~holdout_split(masks.sum(1), FAST.holdout, FAST.seed)
    probe = Surrogate.fit(masks[train], utilities[train], FAST)
    assert not np.array_equal(validated.predict(masks), probe.predict(masks))


def test_fit_validated_with_too_few_masks_to_hold_out(data):
    masks, utilities, _ = data
    few = np.concatenate([np.flatnonzero(masks.sum(1) == k)[:1] for k in STRATA])  # one mask per stratum
    surrogate = fit_validated(masks[few], utilities[few], dataclasses.replace(FAST, epochs=20))
    assert surrogate.metrics["overall"] == {"n": 0, "r2": None, "spearman": None, "mae": None}
    assert surrogate.metrics["mean_within_stratum_spearman"] is None and surrogate.metrics["out_of_strata"] is None


def test_paper_recipe_is_selectable_and_runs(data, validated):
    masks, utilities, _ = data
    assert SurrogateConfig(recipe="paper").resolved() == {"epochs": 300, "lr": 0.008, "batch_size": 300}
    assert SurrogateConfig(recipe="paper", epochs=5).resolved()["epochs"] == 5
    assert SurrogateConfig().resolved() == {"epochs": 1500, "lr": 3e-3, "batch_size": 32}
    paper = Surrogate.fit(masks, utilities, SurrogateConfig(recipe="paper"))
    pred = paper.predict(masks)
    assert paper.config.recipe == "paper" and np.isfinite(pred).all() and ((pred > 0) & (pred < 1)).all()
    # As measured on SmolLM2 (PAPER_NOTES): ~1 SGD step per epoch does not fit a few hundred masks.
    literal = fit_validated(masks, utilities, SurrogateConfig(recipe="paper")).metrics
    assert literal["overall"]["spearman"] < validated.metrics["overall"]["spearman"] - 0.3
    with pytest.raises(CoopPruneError, match="unknown surrogate recipe"):
        SurrogateConfig(recipe="sgd")  # type: ignore[arg-type]


def test_config_validation_and_params_section_fields():
    with pytest.raises(CoopPruneError, match="holdout"):
        SurrogateConfig(holdout=1.0)
    with pytest.raises(CoopPruneError, match="ensemble"):
        SurrogateConfig(ensemble=0)
    from coopprune.config import SurrogateParams

    config = SurrogateConfig(**SurrogateParams(holdout=0.3, ensemble=2).model_dump())
    assert config.holdout == 0.3 and config.ensemble == 2


def test_ensemble_spread(data):
    masks, utilities, _ = data
    ensemble = Surrogate.fit(masks, utilities, dataclasses.replace(FAST, epochs=60, ensemble=3))
    queries = stratified_masks((15, 11, 6), 10, seed=3)
    mean, std = ensemble.predict(queries, return_std=True)
    assert mean.shape == std.shape == (len(queries),)
    assert (std > 0).all()
    members = [Surrogate(ensemble.config, L, [m], ensemble.scale).predict(queries) for m in ensemble.members]
    np.testing.assert_allclose(mean, np.mean(members, 0), rtol=1e-12)
    np.testing.assert_allclose(std, np.std(members, 0), rtol=1e-9)
    single = Surrogate.fit(masks, utilities, dataclasses.replace(FAST, epochs=10))
    assert (single.predict(queries, return_std=True)[1] == 0).all()


def test_predict_is_vectorized_and_fast(data):
    masks, utilities, _ = data
    surrogate = Surrogate.fit(masks, utilities, dataclasses.replace(FAST, epochs=5))
    np.testing.assert_allclose(surrogate.predict(masks, batch=7), surrogate.predict(masks), rtol=1e-6)
    big = np.random.default_rng(0).random((1_000_000, L)) < 0.7
    start = time.perf_counter()
    assert surrogate.predict(big).shape == (1_000_000,)
    assert time.perf_counter() - start < 10  # about 0.3 s for 16 layers on 2 cores; generous for a busy machine
    with pytest.raises(ValueError, match="masks must be"):
        surrogate.predict(masks[:, :-1])


def test_utilities_outside_unit_interval_are_rescaled(data):
    masks, utilities, _ = data
    logits = np.log(utilities / (1 - utilities))  # a utility on an unbounded scale
    surrogate = Surrogate.fit(masks, logits, dataclasses.replace(FAST, epochs=100))
    assert surrogate.scale == (logits.min(), logits.max())
    assert regression_metrics(logits, surrogate.predict(masks))["spearman"] > 0.9


def test_save_load_round_trip(tmp_path, validated, data):
    masks = data[0]
    folder = tmp_path / "run" / "surrogate"
    (folder.parent).mkdir()
    validated.save(folder)
    validated.save(folder)  # overwriting an existing surrogate is fine
    loaded = Surrogate.load(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["heldout_fit.png", "surrogate.json", "surrogate.safetensors"]
    assert [p.name for p in folder.parent.iterdir()] == ["surrogate"]  # no temporary leftovers
    assert loaded.config == validated.config and loaded.n_layers == L and loaded.scale == validated.scale
    assert loaded.metrics == validated.metrics
    mean, std = loaded.predict(masks, return_std=True)
    assert np.array_equal(mean, validated.predict(masks)) and std.shape == mean.shape
    json.loads((folder / "surrogate.json").read_text(), parse_constant=pytest.fail)  # strict JSON
    (folder.parent / "checkpoint.bin").write_bytes(b"precious")
    with pytest.raises(CoopPruneError, match="refusing to save"):  # never wipes a folder it does not own
        validated.save(folder.parent)
    assert (folder.parent / "checkpoint.bin").read_bytes() == b"precious"


def test_save_writes_nan_metrics_as_null(tmp_path, data):
    masks, utilities, _ = data
    surrogate = Surrogate.fit(masks, utilities, dataclasses.replace(FAST, epochs=5, ensemble=2))
    surrogate.metrics = {"r2": float("nan"), "per_stratum": {14: np.float64(0.5)}}
    surrogate.save(tmp_path / "s")
    loaded = Surrogate.load(tmp_path / "s")
    assert loaded.metrics == {"r2": None, "per_stratum": {"14": 0.5}} == json_safe(surrogate.metrics)
    assert np.array_equal(loaded.predict(masks, return_std=True)[1], surrogate.predict(masks, return_std=True)[1])
    meta = tmp_path / "s" / "surrogate.json"
    meta.write_text(meta.read_text().replace('"ensemble": 2', '"ensemble": 1'))
    with pytest.raises(CoopPruneError, match="more than 1 member"):
        Surrogate.load(tmp_path / "s")


def test_load_errors_are_one_line(tmp_path, data):
    masks, utilities, _ = data
    with pytest.raises(CoopPruneError, match="no surrogate in") as missing:
        Surrogate.load(tmp_path / "nowhere")
    Surrogate.fit(masks, utilities, dataclasses.replace(FAST, epochs=5)).save(tmp_path / "s")
    weights, meta = tmp_path / "s" / "surrogate.safetensors", tmp_path / "s" / "surrogate.json"
    good_weights, good_meta = weights.read_bytes(), meta.read_text()
    errors = [missing.value]
    for corrupt in (
        lambda: weights.write_bytes(good_weights[:50]),
        lambda: meta.write_text("{not json"),
        lambda: meta.write_text(good_meta.replace('"ensemble": 1', '"ensemble": 2')),  # member1 absent
        lambda: meta.write_text(good_meta.replace(f'"n_layers": {L}', '"n_layers": 9')),
        lambda: meta.write_text(good_meta.replace('"recipe": "adam"', '"recipe": "sgd"')),
        lambda: meta.write_text(good_meta.replace('"holdout"', '"unknown_field"')),
    ):
        weights.write_bytes(good_weights)
        meta.write_text(good_meta)
        corrupt()
        with pytest.raises(CoopPruneError, match="corrupt surrogate in") as err:
            Surrogate.load(tmp_path / "s")
        errors.append(err.value)
    assert all("\n" not in str(e) for e in errors)


def test_holdout_split_is_stratified_and_seeded():
    n_kept = np.repeat([14, 12, 10, 8], [50, 10, 3, 1])
    held = holdout_split(n_kept, 0.2, seed=4)
    assert [held[n_kept == k].sum() for k in (14, 12, 10, 8)] == [10, 2, 1, 0]  # a stratum keeps one row
    assert np.array_equal(held, holdout_split(n_kept, 0.2, seed=4))
    assert not np.array_equal(held, holdout_split(n_kept, 0.2, seed=5))
    with pytest.raises(CoopPruneError, match="fraction"):
        holdout_split(n_kept, 0.0, seed=0)


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman(np.ones(5), b[:5]) is None and spearman(a[:2], b[:2]) is None


def test_plots_are_complete_pngs(tmp_path, validated, data):
    masks, utilities, _ = data
    pred = validated.predict(masks)
    plot_surrogate_fit(utilities, pred, masks.sum(1), tmp_path / "fit.png", title="held-out fit")
    values = np.linspace(-0.1, 0.5, L)
    plot_contributions(values, values - 0.05, values + 0.05, [0, 3], tmp_path / "contrib.png",
                       names=[f"layer {i}" for i in range(L)], title="semivalue")
    plot_contributions(values, None, None, [], tmp_path / "nointervals.png")
    plot_surrogate_fit(np.array([]), np.array([]), np.array([]), tmp_path / "empty.png")
    plot_lines({"a": ([64, 128], [0.5, 0.9]), "b": ([64, 128], [1.0, 2.0])}, tmp_path / "lines.png", "budget", "Spearman",
               logx=True, logy=True)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["contrib.png", "empty.png", "fit.png", "lines.png", "nointervals.png"]  # nothing half-written left
    for name in files:
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or not pyplot.get_fignums()  # no global figures created
