"""Contribution estimators share one interface (like shapiq's approximators), so the CLI, the
flows and the benchmarks treat every method, the paper's and the peers', alike.

``estimate(game, budget, seed, k)`` returns a :class:`Contributions`: one value per player
(higher = more important), optional bootstrap intervals, the real forward passes consumed and the
wall time. Set-based methods (SLEB's greedy order, Gromov's contiguous block) also return the
exact set to remove for the requested ``k`` in ``removal``; everything else is ranked. What a
method fitted (a surrogate) travels in the result too, never as an attribute of the estimator.

Adding a method is one file in this package, imported in ``__init__.py``: an :class:`Estimator`
subclass under ``@register`` with a ``name``, a one-line ``summary`` (the CLI's help lists it), the
flags that apply (``requires_k``, ``uses_budget``, ``needs_model``, ...) and ``_estimate``. Its
settings are constructor keywords, or a frozen dataclass named by ``config_class``; what it takes
from the params, ``options_from_params``. ``tests/test_estimator_contract.py`` then runs it as
every other method is run, with no edit.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from coopprune.errors import CoopPruneError
from coopprune.game import Game
from coopprune.select import select_layers

if TYPE_CHECKING:
    from coopprune.attribution import Attribution
    from coopprune.config import Params
    from coopprune.surrogate import Surrogate

#: ``details`` key of a resumed method: seconds its killed runs spent before this one (counted in ``seconds``).
EARLIER_SECONDS = "earlier_seconds"


@dataclass
class Contributions:
    """Per-player contribution (higher = more important) and what it cost to estimate."""

    method: str
    values: np.ndarray
    evaluations: int  # real forward passes over the calibration set
    seconds: float
    ci_low: np.ndarray | None = None  # bootstrap 95% interval per player
    ci_high: np.ndarray | None = None
    removal: list[int] | None = None  # set-based methods: the exact players to remove for k
    details: dict[str, Any] = field(default_factory=dict)
    passes: float = 0.0  # full-calibration passes: evaluations plus screens at their fraction
    replicates: np.ndarray | None = field(default=None, repr=False)  # bootstrap values [B, players]
    #: the surrogate the method fitted (its report saves it); None: it fitted none. Not in ``to_json``.
    surrogate: Surrogate | None = field(default=None, repr=False)
    #: contributions and interactions fitted to the real evaluations (the report's); not in ``to_json``.
    attribution: Attribution | None = field(default=None, repr=False)

    def summarize_replicates(self, k: int | None, protected: tuple[int, ...]) -> None:
        """95% percentile intervals, and how often a resample picks the same bottom-k set."""
        if self.replicates is None or len(self.replicates) < 2:
            return
        self.ci_low, self.ci_high = np.percentile(self.replicates, [2.5, 97.5], axis=0)
        self.details["bootstrap_resamples"] = len(self.replicates)
        if k is not None:
            chosen = select_layers(self.values, k, protected)
            same = [select_layers(r, k, protected) == chosen for r in self.replicates]
            self.details["bottom_k_stability"] = float(np.mean(same))

    def to_json(self) -> dict[str, Any]:
        def floats(a: np.ndarray | None) -> list[float | None] | None:
            return None if a is None else [float(v) if np.isfinite(v) else None for v in a]

        return {
            "method": self.method,
            "values": floats(self.values),
            "ci_low": floats(self.ci_low),
            "ci_high": floats(self.ci_high),
            "removal": self.removal,
            "evaluations": self.evaluations,
            "passes": round(self.passes, 3),
            "seconds": round(self.seconds, 3),
            **self.details,
        }


class Estimator(ABC):
    """Estimates every player's contribution in a game within a budget of real evaluations."""

    name: ClassVar[str]
    #: One line on what it does, for the CLI's help (every registered method says its own).
    summary: ClassVar[str]
    #: True if the method needs a budget of real evaluations (``None`` picks ``default_budget``).
    uses_budget: ClassVar[bool] = False
    #: True if its budget means "masks like the Stage-1 sweep's" (the pipeline passes the sweep's size).
    budget_is_sweep: ClassVar[bool] = False
    #: True for set-based methods (SLEB, Gromov's block, drop-last) that cannot rank without a target.
    requires_k: ClassVar[bool] = False
    #: True if it reads the model's activations (a :class:`LayerGame`), not only the value function.
    needs_model: ClassVar[bool] = False
    #: True if it searches sets under a cost budget (``costs``, ``max_cost``: players of different sizes).
    accepts_costs: ClassVar[bool] = False
    #: True if its result is one draw of a random baseline: a comparison averages it over seeds.
    random_draw: ClassVar[bool] = False
    #: Its own options as a frozen dataclass (fields: names and defaults; ``__post_init__``: their
    #: checks), given to the constructor as ``config``; None: the constructor's keywords are its options.
    config_class: ClassVar[type | None] = None

    def estimate(
        self, game: Game, budget: int | None = None, seed: int = 0, k: int | None = None,
        costs: Sequence[float] | None = None, max_cost: float | None = None,
    ) -> Contributions:
        """Contributions of every player of ``game``; ``k`` is the removal target (set-based methods).
        ``costs`` and ``max_cost``: the set must fit a cost budget instead (``k`` is then its nominal
        size, for budgets and strata); only methods with ``accepts_costs`` take them."""
        if costs is not None and not self.accepts_costs:
            raise CoopPruneError(f"method '{self.name}' does not search under a cost budget")
        if budget is not None and budget < 1:
            raise CoopPruneError(f"budget must be a positive number of real evaluations, got {budget}")
        if self.requires_k and k is None:
            raise CoopPruneError(f"method '{self.name}' chooses a set of k players to remove: give k")
        start, used, cost = time.perf_counter(), game.evaluations, game.cost
        extra = {} if costs is None else {"costs": costs, "max_cost": max_cost}
        result = self._estimate(game, budget, seed, k, **extra)
        result.summarize_replicates(k, game.protected_players)
        result.evaluations = game.evaluations - used
        result.passes = game.cost - cost
        result.seconds = time.perf_counter() - start + float(result.details.get(EARLIER_SECONDS, 0.0))
        return result

    @classmethod
    def options_from_params(cls, params: Params, n_layers: int) -> dict[str, Any]:
        """Constructor options this method takes from the validated params of a run on a model of
        ``n_layers`` layers (the caller puts ``prune.options`` on top): none, unless it says."""
        return {}

    @classmethod
    def option_names(cls) -> set[str]:
        """Every option it takes: its config's fields and its constructors' keywords (up the classes
        while a constructor passes ``**options`` on)."""
        import inspect

        accepted = set() if cls.config_class is None else {f.name for f in fields(cls.config_class)}
        for klass in cls.__mro__:
            if "__init__" in vars(klass):
                params = inspect.signature(vars(klass)["__init__"]).parameters
                accepted |= {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
                if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
                    break
        return accepted - {"self"} - ({"config"} if cls.config_class is not None else set())

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Names in ``options`` it does not take are refused (a typo is not a default)."""
        accepted = cls.option_names()
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise CoopPruneError(f"method '{cls.name}' has no option '{unknown[0]}'; "
                                 f"it takes {', '.join(sorted(accepted))}")

    @classmethod
    def from_options(cls, **options: Any) -> Estimator:
        """The estimator with these options, checked: its config's fields build its ``config``, the
        rest are constructor keywords."""
        cls.check_options(options)
        if cls.config_class is None:
            return cls(**options)
        own = {f.name for f in fields(cls.config_class)}
        config = cls.config_class(**{key: v for key, v in options.items() if key in own})
        return cls(config, **{key: v for key, v in options.items() if key not in own})  # type: ignore[call-arg]

    def check(self, n_players: int, k: int | None, budget: int | None, n_windows: int | None = None) -> None:
        """Reject settings that cannot work, before any model is loaded (one-line error); ``n_windows``:
        the calibration windows the game will have, where known."""

    def screen_windows(self, n_windows: int, seed: int) -> list[int] | None:
        """The calibration windows this method searches on before it confirms on all of them (a
        lower fidelity), for the seed it runs with: a Stage-1 sweep there stands in for its first
        evaluations, one on every window mostly does not. None: it searches on every window."""
        return None

    @abstractmethod
    def _estimate(self, game: Game, budget: int | None, seed: int, k: int | None) -> Contributions: ...

    def _result(self, values: np.ndarray, **kwargs: Any) -> Contributions:
        """A Contributions for this method; cost fields are filled in by :meth:`estimate`."""
        return Contributions(self.name, np.asarray(values, dtype=float), 0, 0.0, **kwargs)


ESTIMATORS: dict[str, type[Estimator]] = {}


def register(cls: type[Estimator]) -> type[Estimator]:
    ESTIMATORS[cls.name] = cls
    return cls


def get_estimator(name: str, **options: Any) -> Estimator:
    try:
        cls = ESTIMATORS[name]
    except KeyError:
        raise CoopPruneError(f"unknown method '{name}'; choose one of {', '.join(sorted(ESTIMATORS))}") from None
    return cls.from_options(**options)
