"""What the game is played with, read from the params: the model's depth and family, the base
model, the calibration (text, or multiple-choice rows), the engine on its windows, and the
configured method's options and screen windows. The sweep (``store``) and the prune decision
(``job``) both start here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from coopprune.calibration import Windows
from coopprune.config import GameParams, Params
from coopprune.engine import MaskEvaluator
from coopprune.errors import CoopPruneError
from coopprune.estimators import ESTIMATORS, get_estimator
from coopprune.mixture import Calibration
from coopprune.models import LoadedModel, load_model
from coopprune.models.architectures import architecture_for
from coopprune.models.loading import load_config
from coopprune.objective import DomainAggregate, objective_for
from coopprune.sublayers import SublayerEvaluator
from coopprune.utility import utility_spec

if TYPE_CHECKING:
    from coopprune.choices import ChoiceCalibration


def model_depth(source: str, revision: str | None = None, trust_remote_code: bool = False, with_architecture: bool = False):
    """Number of decoder layers (and the family adapter), from the config alone: fails fast on unsupported models."""
    _, config = load_config(source, revision, trust_remote_code)
    arch = architecture_for(config)
    depth = int(getattr(config, arch.num_layers_attr))
    return (depth, arch) if with_architecture else depth


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


def load_base(params: Params) -> LoadedModel:
    """The base model as params configure it: the one the sweep, the game and the curve run on."""
    m = params.model
    return load_model(m.source, m.revision, m.trust_remote_code, m.dtype, m.device)
