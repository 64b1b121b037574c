"""Healing a pruned model: LoRA adapters trained with ``peft``, then merged back.

The output is a plain checkpoint (no ``peft`` needed to load it) with ``healing.json`` beside
``pruning.json``. Two objectives: the language-modelling loss on the healing text (the paper's
setting, ``PAPER``: r = 8, alpha = 16, every linear projection of the kept layers, lr 1e-4) and
distillation from the unpruned model (KL of the pruned model's next-token distribution from the
base model's, the teacher run once per batch), which recovers more per step in the literature.

Training is seeded and resumable: every ``save_every`` steps the adapter, the optimizer and the
RNG state are saved atomically beside the output (``<out>.heal-state/``); a rerun with the same
settings continues from there and ends with the same weights as a run that was never stopped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from coopprune.atomic import atomic_dir, write_json
from coopprune.calibration import evaluation_windows, load_texts, text_fingerprint
from coopprune.config import HealParams
from coopprune.errors import CoopPruneError
from coopprune.models import LoadedModel, load_model
from coopprune.prune import check_output_dir
from coopprune.records import PRUNING_FILE, PruningRecord

HEALING_FILE = "healing.json"


def settings_key(settings: HealParams) -> str:
    """What a saved state must match to be resumed (everything but when to save)."""
    fields = settings.model_dump(exclude={"enabled", "save_every"})
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


PAPER = HealParams()  # the paper's setting


@dataclass
class HealResult:
    out_dir: Path
    record: dict[str, Any] = field(default_factory=dict)


def lora_targets(loaded: LoadedModel) -> list[str]:
    """Every linear projection inside the kept decoder layers, by full module name."""
    layers = loaded.architecture.layers(loaded.model)
    prefix = next(name for name, module in loaded.model.named_modules() if module is layers)
    return [f"{prefix}.{name}" for name, module in layers.named_modules() if isinstance(module, nn.Linear)]


def training_windows(loaded: LoadedModel, source: str, seq_len: int, seed: int) -> tuple[torch.Tensor, str]:
    """Consecutive windows over the healing text, documents shuffled with the seed; and its fingerprint."""
    docs = load_texts(source)
    order = np.random.default_rng(seed).permutation(len(docs))
    return evaluation_windows(loaded.tokenizer, [docs[i] for i in order], seq_len).input_ids, text_fingerprint(docs)


def batch_indices(n_windows: int, step: int, micro: int, size: int, seed: int) -> np.ndarray:
    """The windows of micro-batch ``micro`` of ``step``: a pure function of (seed, step, micro), so a
    resumed run draws exactly what the uninterrupted one would have."""
    return np.random.default_rng([seed, step, micro]).choice(n_windows, size=min(size, n_windows), replace=False)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean per-token KL(teacher || student) of the next-token distributions, scaled by T^2."""
    t = temperature
    teacher_logp = torch.log_softmax(teacher.float() / t, dim=-1)
    student_logp = torch.log_softmax(student.float() / t, dim=-1)
    kl = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)
    return kl.mean() * t * t


def _state_dir(out: Path) -> Path:
    return out.with_name(out.name + ".heal-state")


