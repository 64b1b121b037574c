"""MLflow tracking and model registry for pruned checkpoints (``registry``) and the checkpoint as an
MLflow transformers model (``mlflow_model``).

The only part of ``coopprune`` that imports MLflow, which is an optional dependency (the
``pipeline`` extra): import the submodules where they are used, never from ``coopprune``'s other
modules at module level, so the library and its CLI run without MLflow installed.
"""
