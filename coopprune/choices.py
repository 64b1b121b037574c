"""Multiple-choice rows for the ``mc_margin`` utility: zero-shot items scored as lm-eval scores them.

The items are those of the zero-shot tasks that no evaluation ever draws
(``zeroshot.reserved_items``; ``zeroshot.calibration_items`` picks a seeded subset). lm-eval's own
task objects build their requests, from the same inline configs :func:`zeroshot.zero_shot` runs
(prompt, choices, target delimiter, HellaSwag's preprocessing, WinoGrande's partial evaluation),
and lm-eval's own HFLM code tokenizes each (context, continuation) pair as it does for a causal
model. Each pair becomes one row, context + continuation, right-padded with the pad (else eos) id
to the longest row: causal attention keeps padding from changing any earlier position's logits,
so the rows need no attention mask. :class:`~coopprune.objective.ChoiceMargin` then reduces a
masked model's logits on the rows to the multiple-choice cross-entropy of the items.

lm-eval truncates a pair longer than the model's context from the left; rows here are never
truncated (the bundled items are a few hundred tokens at most).
"""

from __future__ import annotations

import numbers
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.models.huggingface import HFLM
from transformers import PreTrainedTokenizerBase

from coopprune.calibration import Windows, allocate, ids_fingerprint
from coopprune.errors import CoopPruneError
from coopprune.objective import ChoiceMargin
from coopprune.zeroshot import RESERVED_SHARE, build_configs, check_tasks, lm_eval_tasks, quiet

#: The tasks whose reserved items ``mc_margin`` scores by default: every task that reserves some.
CHOICE_TASKS: tuple[str, ...] = tuple(t for t in check_tasks(None) if RESERVED_SHARE.get(t))


@dataclass(frozen=True)
class ChoiceItem:
    """One item: its task, its row in the task's split, lm-eval's (context, continuation) requests
    (one per choice, in choice order) and the index of the right one."""

    task: str
    row: int
    requests: tuple[tuple[str, str], ...]
    gold: int


@dataclass(frozen=True)
class ChoiceWindows(Windows):
    """The rows [R, T] and the objective that knows their items, golds and continuation spans;
    the fingerprint covers both."""

    objective: ChoiceMargin | None = None

    def subset(self, rows: list[int]) -> ChoiceWindows:
        """The whole items ``rows`` touch, as ``MaskEvaluator.subset`` screens them."""
        assert self.objective is not None
        rows = self.objective.screen_rows(rows)
        return _windows(self.input_ids[rows], self.objective.subset(rows))  # type: ignore[arg-type]


def _windows(ids: torch.Tensor, objective: ChoiceMargin) -> ChoiceWindows:
    meta = torch.tensor(np.stack([objective.item, objective.gold, objective.start, objective.end], 1), dtype=torch.long)
    return ChoiceWindows(ids, ids_fingerprint(torch.cat([ids, meta], 1)), None, objective)


class _LMEvalEncoder:
    """lm-eval's HFLM tokenization of a request for a causal model, on a tokenizer alone: its own
    ``tok_encode``, ``_encode_pair`` and ``prefix_token_id`` with HFLM's defaults, so the ids are
    those the zero-shot benchmark scores, without an HFLM built around a model."""

    backend = "causal"
    add_bos_token = None
    custom_prefix_token_id = None
    tok_encode = HFLM.tok_encode
    _encode_pair = TemplateLM._encode_pair
    prefix_token_id = HFLM.prefix_token_id

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context:
            return self._encode_pair(context, continuation)
        # TemplateLM.loglikelihood's rule for an empty context: the prefix token conditions
        cont = self.tok_encode(continuation, add_special_tokens=False)
        return ([self.prefix_token_id], cont) if self.prefix_token_id != cont[0] else (cont[:1], cont[1:])


