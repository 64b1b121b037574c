"""Registered model versions: a run's checkpoint registered as a new version of the base model's
registered model, alias ``candidate`` (``register_pruned``, its tags from ``pruning.json`` by
``version_tags``); the lookups that keep a base release from being pruned twice (``already_pruned``,
and ``claim_release``, a claim held as a registered model while one run prunes it); and any version
downloaded back as a checkpoint folder (``load_registered``: ``models:/NAME@ALIAS`` or
``models:/NAME/VERSION``). The tag names ``promotion`` compares are defined here.

Imports ``connection`` and ``runs`` (``_strings``, ``_MAX_TAG``); ``promotion`` imports it.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow.artifacts
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from coopprune.errors import CoopPruneError
from coopprune.records import PRUNING_FILE
from coopprune.tracking.connection import _artifact_store, _mlflow, tracking_uri
from coopprune.tracking.mlflow_model import CHECKPOINT_DIR, checkpoint_in
from coopprune.tracking.runs import _MAX_TAG, _strings

CANDIDATE = "candidate"
# Model-version tags written by ``register_pruned`` (from pruning.json and the caller) and read by ``promote``.
BASE_MODEL = "base_model"
BASE_FINGERPRINT = "base_fingerprint"
REMOVED_LAYERS = "removed_layers"
METHOD = "method"
PARAMETERS = "parameters"
ZERO_SHOT_MEAN = "zero_shot_mean"
PERPLEXITY = "perplexity"
DOMAIN_MEAN_PERPLEXITY = "domain_mean_perplexity"  # mean held-out perplexity over the evaluation domains
#: the removed set across calibration seeds (``stability.seeds``; value: ``coopprune.stability.spread_tag``),
#: on the run and on every version of it, e.g. "3 seeds, 1 set"
CALIBRATION_SEED_SPREAD = "calibration_seed_spread"

_MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))(?P<sub>/.*)?")


class NotRegistered(CoopPruneError):
    """The registered model, or the version an alias names, does not exist (the CLI exits 1 on it)."""


def registered_model_name(base_model: str, suffix: str = "-pruned") -> str:
    """``HuggingFaceTB/SmolLM2-135M-Instruct`` (or a folder / .gguf path) -> ``SmolLM2-135M-Instruct-pruned``:
    one registered model per base model, a name that is safe inside ``models:/NAME@alias``."""
    from coopprune.naming import short_model_name

    name = re.sub(r"[^A-Za-z0-9._-]+", "-", short_model_name(base_model)).strip("-.")
    if not name:
        raise CoopPruneError(f"cannot derive a registered model name from '{base_model}'")
    return name + suffix


def version_tags(
    record: Mapping[str, Any], zero_shot_mean: float | None = None, perplexity: float | None = None
) -> dict[str, str]:
    """Model-version tags from a ``pruning.json`` record plus evaluation results: what ``promote``
    compares and ``already_pruned`` looks up."""
    tags = {
        BASE_MODEL: record.get("base_model"),
        BASE_FINGERPRINT: record.get("base_fingerprint"),
        REMOVED_LAYERS: ",".join(str(i) for i in record.get("removed_layers", [])) or None,
        METHOD: record.get("method"),
        PARAMETERS: record.get("parameters_after"),
        ZERO_SHOT_MEAN: zero_shot_mean,
        PERPLEXITY: perplexity,
    }
    return _strings(tags)


def _check_name(model_name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", model_name):
        raise CoopPruneError(f"registered model name '{model_name}' must be letters, digits, '.', '_' or '-'")


def register_pruned(
    run_id: str,
    checkpoint_artifact_path: str,
    model_name: str,
    tags: Mapping[str, Any],
    *,
    tracking: str | None = None,
    alias: str = CANDIDATE,
    description: str | None = None,
) -> str:
    """Register the run's model as a new version of ``model_name`` and point ``alias`` at it.

    ``checkpoint_artifact_path`` names a logged model of the run (``log_run(models=...)``; the
    version's source is then ``models:/<model id>``) or, for a checkpoint MLflow has no flavor
    for, a plain folder among its artifacts (``create_model_version`` on the artifact URI:
    ``mlflow.register_model`` refuses a folder without MLmodel in MLflow 3). Tags come from the checkpoint's ``pruning.json`` (base fingerprint,
    removed layers, method, parameters) overridden by ``tags`` (e.g. ``zero_shot_mean``, ``perplexity``;
    None values are skipped). ``description``: the version's description (the release card's
    summary paragraph; MLflow's version page shows it). Returns the version number.
    """
    _check_name(model_name)
    uri = tracking or tracking_uri(Path.cwd())
    path = checkpoint_artifact_path.strip("/")
    with _mlflow(uri) as client:
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise NotRegistered(f"no MLflow run {run_id} at {uri}") from None
        logged = _logged_model(client, run, path)
        location = logged.artifact_location if logged else run.info.artifact_uri
        with _artifact_store(location):
            if logged is not None:  # a logged model: the checkpoint is its model/ folder
                inner = f"{logged.artifact_location.rstrip('/')}/{CHECKPOINT_DIR}"
                names = {Path(f.path).name for f in client.list_logged_model_artifacts(logged.model_id, CHECKPOINT_DIR)}
            else:
                inner = f"{run.info.artifact_uri.rstrip('/')}/{path}"
                names = {Path(f.path).name for f in client.list_artifacts(run_id, path)}
            if "config.json" not in names:
                raise CoopPruneError(f"run {run_id} has no checkpoint at '{path}' (no config.json)")
            record: dict[str, Any] = {}
            if PRUNING_FILE in names:
                with tempfile.TemporaryDirectory(prefix="coopprune-registry-") as tmp:
                    local = mlflow.artifacts.download_artifacts(artifact_uri=f"{inner}/{PRUNING_FILE}", dst_path=tmp,
                                                                tracking_uri=uri)
                    record = json.loads(Path(local).read_text())
        all_tags = {**version_tags(record), **_strings(tags)}
        try:
            client.create_registered_model(model_name, description="Layer-pruned checkpoints (coopprune).")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"models:/{logged.model_id}" if logged else f"{run.info.artifact_uri.rstrip('/')}/{path}"
        version = client.create_model_version(model_name, source=source, run_id=run_id, tags=all_tags,
                                              description=description,
                                              model_id=logged.model_id if logged else None).version
        client.set_registered_model_alias(model_name, alias, str(version))
    return str(version)


def _logged_model(client: MlflowClient, run: Any, name: str) -> Any:
    """The READY logged model ``name`` of ``run``, if it has one (else the name is an artifact path)."""
    from mlflow.entities import LoggedModelStatus

    found = client.search_logged_models([run.info.experiment_id], filter_string=f"name = '{name}'")
    mine = [m for m in found if m.source_run_id == run.info.run_id and m.status == LoggedModelStatus.READY]
    return mine[0] if mine else None


def already_pruned(
    model_name: str, fingerprint: str, *, tag: str = BASE_FINGERPRINT, tracking: str | None = None
) -> bool:
    """Whether a version of ``model_name`` was made from this exact base model (by its weights'
    fingerprint, or by whatever fingerprint ``tag`` holds, e.g. a release watcher's), so each
    base release is pruned once."""
    if "'" in model_name or "'" in fingerprint or not re.fullmatch(r"[A-Za-z0-9_.]+", tag):
        raise CoopPruneError("model name and fingerprint cannot contain quotes; tag names are plain words")
    uri = tracking or tracking_uri(Path.cwd())
    with _mlflow(uri) as client:
        try:
            found = client.search_model_versions(f"name = '{model_name}' and tags.{tag} = '{fingerprint}'", max_results=1)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
    return len(found) > 0


CLAIM_PREFIX = "coopprune-claim."
CLAIM_STALE_S = 6 * 3600  # a claim this old was left by a killed run; another may take it over


@contextlib.contextmanager
def claim_release(
    fingerprint: str, owner: str, *, tracking: str | None = None, stale_after_s: float = CLAIM_STALE_S
) -> Iterator[bool]:
    """Hold the right to prune one release while the block runs: yields True for the one run that
    got it, False to every other (they skip the release). Released at exit, failure included.

    The claim is a registered model named after the fingerprint: creating one is atomic in every
    MLflow backend (a unique name; the loser gets RESOURCE_ALREADY_EXISTS), so two workers or two
    overlapping ticks on one registry never both hold it. A claim older than ``stale_after_s``
    (its holder was killed) is deleted and taken over."""
    import hashlib

    uri = tracking or tracking_uri(Path.cwd())
    name = CLAIM_PREFIX + hashlib.sha256(fingerprint.encode()).hexdigest()[:32]
    with _mlflow(uri) as client:
        held = False
        for attempt in range(2):
            try:
                client.create_registered_model(name, tags={"owner": owner, "claimed_at": str(time.time()),
                                                           "fingerprint": fingerprint[:_MAX_TAG]},
                                               description="coopprune: a release being pruned (deleted when done)")
                held = True
                break
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            if attempt == 0:
                try:
                    claimed_at = float(client.get_registered_model(name).tags.get("claimed_at", "0"))
                except MlflowException:
                    continue  # released meanwhile: try once more
                if time.time() - claimed_at < stale_after_s:
                    break
                with contextlib.suppress(MlflowException):
                    client.delete_registered_model(name)
        try:
            yield held
        finally:
            if held:
                with contextlib.suppress(MlflowException):
                    client.delete_registered_model(name)


def _registered_aliases(client: MlflowClient, model_name: str, uri: str) -> dict[str, str]:
    # Aliases from the registered model (search_model_versions leaves ModelVersion.aliases empty).
    try:
        return {k: str(v) for k, v in client.get_registered_model(model_name).aliases.items()}
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise NotRegistered(f"no registered model '{model_name}' at {uri}") from None


def load_registered(model_uri: str, dst: str | Path | None = None, *, tracking: str | None = None) -> Path:
    """Download ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (optionally ``/sub/path``) and return
    the local checkpoint folder, ready for ``AutoModelForCausalLM.from_pretrained`` (of an MLflow model,
    its ``model/`` folder, which holds the tokenizer and ``pruning.json`` too; MLflow's own loaders
    take the ``models:/`` URI itself).

    The alias is resolved with this client rather than by ``download_artifacts("models:/...")``, which
    reads the process-global registry URI. With ``dst=None`` MLflow picks the folder (for a local store,
    the stored artifacts themselves: treat them as read-only).
    """
    match = _MODELS_URI.fullmatch(model_uri)
    if match is None:
        raise CoopPruneError(
            f"not a registered model URI: '{model_uri}' (expected models:/NAME@ALIAS or models:/NAME/VERSION)"
        )
    uri = tracking or tracking_uri(Path.cwd())
    name, alias = match["name"], match["alias"]
    with _mlflow(uri) as client:
        aliases = _registered_aliases(client, name, uri)
        if alias is not None and alias not in aliases:
            raise NotRegistered(f"registered model '{name}' has no '{alias}' version at {uri}")
        version = aliases[alias] if alias is not None else match["version"]
        try:
            source = client.get_model_version_download_uri(name, version)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise NotRegistered(f"registered model '{name}' has no version {version} at {uri}") from None
        source = source.rstrip("/") + (match["sub"] or "").rstrip("/")
        if dst is not None:
            Path(dst).mkdir(parents=True, exist_ok=True)
        with _artifact_store(source):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=None if dst is None else str(dst), tracking_uri=uri
            )
    return checkpoint_in(local) if not match["sub"] else Path(local)
