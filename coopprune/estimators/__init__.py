"""Contribution estimators, one file each; importing the package registers them all."""

from coopprune.estimators import ppl  # noqa: F401  (registration)
from coopprune.estimators.base import ESTIMATORS, Contributions, Estimator, get_estimator

__all__ = ["ESTIMATORS", "Contributions", "Estimator", "get_estimator"]
