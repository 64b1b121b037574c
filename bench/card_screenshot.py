"""A release card as a person sees it: opened in headless Chromium, checked and photographed.

Takes a card (``<output_dir>/card.html``, written by every release run) or a run's output folder
(the card is rendered again from what the run left, ``coopprune.card.write_card``), opens it in
Debian's Chromium (``apt-get install chromium``; no playwright, no browser download), checks that
the rendered page shows every section the run has material for, and saves a screenshot of the
whole page (a tall window, the blank rows below the page cropped) and a small table:

    python bench/card_screenshot.py runs/default                   # -> bench/results/card.png, card.md
    python bench/card_screenshot.py runs/default/card.html --out /tmp/card.png --md /tmp/card.md
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
WIDTH, TALL = 1200, 9000


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _flags(browser: str, profile: str, height: int) -> list[str]:
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
            "--allow-file-access-from-files", f"--user-data-dir={profile}", f"--window-size={WIDTH},{height}"]


def visible_text(card: Path, browser: str) -> str:
    """The page's text as Chromium parsed it (the DOM after load), tags dropped."""
    with tempfile.TemporaryDirectory(prefix="coopprune-chromium-") as profile:
        dom = subprocess.run([*_flags(browser, profile, 1000), "--dump-dom", card.resolve().as_uri()],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.DOTALL)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


def screenshot(card: Path, png: Path, browser: str) -> tuple[int, int]:
    """A PNG of the whole card: rendered in a window taller than the page, then cropped below its
    last non-blank row. Returns the saved size."""
    from PIL import Image, ImageChops

    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="coopprune-chromium-") as profile:
        raw = Path(profile) / "raw.png"
        subprocess.run([*_flags(browser, profile, TALL), f"--screenshot={raw}", card.resolve().as_uri()],
                       capture_output=True, timeout=120, check=True)
        with Image.open(raw) as image:
            image = image.convert("RGB")
            box = ImageChops.difference(image, Image.new("RGB", image.size, (255, 255, 255))).getbbox()
            bottom = min(image.height, (box[3] if box else image.height) + 24)
            # 256 colours are plenty for a page of text and flat plots, and a third of the bytes
            image.crop((0, 0, image.width, bottom)).quantize(256).save(png, optimize=True)
            return image.width, bottom


def expected_sections(card_html: str) -> list[str]:
    """The section headings the card's source holds: each must be shown by the browser."""
    return [html.unescape(h) for h in re.findall(r"<h2>(.*?)</h2>", card_html)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a card.html, or a run's output folder (its card is rendered again)")
    parser.add_argument("--label", default="pruned", choices=["pruned", "healed"])
    parser.add_argument("--out", type=Path, default=RESULTS / "card.png")
    parser.add_argument("--md", type=Path, default=RESULTS / "card.md")
    parser.add_argument("--note", default="", help="a sentence on the run the card is of, for the table")
    args = parser.parse_args(argv)
    browser = chromium()
    if browser is None:
        print("no Chromium on this machine: apt-get install chromium", file=sys.stderr)
        return 2
    source = Path(args.source)
    if source.is_dir():
        from coopprune.card import write_card

        card = write_card(source, args.label)
    else:
        card = source
    page = card.read_text()
    text = visible_text(card, browser)
    rows = [(name, "yes" if name in text else "NO") for name in expected_sections(page)]
    title = re.search(r"<h1>(.*?)</h1>", page)
    rows.insert(0, ("title: " + html.unescape(title.group(1)) if title else "title", "yes" if title and
                    html.unescape(title.group(1)) in text else "NO"))
    width, height = screenshot(card, args.out, browser)
    version = subprocess.run([browser, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    try:
        shown = card.resolve().relative_to(ROOT)
    except ValueError:
        shown = card.name
    lines = [f"Card `{shown}` opened in headless {version}; screenshot `{args.out.name}` ({width} x {height} px)."
             + (f" {args.note}" if args.note else ""), "",
             "| section | shown |", "|---|---|", *[f"| {name} | {ok} |" for name, ok in rows]]
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(ok == "yes" for _, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
