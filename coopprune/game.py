"""The layer game: players are layers, a coalition is the set of kept layers.

Shaped like ``shapiq.Game``: ``value_function`` takes a bool coalition matrix [n, players] and
returns one utility per row, so shapiq's approximators run on it unchanged. Every coalition is
evaluated on the real model at most once: results are cached in memory and, when the game is
backed by a :class:`~coopprune.dataset.MaskDataset`, read from and appended to it (so the Stage 1
sweep, every estimator and every later run share one pool of real evaluations).

A subgame (:meth:`LayerGame.subgame`) fixes some layers as removed and plays over the rest; it
is how iterative pruning re-runs the game on the pruned model while reusing every evaluation of
earlier rounds (skipping a layer is exactly the physically pruned model).

Cost is counted two ways: ``evaluations`` (real evaluations on the full calibration set) and
``cost`` (full-calibration passes, where an evaluation on a screen of some windows,
:meth:`LayerGame.screen`, counts as that fraction of a pass): the budget rule every method obeys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from coopprune.dataset import MaskDataset, bits_to_mask, mask_to_bits
from coopprune.engine import MaskEvaluator, MaskResult
from coopprune.errors import CoopPruneError
from coopprune.sampling import normalize_layers
from coopprune.utility import utility_spec

STATE_FOLDER = "state"  # in a mask store: methods' checkpoints (never rows; the store ignores it)
ADHOC_SEED = -1  # ``seed`` of dataset rows evaluated on demand rather than drawn by the sweep plan


class Game:
    """A cooperative game with a cached value function; subclasses say how to evaluate coalitions."""

    def __init__(self, n_players: int, protected: Sequence[int] = ()) -> None:
        self._n_players = n_players
        self.protected = normalize_layers(protected, n_players, what="protected player")
        self._values: dict[str, float] = {}
        self.evaluations = 0  # real evaluations consumed (cache hits are free)
        self.cost = 0.0  # full-calibration passes consumed, screens counted as their fraction
        self.pass_cost = 1.0  # what one evaluation of this game costs, in full passes
        self.payer: Game | None = None  # a screen charges its cost to the game it screens for

    @property
    def n_players(self) -> int:
        return self._n_players

    @property
    def layers(self) -> list[int]:
        """Original index of each player (a subgame plays over a subset)."""
        return list(range(self.n_players))

    @property
    def player_names(self) -> list[str]:
        return [f"layer {i}" for i in self.layers]

    @property
    def has_model(self) -> bool:
        """Whether the game can show its model's activations (what ``needs_model`` methods read)."""
        return False

    @property
    def protected_players(self) -> tuple[int, ...]:
        return self.protected

    def value_function(self, coalitions: np.ndarray) -> np.ndarray:
        """Utility of each coalition (row, True = kept); unseen ones are evaluated in one shared batch.

        A single 1-D coalition is accepted too (shapiq asks for the empty coalition that way).
        """
        coalitions = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        if coalitions.ndim != 2 or coalitions.shape[1] != self.n_players:
            raise ValueError(f"coalitions must be a bool [n, {self.n_players}] array, got {coalitions.shape}")
        keys = [mask_to_bits(c) for c in coalitions]
        missing = sorted({k for k in keys if k not in self._values})
        if missing:
            self._evaluate(np.array([bits_to_mask(k) for k in missing], dtype=bool))
        return np.array([self._values[k] for k in keys], dtype=float)

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        return self.value_function(coalitions)

    def _evaluate(self, masks: np.ndarray) -> None:
        """Evaluate unseen coalitions, calling :meth:`_record` for each."""
        raise NotImplementedError

    def _record(self, mask: np.ndarray, value: float) -> None:
        self._values[mask_to_bits(mask)] = float(value)
        self.evaluations += 1
        self.spend(self.pass_cost)

    def spend(self, passes: float) -> None:
        self.cost += passes
        if self.payer is not None:
            self.payer.spend(passes)

    def charge(self, passes: int) -> None:
        """Count real forward passes a method made outside ``value_function`` (activations, probes)."""
        self.evaluations += passes
        self.spend(passes)

    @property
    def n_windows(self) -> int:
        """Calibration windows behind one evaluation (what :meth:`screen` takes a share of)."""
        return 1

    def screen(self, rows: Sequence[int]) -> Game:
        """The game on some of the calibration windows: cheaper and noisier; ``cost`` counts
        ``len(rows) / n_windows`` of a pass per evaluation and is charged to this game too."""
        raise CoopPruneError(f"{type(self).__name__} has no cheaper fidelity to screen on")

    def _screen_rows(self, rows: Sequence[int]) -> list[int]:
        rows = sorted(set(int(r) for r in rows))
        if not rows or rows[0] < 0 or rows[-1] >= self.n_windows:
            raise CoopPruneError(f"a screen takes windows in [0, {self.n_windows}), got {rows}")
        return rows

    def _as_screen(self, game: Game, n_rows: int) -> Game:
        """``game`` as a screen of this one on ``n_rows`` of its windows (what one pass there costs)."""
        game.pass_cost = n_rows / self.n_windows
        game.payer = self
        return game

    def known(self) -> tuple[np.ndarray, np.ndarray]:
        """Every coalition evaluated so far (this session or in a store) and its utility."""
        keys = sorted(self._values)
        masks = np.array([bits_to_mask(k) for k in keys], dtype=bool).reshape(len(keys), self.n_players)
        return masks, np.array([self._values[k] for k in keys], dtype=float)

    def subgame(self, removed: Sequence[int]) -> SubGame:
        """The game on the model with ``removed`` (player indices) already taken out."""
        return SubGame(self, removed)

    def state_path(self, name: str) -> Path | None:
        """Where a method may checkpoint its own search state for this game (what no mask store
        holds, e.g. where an evolutionary search stands); None: the game persists nothing."""
        return None


