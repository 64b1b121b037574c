"""The job's stages, in one table: ``coopprune stage NAME`` runs one, ``dvc.yaml`` lists them
(a test checks it names these and only these, each as ``coopprune stage NAME``), the Prefect
tasks call them by name and the CLI's help is written from it. Adding a stage is one row here
(and its DVC entry); each row names the library function that runs it, imported only when run,
so the CLI starts without loading torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coopprune.errors import CoopPruneError

if TYPE_CHECKING:
    from coopprune.config import Params


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    target: str  # "module:function" taking (params, progress) and returning a JSON-able dict
    in_dvc: bool = True  # a stage of dvc.yaml (export runs in the flow only)

    def function(self) -> Callable[[Params, bool], dict[str, Any]]:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("data", "check the model and fingerprint the calibration and evaluation text", "coopprune.pipeline.dvc_stages:data_stage"),
    Stage("sweep", "evaluate the stratified masks (resumable)", "coopprune.pipeline.dvc_stages:sweep_stage"),
    Stage("surrogate", "fit and validate the Stage-2 surrogate on the sweep", "coopprune.pipeline.dvc_stages:surrogate_stage"),
    Stage("contributions", "search the set to remove and explain it (decision.json)", "coopprune.pipeline.dvc_stages:contributions_stage"),
    Stage("prune", "apply the decision: the pruned checkpoint with its report", "coopprune.pipeline.dvc_stages:prune_stage"),
    Stage("stability", "the removed set decided again on other calibration seeds (stability.seeds); stability.json", "coopprune.pipeline.dvc_stages:stability_stage"),
    Stage("patch", "the training-free linear patch and its benchmark (patch.enabled)", "coopprune.pipeline.dvc_stages:patch_stage"),
    Stage("heal", "LoRA healing and its benchmark (heal.enabled)", "coopprune.pipeline.dvc_stages:heal_stage"),
    Stage("benchmark", "base and pruned model, identical settings; metrics.json", "coopprune.pipeline.dvc_stages:benchmark_stage"),
    Stage("export", "the GGUF for llama.cpp", "coopprune.pipeline.dvc_stages:export_stage", in_dvc=False),
)}


def stage_help() -> str:
    return "; ".join(f"{s.name}: {s.summary}" for s in STAGES.values())


def run_stage(params: Params, name: str, progress: bool = True) -> dict[str, Any]:
    """One stage: each writes only its own outputs under ``output_dir``."""
    if name not in STAGES:
        raise CoopPruneError(f"unknown stage '{name}'; stages: {', '.join(STAGES)}")
    return STAGES[name].function()(params, progress)
