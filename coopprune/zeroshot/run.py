"""Running the tasks: a loaded model (``zero_shot``) or a checkpoint (``zero_shot_checkpoint``)
scored by lm-eval on the written subsets, with its logging, progress bars and the KV cache off.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from coopprune.errors import CoopPruneError
from coopprune.zeroshot.data import _load_split, build_configs, lm_eval_tasks
from coopprune.zeroshot.items import select_items
from coopprune.zeroshot.results import TaskResult, ZeroShotResult, _number
from coopprune.zeroshot.tasks import TASKS, check_tasks


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