class FunctionGame(Game):
    """A game whose utility is a plain vectorized function: synthetic games, tests, examples."""

    def __init__(
        self,
        n_players: int,
        fn: Callable[[np.ndarray], np.ndarray],
        protected: Sequence[int] = (),
        windows: int = 1,
        screen_fn: Callable[[np.ndarray, list[int]], np.ndarray] | None = None,
        state_dir: Path | None = None,
    ) -> None:
        super().__init__(n_players, protected)
        self.fn = fn
        self._windows = windows
        self.screen_fn = screen_fn  # (masks, window rows) -> utilities on those windows; None: fn
        self.state_dir = state_dir  # where methods checkpoint (a resumable synthetic game); None: nowhere

    def state_path(self, name: str) -> Path | None:
        return None if self.state_dir is None else Path(self.state_dir) / f"{name}.json"

    @property
    def n_windows(self) -> int:
        return self._windows

    def screen(self, rows: Sequence[int]) -> Game:
        rows = self._screen_rows(rows)
        fn = self.fn if self.screen_fn is None else (lambda m, f=self.screen_fn, r=rows: f(m, r))
        return self._as_screen(FunctionGame(self.n_players, fn, self.protected), len(rows))

    def _evaluate(self, masks: np.ndarray) -> None:
        for mask, value in zip(masks, np.asarray(self.fn(masks), dtype=float)):
            self._record(mask, value)


class LayerGame(Game):
    """Cooperative game over the decoder layers of one model on one calibration set.

    ``protected``: layers no method may remove (still players: they are always kept when a
    pruning set is chosen). ``store``: a mask dataset of the same model, calibration and utility.
    """

    def __init__(
        self,
        evaluator: MaskEvaluator,
        utility: str = "ppl_ratio",
        protected: Sequence[int] = (),
        store: MaskDataset | None = None,
        progress: bool = False,
        screen_stores: Mapping[tuple[int, ...], MaskDataset] | None = None,
    ) -> None:
        super().__init__(evaluator.n_players, protected)
        spec = utility_spec(utility)
        if spec.objective != evaluator.objective.kind:
            raise CoopPruneError(f"utility '{utility}' needs the '{spec.objective}' objective; "
                                 f"the evaluator computes '{evaluator.objective.kind}'")
        self.evaluator = evaluator
        self.utility_name = utility
        self.utility_id = utility + evaluator.objective.id_suffix  # what a mask store must hold
        self._utility = spec.fn
        self.progress = progress
        self.store = store
        self.screen_stores = dict(screen_stores or {})
        if store is not None:
            identity = store.manifest.identity
            if identity.utility != self.utility_id or identity.n_layers != evaluator.n_players:
                raise CoopPruneError(
                    f"mask dataset {store.path} holds '{identity.utility}' utilities over {identity.n_layers} players; "
                    f"this game needs '{self.utility_id}' over {evaluator.n_players}"
                )
            for row in store.rows():
                self._values[mask_to_bits(np.asarray(row["mask"], dtype=bool))] = float(row["utility"])

    @property
    def player_names(self) -> list[str]:
        return self.evaluator.player_names

    @property
    def n_windows(self) -> int:
        return len(self.evaluator.windows)

    @property
    def has_model(self) -> bool:
        return True

    def state_path(self, name: str) -> Path | None:
        """Beside the store's rows (its identity names the model, windows and utility the state is of)."""
        return None if self.store is None else self.store.path / STATE_FOLDER / f"{name}.json"

    def screen(self, rows: Sequence[int]) -> Game:
        """The game on ``rows`` only: a different game (other windows), so its evaluations go to
        the store ``screen_stores`` holds for those rows (e.g. a Stage-1 sweep run there), or
        stay in memory where it holds none. The evaluator may screen more windows than asked
        (the whole items of multiple-choice rows): the pass cost counts those it runs."""
        rows = self._screen_rows(rows)
        store = self.screen_stores.get(tuple(rows))
        evaluator = self.evaluator.subset(rows)
        return self._as_screen(LayerGame(evaluator, self.utility_name, self.protected, store, self.progress),
                               len(evaluator.windows))

    def _evaluate(self, masks: np.ndarray) -> None:
        full = self.evaluator.full_loss
        persist = self._store_writer(masks) if self.store is not None else None

        def record(i: int, result: MaskResult) -> None:
            self._record(masks[i], self._utility(result.loss, full))
            if persist is not None:
                persist(i, result)

        self.evaluator.evaluate(masks, progress="real evaluations" if self.progress else False, on_result=record)
        if self.store is not None:
            self.store.seal_pending()

    def _store_writer(self, masks: np.ndarray) -> Callable[[int, MaskResult], None]:
        from coopprune.sweep import result_row

        store = self.store
        assert store is not None
        shard, first_id = store.next_adhoc_shard()
        identity = store.manifest.identity

        def persist(i: int, result: MaskResult) -> None:
            store.append(result_row(first_id + i, masks[i], result, identity, ADHOC_SEED, shard))

        return persist


