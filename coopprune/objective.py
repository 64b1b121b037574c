"""What the engine reduces a masked model's logits to: one sum over the predicted positions.

* :class:`NextTokenNLL`: the negative log-likelihood of the calibration text (the paper's game).
* :class:`KLToBase`: KL(base || masked) of the next-token distributions, EvoPress's fitness. The
  base model's log-probabilities are computed once per batch of windows and kept; the KL is one
  more reduction over logits the engine computes anyway, so prefix sharing works unchanged.
  ``top_k``: keep only the base model's K most likely tokens per position plus the rest of its
  mass as one "tail" outcome. That is the exact KL between the two distributions coarsened to
  K + 1 outcomes, a lower bound of the full KL (data-processing inequality), for K/V of the memory;
  its error is measured by ``bench/kl_topk.py``.
* :class:`ChoiceMargin`: the multiple-choice cross-entropy of zero-shot items' choices, one row
  per choice (``coopprune.choices``): what accuracy on the tasks rewards, not perplexity.

Every sum skips the last position (it has no next token), like :func:`token_nll`, so a mean per
token is ``sum / (N * (T - 1))`` for the text objectives (NLL, KL); the choice loss is a mean per item.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import nn

from coopprune.errors import CoopPruneError

#: Exact KL keeps [windows, T - 1, vocab] float32 base log-probabilities; above this, top-K.
FULL_KL_MAX_BYTES = 2 << 30
DEFAULT_TOP_K = 1024


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token negative log-likelihood.

    The last position has no target and is ignored rather than sliced off: slicing would copy
    the whole [N, T, vocab] logits tensor on every mask.
    """
    labels = torch.cat([input_ids[:, 1:], torch.full_like(input_ids[:, :1], -100)], dim=1)
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )


class Objective(ABC):
    kind: str  # the utility family it serves: "nll", "kl" or "mc"
    needs_reference = False

    @property
    def id_suffix(self) -> str:
        """Appended to the utility name in a mask store's identity when it changes the numbers."""
        return ""

    def reference(self, logits: torch.Tensor) -> object:
        """What the base model's logits on one batch leave for :meth:`reduce` (once per batch)."""
        return None

    @abstractmethod
    def reduce(self, logits: torch.Tensor, input_ids: torch.Tensor, reference: object) -> float: ...

    def reduce_rows(self, logits: torch.Tensor, input_ids: torch.Tensor, reference: object) -> torch.Tensor:
        """The same sum, one per window ([batch]): what a per-domain aggregate needs."""
        raise NotImplementedError(f"{type(self).__name__} has no per-window reduction")

    def combine(self, parts: list, tokens: int) -> float:
        """The mean per token from the per-batch reductions (summed in batch order)."""
        total = 0.0
        for part in parts:
            total += part
        return total / tokens

    def subset(self, rows: list[int]) -> Objective:
        """This objective on some of the windows (it holds no per-window state unless grouped)."""
        return self

    def screen_rows(self, rows: list[int]) -> list[int]:
        """The windows a screen asked for ``rows`` runs on: those rows, unless the objective scores
        some windows only together (the choices of one item)."""
        return sorted(int(r) for r in rows)


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(token t+1 | tokens <= t) of each window's own next token, [batch, T - 1]."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)


class NextTokenNLL(Objective):
    kind = "nll"

    def reduce(self, logits: torch.Tensor, input_ids: torch.Tensor, reference: object) -> float:
        return float(token_nll(logits, input_ids))

    def reduce_rows(self, logits: torch.Tensor, input_ids: torch.Tensor, reference: object) -> torch.Tensor:
        return -token_logprobs(logits, input_ids).sum(-1)


