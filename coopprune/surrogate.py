"""Stage 2 of the paper: a small MLP that predicts the utility of any mask.

Architecture (the paper's): L -> 2L (CELU) -> 1 (sigmoid). Two training recipes:

* ``adam`` (default): Adam, lr 3e-3, batch 32, 1,500 epochs, cosine decay, cross-entropy on the
  logits, i.e. trained to convergence. Measured on SmolLM2 (`make run`): held-out Spearman 0.91
  on the 200 sweep masks (0.89 with MSE); `bench/methods_smollm2.py`'s `shapley` surrogate, on
  masks of every size: 0.96, where MSE through the sigmoid saturated to 0 everywhere (-0.83).
* ``paper``: MSE, SGD momentum 0.9, lr 0.008, batch 300, 300 epochs, lr x0.1 every 100 epochs, as in
  the reference code. With a few hundred masks that is ~2 steps per epoch and it does not fit
  (held-out Spearman negative); kept selectable so results can be compared.

Utilities are predicted on the sigmoid's (0, 1) scale; ``ppl_ratio`` lives there already, and
other utilities are min-max scaled with the bounds stored beside the weights.

The paper never validates its surrogate; :func:`fit_validated` does (held-out masks per stratum,
within-stratum rank correlation, optional out-of-strata masks) and keeps the metrics with the fit.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from coopprune.atomic import atomic_dir, write_json
from coopprune.errors import CoopPruneError
from coopprune.metrics import regression_metrics

RECIPES: dict[str, dict[str, Any]] = {
    "adam": dict(epochs=1500, lr=3e-3, batch_size=32),
    "paper": dict(epochs=300, lr=0.008, batch_size=300),
}
WEIGHTS_FILE, META_FILE, PLOT_FILE = "surrogate.safetensors", "surrogate.json", "heldout_fit.png"


@dataclass(frozen=True)
class SurrogateConfig:
    """Hyperparameters of Stage 2; built by keyword from the ``surrogate`` params section."""

    recipe: Literal["adam", "paper"] = "adam"
    hidden_multiplier: int = 2
    epochs: int | None = None  # None: the recipe's
    lr: float | None = None
    batch_size: int | None = None
    ensemble: int = 1  # >1: independently seeded members; their spread is an uncertainty estimate
    seed: int = 0  # member k trains with seed + k; the held-out split uses seed
    holdout: float = 0.2  # fraction of every stratum held out by fit_validated

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise CoopPruneError(f"unknown surrogate recipe '{self.recipe}'; choose adam or paper")
        for key in ("hidden_multiplier", "ensemble", "epochs", "batch_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise CoopPruneError(f"surrogate {key} must be at least 1, got {value}")
        if self.lr is not None and not self.lr > 0:
            raise CoopPruneError(f"surrogate lr must be positive, got {self.lr}")
        if not 0 < self.holdout < 1:
            raise CoopPruneError(f"surrogate holdout must be a fraction in (0, 1), got {self.holdout}")

    def resolved(self) -> dict[str, Any]:
        """epochs, lr and batch_size: the recipe's, overridden by the fields that are set."""
        out = dict(RECIPES[self.recipe])
        out.update({key: getattr(self, key) for key in out if getattr(self, key) is not None})
        return out


def _mlp(n_layers: int, hidden_multiplier: int) -> nn.Sequential:
    hidden = hidden_multiplier * n_layers
    return nn.Sequential(nn.Linear(n_layers, hidden), nn.CELU(), nn.Linear(hidden, 1), nn.Sigmoid())


