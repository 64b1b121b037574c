"""The card as one HTML page: the title, the summary paragraph and the sections in order, with
the stylesheet inline and images embedded, so the one file is the whole card (an MLflow
artifact, a mail attachment); :func:`write_card` writes it beside the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coopprune.atomic import atomic_path
from coopprune.card.facts import Release, card_file
from coopprune.card.markup import _e
from coopprune.card.sections import (
    _attribution_section,
    _exports_section,
    _healing_section,
    _provenance_section,
    _removed_section,
    _scores_section,
    _speed_section,
)
from coopprune.card.search import _search_section
from coopprune.card.wording import _summary

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;
color:#1f2328;line-height:1.45}
h1{font-size:1.6em;margin-bottom:4px}
h2{font-size:1.2em;border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:28px}
h3{font-size:1.02em}.sub{color:#59636e;margin-top:0}
.summary{background:#f6f8fa;border-left:4px solid #0969da;padding:10px 14px}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}tr.removed td{background:#ffebe9}
.better{color:#1a7f37}.worse{color:#cf222e}.warn{background:#fff8c5;border-left:4px solid #d4a72c;padding:6px 12px}
img{max-width:100%;border:1px solid #d0d7de;margin:6px 0}.muted{color:#59636e;font-size:.9em}code{font-size:.92em}
.chips span{display:inline-block;background:#ffebe9;border:1px solid #ff8182;border-radius:12px;padding:1px 9px;
margin:2px}
"""


def render_card(out_dir: str | Path, label: str = "pruned", exports: list[dict[str, Any]] | None = None) -> str:
    """The card of the run in ``out_dir`` as one HTML document (images embedded)."""
    r = Release(out_dir, label, exports)
    rec = r.record
    title = f"{r.model_name}{' (healed)' if label == 'healed' else ''}: {r.out_of()} removed"
    body = "".join(
        [
            f"<h1>{_e(title)}</h1>",
            (
                f'<p class="sub">coopprune release card · method <code>{_e(rec.get("method"))}</code> · '
                f"{_e(rec.get('created'))}</p>"
            ),
            f'<p class="summary">{_e(_summary(r))}</p>',
            _scores_section(r),
            _speed_section(r),
            _removed_section(r),
            _attribution_section(r),
            _search_section(r),
            _healing_section(r),
            _exports_section(r),
            _provenance_section(r),
        ]
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head><body>{body}</body></html>\n"
    )


def write_card(out_dir: str | Path, label: str = "pruned", exports: list[dict[str, Any]] | None = None) -> Path:
    """Write ``<out_dir>/card.html`` (``card-healed.html``) atomically; returns its path."""
    path = Path(out_dir) / card_file(label)
    text = render_card(out_dir, label, exports)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
