"""The card's sections as HTML, one function per ``<h2>`` (scores, speed, removed and why,
attribution, healing, exports, provenance; the search has its own module,
:mod:`coopprune.card.search`), each given a :class:`Release` and returning ``""`` when its part of
the release is absent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coopprune.card.facts import Release
from coopprune.card.markup import _change, _e, _img_file, _table
from coopprune.card.wording import _layers, _num, _seed_spread, _why
from coopprune.records import INTERACTIONS_FILE


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