@dataclass(frozen=True)
class ChoiceCalibration:
    """What ``mc_margin`` calibrates on: ``n_items`` reserved items in all, split evenly over the
    tasks (``calibration.allocate``), each task's drawn with ``seed``. Same shape as
    :class:`~coopprune.calibration.Calibration`: :meth:`documents` reads and checks the data
    before any model loads, :meth:`windows` tokenizes."""

    tasks: tuple[str, ...]
    n_items: int
    seed: int = 0
    data_dir: Path | None = None

    @classmethod
    def from_params(cls, params: object) -> ChoiceCalibration:
        return cls(CHOICE_TASKS, params.n_windows, params.seed)  # type: ignore[attr-defined]

    @property
    def label(self) -> str:
        return "mc(" + ",".join(self.tasks) + ")"

    def documents(self) -> list[ChoiceItem]:
        """lm-eval's requests for each drawn item, task by task, items in split order."""
        from coopprune.fetch import benchmark_dir

        tasks = check_tasks(list(self.tasks))
        if self.n_items < len(tasks):
            raise CoopPruneError(f"{self.n_items} multiple-choice items cannot cover {len(tasks)} tasks")
        data_dir = Path(self.data_dir) if self.data_dir is not None else benchmark_dir()
        items: list[ChoiceItem] = []
        with quiet(), tempfile.TemporaryDirectory(prefix="coopprune-choices-") as tmp:
            for task, n in zip(tasks, allocate([1.0] * len(tasks), self.n_items), strict=True):
                subset = build_configs([task], n, self.seed, Path(tmp) / task, data_dir, pool="calibration")
                loaded = lm_eval_tasks(subset.configs)["tasks"][task]
                items += _items(task, loaded, subset.items[task])
        return items

    def windows(self, tokenizer: PreTrainedTokenizerBase, documents: list[ChoiceItem] | None = None) -> ChoiceWindows:
        items = documents if documents is not None else self.documents()
        encoder = _LMEvalEncoder(tokenizer)
        rows, item, gold, start, end = [], [], [], [], []
        for i, it in enumerate(items):
            for c, (context, continuation) in enumerate(it.requests):
                context_ids, continuation_ids = encoder.pair(context, continuation)
                rows.append(context_ids + continuation_ids)
                item.append(i)
                gold.append(c == it.gold)
                start.append(len(context_ids))
                end.append(len(context_ids) + len(continuation_ids))
        if not rows:
            raise CoopPruneError("no multiple-choice rows")
        pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
        length = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad] * (length - len(r)) for r in rows], dtype=torch.long)
        return _windows(ids, ChoiceMargin(np.array(item), np.array(gold), np.array(start), np.array(end)))


def _items(name: str, task: object, rows: list[int]) -> list[ChoiceItem]:
    """One task's items from its lm-eval requests; the gold index as lm-eval's ``process_results``
    finds it (``doc_to_text`` under partial evaluation, else ``doc_to_target``; a choice string
    becomes its index)."""
    task.build_all_requests(rank=0, world_size=1)  # type: ignore[attr-defined]
    by_doc: dict[int, list] = {}
    for inst in task.instances:  # type: ignore[attr-defined]
        by_doc.setdefault(inst.doc_id, []).append(inst)
    items = []
    for doc_id, instances in sorted(by_doc.items()):
        instances.sort(key=lambda inst: inst.idx)
        doc = instances[0].doc
        gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)  # type: ignore[attr-defined]
        if isinstance(gold, str):
            choices = task.doc_to_choice(doc)  # type: ignore[attr-defined]
            gold = choices.index(gold) if gold in choices else -1
        if not isinstance(gold, numbers.Integral) or not 0 <= gold < len(instances):
            raise CoopPruneError(f"{name} item {rows[doc_id]}: gold {gold!r} is not one of its {len(instances)} choices")
        items.append(ChoiceItem(name, rows[doc_id], tuple(tuple(inst.args) for inst in instances), int(gold)))
    return items


def choice_windows(tokenizer: PreTrainedTokenizerBase, tasks: tuple[str, ...] | list[str] = CHOICE_TASKS,
                   n_items: int = 64, seed: int = 0, data_dir: Path | None = None) -> ChoiceWindows:
    """The rows and objective of ``n_items`` reserved items of ``tasks`` (see :class:`ChoiceCalibration`)."""
    return ChoiceCalibration(tuple(tasks), n_items, seed, data_dir).windows(tokenizer)
