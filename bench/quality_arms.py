"""The quality bench's arms as data: which registry method, utility, calibration and strategy each
row family of ``bench/quality.py`` runs, and what every cell is measured on.

Apart from the bench so that the code that runs the arms (``bench/quality.py``, with the model) and
the code that turns their rows into tables (``bench/quality_tables.py``, without it) read one
definition; adding an arm is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coopprune.zeroshot import TASKS as TASK_SPECS


@dataclass(frozen=True)
class Arm:
    """One row family of the tables: a registry method, its utility, and how it reaches every k.

    ``per_k``: the method picks a set for each k on its own (searches, Gromov's block); otherwise
    one ranking (or SLEB's greedy order) up to the largest k is read off for every k.
    ``sweep``: trains on the shared 200-mask Stage-1 sweep (on its own copy, so no arm sees another's
    evaluations); else it starts from nothing and pays for all it evaluates. ``strategy``: one shot,
    ``iterative`` (rounds of 3) or ``sublayers`` (attention and MLP apart, parameter budget).
    ``n_windows``: LAMBADA calibration windows of 128 tokens, drawn with the same seed.
    """

    method: str
    utility: str = "ppl_ratio"
    per_k: bool = False
    sweep: bool = False
    strategy: str = "one-shot"
    seed: int = 0
    options: tuple[tuple[str, Any], ...] = ()
    n_windows: int = 10
    in_plots: bool = True  # drop-last and random sit orders of magnitude above: in the tables only


ARMS: dict[str, Arm] = {
    "game-search": Arm("game-search", "kl", per_k=True),
    "game-search-ppl": Arm("game-search", "ppl_ratio", per_k=True),
    # multi-fidelity variant: 4x the proposals screened on 1 of the 10 windows, the best 8 confirmed
    "game-search-screen": Arm("game-search", "kl", per_k=True, options=(("screen_share", 0.1), ("greedy_width", None))),
    # the version measured before the shortlist greedy seed (greedy_width: null)
    "game-search-nogreedy": Arm("game-search", "kl", per_k=True, options=(("greedy_width", None),)),
    # target 4, the calibration question for the default: 64 x 128 tokens instead of 10 x 128, the
    # search on every window (search_windows: null)
    "game-search-64": Arm("game-search", "kl", per_k=True, n_windows=64, options=(("search_windows", None),)),
    "game-search-ppl-64": Arm("game-search", "ppl_ratio", per_k=True, n_windows=64, options=(("search_windows", None),)),
    # multi-fidelity: the search on 10 of the 64 windows, its 8 best sets confirmed on all 64
    "game-search-64-f10": Arm("game-search", "kl", per_k=True, n_windows=64, options=(("search_windows", 10),)),
    # the same before the hill-climb on every window after the confirmations (refine: null)
    "game-search-64-f10-noref": Arm("game-search", "kl", per_k=True, n_windows=64,
                                    options=(("search_windows", 10), ("refine", None))),
    "evopress": Arm("evopress", "kl", per_k=True),
    "evopress-ppl": Arm("evopress", "ppl_ratio", per_k=True),
    # the peers on the multi-fidelity option's 64 x 128 calibration (EvoPress's screen: 4 of the 64)
    "evopress-64": Arm("evopress", "kl", per_k=True, n_windows=64),
    "semivalue": Arm("semivalue", sweep=True),
    "semivalue-search": Arm("semivalue-search", per_k=True, sweep=True),
    "shapley-adjusted": Arm("shapley-adjusted", sweep=True),
    "iterative": Arm("semivalue", sweep=True, strategy="iterative"),
    "sublayers": Arm("semivalue", strategy="sublayers"),
    "sleb": Arm("sleb"),
    "sleb-kl": Arm("sleb", "kl"),
    "sleb-64": Arm("sleb", n_windows=64),  # the multi-fidelity option's calibration, for a like-for-like peer
    "bi": Arm("bi"),
    "angular": Arm("angular", per_k=True),
    "ppl": Arm("ppl"),
    "bi-64": Arm("bi", n_windows=64),
    "angular-64": Arm("angular", per_k=True, n_windows=64),
    "ppl-64": Arm("ppl", n_windows=64),
    "last": Arm("last", in_plots=False),
    **{f"random-{s}": Arm("random", seed=s, in_plots=False) for s in range(3)},
}
METHODS = list(ARMS)
TASKS = list(TASK_SPECS)  # the seven bundled tasks, in the library's order
PPL_WINDOWS = {128: 64, 512: 16}  # the same 8,192 tokens of BoolQ passages at both lengths


#: The searches whose traces are plotted: the default and the previous one with EvoPress and SLEB on their windows.
CURVE_ARMS = ("game-search", "evopress", "sleb", "sleb-kl", "game-search-64-f10", "evopress-64", "sleb-64")
