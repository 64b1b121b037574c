"""MLflow tracking and model registry for pruned checkpoints: log a run, register its checkpoint as a
model version (alias ``candidate``), move alias ``champion`` to it only when it wins by a stated
rule, and load any version back as a folder that ``from_pretrained`` reads.

Plain functions, no Prefect: the flow's tasks (``tasks/prune_release.py``) and the CLI's ``promote``
call them. Every call uses an explicit ``MlflowClient`` and run id, because the fluent API keeps its
active run (and its tracking URI) per process/thread while flow tasks log from worker threads. Only
``coopprune.tracking`` imports MLflow; nothing else in ``coopprune`` imports this package at module level.

One module per job, each importing only those listed before it (``tests/test_layering.py`` holds
the order):

- ``connection``: the store's URI (``tracking_uri``) and a client on it; an unreachable tracking
  server or artifact store is one line naming it.
- ``runs``: ``log_run``, one finished run with its params, metrics, artifacts, datasets and logged
  models.
- ``versions``: ``register_pruned`` (alias ``candidate``, the version's tags), ``already_pruned``
  and ``claim_release`` (each base release pruned once), ``load_registered``.
- ``promotion``: ``promote`` (alias ``champion``) by a rule of ``RULES``, and its ``Decision``.

The names other code uses are imported back here, so ``registry.promote(...)`` and ``from
coopprune.tracking.registry import load_registered`` keep working; patch a name in the module that
looks it up, not here.
"""

from __future__ import annotations

from coopprune.tracking.connection import tracking_uri
from coopprune.tracking.promotion import promote
from coopprune.tracking.runs import log_run
from coopprune.tracking.versions import (
    BASE_MODEL,
    CALIBRATION_SEED_SPREAD,
    CANDIDATE,
    DOMAIN_MEAN_PERPLEXITY,
    PERPLEXITY,
    ZERO_SHOT_MEAN,
    NotRegistered,
    already_pruned,
    claim_release,
    load_registered,
    register_pruned,
    registered_model_name,
)

__all__ = [
    "BASE_MODEL", "CALIBRATION_SEED_SPREAD", "CANDIDATE", "DOMAIN_MEAN_PERPLEXITY", "PERPLEXITY", "ZERO_SHOT_MEAN",
    "NotRegistered",
    "already_pruned", "claim_release", "load_registered", "log_run", "promote", "register_pruned",
    "registered_model_name", "tracking_uri",
]
