"""The card's sections as HTML, one function per ``<h2>`` (scores, speed, removed and why,
attribution, the search, healing, exports, provenance), each given a :class:`Release` and
returning ``""`` when its part of the release is absent; and the markup they share: escaping
(:func:`_e`), tables and images embedded as base64 PNG."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from coopprune.card.facts import Release
from coopprune.card.wording import _layers, _num, _seed_spread, _why
from coopprune.records import INTERACTIONS_FILE


def _e(value: Any) -> str:
    return html.escape(str(value))


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _img_file(path: Path, alt: str) -> str:
    return _img(path.read_bytes(), alt) if path.is_file() else ""


def _table(
    header: list[str], rows: list[list[Any]], numeric: set[int] | None = None, row_class: list[str] | None = None
) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_class[i]}"' if row_class and row_class[i] else ""
        cells = "".join(f'<td class="n">{c}</td>' if j in numeric else f"<td>{c}</td>" for j, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _change(before: Any, after: Any, lower_is_better: bool) -> str:
    if before is None or after is None:
        return ""
    try:
        b, a = float(before), float(after)
    except (TypeError, ValueError):
        return ""
    if b == 0 or not (math.isfinite(a) and math.isfinite(b)):
        return ""
    pct = 100 * (a / b - 1)
    good = (pct < 0) == lower_is_better if pct != 0 else None
    cls = "" if good is None else ("better" if good else "worse")
    return f'<span class="{cls}">{pct:+.1f} %</span>'


def _scores_section(r: Release) -> str:
    columns = ["base", "pruned"] + (["healed"] if r.metric("healed", "perplexity") is not None else [])
    rec = r.record
    bench = (r.benchmarks.get("base") or {}).get("perplexity") or {}
    text = r.data.get("evaluation", {}).get("source")
    rows: list[tuple[str, str, bool]] = [
        (
            "perplexity",
            "held-out perplexity"
            + (
                f" ({_e(Path(str(text)).name)}, {bench.get('window')}-token windows)"
                if text and bench.get("window")
                else ""
            ),
            True,
        )
    ]
    rows += [(f"perplexity_{d}", f"perplexity: {_e(d)}", True) for d in r.domains]
    if r.domains:
        rows.append(("domain_mean_perplexity", f"mean over the {len(r.domains)} held-out domains", True))
    rows.append(("zero_shot_mean", "zero-shot mean accuracy", False))
    rows.append(("parameters", "parameters", True))
    rows.append(("peak_rss_mb", "peak RSS (MB, generating)", True))
    table = []
    for key, name, lower in rows:
        values = [r.metric(c, key) for c in columns]
        if key == "parameters":  # pruning.json knows them even without a zero-shot benchmark
            values[0] = values[0] if values[0] is not None else rec.get("parameters_before")
            values[1] = values[1] if values[1] is not None else rec.get("parameters_after")
        if all(v is None for v in values):
            continue
        cells = [name] + [_num(v, 5) if key != "zero_shot_mean" or v is None else f"{v:.3f}" for v in values]
        cells += [_change(values[0], v, lower) for v in values[1:]]
        table.append(cells)
    header = ["score", *columns] + [f"change ({c})" for c in columns[1:]]
    return "<h2>Scores before and after</h2>" + _table(header, table, numeric=set(range(1, 1 + len(columns))))


def _speed_section(r: Release) -> str:
    summary = r.speed_summary()
    if not summary:
        return (
            '<h2>Speed</h2><p class="muted">Not measured (<code>benchmark.speed: false</code>, or a run '
            "before speed was timed in interleaved pairs).</p>"
        )
    s = r.speed or {}
    rows = [
        [
            f"batch {b}",
            f"<b>{v['speedup']:.2f}x</b>",
            f"{v['speedup_min']:.2f}-{v['speedup_max']:.2f}",
            f"{v['speedup_q1']:.2f}-{v['speedup_q3']:.2f}",
            _num(v["base_tokens_per_s"]),
            _num(v["pruned_tokens_per_s"]),
        ]
        for b, v in sorted(summary.items())
    ]
    table = _table(
        ["", "speed-up (median)", "min-max", "IQR", "base tokens/s (median)", "pruned tokens/s (median)"],
        rows,
        numeric={1, 2, 3, 4, 5},
    )
    pairs = next(iter(summary.values())).get("pairs")
    note = (
        f"Generated tokens/s of the pruned model over the base model's, greedy with the KV cache, "
        f"{_e(s.get('prompt_tokens'))} prompt and {_e(s.get('new_tokens'))} new tokens, "
        f"{_e(s.get('threads'))} threads. "
        f"Base and pruned were timed in {pairs} interleaved pairs, each timing in a fresh process, "
        f"the order alternating from pair to pair (order: {_e(' '.join(s.get('order') or []))}); the speed-up is "
        f"the median of the {pairs} per-pair ratios. Absolute tokens/s depend on what else the machine was "
        f"doing at that moment; the ratio is the number to read."
    )
    warning = ""
    if wide := r.wide_speed():
        ranges = ", ".join(f"batch {b}: {summary[b]['speedup_min']:.2f}-{summary[b]['speedup_max']:.2f}x" for b in wide)
        warning = (
            f'<div class="warn">The timing pairs disagree ({ranges}): the machine was busy while they ran. '
            "Re-time on a quiet machine before quoting this speed-up.</div>"
        )
    return f'<h2>Speed</h2>{table}{warning}<p class="muted">{note}</p>'


def _contributions_section(r: Release) -> str:
    rows = r.contributions
    if not rows:
        return ""
    by_round: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_round.setdefault(row["round"], []).append(row)
    parts = ["<h3>Contributions with their intervals</h3>"]
    for rnd, items in by_round.items():
        items = sorted(items, key=lambda x: int(x["rank"]))
        table = [
            [
                _e(x["name"]),
                _num(x["contribution"]),
                f"[{_num(x['ci_low'] or None)}, {_num(x['ci_high'] or None)}]" if x["ci_low"] else "n/a",
                _e(x["rank"]),
                "removed" if x["removed"] == "True" else "",
            ]
            for x in items
        ]
        classes = ["removed" if x["removed"] == "True" else "" for x in items]
        title = f"round {rnd}" if len(by_round) > 1 else "all players, least important first"
        parts.append(
            f"<details{' open' if len(items) <= 40 else ''}><summary>{_e(title)}</summary>"
            + _table(["player", "contribution", "95 % interval", "rank", ""], table, {1, 2, 3}, classes)
            + "</details>"
        )
    stability = next(
        (
            rd.get("bottom_k_stability")
            for rd in (r.record.get("scores") or {}).get("rounds") or []
            if rd.get("bottom_k_stability") is not None
        ),
        None,
    )
    if stability is not None:
        parts.append(
            f'<p class="muted">Bootstrap stability of the bottom-k set: {100 * float(stability):.0f} % of the '
            f"resampled contributions give the same bottom k.</p>"
        )
    return "".join(parts)


def _removed_section(r: Release) -> str:
    rec = r.record
    chips = "".join(f"<span>{_e(x)}</span>" for x in r.removed)
    rows = {x["name"]: x for x in r.contributions if x.get("removed") == "True"}
    why = f"<p>Chosen as {_e(_why(r))}.</p>" + _seed_spread_part(r)
    detail = ""
    if rows:
        table = [
            [
                _e(name),
                _num(x["contribution"]),
                f"[{_num(x['ci_low'] or None)}, {_num(x['ci_high'] or None)}]" if x["ci_low"] else "n/a",
                _e(x["rank"]),
            ]
            for name, x in rows.items()
        ]
        detail = (
            '<p class="muted">The removed players\' contributions (rank 0 = least important of its round'
            + ("; a set search removes a set, which need not be the k lowest" if r.searches else "")
            + "):</p>"
            + _table(["removed", "contribution", "95 % interval", "rank"], table, {1, 2, 3})
        )
    plot = _img_file(r.pruned_dir / "contributions.png", "contributions")
    return (
        f'<h2>Removed, and why</h2><p class="chips">{chips}</p><p>{_e(r.out_of())} removed by '
        f"<code>{_e(rec.get('method'))}</code>; {_e(rec.get('layers_after'))} layers kept.</p>"
        f"{why}{detail}{plot}{_contributions_section(r)}"
    )


def _seed_spread_part(r: Release) -> str:
    """The removed set across calibration seeds (``stability.json``): the sentence, then each seed's set."""
    sentence, spread = _seed_spread(r), r.spread
    if not sentence or not spread:
        return ""
    release = spread["sets"][str(spread["release_seed"])]
    rows = [[_e(seed), _e(_layers(spread["sets"][str(seed)])),
             "the release's" if seed == spread["release_seed"] else "same" if spread["sets"][str(seed)] == release
             else "differs"] for seed in spread["seeds"]]
    return (f"<p>{_e(sentence)}</p><details><summary>The removed set by calibration seed</summary>"
            + _table(["calibration.seed", "removed", ""], rows) + "</details>")


