"""The card's search section: the best utility against real passes, and per pruning round its
facts, the peers' sets it was seeded with, its trace, and the screen's confirmations and
refinement on all windows."""

from __future__ import annotations

from typing import Any

from coopprune.card.facts import Release
from coopprune.card.markup import _e, _img, _table
from coopprune.card.wording import _layers, _num


def _search_section(r: Release) -> str:
    """The set search (each pruning round's): its trace plotted, then per round its facts, seeds, trace, screen."""
    searches = r.searches
    if not searches:
        return ""
    final = _removed_layer_set(r)
    parts = ["<h2>The search</h2>", _search_trace_plot(searches)]
    for i, s in enumerate(searches):
        if len(searches) > 1:
            parts.append(f"<h3>Round {i}</h3>")
        parts += [_search_facts(s), _peer_seeds_part(s, final), _search_trace_part(s), _fidelity_part(s)]
    return "".join(parts)


def _removed_layer_set(r: Release) -> list[int] | None:
    """The removed layers, sorted, to mark the peer seed that is the release's set; None for sublayer players."""
    if (r.record.get("scores") or {}).get("removed_players"):
        return None
    return sorted(int(x) for x in r.record.get("removed_layers") or [])


def _search_trace_plot(searches: list[dict[str, Any]]) -> str:
    """The best utility found against real passes, one line per round (the title names a screen's windows)."""
    from coopprune.plots import png_bytes, search_trace_figure

    traces = {
        f"round {i}" if len(searches) > 1 else "best so far": s.get("trace") or [] for i, s in enumerate(searches)
    }
    fidelity = searches[0].get("fidelity")
    title = "best utility found against real passes" + (
        f" (search on {fidelity['windows']} of {fidelity['of']} windows)" if fidelity else ""
    )
    return _img(png_bytes(search_trace_figure(traces, title)), "search trace")


def _search_facts(s: dict[str, Any]) -> str:
    """One round's budget, how it stopped and what it chose, as a two-column table."""
    facts = [
        ["budget (real passes)", _num(s.get("budget"))],
        ["rounds", _num(s.get("rounds"))],
        ["stopped by", _e(s.get("stopped"))],
        ["passes before the rounds", _num(s.get("passes_before"))],
        ["strata (removed)", _e(s.get("strata_removed"))],
        ["chosen set's utility", _num(s.get("chosen_real"))],
    ]
    fit = s.get("proposals_fit") or {}
    if fit.get("spearman") is not None:
        facts.append(["surrogate on its proposals (Spearman)", _num(fit.get("spearman"))])
    return _table(["", ""], facts, {1})


def _peer_seeds_part(s: dict[str, Any], final: list[int] | None) -> str:
    """The peers' sets the round evaluated, each marked if it was the best at the start or is the removed set."""
    seeds = s.get("peer_seeds") or {}
    if not seeds:
        return ""
    trace = s.get("trace") or []
    start = sorted(trace[0]["removed"]) if trace and trace[0].get("removed") else None
    rows = []
    for name, chosen in seeds.items():
        st = sorted(chosen)
        marks = [m for m, hit in (("best at the start", st == start), ("the removed set", st == final)) if hit]
        rows.append([_e(name), _e(_layers(st)), _e(", ".join(marks))])
    return "<h3>The peers' sets it evaluated (seeds)</h3>" + _table(["peer", "removed set", ""], rows)


def _search_trace_part(s: dict[str, Any]) -> str:
    """The best set and its utility after each search round, folded away in a ``<details>``."""
    trace = s.get("trace") or []
    if not trace:
        return ""
    rows = [
        [
            _e(p.get("round")),
            _num(p.get("passes")),
            _e(_layers(list(p.get("removed") or []))),
            _num(p.get("utility")),
        ]
        for p in trace
    ]
    return (
        "<details><summary>Trace (best set after each round)</summary>"
        + _table(["round", "passes", "best set", "utility"], rows, {1, 3})
        + "</details>"
    )


def _fidelity_part(s: dict[str, Any]) -> str:
    """A search screened on fewer windows: its best sets confirmed, then refined, on all of them."""
    fidelity = s.get("fidelity")
    if not fidelity:
        return ""
    return _confirmed_part(fidelity) + _refined_part(fidelity)


def _confirmed_part(fidelity: dict[str, Any]) -> str:
    """The screen's best sets with their utility on the screen's windows and on all."""
    confirmed = fidelity.get("confirmed") or []
    if not confirmed:
        return ""
    rows = [[_e(_layers(c["removed"])), _num(c.get("screen")), _num(c.get("full"))] for c in confirmed]
    return f"<h3>Confirmed on all {fidelity.get('of')} windows</h3>" + _table(
        ["set", f"utility on {fidelity.get('windows')} windows", "on all"], rows, {1, 2}
    )


def _refined_part(fidelity: dict[str, Any]) -> str:
    """The exchange refinement on all windows: each best neighbour, what it cost and whether the set moved."""
    refined = fidelity.get("refined") or []
    if not refined:
        return ""
    rows = [
        [
            _e(_layers(c["removed"])),
            _num(c.get("full")),
            _e(c.get("screened")),
            _e(c.get("evaluated")),
            "yes" if c.get("moved") else "no",
        ]
        for c in refined
    ]
    return "<h3>Refinement on all windows (one exchange at a time)</h3>" + _table(
        ["best neighbour", "utility", "screened", "evaluated", "moved"], rows, {1, 2, 3}
    )