class KLToBase(Objective):
    """Summed KL(base || masked) over the predicted positions; ``top_k=None`` is exact."""

    kind = "kl"
    needs_reference = True

    def __init__(self, top_k: int | None = None) -> None:
        if top_k is not None and top_k < 1:
            raise CoopPruneError(f"KL top-K needs K >= 1, got {top_k}")
        self.top_k = top_k

    @property
    def id_suffix(self) -> str:
        return "" if self.top_k is None else f"@top{self.top_k}"

    def reference(self, logits: torch.Tensor) -> object:
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        if self.top_k is None or self.top_k >= logp.shape[-1]:
            return logp
        values, index = logp.topk(self.top_k, dim=-1)
        tail = torch.log1p(-values.exp().sum(-1).clamp(max=1 - 1e-7))  # log of the mass outside the top K
        return values, index.to(torch.int32), tail

    def reduce(self, logits: torch.Tensor, input_ids: torch.Tensor, reference: object) -> float:
        logq = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        if isinstance(reference, torch.Tensor):
            return float(nn.functional.kl_div(logq, reference, log_target=True, reduction="sum"))
        values, index, tail = reference  # type: ignore[misc]
        lq = logq.gather(-1, index.long())
        head = (values.exp() * (values - lq)).sum()
        q_tail = (1 - lq.exp().sum(-1)).clamp(min=1e-30)
        return float(head + (tail.exp() * (tail - q_tail.log())).sum())

    def reduce_rows(self, logits: torch.Tensor, input_ids: torch.Tensor, reference: object) -> torch.Tensor:
        logq = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        if isinstance(reference, torch.Tensor):
            return nn.functional.kl_div(logq, reference, log_target=True, reduction="none").sum((1, 2))
        return self._top_k_terms(logq, reference).sum(-1)

    @staticmethod
    def _top_k_terms(logq: torch.Tensor, reference: object) -> torch.Tensor:
        """KL per position [batch, T - 1] between the distributions coarsened to top K + tail."""
        values, index, tail = reference  # type: ignore[misc]
        lq = logq.gather(-1, index.long())
        head = (values.exp() * (values - lq)).sum(-1)
        q_tail = (1 - lq.exp().sum(-1)).clamp(min=1e-30)
        return head + tail.exp() * (tail - q_tail.log())


class DomainAggregate(Objective):
    """An objective's per-domain means combined into one loss: the worst domain, or a soft maximum
    ``temperature * log sum_d share_d * exp(loss_d / temperature)`` (shares: the domains' windows),
    which moves from the token mean (large temperature) to the worst domain (small). A mixture
    whose domains differ in how easily they break is then scored on the one it breaks most."""

    def __init__(self, inner: Objective, groups: tuple[str, ...], aggregate: str, temperature: float = 0.1) -> None:
        if aggregate not in ("worst", "softmax"):
            raise CoopPruneError(f"unknown domain aggregate '{aggregate}'; use worst or softmax")
        self.inner, self.groups, self.aggregate, self.temperature = inner, tuple(groups), aggregate, temperature
        self.kind, self.needs_reference = inner.kind, inner.needs_reference
        self._index = {name: np.array([g == name for g in self.groups]) for name in dict.fromkeys(self.groups)}

    @property
    def id_suffix(self) -> str:
        how = "worst" if self.aggregate == "worst" else f"softmax{self.temperature:g}"
        return f"{self.inner.id_suffix}@{how}"

    def reference(self, logits: torch.Tensor) -> object:
        return self.inner.reference(logits)

    def reduce(self, logits: torch.Tensor, input_ids: torch.Tensor, reference: object) -> np.ndarray:  # type: ignore[override]
        return self.inner.reduce_rows(logits, input_ids, reference).double().cpu().numpy()

    def combine(self, parts: list, tokens: int) -> float:
        means = np.array(list(self.per_domain(parts, tokens).values()))
        if not np.all(np.isfinite(means)):
            return math.inf
        if self.aggregate == "worst":
            return float(means.max())
        shares = np.array([i.mean() for i in self._index.values()])
        top = means.max()
        return float(top + self.temperature * math.log(np.sum(shares * np.exp((means - top) / self.temperature))))

    def subset(self, rows: list[int]) -> Objective:
        return DomainAggregate(self.inner, tuple(self.groups[r] for r in rows), self.aggregate, self.temperature)

    def per_domain(self, parts: list, tokens: int) -> dict[str, float]:
        """Each domain's mean per token, in the order the domains first appear."""
        rows = np.concatenate(parts)
        per_window = tokens / len(rows)
        return {name: float(rows[i].sum() / (i.sum() * per_window)) for name, i in self._index.items()}


