"""The contract every registered estimator keeps, checked over the whole registry: options built
from the params, the same result for the same seed, the passes it reports, a valid removal set and
a JSON-clean result. A method added to the registry is tested here without editing this file."""

import dataclasses
import sys

import pytest

from coopprune import pipeline
from coopprune.config import Params
from coopprune.estimators import ESTIMATORS
from coopprune.surrogate import SurrogateConfig

# ---------------------------------------------------------------- options from the params
N_LAYERS = 12
METHOD_OPTIONS = {"game-search": {"per_round": 3, "bootstrap": 2}, "permutation": {"bootstrap": 7},
                  "evopress": {"offspring": 5}, "semivalue": {"remove_ratios": [0.2]}}
VARIANTS = {
    "defaults": {},
    "bootstrap_off": {"sampling": {"remove": [1, 2, 5]}, "prune": {"bootstrap": 0},
                      "surrogate": {"recipe": "paper", "epochs": 5, "seed": 3}},
    "with_options": {"sampling": {"remove_ratios": [0.1, 0.3]}, "prune": {"bootstrap": 4, "options": METHOD_OPTIONS}},
}
# What pipeline.estimator_options gave at e9a5a6f, before the estimators built their own options:
# a SurrogateConfig as its fields that differ from the defaults, a tuple as {"tuple": [...]}.
PAPER_RATIOS = {"tuple": [0.0625, 0.15625, 0.25, 0.34375, 0.4375]}
REMOVE_1_2_5 = {"tuple": [0.08333333333333333, 0.16666666666666666, 0.4166666666666667]}
PAPER_SGD = {"SurrogateConfig": {"recipe": "paper", "epochs": 5, "seed": 3}}
DEFAULT_SURROGATE = {"SurrogateConfig": {}}
SURROGATE_FAMILY = {
    "defaults": {"surrogate": DEFAULT_SURROGATE, "remove_ratios": PAPER_RATIOS, "bootstrap": 10},
    "bootstrap_off": {"surrogate": PAPER_SGD, "remove_ratios": REMOVE_1_2_5, "bootstrap": 0},
    "with_options": {"surrogate": DEFAULT_SURROGATE, "remove_ratios": {"tuple": [0.1, 0.3]}, "bootstrap": 4},
}
NOTHING = {"defaults": {}, "bootstrap_off": {}, "with_options": {}}
SNAPSHOT = {
    "angular": NOTHING,
    "bi": NOTHING,
    "evopress": {"defaults": {}, "bootstrap_off": {}, "with_options": {"offspring": 5}},
    "exact": NOTHING,
    "game-search": {**SURROGATE_FAMILY, "with_options": {"surrogate": DEFAULT_SURROGATE, "remove_ratios": {"tuple": [0.1, 0.3]},
                                                         "bootstrap": 2, "per_round": 3}},
    "kernelshap": {"defaults": {}, "bootstrap_off": {"bootstrap": 0}, "with_options": {}},
    "last": NOTHING,
    "permutation": {"defaults": {}, "bootstrap_off": {"bootstrap": 0}, "with_options": {"bootstrap": 7}},
    "ppl": NOTHING,
    "random": NOTHING,
    "semivalue": {**SURROGATE_FAMILY, "with_options": {"surrogate": DEFAULT_SURROGATE, "remove_ratios": [0.2], "bootstrap": 4}},
    "semivalue-search": SURROGATE_FAMILY,
    "shapley": SURROGATE_FAMILY,
    "shapley-adjusted": SURROGATE_FAMILY,
    "sleb": NOTHING,
}


def encode(options):
    """Options as comparable plain data (exact: floats and field values as they are)."""
    def value(v):
        if isinstance(v, SurrogateConfig):
            default = SurrogateConfig()
            return {"SurrogateConfig": {f.name: getattr(v, f.name) for f in dataclasses.fields(v)
                                        if getattr(v, f.name) != getattr(default, f.name)}}
        return {"tuple": list(v)} if isinstance(v, tuple) else v

    return {key: value(v) for key, v in options.items()}


def params_for(method, variant):
    data = {key: dict(section) for key, section in VARIANTS[variant].items()}
    prune = data.setdefault("prune", {})
    prune["method"] = method
    if "options" in prune:
        prune["options"] = {method: prune["options"][method]} if method in prune["options"] else {}
    return Params.from_dict({"model": {"source": "tiny"}, **data})


def test_the_snapshot_covers_the_registry():
    assert sorted(SNAPSHOT) == sorted(ESTIMATORS)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("method", sorted(ESTIMATORS))
def test_options_from_params_are_what_the_pipeline_gave(method, variant):
    """Same options, same order (the pruning record lists them), for every method."""
    options = pipeline.estimator_options(params_for(method, variant), N_LAYERS)
    assert list(encode(options).items()) == list(SNAPSHOT[method][variant].items())


# ---------------------------------------------------------------- the CLI lists the registry
@pytest.mark.parametrize("method", sorted(ESTIMATORS))
def test_every_method_says_what_it_does_in_one_line(method):
    summary = vars(ESTIMATORS[method]).get("summary")  # its own, not a parent's
    assert summary and "\n" not in summary and len(summary) <= 100


def test_prune_help_lists_the_registry(monkeypatch):
    from coopprune.cli import _method_help

    monkeypatch.setattr(sys, "argv", ["coopprune", "prune", "--help"])
    listed = _method_help()
    assert all(f"{name}: {ESTIMATORS[name].summary}" in listed for name in ESTIMATORS)
