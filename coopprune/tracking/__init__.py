"""MLflow tracking and model registry for pruned checkpoints and the checkpoint as an MLflow
transformers model (``mlflow_model``). One module per job, bottom first: ``connection`` (reaching
the store), ``mlflow_model``, ``runs`` (logging a run), ``versions`` (registering, claiming and
loading versions) and ``promotion``; ``registry`` imports back the names the flows and the CLI use.

The only part of ``coopprune`` that imports MLflow, which is an optional dependency (the
``pipeline`` extra): import the submodules where they are used, never from ``coopprune``'s other
modules at module level, so the library and its CLI run without MLflow installed.
"""
