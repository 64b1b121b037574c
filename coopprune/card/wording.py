"""The card's words: numbers as the card writes them (:func:`_num`, :func:`_layers`), how the
method chose the removed set (:func:`_why`), whether it held across calibration seeds
(:func:`_seed_spread`) and the card's one paragraph in plain text (:func:`card_summary`), which is
also the registered model version's description."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from coopprune.card.facts import Release

def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) >= 1e6 or abs(x) < 1e-3):
        return f"{x:.3e}"
    return f"{x:.{digits}g}"


def _millions(n: Any) -> str:
    return "n/a" if n is None else f"{int(n) / 1e6:.4g} M"


def _layers(items: list[Any]) -> str:
    """``[13, 14, 15, 16, 17, 18]`` -> ``13-18``; ``[2, 5, 6]`` -> ``2, 5-6``; names as they are."""
    if not items or not all(isinstance(i, int) for i in items):
        return ", ".join(map(str, items)) or "none"
    items, parts, start = sorted(items), [], None
    for i, v in enumerate(items):
        if start is None:
            start = v
        if i + 1 == len(items) or items[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(parts)


def _why(release: Release) -> str:
    """How the method chose the set, in one clause."""
    record, searches = release.record, release.searches
    utility = (record.get("params") or {}).get("utility")
    utility_text = f" (utility {utility})" if utility else ""
    if searches:
        s = searches[-1]
        fidelity = s.get("fidelity")
        where = (
            f", searched on {fidelity['windows']} of {fidelity['of']} calibration windows and confirmed on all"
            if fidelity
            else ""
        )
        return (
            f"the best removal set the search measured{utility_text}, among the sets it gave a real forward pass "
            f"({_num((record.get('scores') or {}).get('passes'))} passes in {s.get('rounds', 'n/a')} rounds{where})"
        )
    rounds = (record.get("scores") or {}).get("rounds") or []
    if len(rounds) > 1:
        return (
            f"the lowest contributions{utility_text}, removed over {len(rounds)} rounds with the game re-run in between"
        )
    return f"the lowest contributions{utility_text}"


def _seed_spread(release: Release) -> str | None:
    """Whether the removed set held when the decision was repeated on other calibration seeds, and
    which players changed when it did, in one sentence; None where that step did not run."""
    spread = release.spread
    if not spread:
        return None
    others = [s for s in spread["seeds"] if s != spread["release_seed"]]
    noun = "sublayers" if release.sublayers else "layers"
    start = (f"Decided again on {len(others)} other calibration draw{'s' if len(others) != 1 else ''} "
             f"(calibration.seed {', '.join(map(str, others))}; the release used {spread['release_seed']})")
    if spread["distinct_sets"] == 1:
        release = spread["sets"][str(spread["release_seed"])]
        return f"{start}, the removed set held: every seed chose {_layers(release)}."
    same = spread["same_as_release"]
    agree = (f"seed{'s' if len(same) > 1 else ''} {', '.join(map(str, same))} chose the release's set" if same
             else "no other seed chose the release's set")
    always = spread["layers_always_removed"]
    return (f"{start}, the removed set changed: {spread['distinct_sets']} distinct sets over {len(spread['seeds'])} "
            f"seeds, {noun} {_layers(spread['layers_sometimes_removed'])} removed under some seeds only "
            f"({_layers(always) + ' under every one' if always else f'no {noun[:-1]} under every one'}), and {agree}.")


def card_summary(out_dir: str | Path, label: str = "pruned", exports: list[dict[str, Any]] | None = None) -> str:
    """The card's one paragraph, plain text: the registered model version's description."""
    return _summary(Release(out_dir, label, exports))


def _scores_sentence(r: Release, label: str) -> str | None:
    """Held-out perplexity, the domains' mean and zero-shot accuracy, base -> this model."""
    scores = []
    ppl_b, ppl_a = r.metric("base", "perplexity"), r.metric(label, "perplexity")
    if ppl_b is not None and ppl_a is not None:
        bench = (r.benchmarks.get("base") or {}).get("perplexity") or {}
        text = r.data.get("evaluation", {}).get("source")
        how = ", ".join(
            x
            for x in (text and f"on {Path(str(text)).name}", bench.get("window") and f"{bench['window']}-token windows")
            if x
        )
        scores.append(f"held-out perplexity {_num(ppl_b)} -> {_num(ppl_a)}" + (f" ({how})" if how else ""))
    dom_b, dom_a = r.metric("base", "domain_mean_perplexity"), r.metric(label, "domain_mean_perplexity")
    if dom_b is not None and dom_a is not None:
        scores.append(f"mean perplexity over {len(r.domains)} held-out domains {_num(dom_b)} -> {_num(dom_a)}")
    zs_b, zs_a = r.metric("base", "zero_shot_mean"), r.metric(label, "zero_shot_mean")
    if zs_b is not None and zs_a is not None:
        scores.append(f"zero-shot mean accuracy {zs_b:.3f} -> {zs_a:.3f}")
    return scores[0][0].upper() + "; ".join(scores)[1:] + "." if scores else None


def _speed_sentence(r: Release) -> str | None:
    """The median interleaved speed ratio per batch size, flagged when its pairs disagree widely."""
    speed = r.speed_summary()
    if not speed:
        return None
    pairs = next(iter(speed.values())).get("pairs")
    rates = [
        f"{s['speedup']:.2f}x at batch {b} (range {s['speedup_min']:.2f}-{s['speedup_max']:.2f})"
        for b, s in sorted(speed.items())
    ]
    return (
        f"Generation is {' and '.join(rates)} as fast as the base model, the median ratio of "
        f"{pairs} interleaved timing pairs"
        + ("; the pairs disagree widely (a busy machine): re-time before quoting it." if r.wide_speed() else ".")
    )


def _summary(r: Release) -> str:
    rec, label = r.record, r.label
    before, after = rec.get("parameters_before"), rec.get("parameters_after")
    parts = [
        (
            f"{r.model_name}{' (healed)' if label == 'healed' else ''}: {r.out_of()} removed "
            f"({_layers(r.removed)}) by {rec.get('method')}, chosen as {_why(r)}."
        )
    ]
    if before and after:
        parts.append(
            f"Parameters {_millions(before)} -> {_millions(after)} ({100 * (1 - after / before):.1f} % fewer)."
        )
    if scores := _scores_sentence(r, label):
        parts.append(scores)
    if speed := _speed_sentence(r):
        parts.append(speed)
    if label == "healed" and r.healing:
        h = r.healing
        parts.append(
            f"Healed with LoRA ({h.get('loss')} loss) for {h.get('steps')} steps on {_num(h.get('tokens'))} tokens."
        )
    elif r.healing and r.metric("healed", "perplexity") is not None:
        parts.append(
            f"A healed variant ({r.healing.get('steps')} LoRA steps) reaches perplexity "
            f"{_num(r.metric('healed', 'perplexity'))}."
        )
    if spread := _seed_spread(r):
        parts.append(spread)
    if r.attribution and r.attribution.get("summary"):
        parts.append(" ".join(str(r.attribution["summary"]).split()))
    mine = [e for e in r.exports if e.get("label", "pruned") == label]
    if mine:
        parts.append("GGUF for llama.cpp: " + ", ".join(Path(e["path"]).name for e in mine) + ".")
    return " ".join(parts)