def _attribution_section(r: Release) -> str:
    a, heatmap = r.attribution, r.pruned_dir / INTERACTIONS_FILE
    if a is None and not heatmap.is_file():
        return ""
    parts = ["<h2>Attribution and interactions</h2>"]
    if a is not None:
        if a.get("summary"):
            parts.append(f"<p>{_e(a['summary'])}</p>")
        warnings = [w for w in (a.get("warnings") or []) if w]
        if warnings:
            parts.append(
                '<div class="warn"><b>Warnings</b><ul>' + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul></div>"
            )
        fit = a.get("fit")
        if isinstance(fit, dict) and fit:
            flat = _flat(fit)
            parts.append(
                "<h3>Fit</h3>"
                + _table(
                    ["", "value"], [[_e(k), _e(_num(v) if not isinstance(v, str) else v)] for k, v in flat.items()], {1}
                )
            )
    if heatmap.is_file():
        parts.append("<h3>Interactions</h3>" + _img_file(heatmap, "interaction heatmap"))
    return "".join(parts)


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, list):
            out[f"{prefix}{k}"] = ", ".join(_num(x) if not isinstance(x, str) else x for x in v[:30]) + (
                " ..." if len(v) > 30 else ""
            )
        else:
            out[f"{prefix}{k}"] = v
    return out


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


