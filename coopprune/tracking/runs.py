"""Logging a run: ``log_run`` writes one finished run (params, metrics, artifacts, dataset inputs and
logged models) on an explicit client, into its experiment, which it creates on first use with its
artifacts beside a SQLite store (``_experiment_id``, ``_default_artifact_location``). A run that
breaks half-way is marked FAILED.

Imports only ``connection`` (and ``mlflow_model``'s file name); ``versions`` and ``promotion`` use
``_strings`` (values as MLflow tag strings, cut to MLflow's limit) and ``promotion`` logs its
decisions with ``log_run``.
"""

from __future__ import annotations

import contextlib
import numbers
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from coopprune.errors import CoopPruneError
from coopprune.tracking.connection import _artifact_store, _mlflow, tracking_uri
from coopprune.tracking.mlflow_model import MLMODEL

_MAX_PARAM = 6000  # MLflow's limits on one param / tag value and on one log_batch call
_MAX_TAG = 8000
_BATCH = 100


def _default_artifact_location(uri: str, experiment: str) -> str | None:
    """Beside a SQLite store (MLflow's own default, ``./mlruns``, depends on the working directory)."""
    if not uri.startswith("sqlite:///"):
        return None  # a tracking server decides (its --artifacts-destination / default root)
    root = Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts"
    return f"{root.as_uri()}/{re.sub(r'[^A-Za-z0-9._-]+', '-', experiment)}"


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """Get or create; two threads creating the same experiment both end up with its id."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = client.get_experiment_by_name(name)
    if found.lifecycle_stage == "deleted":
        raise CoopPruneError(f"MLflow experiment '{name}' is deleted: restore it or choose another name")
    return found.experiment_id


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts (params.yaml sections, summary.json) as dotted keys, MLflow's flat namespace."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _strings(values: Mapping[str, Any], limit: int = _MAX_TAG) -> dict[str, str]:
    return {str(k): str(v)[:limit] for k, v in values.items() if v is not None}


def log_run(
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    artifacts: Mapping[str, str | Path],
    tags: Mapping[str, Any],
    *,
    tracking: str | None = None,
    artifact_location: str | None = None,
    start_time: float | None = None,
    inputs: Mapping[str, Mapping[str, str]] | None = None,
    models: Mapping[str, str | Path] | None = None,
) -> str:
    """Log one finished run and return its id; safe to call from several threads at once.

    ``models`` maps a name to a local MLflow model folder (``MLmodel`` inside): each becomes a
    logged model of the run (MLflow 3's model entity: the run's "Logged models", ``models:/<id>``),
    its ``MLmodel`` stamped with the model id, ready for :func:`register_pruned`.

    ``inputs``: the run's datasets by role (``{"calibration": {"name", "source", "digest"}}``),
    logged as MLflow dataset inputs (the UI's "Datasets used", with the role as their context).
    ``start_time`` (seconds since the epoch): when the work the run records began (the flow's
    start), so the run's duration in the UI is the job's, not the seconds logging took.
    ``params``/``metrics`` may be nested (keys become ``section.key``); metrics must be numbers (None
    is skipped). ``artifacts`` maps a folder inside the run ("" = its root) to a local file or folder:
    a folder's contents land under that key (``{"checkpoint": pruned_dir}`` -> ``checkpoint/config.json``).
    ``artifact_location`` applies when the experiment is created (e.g. ``s3://bucket/prefix``); by
    default artifacts go beside a SQLite store, or where the tracking server puts them.
    The run is marked FAILED if logging breaks half-way, so a partial run never looks finished.
    """
    uri = tracking or tracking_uri(Path.cwd())
    local = {dest.strip("/"): Path(path) for dest, path in artifacts.items()}
    model_dirs = {name: Path(path) for name, path in (models or {}).items()}
    _check_sources(local, model_dirs)
    metric_list = _metric_list(metrics)
    param_list = [Param(k, str(v)[:_MAX_PARAM]) for k, v in _flatten(params).items()]

    with _mlflow(uri) as client:
        location = artifact_location or _default_artifact_location(uri, experiment)
        started = int(start_time * 1000) if start_time is not None else None
        run = client.create_run(_experiment_id(client, experiment, location), start_time=started,
                                run_name=run_name, tags=_strings(tags))
        run_id = run.info.run_id
        try:
            _log_contents(client, run, param_list, metric_list, inputs, local, model_dirs)
        except BaseException:
            with contextlib.suppress(Exception):
                client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
    return run_id


def _check_sources(local: Mapping[str, Path], model_dirs: Mapping[str, Path]) -> None:
    """Every artifact and model folder exists (each model with its ``MLmodel``) before a run is created."""
    for path in [*local.values(), *model_dirs.values()]:
        if not path.exists():
            raise CoopPruneError(f"artifact to log does not exist: {path}")
    for name, path in model_dirs.items():
        if not (path / MLMODEL).is_file():
            raise CoopPruneError(f"model '{name}' to log is not an MLflow model folder (no {MLMODEL}): {path}")


def _metric_list(metrics: Mapping[str, Any]) -> list[Metric]:
    """The metrics flattened, all at one timestamp, None skipped; one that is not a number is an error."""
    now = int(time.time() * 1000)
    metric_list = []
    for key, value in _flatten(metrics).items():
        if value is None:
            continue
        if not isinstance(value, numbers.Real):
            raise CoopPruneError(f"metric '{key}' is not a number: {value!r}")
        metric_list.append(Metric(key, float(value), now, 0))
    return metric_list


def _log_contents(
    client: MlflowClient, run: Any, param_list: list[Param], metric_list: list[Metric],
    inputs: Mapping[str, Mapping[str, str]] | None, local: Mapping[str, Path], model_dirs: Mapping[str, Path],
) -> None:
    """Everything the created ``run`` holds (params and metrics in batches, inputs, artifacts, models);
    raises as it breaks, for ``log_run`` to mark the run FAILED."""
    run_id = run.info.run_id
    for i in range(0, len(param_list), _BATCH):
        client.log_batch(run_id, params=param_list[i : i + _BATCH])
    for i in range(0, len(metric_list), _BATCH):
        client.log_batch(run_id, metrics=metric_list[i : i + _BATCH])
    if inputs:
        client.log_inputs(run_id, datasets=[_dataset_input(role, spec) for role, spec in inputs.items()])
    with _artifact_store(run.info.artifact_uri):
        for dest, path in local.items():
            if path.is_dir():
                client.log_artifacts(run_id, str(path), artifact_path=dest or None)
            else:
                client.log_artifact(run_id, str(path), artifact_path=dest or None)
    for name, path in model_dirs.items():
        _log_model(client, run, name, path)


def _log_model(client: MlflowClient, run: Any, name: str, path: Path) -> str:
    """``path`` as a logged model of ``run`` (what ``mlflow.<flavor>.log_model`` does, on this client):
    created, linked as the run's output, its files uploaded with ``MLmodel`` naming the model id,
    then READY (FAILED if the upload breaks, so a half-logged model never looks usable)."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    spec = Model.load(str(path / MLMODEL))
    flavor = next(iter(set(spec.flavors) - {"python_function"}), "custom")
    logged = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run.info.run_id,
                                        tags={"mlflow.modelFlavor": flavor})
    try:
        client.log_outputs(run.info.run_id, [LoggedModelOutput(logged.model_id, step=0)])
        spec.model_id, spec.run_id, spec.artifact_path = logged.model_id, run.info.run_id, logged.artifact_location
        with tempfile.TemporaryDirectory(prefix="coopprune-mlmodel-") as tmp, _artifact_store(logged.artifact_location):
            spec.save(str(Path(tmp) / MLMODEL))
            for item in path.iterdir():
                if item.name != MLMODEL:
                    if item.is_dir():
                        client.log_model_artifacts(logged.model_id, str(item), artifact_path=item.name)
                    else:
                        client.log_model_artifact(logged.model_id, str(item))
            client.log_model_artifact(logged.model_id, str(Path(tmp) / MLMODEL))
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    except BaseException:
        with contextlib.suppress(Exception):
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    return logged.model_id


def _dataset_input(role: str, spec: Mapping[str, str]) -> Any:
    """An MLflow dataset input (name, source, digest = our fingerprint) tagged with its role."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no source type recognised" for bundled names: kept as local
        source = resolve_dataset_source(str(spec["source"]))
    dataset = MetaDataset(source, name=str(spec["name"]), digest=str(spec["digest"])[:36])
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", role)])