def _finite_rows(masks: np.ndarray, utilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bool masks [n, L] and float utilities [n], rows with a NaN/inf utility dropped together
    (the reference code dropped the score but kept its mask, misaligning the two)."""
    masks, utilities = np.asarray(masks, dtype=bool), np.asarray(utilities, dtype=float)
    if masks.ndim != 2 or utilities.shape != (len(masks),):
        raise CoopPruneError(f"need masks [n, L] and utilities [n]; got {masks.shape} and {utilities.shape}")
    keep = np.isfinite(utilities)
    return masks[keep], utilities[keep]


@dataclass
class Surrogate:
    """Fitted ensemble of MLPs mapping a bool mask [L] to a utility."""

    config: SurrogateConfig
    n_layers: int
    members: list[nn.Sequential]
    scale: tuple[float, float] = (0.0, 1.0)  # utility = lo + (hi - lo) * sigmoid output
    metrics: dict[str, Any] = field(default_factory=dict)  # JSON-safe; see fit_validated
    #: held-out (masks, true, predicted) behind ``metrics``; saved as a plot, not as data
    heldout: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def fit(cls, masks: np.ndarray, utilities: np.ndarray, config: SurrogateConfig = SurrogateConfig()) -> Surrogate:
        """Train on finite rows only. Same data + config give bit-identical weights: every random
        draw is seeded and training runs on one thread (also the fastest for an MLP this small)."""
        masks, utilities = _finite_rows(masks, utilities)
        if len(masks) < 2:
            raise CoopPruneError(f"need at least 2 finite mask utilities to fit a surrogate, got {len(masks)}")
        inside = utilities.min() >= 0 and utilities.max() <= 1
        lo, hi = (0.0, 1.0) if inside else (float(utilities.min()), float(utilities.max()))
        target = torch.tensor((utilities - lo) / max(hi - lo, 1e-12), dtype=torch.float32)[:, None]
        x = torch.tensor(masks, dtype=torch.float32)
        with _one_thread():
            members = [_train(x, target, config, seed=config.seed + k) for k in range(config.ensemble)]
        return cls(config, masks.shape[1], members, (lo, hi))

    def predict(
        self, masks: np.ndarray, return_std: bool = False, batch: int = 1 << 18
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Mean prediction over members [n] (and their standard deviation [n] with ``return_std``;
        zero for a single member). Vectorized in chunks of ``batch`` rows (~100 MB of activations
        for 30 layers): 10^6 masks of 30 layers take about 0.5 s per member on two busy CPU cores,
        so Stage 3's millions of calls are cheap. Smaller chunks are markedly slower."""
        masks = np.ascontiguousarray(masks, dtype=bool)
        if masks.ndim != 2 or masks.shape[1] != self.n_layers:
            raise ValueError(f"masks must be [n, {self.n_layers}], got {masks.shape}")
        lo, hi = self.scale
        preds = np.empty((len(self.members), len(masks)))
        with torch.inference_mode():
            for start in range(0, len(masks), batch):
                x = torch.from_numpy(masks[start : start + batch]).to(torch.float32)
                for k, member in enumerate(self.members):
                    preds[k, start : start + len(x)] = member(x)[:, 0].numpy()
        preds = lo + (hi - lo) * preds
        mean = preds.mean(0)
        return (mean, preds.std(0)) if return_std else mean

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> None:
        """``surrogate.safetensors`` (weights) + ``surrogate.json`` (config, scale, metrics).

        The folder is the surrogate's own and is replaced as a whole, so a reader never pairs new
        weights with old metadata and a killed writer leaves the previous surrogate intact. A
        folder holding anything else is refused rather than wiped."""
        folder = Path(folder)
        own = (WEIGHTS_FILE, META_FILE, PLOT_FILE)
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in own) if folder.is_dir() else []
        if foreign:
            raise CoopPruneError(f"refusing to save a surrogate over {folder}: it holds other files ({foreign[0]})")
        tensors = {f"member{k}.{name}": p.detach().contiguous() for k, m in enumerate(self.members)
                   for name, p in m.state_dict().items()}
        meta = {"config": asdict(self.config), "n_layers": self.n_layers, "scale": list(self.scale),
                "metrics": json_safe(self.metrics)}
        with atomic_dir(folder, overwrite=True) as tmp:
            save_file(tensors, str(tmp / WEIGHTS_FILE))
            write_json(tmp / META_FILE, meta)
            if self.heldout is not None and len(self.heldout[1]):
                from coopprune.plots import plot_surrogate_fit

                masks, true, pred = self.heldout
                plot_surrogate_fit(true, pred, masks.sum(1), tmp / PLOT_FILE, title="surrogate, held-out masks")

    @classmethod
    def load(cls, folder: str | Path) -> Surrogate:
        """Inverse of :meth:`save` (bit-identical predictions); a clear one-line error otherwise."""
        folder = Path(folder)
        if not (folder / META_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise CoopPruneError(f"no surrogate in {folder}: expected {META_FILE} and {WEIGHTS_FILE}")
        try:
            meta = json.loads((folder / META_FILE).read_text())
            config = SurrogateConfig(**meta["config"])
            n_layers = int(meta["n_layers"])
            tensors = load_file(str(folder / WEIGHTS_FILE))
            members = []
            for k in range(config.ensemble):
                m = _mlp(n_layers, config.hidden_multiplier)
                prefix = f"member{k}."
                m.load_state_dict({name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)})
                members.append(m.eval())
            if len(tensors) != sum(len(m.state_dict()) for m in members):
                raise ValueError(f"{WEIGHTS_FILE} holds {len(tensors)} tensors, more than {config.ensemble} member(s)")
            lo, hi = (float(v) for v in meta["scale"])
            metrics = meta.get("metrics") or {}
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError, CoopPruneError) as exc:
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CoopPruneError(f"corrupt surrogate in {folder}: {detail}") from None
        return cls(config, n_layers, members, (lo, hi), metrics)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Tiny matmuls gain nothing from threads (they lose badly on a busy machine), and one thread
    makes the float reductions, hence the weights, independent of the machine's core count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train(x: torch.Tensor, y: torch.Tensor, config: SurrogateConfig, seed: int) -> nn.Sequential:
    hp = config.resolved()
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        model = _mlp(x.shape[1], config.hidden_multiplier)
    generator = torch.Generator().manual_seed(seed)
    epochs, batch = hp["epochs"], hp["batch_size"]
    steps_per_epoch = math.ceil(len(x) / batch)
    if config.recipe == "paper":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=0.9)
        sched: Any = torch.optim.lr_scheduler.StepLR(opt, step_size=100 * steps_per_epoch, gamma=0.1)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=hp["lr"], fused=True)  # fused: ~25% faster on CPU
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    if config.recipe == "paper":  # the paper's MSE on the sigmoid output
        loss_fn: nn.Module = nn.MSELoss()
        head = model
    else:
        # Cross-entropy on the logits (targets in [0, 1]): with MSE through the sigmoid a net whose
        # targets are mostly ~0 (ppl_ratio of deep cuts) can saturate and predict 0 everywhere.
        # Measured on SmolLM2 masks of every size: held-out Spearman -0.83 (MSE) vs 0.96 (this).
        loss_fn = nn.BCEWithLogitsLoss()
        head = model[:-1]
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            opt.zero_grad()
            loss_fn(head(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


# ---------------------------------------------------------------------- validation
def holdout_split(n_kept: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Bool mask of held-out rows: ``fraction`` of every stratum (rounded), seeded. A stratum
    always keeps at least one training row, so none is left entirely to extrapolation."""
    if not 0 < fraction < 1:
        raise CoopPruneError(f"holdout fraction must be in (0, 1), got {fraction}")
    n_kept = np.asarray(n_kept)
    rng = np.random.default_rng(seed)
    held = np.zeros(len(n_kept), dtype=bool)
    for k in np.unique(n_kept):
        rows = np.flatnonzero(n_kept == k)
        take = min(int(round(fraction * len(rows))), len(rows) - 1)
        held[rng.choice(rows, size=take, replace=False)] = True
    return held


def evaluate_surrogate(surrogate: Surrogate, masks: np.ndarray, utilities: np.ndarray) -> dict[str, Any]:
    """Metrics overall and per stratum (keyed by the number of kept layers, as a string so the dict
    survives JSON unchanged), plus the mean within-stratum Spearman: overall Spearman is inflated
    by depth alone, since utility falls with every removed layer whatever the surrogate learned."""
    masks, utilities = _finite_rows(masks, utilities)
    pred = surrogate.predict(masks) if len(masks) else np.zeros(0)
    n_kept = masks.sum(1)
    per = {str(k): regression_metrics(utilities[n_kept == k], pred[n_kept == k]) for k in np.unique(n_kept)}
    within = [m["spearman"] for m in per.values() if m["spearman"] is not None]
    return {
        "overall": regression_metrics(utilities, pred),
        "per_stratum": per,
        "mean_within_stratum_spearman": float(np.mean(within)) if within else None,
    }


def fit_validated(
    masks: np.ndarray,
    utilities: np.ndarray,
    config: SurrogateConfig = SurrogateConfig(),
    out_of_strata: tuple[np.ndarray, np.ndarray] | None = None,
) -> Surrogate:
    """Stage 2 with the validation the paper lacks.

    Holds out ``config.holdout`` of every stratum (seeded by ``config.seed``), fits on the rest and
    measures the held-out masks (:func:`evaluate_surrogate`) and, when given, ``out_of_strata``
    masks (real evaluations from strata the fit never saw: does the surrogate extrapolate?). Then
    refits on every finite mask, ``out_of_strata`` included, and returns that surrogate with the
    held-out metrics attached: the estimate uses all real evaluations, the metrics stay honest.

    ``metrics`` keys: ``overall``, ``per_stratum``, ``mean_within_stratum_spearman`` (held out),
    ``out_of_strata`` (same three keys, or None), ``n_train`` (masks of the held-out fit), ``holdout``.
    With too few masks to hold any out (one per stratum), the held-out metrics are empty (n = 0,
    nulls) rather than an error, so small budgets still run.
    """
    masks, utilities = _finite_rows(masks, utilities)
    held = holdout_split(masks.sum(1), config.holdout, config.seed)
    all_masks, all_utilities = masks, utilities
    if out_of_strata is not None:
        extra_masks, extra_utilities = _finite_rows(*out_of_strata)
        all_masks, all_utilities = np.concatenate([masks, extra_masks]), np.concatenate([utilities, extra_utilities])
    separate = held.any() or out_of_strata is not None  # else the final fit saw nothing to evaluate
    probe = Surrogate.fit(masks[~held], utilities[~held], config) if separate else None
    final = Surrogate.fit(all_masks, all_utilities, config)
    probe = final if probe is None else probe
    metrics = evaluate_surrogate(probe, masks[held], utilities[held])
    final.heldout = (masks[held], utilities[held], probe.predict(masks[held]))
    metrics["out_of_strata"] = None if out_of_strata is None else evaluate_surrogate(probe, *out_of_strata)
    metrics["n_train"] = int((~held).sum())
    metrics["holdout"] = config.holdout
    final.metrics = metrics
    return final


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, keys -> str: strict JSON that loads back equal."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
