"""The seven tasks as lm-eval would define them: one :class:`TaskSpec` per task in ``TASKS``, the
functions some of them need to turn a row into a prompt, and ``check_tasks``, which reads the task
names a caller gives. Everything else in the package looks a task up here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from coopprune.errors import CoopPruneError

Metric = Literal["acc", "acc_norm"]


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