def _healing_section(r: Release) -> str:
    h = r.healing
    if not h:
        return ""
    rows = [
        ["loss", _e(h.get("loss"))],
        ["steps", _num(h.get("steps"))],
        ["tokens", _num(h.get("tokens"))],
        ["data", _e(h.get("data"))],
        ["data fingerprint", f"<code>{_e(str(h.get('data_fingerprint'))[:16])}</code>"],
        ["minutes", _num(h.get("minutes"))],
    ]
    losses = h.get("losses") or []
    if losses:
        rows.append(["loss first -> last step", f"{_num(losses[0])} -> {_num(losses[-1])}"])
    return "<h2>Healing</h2>" + _table(["", ""], rows)


def _exports_section(r: Release) -> str:
    if not r.exports:
        return ""
    rows = [
        [
            f"<code>{_e(Path(e['path']).name)}</code>",
            _e(e.get("label", "pruned")),
            _e(e.get("how") or ""),
            f"{int(e['bytes']) / 2**20:.1f} MiB" if e.get("bytes") is not None else "",
        ]
        for e in r.exports
    ]
    return "<h2>Exports</h2>" + _table(["file", "model", "how", "size"], rows, {3})


def _provenance_section(r: Release) -> str:
    from coopprune.naming import base_model_name

    rec = r.record
    params = rec.get("params") or {}
    calib = params.get("calibration") or {}
    rows = [
        ["base model", _e(base_model_name(str(rec.get("base_model"))))],
        ["base fingerprint", f"<code>{_e(str(rec.get('base_fingerprint'))[:16])}</code>"],
        [
            "calibration",
            _e(
                f"{calib.get('source')}: {calib.get('n_windows')} x {calib.get('window')} tokens, "
                f"seed {calib.get('seed')}"
            )
            if calib
            else "n/a",
        ],
        ["utility", _e(params.get("utility"))],
        ["protected layers", _e(params.get("protected"))],
    ]
    for role in ("calibration", "evaluation"):
        d = r.data.get(role)
        if d:
            rows.append(
                [
                    f"{role} text",
                    _e(
                        f"{d.get('source')} ({d.get('documents')} documents, fingerprint "
                        f"{str(d.get('fingerprint'))[:16]})"
                    ),
                ]
            )
    versions = rec.get("versions") or {}
    rows.append(["made with", _e(", ".join(f"{k} {v}" for k, v in versions.items()))])
    rows.append(["created", _e(rec.get("created"))])
    return "<h2>Provenance</h2>" + _table(["", ""], rows)