class ChoiceMargin(Objective):
    """Multiple-choice cross-entropy: each window is one (item, choice) row, context + continuation
    right-padded to the common length (``coopprune.choices``). Per item, the choices' summed
    continuation log-likelihoods (lm-eval's ``acc`` scores) go through a log-softmax; the loss is
    the mean over items of the gold choice's negative log-probability.

    Per row: ``item`` (any id, its rows consecutive or not), ``gold`` (the right choice's row),
    ``start``/``end`` (the continuation's token positions ``[start, end)``, ``start >= 1``).
    :meth:`reduce` gives the batch's per-position log-likelihoods, since it is not told which rows a
    batch holds; :meth:`combine` sums each row's span over the concatenation, in row order. An item
    with no gold row or fewer than two rows (a screen that split it) is left out.
    """

    kind = "mc"

    def __init__(self, item: np.ndarray, gold: np.ndarray, start: np.ndarray, end: np.ndarray) -> None:
        self.item, self.gold = np.asarray(item, dtype=np.int64), np.asarray(gold, dtype=bool)
        self.start, self.end = np.asarray(start, dtype=np.int64), np.asarray(end, dtype=np.int64)
        if not (len(self.item) == len(self.gold) == len(self.start) == len(self.end)):
            raise CoopPruneError("choice rows: item, gold, start and end need one entry per row")
        if np.any(self.start < 1) or np.any(self.end <= self.start):
            raise CoopPruneError("choice rows: every continuation needs 1 <= start < end")
        self._items = []  # (rows of the item, index of its gold among them) for the items that count
        for it in dict.fromkeys(self.item.tolist()):
            rows = np.flatnonzero(self.item == it)
            golds = np.flatnonzero(self.gold[rows])
            if len(rows) >= 2 and len(golds) == 1:
                self._items.append((rows, int(golds[0])))

    @property
    def n_items(self) -> int:
        """Items that count: with their gold row and at least one other."""
        return len(self._items)

    def reduce(self, logits: torch.Tensor, input_ids: torch.Tensor, reference: object) -> np.ndarray:  # type: ignore[override]
        return token_logprobs(logits, input_ids).double().cpu().numpy()

    def row_logliks(self, parts: list) -> np.ndarray:
        """Each row's summed continuation log-likelihood from :meth:`reduce`'s per-batch parts."""
        logp = np.concatenate(parts)
        if len(logp) != len(self.item):
            raise CoopPruneError(f"choice objective of {len(self.item)} rows got {len(logp)}")
        if np.any(self.end > logp.shape[1] + 1):
            raise CoopPruneError(f"a continuation ends past the rows' {logp.shape[1] + 1} tokens")
        position = np.arange(logp.shape[1])[None, :]  # position t predicts token t + 1
        span = (position >= self.start[:, None] - 1) & (position < self.end[:, None] - 1)
        return np.where(span, logp, 0.0).sum(1)

    def combine(self, parts: list, tokens: int) -> float:
        if not self._items:
            return math.nan
        ll = self.row_logliks(parts)
        losses = []
        for rows, gold in self._items:
            scores = ll[rows]
            top = scores.max()
            losses.append(top + math.log(np.exp(scores - top).sum()) - scores[gold])
        loss = float(np.mean(losses))
        return loss if math.isfinite(loss) else math.inf

    def subset(self, rows: list[int]) -> Objective:
        return ChoiceMargin(self.item[rows], self.gold[rows], self.start[rows], self.end[rows])

    def screen_rows(self, rows: list[int]) -> list[int]:
        """Every row of each item ``rows`` touch: a screen of a few random rows would rarely hold a
        whole item, and an item scores only with its gold and another choice."""
        return np.flatnonzero(np.isin(self.item, self.item[list(rows)])).tolist()


def objective_for(kind: str, n_tokens: int = 0, vocab: int = 0, top_k: int | None = None) -> Objective:
    """The objective a utility family needs. For KL, ``top_k=None`` means exact when the base
    log-probabilities of ``n_tokens`` positions fit in :data:`FULL_KL_MAX_BYTES`, else top-1024."""
    if kind == "nll":
        return NextTokenNLL()
    if kind == "kl":
        if top_k is None and n_tokens * vocab * 4 > FULL_KL_MAX_BYTES:
            top_k = DEFAULT_TOP_K
        return KLToBase(top_k)
    if kind == "mc":
        raise CoopPruneError("the multiple-choice objective needs its rows' items and spans: "
                             "build it with coopprune.choices (ChoiceWindows.objective)")
    raise CoopPruneError(f"unknown objective '{kind}'")
