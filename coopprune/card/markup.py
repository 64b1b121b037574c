"""The markup every card section shares: escaping (:func:`_e`), tables, images embedded as base64
PNG, and a before -> after change coloured by whether it is better."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any


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
