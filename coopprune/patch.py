"""A training-free patch after the cut: each removed run of layers becomes a linear map folded into
the preceding kept layer (ReplaceMe, Shopkhoev et al., NeurIPS 2025, arXiv 2505.02819; LinearPatch).

For a run of consecutive removed layers ``a..b`` of a pre-norm decoder whose layer ``a-1`` ends
with ``X = h + M`` (``h``: its residual stream after attention, ``M``: its MLP's ``down_proj``
output), the pruned model feeds ``X`` where the unpruned one fed ``Y``, the output of layer
``b``. The patch fits ``T`` (H x H) on calibration tokens so that ``h + M T ~ Y``::

    minimise ||h + M T - Y||^2 + lam * ||T - I||^2,   lam = lambda * tr(M^T M) / H
    (M^T M + lam I) T = M^T (Y - h) + lam I

a ridge toward the identity (``T = I`` is the plain pruned model), its strength relative to the
mean eigenvalue of ``M^T M`` so that one ``lambda`` means the same at any activation scale, token
count or width. ``M T = a W^T T = a (T^T W)^T`` for ``down_proj``'s input ``a`` and weight ``W``
[H, I], so ``W' = T^T W`` (and a bias ``b' = T^T b``): the checkpoint keeps its architecture,
loads with plain ``from_pretrained`` and exports to GGUF like any other. The ``cosine`` objective
(ReplaceMe's other one) minimises the mean cosine distance of ``h + M T`` to ``Y`` plus
``lambda / H * ||T - I||^2``, by L-BFGS from the least-squares solution.

Every run is fitted on the unpruned model's states (``inputs: unpruned``, ReplaceMe's way: one
pass per batch gives ``X``, ``M`` and ``Y``). ``inputs: pruned`` fits the runs in order of depth,
each on the model with the earlier runs already removed and patched (targets still from the
unpruned model), so a later patch also tries to correct what the earlier cuts left; measured on
SmolLM2 at k = 12 it generalises worse (``bench/patch.py``): the fold can only add ``M T``, a
weak lever on a drift that lives in ``h``. Statistics are accumulated and solved in float64. A run that
starts at layer 0 has no preceding block and is left unpatched, with a warning: folding ``T`` into
the token embeddings would also change a tied LM head (SmolLM2, Llama-3.2, Qwen2 small models tie
them), and untying it would change the architecture.

Families: pre-norm decoders whose MLP output is added to the residual stream as is (Llama,
Mistral, Qwen2, Qwen3). Gemma2/3 normalise the MLP output after ``down_proj`` (a fold there is not
linear in the stream) and the other families have no ``down_proj`` in that place: one-line error.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from coopprune.calibration import Windows
from coopprune.config import PatchParams
from coopprune.errors import CoopPruneError
from coopprune.models import LoadedModel
from coopprune.models.architectures import Architecture

#: Model types whose layer ends with ``residual + mlp(...)``, ``mlp`` ending with ``down_proj``.
PATCHABLE = ("llama", "mistral", "qwen2", "qwen3")
DOWN_PROJ = "mlp.down_proj"
PROBE_BATCHES = 4  # batches whose tokens are kept to report the cosine after the fit (lstsq)

DEFAULT = PatchParams()


def check_patchable(model: nn.Module) -> None:
    """One-line error unless the model's family can carry the patch."""
    model_type = getattr(model.config, "model_type", "")
    if model_type not in PATCHABLE:
        why = (" (its MLP output is normalised before the residual add, so a fold into down_proj is not linear)"
               if model_type.startswith("gemma") else "")
        raise CoopPruneError(f"the linear patch does not support '{model_type}' models{why}; "
                             f"supported: {', '.join(PATCHABLE)}")


def removed_runs(removed: Sequence[int]) -> list[list[int]]:
    """Maximal runs of consecutive layers, in order: [3, 4, 5, 12, 13] -> [[3, 4, 5], [12, 13]]."""
    runs: list[list[int]] = []
    for i in sorted(set(removed)):
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


@dataclass
class RunFit:
    """The patch of one removed run; ``transform`` is None where the run was skipped (``skipped`` says why)."""

    layers: list[int]
    folded_into: int | None
    transform: torch.Tensor | None = None
    lambda_abs: float = 0.0
    tokens: int = 0
    error_before: float = 0.0  # sum over tokens of ||X - Y||^2 (the plain pruned model)
    error_after: float = 0.0  # sum over tokens of ||h + M T - Y||^2
    cosine_before: float = 0.0  # mean over tokens of cos(X, Y)
    cosine_after: float = 0.0  # mean of cos(h + M T, Y) (lstsq: over the first batches' tokens)
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.transform is None:
            return {"layers": self.layers, "folded_into": None, "skipped": self.skipped}
        return {
            "layers": self.layers, "folded_into": self.folded_into, "tokens": self.tokens,
            "lambda_abs": self.lambda_abs if math.isfinite(self.lambda_abs) else "inf",
            "relative_error": self.error_after / self.error_before if self.error_before > 0 else 0.0,
            "cosine_before": round(self.cosine_before, 6), "cosine_after": round(self.cosine_after, 6),
            "transform_distance": float(torch.linalg.matrix_norm(self.transform - torch.eye(len(self.transform),
                                        dtype=self.transform.dtype, device=self.transform.device)).cpu()),
        }


