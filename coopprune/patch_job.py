"""Patch a pruned checkpoint folder (``coopprune.patch`` holds the fit itself): refuse what cannot be
patched (a healed, already patched, sublayer-pruned or int8 checkpoint, held-out text as
calibration, another base model) before reading any weights, fit on the base, write atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coopprune.atomic import atomic_dir
from coopprune.config import PatchParams
from coopprune.errors import CoopPruneError
from coopprune.patch import DEFAULT, Patch, apply_patch, check_patchable, fit_patch

HEALING_FILE = "healing.json"  # coopprune.heal's (not imported: peft stays out of this module)


@dataclass
class PatchResult:
    out_dir: Path
    patch: Patch
    record: dict[str, Any]


def check_calibration_text(parts: Sequence[tuple[str, float]], mixture: bool) -> None:
    """The patch is fitted on calibration text only: never on a held-out evaluation source."""
    from coopprune.calibration import DEFAULT_EVALUATION
    from coopprune.domains import DOMAINS

    for name, _ in parts:
        domain = DOMAINS.get(name) if mixture else None
        if (domain is not None and domain.role == "evaluation") or (not mixture and name == DEFAULT_EVALUATION):
            raise CoopPruneError(f"'{name}' is held-out evaluation text: the patch is fitted on calibration text only")


def patch_checkpoint(
    base_source: str, pruned_dir: str | Path, out_dir: str | Path, settings: PatchParams = DEFAULT,
    calibration: Any = None, *, overwrite: bool = False, progress: bool = True, device: str = "cpu",
    dtype: str = "float32", batch_size: int = 8, trust_remote_code: bool = False, extra: dict[str, Any] | None = None,
) -> PatchResult:
    """Fit the patch of the layers ``pruned_dir`` removed from ``base_source`` and write the patched
    checkpoint to ``out_dir`` (safetensors, ``pruning.json`` with a ``patch`` entry in ``params``).

    ``calibration``: a :class:`~coopprune.mixture.Calibration` (default: bundled LAMBADA,
    ``settings.n_windows`` windows of 128 tokens); ``extra`` goes into the ``patch`` entry as is.
    """
    from coopprune.mixture import Calibration
    from coopprune.models import load_model
    from coopprune.prune import check_output_dir
    from coopprune.quantize import is_quantized
    from coopprune.records import PruningRecord

    out, pruned = check_output_dir(out_dir, overwrite), Path(pruned_dir)
    if not (pruned / "config.json").is_file():
        raise CoopPruneError(f"not a checkpoint folder (no config.json): {pruned}")
    record = PruningRecord.load(pruned)
    if (pruned / HEALING_FILE).is_file():
        raise CoopPruneError(f"{pruned} is healed: patch the pruned checkpoint, then heal the patched one")
    if "patch" in record.params:
        raise CoopPruneError(f"{pruned} is already patched (pruning.json params.patch)")
    if record.scores.get("players") == "sublayers":
        raise CoopPruneError(f"{pruned} was pruned with sublayer players: the patch replaces whole removed layers only")
    if is_quantized(pruned):
        raise CoopPruneError(f"{pruned} is int8-quantized: patch the float checkpoint, then quantize")
    calibration = calibration or Calibration((("lambada", 1.0),), settings.n_windows, 128, 0)
    check_calibration_text(calibration.parts, calibration.mixture)
    documents = calibration.documents()  # a bad source fails before any weights are read
    base = load_model(base_source, trust_remote_code=trust_remote_code, dtype=dtype, device=device)
    check_patchable(base.model)
    if base.fingerprint != record.base_fingerprint:
        raise CoopPruneError(f"{base_source} is not the model {pruned} was pruned from (its fingerprint differs from "
                             f"pruning.json's base_fingerprint; same weights and dtype needed)")
    windows = calibration.windows(base.tokenizer, documents)
    patch = fit_patch(base, record.removed_layers, windows, settings, batch_size=batch_size, progress=progress)
    patch.windows = {"source": calibration.label, "seed": calibration.seed, **patch.windows}
    patch.extra = dict(extra or {})
    target = load_model(str(pruned), trust_remote_code=trust_remote_code, dtype=dtype)
    apply_patch(target.model, target.architecture, record.kept_layers, patch, base=base.model)
    record.params = {**record.params, "patch": patch.to_json()}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        target.model.save_pretrained(tmp, safe_serialization=True)
        target.tokenizer.save_pretrained(tmp)
        record.save(tmp)
    return PatchResult(out, patch, record.params["patch"])
