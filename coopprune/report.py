"""What a pruning run leaves beside its checkpoint: the contributions table (CSV), a bar chart of
contributions with their intervals (PNG), and the surrogate with its held-out metrics; for a
method that reads its contributions off the real evaluations (``coopprune.attribution``), also
``attribution.json`` (semivalue, Shapley, pairwise interactions, intervals, the fit and its
verdict) and the interaction heatmap ``interactions.png``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from coopprune.atomic import atomic_path, write_json
from coopprune.records import ATTRIBUTION_FILE, INTERACTIONS_FILE
from coopprune.strategy import Selection

CSV_COLUMNS = ["round", "player", "name", "contribution", "ci_low", "ci_high", "rank", "removed"]


def write_contributions_csv(selection: Selection, names: list[str], path: str | Path) -> None:
    """One row per (round, player still present); rank 0 = least important in that round."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for r, rnd in enumerate(selection.rounds):
            c = rnd.contributions
            ranks = np.argsort(np.argsort(np.nan_to_num(c.values, nan=np.inf), kind="stable"), kind="stable")
            for j, player in enumerate(rnd.players):
                writer.writerow([
                    r,
                    player,
                    names[player],
                    float(c.values[j]),
                    "" if c.ci_low is None else float(c.ci_low[j]),
                    "" if c.ci_high is None else float(c.ci_high[j]),
                    int(ranks[j]),
                    player in rnd.removed,
                ])


def write_report(folder: str | Path, selection: Selection, names: list[str], surrogate: object | None = None) -> None:
    """``contributions.csv``, ``contributions.png`` and, for surrogate methods, ``surrogate/``."""
    from coopprune.plots import plot_contributions

    folder = Path(folder)
    write_contributions_csv(selection, names, folder / "contributions.csv")
    first = selection.rounds[0]
    c = first.contributions
    iterative = f", {len(selection.rounds)} rounds" if len(selection.rounds) > 1 else ""
    removed = [first.players.index(p) for p in selection.removed if p in first.players]
    player_names = [names[p] for p in first.players]
    a = c.attribution
    note = "; ".join(a.warnings) if a is not None and a.warnings else None
    plot_contributions(
        c.values, c.ci_low, c.ci_high, removed, folder / "contributions.png", names=player_names,
        title=f"{c.method}: contributions (removed in red{iterative})",
        ylabel="semivalue (log-utility, nats)" if a is not None else "contribution", note=note,
    )
    if a is not None:
        from coopprune.plots import plot_interactions

        write_json(folder / ATTRIBUTION_FILE, a.to_json())
        plot_interactions(a.interactions, removed, folder / INTERACTIONS_FILE, names=player_names,
                          title=f"{c.method}: pairwise Shapley interactions ({a.evaluations} real evaluations)",
                          note=note)
    if surrogate is not None:
        surrogate.save(folder / "surrogate")  # type: ignore[attr-defined]