@dataclass
class Patch:
    """Every run's fit and what it was fitted on."""

    runs: list[RunFit]
    settings: PatchParams
    windows: dict[str, Any]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def applied(self) -> list[RunFit]:
        return [r for r in self.runs if r.transform is not None]

    def key(self) -> str:
        """What a patched checkpoint depends on (settings, windows, removal), for reuse in the flow."""
        spec = {"settings": self.settings.model_dump(exclude={"enabled"}), "windows": self.windows.get("fingerprint"),
                "runs": [r.layers for r in self.runs]}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        """The ``patch`` entry of ``pruning.json``."""
        s = self.settings
        return {
            "method": "replaceme", "objective": s.objective, "lambda": s.lambda_ if math.isfinite(s.lambda_) else "inf",
            "fold": f"{DOWN_PROJ}.weight <- T^T W of the layer before each run",
            "inputs": "the unpruned model" if s.inputs == "unpruned" else "the pruned model, earlier runs patched",
            "targets": "the unpruned model", "calibration": self.windows,
            "runs": [r.to_json() for r in self.runs], "skipped": [r.layers for r in self.runs if r.transform is None],
            "seconds": round(self.seconds, 2), "key": self.key(), **self.extra,
        }


class _Stop(Exception):
    """Raised by a hook once the last state a pass needs is taken: the rest of the model never runs."""


def _hidden(output: object) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]  # type: ignore[index]


def _capture(loaded_model: nn.Module, architecture: Architecture, modules: Sequence[nn.Module],
             indices: Sequence[int], ids: torch.Tensor, taps: dict[str, nn.Module], stop: nn.Module) -> dict[str, torch.Tensor]:
    """The outputs of ``taps`` for one batch through the stack ``modules``, stopping after ``stop``."""
    found: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            found[name] = _hidden(output)

        return hook

    def halt(module: nn.Module, args: object, output: object) -> None:
        raise _Stop

    try:
        for name, module in taps.items():
            handles.append(module.register_forward_hook(keep(name)))
        handles.append(stop.register_forward_hook(halt))  # after the taps: they run first
        with architecture.stack_view(loaded_model, modules, indices):
            try:
                loaded_model(input_ids=ids, use_cache=False)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    missing = set(taps) - set(found)
    if missing:
        raise CoopPruneError(f"the model never ran {', '.join(sorted(missing))}: cannot fit the patch")
    return found


def _down_proj(layer: nn.Module) -> nn.Linear:
    module = layer.get_submodule(DOWN_PROJ)
    if not isinstance(module, nn.Linear):
        raise CoopPruneError(f"{DOWN_PROJ} is a {type(module).__name__}, not a linear layer: cannot fold the patch")
    return module


def fold(layer: nn.Module, transform: torch.Tensor) -> None:
    """``down_proj`` of ``layer`` followed by ``T``: W' = T^T W, b' = T^T b (computed in float64)."""
    down = _down_proj(layer)
    t = transform.to(device=down.weight.device, dtype=torch.float64)
    if t.shape != (down.out_features, down.out_features):
        raise CoopPruneError(f"a {tuple(t.shape)} transform does not fit a down_proj of width {down.out_features}")
    with torch.no_grad():
        down.weight.copy_((t.T @ down.weight.double()).to(down.weight.dtype))
        if down.bias is not None:
            down.bias.copy_((t.T @ down.bias.double()).to(down.bias.dtype))


def _solve(gram: torch.Tensor, cross: torch.Tensor, lam_abs: float) -> torch.Tensor:
    """argmin ||M T - D||^2 + lam ||T - I||^2 from M^T M and M^T D (float64)."""
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    if math.isinf(lam_abs):
        return eye
    a, rhs = gram + lam_abs * eye, cross + lam_abs * eye
    try:
        return torch.linalg.solve(a, rhs)
    except RuntimeError:  # singular (lambda 0 and fewer independent tokens than dimensions)
        return torch.linalg.lstsq(a, rhs, driver="gelsd" if a.device.type == "cpu" else None).solution


