"""The Python API behind the CLI: each function is one user-level job, built from the library."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from coopprune.atomic import atomic_dir, write_csv, write_json
from coopprune.calibration import Windows, evaluation_windows, load_texts, text_fingerprint
from coopprune.config import GameParams, Params
from coopprune.dataset import Identity, Manifest, MaskDataset
from coopprune.domains import evaluation_texts
from coopprune.engine import MaskEvaluator
from coopprune.errors import CoopPruneError
from coopprune.estimators import ESTIMATORS, get_estimator
from coopprune.evaluate import PerplexityResult, perplexity
from coopprune.game import LayerGame
from coopprune.mixture import Calibration
from coopprune.models import LoadedModel, load_model
from coopprune.models.architectures import architecture_for
from coopprune.models.loading import load_config, model_fingerprint
from coopprune.objective import DomainAggregate, objective_for
from coopprune.prune import check_output_dir, count_parameters, make_record, prune_layers, save_pruned
from coopprune.records import ATTRIBUTION_FILE, INTERACTIONS_FILE, PruningRecord
from coopprune.report import write_report
from coopprune.sampling import StrataPlan, normalize_layers, removal_count
from coopprune.strategy import Selection, select_by_cost, select_players
from coopprune.sublayers import SublayerEvaluator, check_sublayers, sublayer_parameters, zero_half_layers
from coopprune.surrogate import Surrogate, SurrogateConfig, fit_validated
from coopprune.sweep import plan_manifest, run_shard, run_sweep
from coopprune.utility import utility_spec

if TYPE_CHECKING:
    from coopprune.choices import ChoiceCalibration


def model_depth(source: str, revision: str | None = None, trust_remote_code: bool = False, with_architecture: bool = False):
    """Number of decoder layers (and the family adapter), from the config alone: fails fast on unsupported models."""
    _, config = load_config(source, revision, trust_remote_code)
    arch = architecture_for(config)
    depth = int(getattr(config, arch.num_layers_attr))
    return (depth, arch) if with_architecture else depth




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


def calibration_for(params: Params) -> Calibration | ChoiceCalibration:
    """What the game is played on: calibration text, or, for a utility of the multiple-choice
    objective (``mc_margin``), the zero-shot tasks' reserved items (``calibration.n_windows`` of
    them in all). Both read and check their data in ``documents()`` and tokenize in ``windows()``."""
    if utility_spec(params.game.utility).objective == "mc":
        from coopprune.choices import ChoiceCalibration

        return ChoiceCalibration.from_params(params.calibration)
    return Calibration.from_params(params.calibration)


def build_evaluator(loaded: LoadedModel, windows: Windows, batch_size: int, game: GameParams,
                    sublayers: bool = False) -> MaskEvaluator:
    """The engine on these windows, reducing logits to what the game's utility needs (per domain
    first, where ``game.aggregate`` combines a mixture's domains; the multiple-choice objective
    comes with its rows, from :func:`calibration_for`)."""
    ids = windows.input_ids
    vocab = int(loaded.model.get_output_embeddings().weight.shape[0])
    tokens = int(ids.shape[0] * (ids.shape[1] - 1))
    kind = utility_spec(game.utility).objective
    if kind == "mc":
        objective = getattr(windows, "objective", None)
        if objective is None:
            raise CoopPruneError(f"utility '{game.utility}' scores multiple-choice rows (coopprune.choices), not text windows")
    else:
        objective = objective_for(kind, tokens, vocab, game.kl_top_k)
    if game.aggregate != "mean":
        if windows.groups is None:
            raise CoopPruneError(f"game.aggregate '{game.aggregate}' needs a calibration mix")
        objective = DomainAggregate(objective, windows.groups, game.aggregate, game.temperature)
    return (SublayerEvaluator if sublayers else MaskEvaluator)(
        loaded.model, loaded.architecture, ids, batch_size, objective=objective)


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
    r, p, c, m = request, request.params.prune, request.params.calibration, request.params.model
    game_params = request.params.game
    out = check_output_dir(r.out_dir, r.overwrite)
    sublayers = p.players == "sublayers"
    if sublayers and p.iterative is not None:
        raise CoopPruneError("iterative pruning works on layer players; use one shot with --players sublayers")
    n_layers, architecture = model_depth(m.source, m.revision, m.trust_remote_code, with_architecture=True)
    estimator = get_estimator(p.method, **estimator_options(request.params, n_layers))
    if sublayers:
        check_sublayers(architecture)
    k = removal_count(n_layers, p.remove, p.ratio)
    prot = normalize_layers(game_params.protected, n_layers)
    if k > n_layers - len(prot):
        raise CoopPruneError(f"cannot remove {k} layers: protected layers {list(prot)} leave {n_layers - len(prot)}")
    if p.iterative is not None and not 1 <= p.iterative <= k:
        raise CoopPruneError(f"--iterative takes a number of layers per round in [1, {k}], got {p.iterative}")
    budget = p.budget
    estimator.check(2 * n_layers if sublayers else n_layers, p.iterative or k, budget, c.n_windows)
    store = MaskDataset.open(r.masks) if r.masks is not None and not r.create_masks else None  # else: after loading
    screen_store = MaskDataset.open(r.screen_masks) if r.screen_masks is not None else None
    estimator_seed = request.params.sampling.seed
    screen_rows = estimator.screen_windows(c.n_windows, estimator_seed)
    if screen_store is not None and (screen_rows is None or sublayers):
        raise CoopPruneError(f"method '{p.method}' does not search on a share of the windows here: "
                             f"the screen mask dataset {r.screen_masks} is of no use to it")
    calibration = calibration_for(request.params)
    docs = calibration.documents()  # a bad source fails before the weights are read

    loaded = load_model(m.source, m.revision, m.trust_remote_code, m.dtype, m.device)
    windows = calibration.windows(loaded.tokenizer, docs)  # type: ignore[arg-type]
    if windows.n_windows != c.n_windows:  # multiple-choice rows: n_windows counts their items
        screen_rows = estimator.screen_windows(windows.n_windows, estimator_seed)
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
    protected_players = [2 * i + h for i in prot for h in (0, 1)] if sublayers else list(prot)
    if r.masks is not None and store is None:
        store = empty_store(r.masks, evaluator, loaded.fingerprint, windows.fingerprint, game_params)
    game = LayerGame(evaluator, game_params.utility, protected=protected_players, store=store, progress=r.progress,
                     screen_stores=screens)
    names = game.player_names
    params_before = count_parameters(loaded.model)
    extra_scores: dict[str, Any] = {}
    if sublayers:
        costs = sublayer_parameters(loaded.model, loaded.architecture)
        max_cost = round(k * sum(costs) / n_layers)  # k average layers' worth of parameters
        selection = select_by_cost(game, estimator, costs, max_cost, budget, estimator_seed)
        removed_layers = [] if r.decision_only else zero_half_layers(loaded.model, loaded.architecture, selection.removed)
        extra_scores = {
            "players": "sublayers",
            "removed_players": [names[i] for i in selection.removed],
            "parameters_removed_effective": int(sum(costs[i] for i in selection.removed)),
            "parameter_budget": max_cost,
            "note": "half-removed layers are stored with zeroed output projections (exact; the dead weights stay on disk)",
        }
    else:
        selection = select_players(game, estimator, k, per_round=p.iterative, budget=budget, seed=estimator_seed)
        removed_layers = selection.removed
    scores = {
        "evaluations": selection.evaluations,
        "passes": round(sum(rnd.contributions.passes for rnd in selection.rounds), 3),
        "seconds": round(selection.seconds, 3),
        **extra_scores,
        "rounds": [{"players": rnd.players, "removed": rnd.removed, **rnd.contributions.to_json()} for rnd in selection.rounds],
    }
    run_params = {
        "calibration": {"source": calibration.label, "n_windows": c.n_windows, "window": c.window, "seed": c.seed,
                        "fingerprint": windows.fingerprint, **({"mix": dict(c.mix)} if c.mix else {})},
        "utility": game.utility_id,
        "players": p.players,
        "protected": list(prot),
        "budget": budget,
        "iterative": p.iterative,
        "masks": str(r.masks) if r.masks is not None else None,
        "screen_masks": str(r.screen_masks) if r.screen_masks is not None else None,
        "estimator_options": {key: str(v) for key, v in estimator_options(request.params, n_layers).items()},
    }
    surrogate = selection.surrogate
    if r.decision_only:
        decision = {"method": p.method, "removed_players": selection.removed, "sublayers": sublayers,
                    "base_fingerprint": loaded.fingerprint, "scores": scores, "params": run_params}
        with atomic_dir(out, overwrite=r.overwrite) as tmp:
            write_report(tmp, selection, names, surrogate)
            write_json(tmp / DECISION_FILE, decision)
        return PruneResult(out, selection.removed, selection)
    if removed_layers:
        prune_layers(loaded, removed_layers)
    record = make_record(loaded, removed_layers, p.method, params_before, scores=scores, params=run_params)
    save_pruned(
        loaded, out, record, overwrite=r.overwrite,
        extra=lambda folder: write_report(folder, selection, names, surrogate),
    )
    return PruneResult(out, removed_layers, selection)


DECISION_FILE = "decision.json"
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
    decision = json.loads((decision_dir / DECISION_FILE).read_text())
    out = check_output_dir(out_dir, overwrite)
    loaded = load_model(model, trust_remote_code=trust_remote_code, dtype=dtype)
    if loaded.fingerprint != decision["base_fingerprint"]:
        raise CoopPruneError(f"{decision_dir} was decided on a different model (fingerprint differs)")
    params_before = count_parameters(loaded.model)
    removed = decision["removed_players"]
    if decision["sublayers"]:
        removed = zero_half_layers(loaded.model, loaded.architecture, removed)
    if removed:
        prune_layers(loaded, removed)
    record = make_record(loaded, removed, decision["method"], params_before,
                         scores=decision["scores"], params=decision["params"])

    def copy_report(folder: Path) -> None:
        for name in REPORT_FILES:
            src = decision_dir / name
            if src.is_dir():
                shutil.copytree(src, folder / name)
            elif src.is_file():
                shutil.copyfile(src, folder / name)

    save_pruned(loaded, out, record, overwrite=overwrite, extra=copy_report)
    return PruneResult(out, removed, None, decision["scores"]["evaluations"])


def estimator_options(params: Params, n_layers: int) -> dict[str, Any]:
    """Constructor options of the configured method: what it takes from the params
    (``Estimator.options_from_params``), then ``prune.options`` on top."""
    cls = ESTIMATORS[params.prune.method]
    return {**cls.options_from_params(params, n_layers), **params.prune.method_options}


def screen_windows(params: Params, n_layers: int, n_windows: int | None = None) -> list[int] | None:
    """The calibration windows the configured method searches on before confirming on all of them
    (its lower fidelity), or None: where a Stage-1 sweep is of use to it. ``n_windows``: the rows
    the game has where they are not ``calibration.n_windows`` (multiple-choice rows)."""
    if params.prune.players != "layers":
        return None
    estimator = get_estimator(params.prune.method, **estimator_options(params, n_layers))
    return estimator.screen_windows(n_windows or params.calibration.n_windows, params.sampling.seed)


def empty_store(path: Path, evaluator: MaskEvaluator, model_fingerprint: str, calibration_fingerprint: str,
                game: GameParams) -> MaskDataset:
    """A mask dataset with nothing planned, for the evaluations a search makes on these windows:
    resumed where one of the same identity is there, replaced where one of another game is (a
    cache of what this output folder ran before, never a user's sweep)."""
    identity = Identity(model_fingerprint, calibration_fingerprint, game.utility + evaluator.objective.id_suffix,
                        evaluator.n_players, evaluator.full_loss)
    if (path / "manifest.json").is_file():
        store = MaskDataset.open(path)
        if store.manifest.identity.matches(identity):
            return store
        shutil.rmtree(path)
    return MaskDataset.create_or_resume(path, Manifest(identity=identity))


def check_store(store: MaskDataset, model_fingerprint: str, calibration_fingerprint: str) -> None:
    """A mask dataset can only be reused for the same model weights and calibration tokens."""
    identity = store.manifest.identity
    if identity.model_fingerprint != model_fingerprint:
        raise CoopPruneError(f"mask dataset {store.path} was evaluated on a different model (fingerprint differs)")
    if identity.calibration_fingerprint != calibration_fingerprint:
        raise CoopPruneError(f"mask dataset {store.path} used different calibration windows (fingerprint differs)")


def evaluate_perplexity(
    checkpoint: str, text: str = "boolq", window: int = 128, max_windows: int | None = 64, batch_size: int = 8,
    progress: bool = True, device: str = "cpu",
) -> PerplexityResult:
    """Perplexity of a checkpoint (or hub id) on held-out text with ``window``-token windows."""
    docs = load_texts(text)
    return held_out_perplexity(load_model(checkpoint, device=device), docs, window, max_windows, batch_size, progress)


def held_out_perplexity(
    loaded: LoadedModel, docs: list[str], window: int, max_windows: int | None, batch_size: int, progress: bool
) -> PerplexityResult:
    return perplexity(loaded.model, evaluation_windows(loaded.tokenizer, docs, window, max_windows), batch_size, progress)


@dataclass
class SweepSetup:
    """What every part of a sweep needs: the engine on the calibration windows and the plan."""

    evaluator: MaskEvaluator
    manifest: Manifest


def sweep_setup(params: Params) -> SweepSetup:
    """Load the model and calibration and derive the (seeded, deterministic) sharded plan."""
    n_layers = model_depth(params.model.source, params.model.revision, params.model.trust_remote_code)
    plan = StrataPlan.build(
        n_layers,
        remove=params.sampling.remove,
        remove_ratios=params.sampling.remove_ratios,
        per_stratum=params.sampling.per_stratum,
        protected=params.game.protected,
        seed=params.sampling.seed,
    )
    loaded = load_base(params)
    c = params.calibration
    windows = calibration_for(params).windows(loaded.tokenizer)
    evaluator = build_evaluator(loaded, windows, c.batch_size, params.game)
    rows = screen_windows(params, n_layers, windows.n_windows)
    if rows is not None:  # the method searches on these first: there the sweep stands in for its first evaluations
        windows, evaluator = windows.subset(rows), evaluator.subset(rows)
    manifest = plan_manifest(
        evaluator, plan, loaded.fingerprint, windows.fingerprint,
        params.game.utility + evaluator.objective.id_suffix, params.sampling.shard_size
    )
    return SweepSetup(evaluator, manifest)


def masks_dir(params: Params) -> Path:
    return Path(params.output_dir) / "masks"


def plan_sweep(params: Params, out_dir: str | Path | None = None) -> MaskDataset:
    """Create (or resume) the mask dataset with its manifest, evaluating nothing yet."""
    return MaskDataset.create_or_resume(out_dir or masks_dir(params), sweep_setup(params).manifest)


def evaluate_shard(params: Params, shard: int, out_dir: str | Path | None = None, progress: bool = True) -> int:
    """Evaluate one shard of a planned sweep (the unit a task runner fans out); returns rows added.

    Each shard writes only its own files, so shards may run at once in threads or on a cluster.
    """
    dataset = MaskDataset.open(out_dir or masks_dir(params))
    if not 0 <= shard < dataset.manifest.n_shards:
        raise CoopPruneError(f"shard {shard} is not in the plan (0..{dataset.manifest.n_shards - 1})")
    if dataset.is_sealed(shard):
        return 0
    setup = sweep_setup(params)
    dataset = MaskDataset.create_or_resume(dataset.path, setup.manifest)  # refuses a different model/plan
    before = len(dataset)
    run_shard(setup.evaluator, dataset, shard, progress)
    return len(dataset) - before


def search_store(params: Params, sweep: MaskDataset, name: str = "search") -> MaskDataset:
    """``<output_dir>/<name>``: the sweep's evaluations plus every one the method makes, each
    written as it is made (a killed search resumes without repeating one). The sweep itself is
    never extended, so its DVC output stays what the sweep stage wrote; a search store of another
    sweep (the sweep changed) is replaced by a fresh copy."""
    dest = Path(params.output_dir) / name
    if (dest / "manifest.json").is_file():
        store = MaskDataset.open(dest)
        if store.manifest.to_json() == sweep.manifest.to_json() and len(store) >= len(sweep):
            return store
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(sweep.path, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return MaskDataset.open(dest)


def merge_sweep(out_dir: str | Path) -> MaskDataset:
    """Check that every planned shard is sealed and reopen the whole dataset."""
    dataset = MaskDataset.open(out_dir)
    missing = [s for s in range(dataset.manifest.n_shards) if not dataset.is_sealed(s)]
    if missing:
        raise CoopPruneError(f"mask dataset {dataset.path} is missing shards {missing}: run them first")
    return dataset


def sweep(params: Params, out_dir: str | Path | None = None, progress: bool = True) -> MaskDataset:
    """Stage 1: evaluate the stratified mask plan into a (resumable) mask-utility dataset."""
    setup = sweep_setup(params)
    return run_sweep(setup.evaluator, setup.manifest, out_dir or masks_dir(params), progress=progress)


def fit_surrogate(params: Params, dataset: MaskDataset, out_dir: str | Path) -> Surrogate:
    """Stage 2 on the sweep alone: a surrogate validated on held-out masks of every stratum, saved."""
    masks, utilities = dataset.arrays()
    n_finite = int(np.isfinite(utilities).sum())
    if n_finite < 10:
        raise CoopPruneError(f"only {n_finite} finite utilities in {dataset.path}: too few to fit a surrogate")
    surrogate = fit_validated(masks, utilities, SurrogateConfig(**params.surrogate.model_dump()))  # drops the rest
    surrogate.save(out_dir)
    return surrogate


def prepare_data(params: Params) -> dict[str, Any]:
    """Fail fast and fingerprint the inputs: model depth and family, calibration and evaluation text.

    Fetches the bundled defaults when they are named and missing, so later steps only read.
    """
    n_layers, architecture = model_depth(
        params.model.source, params.model.revision, params.model.trust_remote_code, with_architecture=True
    )
    calibration = Calibration.from_params(params.calibration)
    parts = calibration.documents()
    calibration_docs = [doc for _, docs in parts for doc in docs]
    evaluation_docs = load_texts(params.evaluation.text)
    if not evaluation_docs:
        raise CoopPruneError(f"evaluation text is empty: {params.evaluation.text}")
    texts = {
        "calibration": {"source": calibration.label, "documents": len(calibration_docs),
                        "fingerprint": text_fingerprint(calibration_docs)},
        "evaluation": {"source": params.evaluation.text, "documents": len(evaluation_docs),
                       "fingerprint": text_fingerprint(evaluation_docs)},
    }
    if texts["calibration"]["fingerprint"] == texts["evaluation"]["fingerprint"]:
        raise CoopPruneError("calibration and evaluation text are the same: perplexity would not be held out")
    held_out = set().union(*(evaluation_texts(d) for d in params.evaluation.domains))
    shared = sum(1 for doc in calibration_docs if doc in held_out)
    if shared:
        raise CoopPruneError(f"{shared} calibration documents are also documents of the held-out domains "
                             f"({', '.join(params.evaluation.domains)}): they must be disjoint")
    if params.benchmark.tasks:
        from coopprune.fetch import benchmark_dir

        benchmark_dir()
    return {"n_layers": n_layers, "architecture": architecture.name, **texts}


def benchmark(params: Params, checkpoint: str | Path, out_file: str | Path | None = None) -> dict[str, Any]:
    """Perplexity on held-out text and zero-shot accuracy, with the same settings for every
    checkpoint so the base and pruned models compare. Speed is not here: a speed-up is only
    meaningful when both models are timed together (:func:`compare_release_speed`)."""
    from coopprune.zeroshot import zero_shot

    e, b = params.evaluation, params.benchmark
    loaded = load_model(str(checkpoint), device=params.model.device)  # once, for perplexity and zero-shot
    key = benchmark_key(params, model_fingerprint(loaded.model))
    if out_file is not None and Path(out_file).is_file():  # a rerun (e.g. after the registry was down)
        cached = json.loads(Path(out_file).read_text())
        if cached.get("key") == key:
            return cached
    ppl = held_out_perplexity(loaded, load_texts(e.text), e.window, e.max_windows, e.batch_size, progress=False)
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "key": key, "perplexity": asdict(ppl)}
    if e.domains:  # the held-out suite: each domain's evaluation documents, never calibrated on
        result["domains"] = {
            d: held_out_perplexity(loaded, evaluation_texts(d), e.window, e.max_windows, e.batch_size, False).perplexity
            for d in e.domains}
    if b.tasks:
        scores = zero_shot(loaded.model, loaded.tokenizer, b.tasks, b.limit, b.seed, b.batch_size)  # temp work dir
        result["zero_shot"] = scores.to_dict()
        result["parameters"] = count_parameters(loaded.model)
    if out_file is not None:
        write_json(Path(out_file), result)
    return result


def benchmark_key(params: Params, weights_fingerprint: str) -> str:
    """What a benchmark result depends on: the weights and the evaluation and benchmark settings."""
    import hashlib

    spec = {"weights": weights_fingerprint, "evaluation": params.evaluation.model_dump(),
            "benchmark": params.benchmark.model_dump(exclude=set(SPEED_SETTINGS)), "device": params.model.device}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def load_base(params: Params) -> LoadedModel:
    """The base model as params configure it: the one the sweep, the game and the curve run on."""
    m = params.model
    return load_model(m.source, m.revision, m.trust_remote_code, m.dtype, m.device)


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


def perplexity_curve(params: Params, pruned_dir: str | Path) -> list[dict[str, Any]]:
    """Held-out perplexity after removing the first j layers of the removal order, j = 0..k.

    Evaluated through the engine on the base model (skipping layers equals removing them), so
    the curve costs k + 1 passes over the evaluation windows and no checkpoint writes.
    """
    record = asdict(PruningRecord.load(pruned_dir))
    order = removal_order(record)
    e = params.evaluation
    loaded = load_base(params)
    windows = evaluation_windows(loaded.tokenizer, load_texts(e.text), e.window, e.max_windows)
    evaluator = MaskEvaluator(loaded.model, loaded.architecture, windows.input_ids, e.batch_size)
    masks = np.ones((len(order) + 1, evaluator.n_players), dtype=bool)
    for j in range(1, len(order) + 1):
        masks[j:, order[j - 1]] = False
    results = evaluator.evaluate(masks, progress=False)
    return [{"removed": j, "layers": order[:j], "perplexity": r.perplexity} for j, r in enumerate(results)]


def data_stage(params: Params, progress: bool = True) -> dict[str, Any]:
    result = prepare_data(params)
    write_json(Path(params.output_dir) / "data.json", result)
    return result


def sweep_stage(params: Params, progress: bool = True) -> dict[str, Any]:
    dataset = sweep(params, progress=progress)
    return {"path": str(dataset.path), "rows": len(dataset)}


def surrogate_stage(params: Params, progress: bool = True) -> dict[str, Any]:
    out = Path(params.output_dir) / "surrogate"
    surrogate = fit_surrogate(params, merge_sweep(masks_dir(params)), out)
    return {"path": str(out), "metrics": surrogate.metrics}


def contributions_stage(params: Params, progress: bool = True) -> dict[str, Any]:
    result = prune_from_params(params, progress=progress, decision_only=True)
    return {"path": str(result.out_dir), "removed_players": result.removed_layers, "evaluations": result.evaluations}


def prune_stage(params: Params, progress: bool = True) -> dict[str, Any]:
    out = Path(params.output_dir)
    result = apply_decision(params.model.source, out / "contributions", out / "pruned", overwrite=True,
                            trust_remote_code=params.model.trust_remote_code, dtype=params.model.dtype)
    return {"path": str(result.out_dir), "removed_layers": result.removed_layers, "evaluations": result.evaluations}


def benchmark_stage(params: Params, progress: bool = True) -> dict[str, Any]:
    return benchmark_release(params)


def export_stage(params: Params, progress: bool = True) -> dict[str, Any]:
    return export_release(params)


def heal_release(params: Params, progress: bool = True) -> dict[str, Any]:
    """``<output_dir>/healed``: the pruned checkpoint healed with ``params.heal``. A healed folder of
    the same settings and the same removal is kept (a rerun does not train again)."""
    from coopprune.heal import HEALING_FILE, heal, settings_key

    out = Path(params.output_dir)
    source = heal_source(params)
    record = asdict(PruningRecord.load(source))
    done = out / "healed" / HEALING_FILE
    key = {"settings": settings_key(params.heal), "removed": record["removed_layers"], "base": record["base_fingerprint"]}
    if "patch" in record["params"]:  # healing the patched checkpoint: another patch is another input
        key["patch"] = record["params"]["patch"]["key"]
    healing = json.loads(done.read_text()) if done.is_file() else {}
    if healing.get("key") != key:
        healing = heal(source, out / "healed", params.heal, overwrite=True, progress=progress,
                       extra={"key": key}).record
    return {"path": str(out / "healed"), **{k: healing[k] for k in ("steps", "tokens", "data_fingerprint", "minutes", "loss")}}


def heal_stage(params: Params, progress: bool = True) -> dict[str, Any]:
    """DVC's ``heal`` stage: heal and benchmark the healed model with the pruned one's settings
    (``heal_metrics.json``); with ``heal.enabled: false`` it records that and does nothing else,
    so the stage's outputs always exist and a disabled step costs nothing."""
    from coopprune.heal import HEALING_FILE

    out = Path(params.output_dir)
    if not params.heal.enabled:
        with atomic_dir(out / "healed", overwrite=True) as tmp:
            write_json(tmp / HEALING_FILE, {"enabled": False})
        write_json(out / "heal_metrics.json", {"healed": False})
        return {"enabled": False}
    healed = heal_release(params, progress)
    score = benchmark(params, healed["path"], out / "healed" / "benchmark.json")
    metrics = {"healed": True, "heal_steps": healed["steps"], "heal_tokens": healed["tokens"],
               "heal_minutes": healed["minutes"], **score_metrics({"healed": score})}
    write_json(out / "heal_metrics.json", metrics)
    return {**healed, "metrics": metrics}


def heal_source(params: Params) -> Path:
    """What healing starts from: ``<output_dir>/patched`` when ``patch.enabled``, else ``pruned``."""
    return Path(params.output_dir) / ("patched" if params.patch.enabled else "pruned")


def patch_release(params: Params, progress: bool = True) -> dict[str, Any]:
    """``<output_dir>/patched``: the pruned checkpoint with ``params.patch``'s linear patch, fitted on
    the run's calibration text (``patch.n_windows`` windows of it). A patched folder of the same
    settings, calibration and removal is kept (a rerun fits nothing again)."""
    from coopprune.patch import patch_checkpoint

    out, m = Path(params.output_dir), params.model
    record = PruningRecord.load(out / "pruned")
    calibration_params = params.calibration.model_copy(update={"n_windows": params.patch.n_windows})
    key = {"settings": params.patch.model_dump(exclude={"enabled"}), "calibration": calibration_params.model_dump(),
           "removed": record.removed_layers, "base": record.base_fingerprint}
    done = PruningRecord.load_if_present(out / "patched") if (out / "patched" / "config.json").is_file() else None
    entry = done.params.get("patch", {}) if done is not None else {}
    if entry.get("release_key") != key:
        entry = patch_checkpoint(m.source, out / "pruned", out / "patched", params.patch,
                                 Calibration.from_params(calibration_params), overwrite=True, progress=progress,
                                 device=m.device, dtype=m.dtype, batch_size=params.calibration.batch_size,
                                 trust_remote_code=m.trust_remote_code, extra={"release_key": key}).record
    return {"path": str(out / "patched"), "objective": entry["objective"], "lambda": entry["lambda"],
            "runs": [r["layers"] for r in entry["runs"] if r.get("folded_into") is not None],
            "skipped": entry["skipped"], "calibration_fingerprint": entry["calibration"]["fingerprint"],
            "minutes": round(entry["seconds"] / 60, 2)}


def patch_stage(params: Params, progress: bool = True) -> dict[str, Any]:
    """DVC's ``patch`` stage: patch and benchmark the patched model with the pruned one's settings
    (``patch_metrics.json``); with ``patch.enabled: false`` it records that and does nothing else."""
    out = Path(params.output_dir)
    if not params.patch.enabled:
        with atomic_dir(out / "patched", overwrite=True) as tmp:
            write_json(tmp / "patch.json", {"enabled": False})
        write_json(out / "patch_metrics.json", {"patched": False})
        return {"enabled": False}
    patched = patch_release(params, progress)
    score = benchmark(params, patched["path"], out / "patched" / "benchmark.json")
    metrics = {"patched": True, "patch_minutes": patched["minutes"], "patch_runs": len(patched["runs"]),
               **score_metrics({"patched": score})}
    write_json(out / "patch_metrics.json", metrics)
    return {**patched, "metrics": metrics}


def export_release(params: Params, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """The model for llama.cpp, in ``<output_dir>/gguf/`` (``gguf-healed/`` for a healed checkpoint).
    When the base model was a GGUF (the bundled default included) and the checkpoint is the pruned
    one, that file is pruned directly, keeping the quantization users serve; otherwise the
    checkpoint is exported in ``export.dtype``."""
    from coopprune.fetch import base_gguf
    from coopprune.gguf_export import export_gguf, prune_gguf, record_facts
    from coopprune.heal import HEALING_FILE

    pruned = Path(checkpoint) if checkpoint else Path(params.output_dir) / "pruned"
    record = asdict(PruningRecord.load(pruned))
    healed = (pruned / HEALING_FILE).is_file()
    patched = not healed and "patch" in record["params"]  # its down_proj weights are not the base GGUF's
    folder = Path(params.output_dir) / ("gguf-healed" if healed else "gguf-patched" if patched else "gguf")
    source = None if healed or patched else base_gguf(pruned)
    if source is not None:
        stem, _, quant = source.stem.rpartition(".")
        dst = folder / (f"{stem}-pruned.{quant}.gguf" if stem else f"{source.stem}-pruned.gguf")
        facts = {k: v for k, v in record_facts(record).items() if k != "removed_layers"}
        prune_gguf(source, record["removed_layers"], dst, facts=facts, overwrite=True)
        how = f"pruned {source.name} (its quantization kept)"
    else:
        name = Path(str(record.get("base_model", "model")).rstrip("/")).name or "model"
        if name == "default":
            from coopprune.naming import DEFAULT_MODEL_NAME as name
        label = "healed" if healed else "patched" if patched else "pruned"
        dst = export_gguf(pruned, folder / f"{name}-{label}.{params.export.dtype}.gguf", dtype=params.export.dtype,
                          vocab_from=base_gguf(pruned), overwrite=True)
        how = f"exported the {label} checkpoint ({params.export.dtype})"
    for stale in folder.glob("*.gguf"):  # one file per run: an earlier run's other name goes
        if stale != dst:
            stale.unlink()
    return {"path": str(dst), "how": how, "bytes": dst.stat().st_size}


def benchmark_release(params: Params) -> dict[str, Any]:
    """Base and pruned model with identical settings, their speed timed together, then
    ``report_release`` and the release card (DVC's ``benchmark`` stage)."""
    out = Path(params.output_dir)
    scores = {label: benchmark(params, ckpt, out / "benchmark" / f"{label}.json")
              for label, ckpt in (("base", params.model.source), ("pruned", str(out / "pruned")))}
    speed = compare_release_speed(params, scores)
    release = report_release(params, scores, speed)
    release["card"] = str(release_card(params))
    return release


SPEED_FILE = "speed.json"
SPEED_SETTINGS = ("speed", "new_tokens", "speed_pairs")  # what the speed comparison alone depends on


def compare_release_speed(params: Params, scores: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """``<output_dir>/benchmark/speed.json``: base and pruned timed in ``benchmark.speed_pairs``
    interleaved pairs (``coopprune.speed.compare_speed``), or None with ``benchmark.speed`` off.
    ``scores`` (the two benchmarks' results) give the weights' keys: a rerun with the same weights
    and settings reads the file instead of timing again (as ``benchmark`` does)."""
    from coopprune.speed import compare_speed

    b = params.benchmark
    if not b.speed:
        return None
    out = Path(params.output_dir)
    path = out / "benchmark" / SPEED_FILE
    keys = [((scores or {}).get(label) or {}).get("key") for label in ("base", "pruned")]
    settings = json.dumps(params.benchmark.model_dump(include=set(SPEED_SETTINGS)), sort_keys=True)
    key = "+".join([*keys, settings]) if all(keys) else None  # type: ignore[list-item]
    if key is not None and path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached
    result = compare_speed(params.model.source, out / "pruned", (1, 8), b.new_tokens, repeats=b.speed_pairs)
    data = {"key": key, **result.to_json(), "metrics": result.metrics()}
    write_json(path, data)
    return data


def report_release(params: Params, scores: dict[str, Any], speed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The perplexity-vs-removed-layers curve, ``plots/`` and the flat ``metrics.json`` (with the
    speed comparison's ratios when ``speed`` is given)."""
    out = Path(params.output_dir)
    curve = perplexity_curve(params, out / "pruned")
    plots = collect_plots(out, [{"removed": c["removed"], "perplexity": c["perplexity"]} for c in curve])
    metrics = release_metrics(out, scores, speed)
    write_json(out / "metrics.json", metrics)
    return {"scores": scores, "curve": curve, "metrics": metrics, "plots": str(plots)}


def release_card(params: Params, label: str = "pruned", exports: list[dict[str, Any]] | None = None) -> Path:
    """``<output_dir>/card.html`` (``card-healed.html`` for the healed model): the release card
    (``coopprune.card``), one self-contained page."""
    from coopprune.card import write_card

    return write_card(params.output_dir, label, exports=exports)


def collect_plots(out: Path, curve: list[dict[str, Any]]) -> Path:
    """``<out>/plots``: the run's figures in one folder (what ``dvc plots show`` and MLflow pick up)."""
    from coopprune.surrogate import PLOT_FILE

    folder = out / "plots"
    with atomic_dir(folder, overwrite=True) as tmp:
        write_csv(tmp / "perplexity_curve.csv", curve)
        for src, name in ((out / "pruned" / "contributions.png", "contributions.png"),
                          (out / "pruned" / INTERACTIONS_FILE, INTERACTIONS_FILE),
                          (out / "surrogate" / PLOT_FILE, "surrogate_fit.png")):
            if src.is_file():
                shutil.copyfile(src, tmp / name)
    return folder


def release_metrics(out: Path, scores: dict[str, Any], speed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The flat numbers DVC and MLflow track: quality and cost of the base and pruned models, the
    speed-up (``speedup_bs1``, its ``_min``/``_max`` over the interleaved pairs, ...), the held-out
    fit behind the contributions (with how many masks it rests on) and whether they can be read
    (``contributions_trustworthy``), and the Stage-2 surrogate's held-out fit on the sweep."""
    metrics = score_metrics(scores)
    if speed is not None:
        metrics.update(speed["metrics"])
    attribution = out / "pruned" / ATTRIBUTION_FILE
    if attribution.is_file():
        a = json.loads(attribution.read_text())
        metrics.update({"contributions_fit_r2": a["fit"]["r2"], "contributions_fit_spearman": a["fit"]["spearman"],
                        "contributions_fit_masks": a["fit"]["n"], "contributions_spanning_zero": a["spanning_zero"],
                        "contributions_trustworthy": int(not a["warnings"])})
    surrogate = out / "surrogate" / "surrogate.json"
    if surrogate.is_file():
        m = json.loads(surrogate.read_text()).get("metrics") or {}
        overall = m.get("overall") or {}
        metrics["surrogate_heldout_masks"] = overall.get("n")
        metrics["surrogate_heldout_r2"] = overall.get("r2")
        metrics["surrogate_heldout_spearman"] = overall.get("spearman")
        metrics["surrogate_within_stratum_spearman"] = m.get("mean_within_stratum_spearman")
    return metrics


def score_metrics(scores: dict[str, Any]) -> dict[str, Any]:
    """``<label>_perplexity``, ``<label>_zero_shot_mean``, ... for each benchmarked model."""
    metrics: dict[str, Any] = {}
    for label, s in scores.items():
        metrics[f"{label}_perplexity"] = s["perplexity"]["perplexity"]
        if s.get("domains"):
            for domain, value in s["domains"].items():
                metrics[f"{label}_perplexity_{domain}"] = value
            metrics[f"{label}_domain_mean_perplexity"] = float(np.mean(list(s["domains"].values())))
        if "zero_shot" in s:
            metrics[f"{label}_zero_shot_mean"] = s["zero_shot"]["mean"]
            metrics[f"{label}_parameters"] = s["parameters"]
    return metrics


def run(params: Params, progress: bool = True) -> dict[str, Any]:
    """The job without an orchestrator (``coopprune run``): sweep, decide, prune and compare
    held-out perplexity. ``summary.json`` has the Prefect flow's shape (``make run``) for every key
    both write; the flow adds the zero-shot benchmark, healing, export and the registry."""
    out = Path(params.output_dir)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    dataset = sweep(params, out / "masks", progress)
    timings["sweep_s"] = time.perf_counter() - t

    t = time.perf_counter()
    result = prune_from_params(params, dataset, progress)
    timings["prune_s"] = time.perf_counter() - t

    t = time.perf_counter()
    e = params.evaluation
    scores = {label: {"perplexity": asdict(evaluate_perplexity(source, e.text, e.window, e.max_windows, e.batch_size, progress))}
              for label, source in (("base", params.model.source), ("pruned", str(result.out_dir)))}
    timings["evaluate_s"] = time.perf_counter() - t

    summary = {
        "model": params.model.source,
        "mask_dataset": {"path": str(dataset.path), "rows": len(dataset)},
        "pruned": {"path": str(result.out_dir), "removed_layers": result.removed_layers, "evaluations": result.evaluations},
        "method": params.prune.method,
        "benchmark": scores,
        "output_dir": str(out),
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / "summary.json", summary)
    return summary
