"""Figures a run leaves beside its results: how well the surrogate fits, and the contributions.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot, so
no global figure state leaks into (or out of) a long-running process, and no display is needed.
Files are written atomically: a reader never sees half a PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from coopprune.atomic import atomic_path
from coopprune.metrics import regression_metrics, spearman

REMOVED_COLOR, KEPT_COLOR = "tab:red", "tab:blue"


def _save(fig: Figure, path: str | Path) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (for a page that embeds its images)."""
    import io

    FigureCanvasAgg(fig)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def _palette(n: int) -> list[tuple[float, float, float, float]]:
    """Strata are ordered (kept layers), so an ordered colormap reads better than a cyclic one."""
    return [colormaps["viridis"](x) for x in np.linspace(0, 0.9, n)]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def plot_surrogate_fit(
    true: np.ndarray, pred: np.ndarray, n_kept: np.ndarray, path: str | Path, title: str = "surrogate"
) -> None:
    """Predicted vs true utility, one colour per stratum, with y = x; R2 and Spearman (overall and
    mean within strata, since depth alone inflates the overall one) in the title."""
    true, pred, n_kept = np.asarray(true, float), np.asarray(pred, float), np.asarray(n_kept)
    finite = np.isfinite(true) & np.isfinite(pred)
    true, pred, n_kept = true[finite], pred[finite], n_kept[finite]
    metrics = regression_metrics(true, pred)
    strata = np.unique(n_kept)
    within = [r for k in strata if (r := spearman(true[n_kept == k], pred[n_kept == k])) is not None]
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    for k, color in zip(strata, _palette(len(strata))):
        rows = n_kept == k
        ax.scatter(true[rows], pred[rows], s=12, alpha=0.7, color=color, label=f"{k} kept")
    lo, hi = (min(true.min(), pred.min()), max(true.max(), pred.max())) if len(true) else (0.0, 1.0)
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="y = x")
    ax.set_xlabel("true utility")
    ax.set_ylabel("predicted utility")
    ax.legend(fontsize=7, loc="upper left", ncol=1 + len(strata) // 8)
    mean_within = float(np.mean(within)) if within else None
    ax.set_title(
        f"{title}\nR2 {_fmt(metrics['r2'])}, Spearman {_fmt(metrics['spearman'])} "
        f"(within strata {_fmt(mean_within)}), n={metrics['n']}",
        fontsize=9,
    )
    _save(fig, path)


def plot_contributions(
    values: np.ndarray,
    ci_low: np.ndarray | None,
    ci_high: np.ndarray | None,
    removed: Sequence[int],
    path: str | Path,
    names: Sequence[str] | None = None,
    title: str = "contributions",
    ylabel: str = "contribution",
    note: str | None = None,
) -> None:
    """One bar per player (``removed`` are positions in ``values``, drawn in red), with error bars
    from the interval when one is given. Values spanning orders of magnitude (layer 0's tens of
    nats beside a middle layer's tenths) go on a symmetric-log axis so both stay readable; ``note``
    (e.g. that the fit behind the values is poor) is written across the figure."""
    values = np.asarray(values, float)
    n = len(values)
    yerr = None
    if ci_low is not None and ci_high is not None:
        low, high = np.asarray(ci_low, float), np.asarray(ci_high, float)
        yerr = np.nan_to_num(np.clip(np.stack([values - low, high - values]), 0, None))
    removed_set = set(int(i) for i in removed)
    colors = [REMOVED_COLOR if i in removed_set else KEPT_COLOR for i in range(n)]
    fig = Figure(figsize=(max(6.0, 0.28 * n + 1.5), 4))
    ax = fig.add_subplot()
    ax.bar(np.arange(n), values, color=colors, yerr=yerr, capsize=2, error_kw={"lw": 0.8})
    ax.axhline(0, color="black", lw=0.6)
    _symlog_if_wide(ax, values)
    ax.set_xticks(np.arange(n), list(names) if names is not None else [str(i) for i in range(n)],
                  rotation=90, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    _note(fig, note)
    _save(fig, path)


def _symlog_if_wide(ax: object, values: np.ndarray) -> None:
    magnitudes = np.abs(values[np.isfinite(values)])
    if len(magnitudes) and np.median(magnitudes) > 0 and magnitudes.max() > 20 * np.median(magnitudes):
        ax.set_yscale("symlog", linthresh=float(np.median(magnitudes)))  # type: ignore[attr-defined]


def _note(fig: Figure, note: str | None) -> None:
    if note:
        fig.text(0.5, 0.5, note, ha="center", va="center", fontsize=9, color="darkred", wrap=True,
                 bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "darkred"})


def plot_interactions(
    matrix: np.ndarray,
    removed: Sequence[int],
    path: str | Path,
    names: Sequence[str] | None = None,
    title: str = "pairwise interactions",
    note: str | None = None,
) -> None:
    """Symmetric player x player heatmap on a diverging scale centred at zero (blue: redundant
    pair, red: complementary), clipped at the 98th percentile of |value| so a few extreme pairs
    do not wash out the rest; ``removed`` players' labels in red."""
    matrix = np.asarray(matrix, float)
    n = len(matrix)
    off = np.abs(matrix[~np.eye(n, dtype=bool)])
    limit = float(np.percentile(off, 98)) if off.size and np.any(off > 0) else 1.0
    fig = Figure(figsize=(max(5.0, 0.22 * n + 2), max(4.5, 0.22 * n + 1.5)))
    ax = fig.add_subplot()
    shown = np.where(np.eye(n, dtype=bool), np.nan, matrix)
    image = ax.imshow(shown, cmap="RdBu_r", vmin=-limit, vmax=limit)
    fig.colorbar(image, ax=ax, shrink=0.8, label="interaction (nats; < 0: redundant)")
    labels = list(names) if names is not None else [str(i) for i in range(n)]
    ax.set_xticks(np.arange(n), labels, rotation=90, fontsize=6)
    ax.set_yticks(np.arange(n), labels, fontsize=6)
    for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
        for i, tick in enumerate(ticks):
            if i in set(int(r) for r in removed):
                tick.set_color(REMOVED_COLOR)
    ax.set_title(title, fontsize=9)
    _note(fig, note)
    _save(fig, path)


def plot_lines(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    logy: bool = False,
) -> None:
    """One line per named series of (x, y) points: the benchmark curves (quality vs k, accuracy vs budget)."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    colors = colormaps["tab10"].colors if len(series) <= 10 else _palette(len(series))  # lines must be told apart
    for (name, (x, y)), color in zip(series.items(), colors):
        ax.plot(x, y, marker="o", ms=3, lw=1.2, color=color, label=name)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def search_trace_figure(traces: dict[str, Sequence[dict]], title: str = "") -> Figure:
    """The set search's progress: the best utility found so far against the real forward passes
    spent, one step line per trace (``game-search``'s ``details.search.trace``: points with
    ``passes`` and ``utility``, None before any k-set was evaluated), each point a round."""
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.add_subplot()
    colors = colormaps["tab10"].colors
    for (name, trace), color in zip(traces.items(), colors):
        points = [(float(p["passes"]), float(p["utility"])) for p in trace if p.get("utility") is not None]
        if not points:
            continue
        x, y = zip(*points)
        ax.plot(x, y, drawstyle="steps-post", marker="o", ms=4, lw=1.4, color=color, label=name)
        ax.annotate(f"{y[-1]:.4g}", (x[-1], y[-1]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("real forward passes spent")
    ax.set_ylabel("best utility found")
    ax.set_title(title or "search trace: best utility against passes (a point per round)", fontsize=9)
    ax.grid(alpha=0.3)
    if len(traces) > 1:
        ax.legend(fontsize=7)
    return fig


def plot_search_trace(traces: dict[str, Sequence[dict]], path: str | Path, title: str = "") -> None:
    _save(search_trace_figure(traces, title), path)