def _cosine_fit(h: torch.Tensor, m: torch.Tensor, y: torch.Tensor, start: torch.Tensor, lam: float, steps: int) -> torch.Tensor:
    """L-BFGS on mean(1 - cos(h + M T, Y)) + lam / H ||T - I||^2, from ``start`` (float64)."""
    eye = torch.eye(len(start), dtype=torch.float64, device=start.device)
    if math.isinf(lam):
        return eye
    t = start.clone().contiguous().requires_grad_(True)
    optimizer = torch.optim.LBFGS([t], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (1 - nn.functional.cosine_similarity(h + m @ t, y, dim=-1)).mean()
        loss = loss + lam / len(t) * (t - eye).pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return t.detach()


@dataclass
class _RunStats:
    """One run's float64 sums over the calibration tokens (the solve needs only these) and the kept states."""

    gram: torch.Tensor  # M^T M
    cross: torch.Tensor  # M^T (Y - h)
    err0: float = 0.0  # ||X - Y||^2
    dd: float = 0.0  # ||Y - h||^2
    cos0: float = 0.0  # sum of cos(X, Y)
    tokens: int = 0
    stored: dict[str, list[torch.Tensor]] = field(default_factory=lambda: {"h": [], "m": [], "y": []})

    def add(self, x: torch.Tensor, m: torch.Tensor, y: torch.Tensor, keep: bool) -> None:
        """One batch's tokens into the sums; with ``keep``, its h, M and Y kept too (the cosine fit, the probe)."""
        d = y - x + m  # Y - h
        self.gram += m.T @ m
        self.cross += m.T @ d
        self.err0 += float((x - y).pow(2).sum())
        self.dd += float(d.pow(2).sum())
        self.cos0 += float(nn.functional.cosine_similarity(x, y, dim=-1).sum())
        self.tokens += len(x)
        if keep:
            self.stored["h"].append((x - m).float().cpu())
            self.stored["m"].append(m.float().cpu())
            self.stored["y"].append(y.float().cpu())


def _batch_states(loaded_model: nn.Module, architecture: Architecture, layers: list[nn.Module], ids: torch.Tensor,
                  run: list[int], pruned: tuple[list[nn.Module], list[int]] | None) -> dict[str, torch.Tensor]:
    """X, M and Y of one batch for ``run``: all three from one pass of the unpruned model, or with ``pruned``
    (the partly pruned stack up to the layer before the run, and its original indices) X and M from that."""
    n, b = len(layers), run[-1]
    if pruned is not None:  # Y from the unpruned model, X and M from the partly pruned one
        stack, kept = pruned
        here = _capture(loaded_model, architecture, layers, list(range(n)), ids, {"y": layers[b]}, layers[b])
        return here | _capture(loaded_model, architecture, stack, kept, ids,
                               {"x": stack[-1], "m": _down_proj(stack[-1])}, stack[-1])
    taps = {"x": layers[run[0] - 1], "m": _down_proj(layers[run[0] - 1]), "y": layers[b]}
    return _capture(loaded_model, architecture, layers, list(range(n)), ids, taps, layers[b])


def _collect_stats(base: LoadedModel, layers: list[nn.Module], run: list[int],
                   pruned: tuple[list[nn.Module], list[int]] | None, windows: Windows, *, keep_all: bool,
                   batch_size: int, progress: bool, device: torch.device, stats_device: torch.device) -> _RunStats:
    """The statistics of ``run`` over every batch of ``windows``, all tokens' states kept with ``keep_all``,
    else only the first ``PROBE_BATCHES`` batches'."""
    from tqdm.auto import tqdm

    a, b = run[0], run[-1]
    width = _down_proj(layers[a - 1]).out_features
    gram = torch.zeros(width, width, dtype=torch.float64, device=stats_device)
    stats = _RunStats(gram, torch.zeros_like(gram))
    ids_all = windows.input_ids
    with torch.inference_mode():
        for batch, start in enumerate(tqdm(range(0, len(ids_all), batch_size), desc=f"patch {a}..{b}",
                                           disable=not progress, leave=False)):
            ids = ids_all[start : start + batch_size].to(device)
            here = _batch_states(base.model, base.architecture, layers, ids, run, pruned)
            x, m, y = (here[k].reshape(-1, width).to(stats_device, torch.float64) for k in ("x", "m", "y"))
            stats.add(x, m, y, keep=keep_all or batch < PROBE_BATCHES)
    return stats


def _fit_run(run: list[int], stats: _RunStats, settings: PatchParams) -> RunFit:
    """The run's transform from its statistics (the ridge solve; for ``cosine``, L-BFGS from there), with
    its error and cosine before and after."""
    gram, cross = stats.gram, stats.cross
    width = len(gram)
    lam_abs = math.inf if math.isinf(settings.lambda_) else settings.lambda_ * float(torch.trace(gram)) / width
    transform = _solve(gram, cross, lam_abs)
    h, m, y = (torch.cat(stats.stored[k]).to(gram.device, torch.float64) for k in ("h", "m", "y"))
    if settings.objective == "cosine":
        transform = _cosine_fit(h, m, y, transform, settings.lambda_, settings.steps)
    err1 = float(torch.trace(transform.T @ gram @ transform) - 2 * torch.trace(transform.T @ cross)) + stats.dd
    cos1 = float(nn.functional.cosine_similarity(h + m @ transform, y, dim=-1).mean())
    return RunFit(run, run[0] - 1, transform.cpu(), lam_abs, stats.tokens, stats.err0, max(err1, 0.0),
                  stats.cos0 / stats.tokens, cos1)


def _skip_from_layer_zero(run: list[int]) -> RunFit:
    """A run from layer 0 stays unpatched, with a warning: its fold would go into the (often tied) embeddings."""
    b = run[-1]
    reason = "no layer before it: the embeddings are tied to the LM head in many models, so nothing is folded"
    what = f"layers 0..{b} stay" if b > 0 else "layer 0 stays"
    warnings.warn(f"{what} unpatched ({reason})", stacklevel=3)  # fit_patch's caller, as before this helper
    return RunFit(run, None, skipped=reason)


def fit_patch(base: LoadedModel, removed: Sequence[int], windows: Windows, settings: PatchParams = DEFAULT, *,
              batch_size: int = 8, progress: bool = True) -> Patch:
    """Fit the patch of every run of ``removed`` (original layer indices) on ``windows`` of ``base``.

    ``base`` is not changed (with ``inputs: pruned``, patched layers are copies while fitting).
    Each run costs one pass of the unpruned model up to its last layer (``inputs: pruned``: and
    one of the partly pruned model up to the layer before it).
    """
    model, arch = base.model, base.architecture
    check_patchable(model)
    started = time.perf_counter()
    layers = list(arch.layers(model))
    n = len(layers)
    runs = removed_runs(removed)
    if not runs or any(not 0 <= i < n for r in runs for i in r) or sum(map(len, runs)) >= n:
        raise CoopPruneError(f"cannot patch the removal of layers {sorted(removed)} from a {n}-layer model")
    device = next(model.parameters()).device
    stats_device = torch.device("cpu") if device.type == "mps" else device  # MPS has no float64
    current = dict(enumerate(layers))  # original index -> module of the model being patched
    sequential = settings.inputs == "pruned"
    fits: list[RunFit] = []
    for run in runs:
        if run[0] == 0:
            fits.append(_skip_from_layer_zero(run))
            for i in run:
                current.pop(i, None)
            continue
        p = run[0] - 1
        kept = [i for i in sorted(current) if i <= p]  # the partly pruned model up to the layer before the run
        pruned = ([current[i] for i in kept], kept) if sequential else None
        stats = _collect_stats(base, layers, run, pruned, windows, keep_all=settings.objective == "cosine",
                               batch_size=batch_size, progress=progress, device=device, stats_device=stats_device)
        fits.append(_fit_run(run, stats, settings))
        del stats  # every token's states with the cosine objective: freed before the next run's
        if sequential:
            patched = copy.deepcopy(current[p])
            fold(patched, fits[-1].transform)
            current[p] = patched
            for i in run:
                current.pop(i)
    windows_info = {"n_windows": windows.n_windows, "window": windows.length, "fingerprint": windows.fingerprint}
    return Patch(fits, settings, windows_info, time.perf_counter() - started)


def apply_patch(model: nn.Module, architecture: Architecture, kept_layers: Sequence[int], patch: Patch,
                base: nn.Module | None = None) -> None:
    """Fold every fitted transform into the pruned ``model`` in place (``kept_layers``: the original
    index of each of its layers). With ``base``, each folded ``down_proj`` must first equal the
    unpruned model's: a patch is fitted for those weights, not for a healed or otherwise changed layer."""
    check_patchable(model)
    kept = list(kept_layers)
    layers = architecture.layers(model)
    if len(layers) != len(kept):
        raise CoopPruneError(f"the pruned model has {len(layers)} layers, its record keeps {len(kept)}")
    for fit in patch.applied:
        if fit.folded_into not in kept or any(i in kept for i in fit.layers):
            raise CoopPruneError(f"the patch of layers {fit.layers} does not match this pruned model (kept {kept})")
        layer = layers[kept.index(fit.folded_into)]
        if base is not None:
            ref = _down_proj(architecture.layers(base)[fit.folded_into]).weight
            mine = _down_proj(layer).weight
            if ref.shape != mine.shape or not torch.equal(ref.detach().to(mine.device, mine.dtype), mine.detach()):
                raise CoopPruneError(f"layer {fit.folded_into}'s {DOWN_PROJ} differs from the base model's: patch the "
                                     "checkpoint pruned from this base, before any healing")
        fold(layer, fit.transform)  # type: ignore[arg-type]
