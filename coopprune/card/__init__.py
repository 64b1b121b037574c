"""The release card: one self-contained HTML page per release run (and per registered version)
saying what was removed and why, what it cost and what it gained. Everything is read from the
run's output folder, so a card can be rendered again at any time from what a run left
(``render_card(out_dir)``); nothing is measured here.

One module per job, each importing only those listed before it:

- ``facts``: what a release left, read once (``Release``; the readers of its JSON, CSV and GGUF
  files), the card's file names (``card_file``, ``CARD_FILE``) and ``LABELS``.
- ``wording``: numbers as the card writes them, how the set was chosen, and ``card_summary``, the
  card's one paragraph in plain text (the registered model version's description).
- ``markup``: what the sections share: escaping, tables, embedded images, a coloured change.
- ``sections``: each ``<h2>`` section as HTML but the search's.
- ``search``: the search section (its trace, peer seeds, screen, confirmations, refinement).
- ``page``: the whole page (``render_card``) and ``write_card``, which writes it atomically.

The names other code uses are imported back here, so ``from coopprune.card import write_card``
keeps working; patch a name in the module that looks it up, not here.
"""

from __future__ import annotations

from coopprune.card.facts import CARD_FILE, LABELS, WIDE_SPREAD, Release, card_file
from coopprune.card.page import render_card, write_card
from coopprune.card.wording import card_summary

__all__ = ["CARD_FILE", "LABELS", "WIDE_SPREAD", "Release", "card_file", "card_summary", "render_card", "write_card"]
