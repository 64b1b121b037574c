"""The prune decision: the configured method scores the layers (or sublayers) on the calibration
game, the least-contributing ones go, and the checkpoint is saved without them with its report
(or ``decision.json`` is written, for ``apply_decision`` to prune later). ``prune_from_params``
runs it as the params configure it, on the sweep's mask store."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coopprune.atomic import atomic_dir
from coopprune.config import Params
from coopprune.dataset import MaskDataset
from coopprune.errors import CoopPruneError
from coopprune.estimators import ESTIMATORS, Estimator, get_estimator
from coopprune.game import LayerGame
from coopprune.models import load_model
from coopprune.pipeline.inputs import build_evaluator, calibration_for, estimator_options, model_depth, screen_windows
from coopprune.pipeline.store import check_store, empty_store, masks_dir, merge_sweep, search_store
from coopprune.prune import check_output_dir, count_parameters, make_record, prune_layers, save_pruned
from coopprune.records import ATTRIBUTION_FILE, DECISION_FILE, INTERACTIONS_FILE, Decision
from coopprune.report import write_report
from coopprune.sampling import normalize_layers, removal_count
from coopprune.strategy import Selection, select_by_cost, select_players
from coopprune.sublayers import check_sublayers, sublayer_parameters, zero_half_layers

if TYPE_CHECKING:
    from coopprune.calibration import Windows
    from coopprune.choices import ChoiceCalibration
    from coopprune.mixture import Calibration
    from coopprune.models import LoadedModel


@dataclass
class PruneResult:
    out_dir: Path
    removed_layers: list[int]
    selection: Selection | None  # None when a recorded decision was applied
    recorded_evaluations: int = 0

    @property
    def evaluations(self) -> int:
        return self.selection.evaluations if self.selection is not None else self.recorded_evaluations


@dataclass(frozen=True)
class PruneRequest:
    """One pruning job: the validated params (model, calibration, game, sampling, surrogate and
    prune sections are read) plus where it writes. The single way into :func:`prune`; the CLI,
    the flow and the benches build one instead of passing two dozen keywords."""

    params: Params
    out_dir: Path
    masks: Path | None = None  # a mask dataset of the same model and calibration to reuse and extend
    screen_masks: Path | None = None  # one on the method's screen windows (a sweep run there), reused and extended
    create_masks: bool = False  # ``masks`` is this search's own cache: started empty where absent or of another game
    overwrite: bool = False
    decision_only: bool = False  # contributions report + decision.json, no checkpoint (two DVC stages)
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        for name in ("masks", "screen_masks"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))


def prune(request: PruneRequest) -> PruneResult:
    """Score every layer with the method, remove the least-contributing ones, save the checkpoint.

    ``prune.iterative``: layers removed per round (the game is re-run on the pruned model between
    rounds). ``masks``: a mask dataset of the same model and calibration (e.g. the sweep's) whose
    evaluations are reused and extended; ``screen_masks``: one on the windows a lower-fidelity
    method searches on (``Estimator.screen_windows``), reused and extended by its screen (a
    ``masks`` dataset on those windows, as ``coopprune sweep`` writes under a fidelity, is taken as
    one). ``decision_only``: write the contributions report and
    ``decision.json`` to ``out_dir`` instead of a checkpoint (``apply_decision`` prunes later:
    the two DVC stages). Every argument is checked before weights are read.
    """
    checked = _check_request(request)
    played = _play(request, checked)
    params_before = count_parameters(played.loaded.model)
    selection, removed_layers, extra_scores = _select(request, checked, played)
    scores = _scores(selection, extra_scores)
    run_params = _run_params(request, checked, played)
    if request.decision_only:
        return _write_decision(request, checked, played, selection, scores, run_params)
    return _save_checkpoint(request, checked, played, selection, removed_layers, params_before, scores, run_params)


@dataclass
class _Checked:
    """What ``prune`` settles before it reads any weights, so a bad argument fails in seconds."""

    out: Path
    sublayers: bool
    n_layers: int
    estimator: Estimator
    options: dict[str, Any]  # what the estimator was built with, for the record
    k: int
    protected: tuple[int, ...]
    store: MaskDataset | None  # None where the search's own store is created after loading
    screen_store: MaskDataset | None
    screen_rows: list[int] | None
    calibration: Calibration | ChoiceCalibration
    docs: Any


@dataclass
class _Played:
    """The loaded model and the calibration game on it, its mask stores checked against both."""

    loaded: LoadedModel
    windows: Windows
    game: LayerGame
    names: list[str]


def _check_request(request: PruneRequest) -> _Checked:
    """Every argument, the model's config and the calibration source, checked in the order the
    errors have always come, before the weights are read."""
    r, p, c, m = request, request.params.prune, request.params.calibration, request.params.model
    game_params = request.params.game
    out = check_output_dir(r.out_dir, r.overwrite)
    sublayers = p.players == "sublayers"
    if sublayers and p.iterative is not None:
        raise CoopPruneError("iterative pruning works on layer players; use one shot with --players sublayers")
    n_layers, architecture = model_depth(m.source, m.revision, m.trust_remote_code, with_architecture=True)
    options = estimator_options(request.params, n_layers)
    estimator = get_estimator(p.method, **options)
    if sublayers:
        check_sublayers(architecture)
    k = removal_count(n_layers, p.remove, p.ratio)
    prot = normalize_layers(game_params.protected, n_layers)
    if k > n_layers - len(prot):
        raise CoopPruneError(f"cannot remove {k} layers: protected layers {list(prot)} leave {n_layers - len(prot)}")
    if p.iterative is not None and not 1 <= p.iterative <= k:
        raise CoopPruneError(f"--iterative takes a number of layers per round in [1, {k}], got {p.iterative}")
    estimator.check(2 * n_layers if sublayers else n_layers, p.iterative or k, p.budget, c.n_windows)
    store = MaskDataset.open(r.masks) if r.masks is not None and not r.create_masks else None  # else: after loading
    screen_store = MaskDataset.open(r.screen_masks) if r.screen_masks is not None else None
    screen_rows = estimator.screen_windows(c.n_windows, request.params.sampling.seed)
    if screen_store is not None and (screen_rows is None or sublayers):
        raise CoopPruneError(f"method '{p.method}' does not search on a share of the windows here: "
                             f"the screen mask dataset {r.screen_masks} is of no use to it")
    calibration = calibration_for(request.params)
    docs = calibration.documents()  # a bad source fails before the weights are read
    return _Checked(out, sublayers, n_layers, estimator, options, k, prot, store, screen_store, screen_rows,
                    calibration, docs)


def _play(request: PruneRequest, checked: _Checked) -> _Played:
    """Load the model, tokenize the calibration and set the game up on the stores whose
    evaluations it reuses (a sweep's store on the screen windows is taken as the screen's)."""
    r, c, m, game_params = request, request.params.calibration, request.params.model, request.params.game
    sublayers, store, screen_store = checked.sublayers, checked.store, checked.screen_store
    screen_rows = checked.screen_rows
    loaded = load_model(m.source, m.revision, m.trust_remote_code, m.dtype, m.device)
    windows = checked.calibration.windows(loaded.tokenizer, checked.docs)  # type: ignore[arg-type]
    if windows.n_windows != c.n_windows:  # multiple-choice rows: n_windows counts their items
        screen_rows = checked.estimator.screen_windows(windows.n_windows, request.params.sampling.seed)
    screen_fingerprint = windows.subset(screen_rows).fingerprint if screen_rows is not None else None
    if (store is not None and screen_store is None and screen_fingerprint is not None and not sublayers
            and store.manifest.identity.calibration_fingerprint == screen_fingerprint):
        store, screen_store = None, store  # `coopprune sweep` under a fidelity ran there: the screen's store
    if store is not None:
        check_store(store, loaded.fingerprint, windows.fingerprint)
    screens = {}
    if screen_store is not None:
        assert screen_rows is not None and screen_fingerprint is not None
        check_store(screen_store, loaded.fingerprint, screen_fingerprint)
        screens = {tuple(screen_rows): screen_store}
    evaluator = build_evaluator(loaded, windows, c.batch_size, game_params, sublayers)
    prot = checked.protected
    protected_players = [2 * i + h for i in prot for h in (0, 1)] if sublayers else list(prot)
    if r.masks is not None and store is None:
        store = empty_store(r.masks, evaluator, loaded.fingerprint, windows.fingerprint, game_params)
    game = LayerGame(evaluator, game_params.utility, protected=protected_players, store=store, progress=r.progress,
                     screen_stores=screens)
    return _Played(loaded, windows, game, game.player_names)


def _select(request: PruneRequest, checked: _Checked, played: _Played) -> tuple[Selection, list[int], dict[str, Any]]:
    """Run the method: k layers (per round where iterative), or for sublayer players k average
    layers' worth of parameters, zeroing the chosen halves unless only the decision is wanted.
    Returns the selection, the layers to drop from the checkpoint and the sublayer scores."""
    p, seed, loaded = request.params.prune, request.params.sampling.seed, played.loaded
    if not checked.sublayers:
        selection = select_players(played.game, checked.estimator, checked.k, per_round=p.iterative, budget=p.budget,
                                   seed=seed)
        return selection, selection.removed, {}
    costs = sublayer_parameters(loaded.model, loaded.architecture)
    max_cost = round(checked.k * sum(costs) / checked.n_layers)  # k average layers' worth of parameters
    selection = select_by_cost(played.game, checked.estimator, costs, max_cost, p.budget, seed)
    removed_layers = ([] if request.decision_only
                      else zero_half_layers(loaded.model, loaded.architecture, selection.removed))
    extra_scores = {
        "players": "sublayers",
        "removed_players": [played.names[i] for i in selection.removed],
        "parameters_removed_effective": int(sum(costs[i] for i in selection.removed)),
        "parameter_budget": max_cost,
        "note": "half-removed layers are stored with zeroed output projections (exact; the dead weights stay on disk)",
    }
    return selection, removed_layers, extra_scores


def _scores(selection: Selection, extra_scores: dict[str, Any]) -> dict[str, Any]:
    """The record's ``scores``: what the search cost and each round's contributions."""
    return {
        "evaluations": selection.evaluations,
        "passes": round(sum(rnd.contributions.passes for rnd in selection.rounds), 3),
        "seconds": round(selection.seconds, 3),
        **extra_scores,
        "rounds": [{"players": rnd.players, "removed": rnd.removed, **rnd.contributions.to_json()} for rnd in selection.rounds],
    }


def _run_params(request: PruneRequest, checked: _Checked, played: _Played) -> dict[str, Any]:
    """The record's ``params``: enough to tell which game and method made the decision."""
    r, p, c = request, request.params.prune, request.params.calibration
    return {
        "calibration": {"source": checked.calibration.label, "n_windows": c.n_windows, "window": c.window,
                        "seed": c.seed,
                        "fingerprint": played.windows.fingerprint, **({"mix": dict(c.mix)} if c.mix else {})},
        "utility": played.game.utility_id,
        "players": p.players,
        "protected": list(checked.protected),
        "budget": p.budget,
        "iterative": p.iterative,
        "masks": str(r.masks) if r.masks is not None else None,
        "screen_masks": str(r.screen_masks) if r.screen_masks is not None else None,
        "estimator_options": {key: str(v) for key, v in checked.options.items()},
    }


def _write_decision(request: PruneRequest, checked: _Checked, played: _Played, selection: Selection,
                    scores: dict[str, Any], run_params: dict[str, Any]) -> PruneResult:
    """``decision_only``: the report and ``decision.json``, for ``apply_decision`` to prune later."""
    decision = Decision(request.params.prune.method, selection.removed, checked.sublayers,
                        played.loaded.fingerprint, scores, run_params)
    with atomic_dir(checked.out, overwrite=request.overwrite) as tmp:
        write_report(tmp, selection, played.names, selection.surrogate)
        decision.save(tmp)
    return PruneResult(checked.out, selection.removed, selection)


def _save_checkpoint(request: PruneRequest, checked: _Checked, played: _Played, selection: Selection,
                     removed_layers: list[int], params_before: int, scores: dict[str, Any],
                     run_params: dict[str, Any]) -> PruneResult:
    """Drop the removed layers and save the checkpoint with its record and the report."""
    loaded, names, surrogate = played.loaded, played.names, selection.surrogate
    if removed_layers:
        prune_layers(loaded, removed_layers)
    record = make_record(loaded, removed_layers, request.params.prune.method, params_before, scores=scores,
                         params=run_params)
    save_pruned(
        loaded, checked.out, record, overwrite=request.overwrite,
        extra=lambda folder: write_report(folder, selection, names, surrogate),
    )
    return PruneResult(checked.out, removed_layers, selection)


REPORT_FILES = ("contributions.csv", "contributions.png", "surrogate", ATTRIBUTION_FILE, INTERACTIONS_FILE)


def apply_decision(
    model: str, decision_dir: str | Path, out_dir: str | Path, overwrite: bool = False,
    trust_remote_code: bool = False, dtype: str = "float32",
) -> PruneResult:
    """Prune ``model`` as a ``decision_only`` run decided, and save it with that run's report.

    ``dtype`` must be the one the decision was made in (the base model's fingerprint is checked).
    """
    decision_dir = Path(decision_dir)
    if not (decision_dir / DECISION_FILE).is_file():
        raise CoopPruneError(f"no {DECISION_FILE} in {decision_dir}: run the contributions step first")
    decision = Decision.load(decision_dir)
    out = check_output_dir(out_dir, overwrite)
    loaded = load_model(model, trust_remote_code=trust_remote_code, dtype=dtype)
    if loaded.fingerprint != decision.base_fingerprint:
        raise CoopPruneError(f"{decision_dir} was decided on a different model (fingerprint differs)")
    params_before = count_parameters(loaded.model)
    removed = decision.removed_players
    if decision.sublayers:
        removed = zero_half_layers(loaded.model, loaded.architecture, removed)
    if removed:
        prune_layers(loaded, removed)
    record = make_record(loaded, removed, decision.method, params_before,
                         scores=decision.scores, params=decision.params)

    def copy_report(folder: Path) -> None:
        for name in REPORT_FILES:
            src = decision_dir / name
            if src.is_dir():
                shutil.copytree(src, folder / name)
            elif src.is_file():
                shutil.copyfile(src, folder / name)

    save_pruned(loaded, out, record, overwrite=overwrite, extra=copy_report)
    return PruneResult(out, removed, None, decision.scores["evaluations"])


def prune_from_params(
    params: Params, dataset: MaskDataset | None = None, progress: bool = True, decision_only: bool = False
) -> PruneResult:
    """``prune`` as configured in params, reusing (and extending) the sweep's mask dataset;
    ``decision_only`` writes ``<output_dir>/contributions`` for ``apply_decision`` instead.
    Methods whose budget is a sweep's size get the sweep's unless ``prune.budget`` says. For a
    method that searches on a share of the windows first, the sweep ran there (``sweep_setup``):
    its copy is the screen's store, and the evaluations on every window get ``<output_dir>/search``."""
    sweep = dataset or merge_sweep(masks_dir(params))
    if screen_windows(params, sweep.manifest.identity.n_layers) is None:
        stores: dict[str, Any] = {"masks": search_store(params, sweep).path}
        (Path(params.output_dir) / "search-screen").mkdir(parents=True, exist_ok=True)  # a DVC output either way
    else:
        stores = {"masks": Path(params.output_dir) / "search", "create_masks": True,
                  "screen_masks": search_store(params, sweep, "search-screen").path}
    out = Path(params.output_dir) / ("contributions" if decision_only else "pruned")
    prune_params = params.prune
    if prune_params.budget is None and ESTIMATORS[prune_params.method].budget_is_sweep:
        prune_params = prune_params.model_copy(update={"budget": len(sweep.manifest.plan)})
    return prune(PruneRequest(params.model_copy(update={"prune": prune_params}), out, **stores,
                              overwrite=True, progress=progress, decision_only=decision_only))


def removal_order(record: dict[str, Any]) -> list[int]:
    """Removed layers in the order the method gave them up: by round, lowest contribution first."""
    order: list[int] = []
    for rnd in record["scores"]["rounds"]:
        value = dict(zip(rnd["players"], rnd["values"]))
        order += sorted(rnd["removed"], key=lambda p: (value.get(p) is not None, value.get(p) or 0.0))
    return [p for p in order if p in record["removed_layers"]] if record["scores"].get("players") != "sublayers" else []