def _save_state(state_dir: Path, model: Any, optimizer: torch.optim.Optimizer, progress: dict[str, Any]) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    with atomic_dir(state_dir, overwrite=True) as tmp:
        save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()}, str(tmp / "adapter.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}, tmp / "optimizer.pt")
        write_json(tmp / "state.json", progress)


def _load_state(state_dir: Path, model: Any, optimizer: torch.optim.Optimizer, key: str) -> dict[str, Any] | None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state_file = state_dir / "state.json"
    if not state_file.is_file():
        return None
    progress = json.loads(state_file.read_text())
    if progress.get("key") != key:
        raise CoopPruneError(f"{state_dir} holds a healing run with other settings; delete it or use the same ones")
    set_peft_model_state_dict(model, load_file(str(state_dir / "adapter.safetensors")))
    saved = torch.load(state_dir / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    return progress


def heal(
    checkpoint: str | Path, out_dir: str | Path, config: HealParams = PAPER, *, overwrite: bool = False,
    progress: bool = True, on_step: Callable[[int, Any], None] | None = None, extra: dict[str, Any] | None = None,
) -> HealResult:
    """Train LoRA adapters on ``checkpoint`` (a pruned folder), merge them, write ``out_dir``.

    ``on_step(step, model)`` is called after each optimizer step (a bench measures a curve with it;
    raising from it stops the run, which then resumes from the last saved state). ``extra`` goes
    into ``healing.json`` as is (the flow's record of what it healed).
    """
    from peft import LoraConfig, get_peft_model

    checkpoint, out = Path(checkpoint), check_output_dir(out_dir, overwrite)
    if not (checkpoint / "config.json").is_file():
        raise CoopPruneError(f"not a checkpoint folder (no config.json): {checkpoint}")
    record = PruningRecord.load_if_present(checkpoint)
    teacher_source = _teacher_source(checkpoint, record, config)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    loaded = load_model(str(checkpoint))
    windows, fingerprint = training_windows(loaded, config.data, config.seq_len, config.seed)
    teacher = _load_teacher(str(teacher_source), loaded, checkpoint) if config.loss == "distill" else None

    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=lora_targets(loaded), bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(loaded.model, lora)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=0.0)
    state_dir = _state_dir(out)
    state = _load_state(state_dir, model, optimizer, settings_key(config)) or {
        "key": settings_key(config), "step": 0, "losses": [], "tokens": 0, "seconds": 0.0}
    _train(model, optimizer, windows, teacher, config, state, state_dir, progress=progress, on_step=on_step)

    merged = model.merge_and_unload()
    merged.eval()
    healing = {
        "data": config.data, "data_fingerprint": fingerprint, "steps": config.steps, "tokens": state["tokens"],
        "seed": config.seed, "loss": config.loss, "teacher": teacher_source if teacher is not None else None,
        "config": config.model_dump(exclude={"enabled"}), "losses": state["losses"], "train_minutes": round(state["seconds"] / 60, 2),
        "minutes": round((time.perf_counter() - started) / 60, 2), "healed_from": str(checkpoint), **(extra or {}),
    }
    _write_healed(out, overwrite, merged, loaded, record, healing)
    shutil.rmtree(state_dir, ignore_errors=True)
    return HealResult(out, healing)


def _teacher_source(checkpoint: Path, record: PruningRecord | None, config: HealParams) -> str | None:
    """The model to distil from: the settings' teacher, else the base model the record names; an error if
    distillation has none."""
    teacher_source = config.teacher or (record.base_model if record is not None else None)
    if config.loss == "distill" and not teacher_source:
        raise CoopPruneError(f"distillation needs a teacher: {checkpoint} has no {PRUNING_FILE} naming its base model")
    return teacher_source


def _load_teacher(teacher_source: str, loaded: LoadedModel, checkpoint: Path) -> nn.Module:
    """The teacher's model, which must share the student's vocabulary (the KL compares the same tokens)."""
    teacher = load_model(teacher_source).model
    if teacher.config.vocab_size != loaded.model.config.vocab_size:
        raise CoopPruneError(f"teacher {teacher_source} has another vocabulary than {checkpoint}")
    return teacher


def _train(
    model: Any, optimizer: torch.optim.Optimizer, windows: torch.Tensor, teacher: nn.Module | None,
    config: HealParams, state: dict[str, Any], state_dir: Path, *, progress: bool,
    on_step: Callable[[int, Any], None] | None,
) -> None:
    """The optimizer steps from ``state["step"]`` to ``config.steps``, ``state`` updated in place and saved
    every ``save_every`` steps and at the end, so a stopped run resumes where it was saved."""
    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=state["step"], desc=f"healing ({config.loss})", disable=not progress)
    segment = time.perf_counter()
    while state["step"] < config.steps:
        step = state["step"]
        optimizer.zero_grad(set_to_none=True)
        total = _accumulate_step(model, teacher, windows, step, config, state)
        optimizer.step()
        state["step"] = step + 1
        state["losses"].append(round(total, 6))
        elapsed = state["seconds"] + time.perf_counter() - segment
        bar.update(1)
        bar.set_postfix(loss=f"{total:.3f}", tok_s=f"{state['tokens'] / max(elapsed, 1e-9):.0f}")
        if state["step"] % config.save_every == 0 or state["step"] == config.steps:
            _save_state(state_dir, model, optimizer, {**state, "seconds": elapsed})
        if on_step is not None:
            model.eval()
            on_step(state["step"], model)
            model.train()
    bar.close()
    state["seconds"] = state["seconds"] + time.perf_counter() - segment


def _accumulate_step(
    model: Any, teacher: nn.Module | None, windows: torch.Tensor, step: int, config: HealParams, state: dict[str, Any],
) -> float:
    """The gradients of one step over its ``grad_accum`` micro-batches (their tokens counted into ``state``);
    the step's mean loss."""
    total = 0.0
    for m in range(config.grad_accum):
        ids = windows[batch_indices(len(windows), step, m, config.batch_size, config.seed)]
        loss = _batch_loss(model, teacher, ids, config.temperature)
        (loss / config.grad_accum).backward()
        total += float(loss.detach()) / config.grad_accum
        state["tokens"] += ids.numel()
    return total


def _batch_loss(model: Any, teacher: nn.Module | None, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """The language-modelling loss on ``ids``, or with a teacher the distillation loss from its logits."""
    if teacher is None:
        return model(input_ids=ids, labels=ids).loss
    with torch.no_grad():
        target = teacher(ids).logits
    return distill_loss(model(input_ids=ids).logits, target, temperature)


def _write_healed(
    out: Path, overwrite: bool, merged: nn.Module, loaded: LoadedModel, record: PruningRecord | None,
    healing: dict[str, Any],
) -> None:
    """The merged checkpoint, its tokenizer, the pruning record (if any) and ``healing.json``, atomically."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        if record is not None:
            record.save(tmp)
        write_json(tmp / HEALING_FILE, healing)