class SubGame(Game):
    """A game over the players a parent game has left after ``removed`` were taken out.

    Utilities stay relative to the original full model: they differ from utilities relative to
    the pruned model by a constant factor (``ppl_ratio``) or offset (``loglik_diff``), which
    leaves every ranking and every set choice unchanged.
    """

    def __init__(self, parent: Game, removed: Sequence[int]) -> None:
        removed_set = set(normalize_layers(removed, parent.n_players, what="removed player"))
        index = [i for i in range(parent.n_players) if i not in removed_set]
        if not index:
            raise CoopPruneError("a subgame needs at least one remaining player")
        super().__init__(len(index), [j for j, i in enumerate(index) if i in parent.protected_players])
        self.parent = parent
        self._index = index

    def __getattr__(self, name: str) -> object:
        """Everything else (evaluator, utility_name, ...) is the parent's."""
        if name in ("parent", "_index"):
            raise AttributeError(name)
        return getattr(self.parent, name)

    @property
    def has_model(self) -> bool:
        return self.parent.has_model

    @property
    def removed(self) -> list[int]:
        """The parent's players taken out (every one not in this game)."""
        kept = set(self._index)
        return [i for i in range(self.parent.n_players) if i not in kept]

    @property
    def layers(self) -> list[int]:
        parent_layers = self.parent.layers
        return [parent_layers[i] for i in self._index]

    @property
    def player_names(self) -> list[str]:
        names = self.parent.player_names
        return [names[i] for i in self._index]

    def lift(self, coalitions: np.ndarray) -> np.ndarray:
        """Coalitions of this game as coalitions of the parent (removed players off)."""
        coalitions = np.asarray(coalitions, dtype=bool)
        full = np.zeros((len(coalitions), self.parent.n_players), dtype=bool)
        full[:, self._index] = coalitions
        return full

    def value_function(self, coalitions: np.ndarray) -> np.ndarray:
        coalitions = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        if coalitions.ndim != 2 or coalitions.shape[1] != self.n_players:
            raise ValueError(f"coalitions must be a bool [n, {self.n_players}] array, got {coalitions.shape}")
        before, cost = self.parent.evaluations, self.parent.cost
        values = self.parent.value_function(self.lift(coalitions))
        self.evaluations += self.parent.evaluations - before
        self.spend(self.parent.cost - cost)  # a screen of this subgame passes it on to its payer
        return values

    @property
    def n_windows(self) -> int:
        return self.parent.n_windows

    def screen(self, rows: Sequence[int]) -> Game:
        """The parent's screen, minus the same removed players (its parent pays the parent)."""
        screened = SubGame(self.parent.screen(rows), self.removed)
        screened.payer = self
        return screened

    def charge(self, passes: int) -> None:
        self.evaluations += passes
        self.cost += passes
        self.parent.charge(passes)

    def state_path(self, name: str) -> Path | None:
        """The parent's, named for the players taken out (a subgame is a game of its own)."""
        return self.parent.state_path(f"{name}-without-{'-'.join(map(str, self.removed))}")

    def known(self) -> tuple[np.ndarray, np.ndarray]:
        """Parent evaluations that apply here: those with every removed player off."""
        masks, values = self.parent.known()
        applies = ~masks[:, self.removed].any(axis=1)
        return masks[applies][:, self._index], values[applies]
