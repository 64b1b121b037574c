"""Typed, validated parameters: ``params.yaml`` is read once, here, and rejected whole on any
unknown key, wrong type or impossible value, before a model is loaded."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from coopprune.errors import CoopPruneError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def from_dict(cls, data: object, where: str = "params") -> Any:
        """Validate ``data``; the first problem becomes one line naming its key."""
        if not isinstance(data, dict):
            raise CoopPruneError(f"{where}: expected a mapping")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            raise CoopPruneError(f"{where}: {key}: {msg}") from None


class ModelParams(_Section):
    source: str = "default"  # "default" = bundled SmolLM2-135M-Instruct; hub id, folder or .gguf
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # loaded, scored and saved in this dtype
    device: str = "cpu"  # where the game's forward passes run: cpu, auto, mps, cuda or cuda:N

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|auto|mps|cuda(:\d+)?", value):
            raise ValueError(f"unknown device '{value}'; use cpu, cuda, cuda:N, mps or auto")
        return value


class CalibrationParams(_Section):
    source: str = "lambada"
    #: measured default (the paper: 10); game-search searches on 10 of them. With ``game.utility:
    #: mc_margin`` it counts multiple-choice *items* in all, split evenly over the six reserving
    #: zero-shot tasks (coopprune.choices): each item is one padded row per choice, so the engine
    #: gets 2 to 5 times as many rows; ``source`` and ``window`` are then unused
    n_windows: int = Field(64, ge=1)
    window: int = Field(128, ge=2)
    seed: int = 0
    batch_size: int = Field(10, ge=1)
    #: a weighted mixture instead of one source: bundled domain names (coopprune.domains) or any
    #: source ``source`` takes, each with a weight (its share of the tokens), e.g. {books: 1, code: 1}
    mix: dict[str, float] | None = None

    @model_validator(mode="after")
    def _valid_mix(self) -> CalibrationParams:
        if self.mix is None:
            return self
        from coopprune.domains import DOMAINS, calibration_domains

        if "source" in self.model_fields_set:
            raise ValueError("give either source or mix, not both")
        if not self.mix:
            raise ValueError("mix is empty; name at least one domain or source with a weight")
        for name, weight in self.mix.items():
            if not (weight >= 0 and weight != float("inf")):
                raise ValueError(f"weight of '{name}' must be a finite number >= 0, got {weight}")
            domain = DOMAINS.get(name)
            if domain is not None and domain.role == "evaluation":
                raise ValueError(f"'{name}' is a held-out evaluation domain and cannot be calibrated on "
                                 f"(calibration domains: {', '.join(calibration_domains())})")
            if domain is None and not (name.startswith("hf:") or Path(name).expanduser().exists()):
                raise ValueError(f"unknown domain '{name}' (bundled: {', '.join(calibration_domains())}; "
                                 "or a file, folder or hf:NAME:SPLIT)")
        if sum(self.mix.values()) <= 0:
            raise ValueError("mix weights are all zero")
        if sum(1 for w in self.mix.values() if w > 0) > self.n_windows:
            raise ValueError(f"{sum(1 for w in self.mix.values() if w > 0)} parts need at least as many windows; "
                             f"n_windows is {self.n_windows}")
        return self


class GameParams(_Section):
    #: mc_margin: the zero-shot tasks' reserved items as multiple-choice rows, not calibration text
    utility: str = "kl"  # a name in coopprune.utility.UTILITIES
    protected: list[int] = []
    kl_top_k: int | None = Field(None, ge=512)  # None: exact KL where the base log-probs fit in 2 GiB, else top-1024
    #: how a mixture's domains combine: mean = per-token mean over all windows (the mix's weights);
    #: worst = the worst domain's mean; softmax = temperature * log sum_d share_d exp(loss_d / temperature)
    aggregate: Literal["mean", "worst", "softmax"] = "mean"
    temperature: float = Field(0.1, gt=0)

    @field_validator("utility")
    @classmethod
    def _known_utility(cls, value: str) -> str:
        from coopprune.utility import UTILITIES

        if value not in UTILITIES:
            raise ValueError(f"unknown utility '{value}'; choose one of {', '.join(UTILITIES)}")
        return value


class SamplingParams(_Section):
    remove: list[int] | None = None
    remove_ratios: list[float] | None = None
    per_stratum: int = Field(40, ge=1)
    seed: int = 0
    shard_size: int = Field(50, ge=1)

    @model_validator(mode="after")
    def _one_kind(self) -> SamplingParams:
        if self.remove is not None and self.remove_ratios is not None:
            raise ValueError("give either remove or remove_ratios, not both")
        if any(not 0 < r < 1 for r in self.remove_ratios or []):
            raise ValueError("remove_ratios must lie in (0, 1)")
        return self


class SurrogateParams(_Section):
    """The Stage-2 MLP; ``None`` fields take the recipe's value (see coopprune/surrogate.py)."""

    recipe: Literal["adam", "paper"] = "adam"
    hidden_multiplier: int = Field(2, ge=1)
    epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, ge=1)
    ensemble: int = Field(1, ge=1)
    holdout: float = Field(0.2, gt=0, lt=1)
    seed: int = 0


class PruneParams(_Section):
    method: str = "game-search"
    remove: int | None = 6
    ratio: float | None = None
    iterative: int | None = Field(None, ge=1)  # layers per round; None = one shot
    budget: int | None = Field(None, ge=1)  # real evaluations; None = the method's default (sweep-based: the sweep's masks)
    bootstrap: int = Field(10, ge=0)  # surrogate refits for intervals and bottom-k stability
    players: Literal["layers", "sublayers"] = "layers"
    #: each method's own settings, by method name (e.g. ``game-search: {per_round: 8}``): switching
    #: ``method`` keeps the others' settings for later, and only the chosen method's are used
    options: dict[str, dict[str, Any]] = {}

    @model_validator(mode="after")
    def _known_options(self) -> PruneParams:
        from coopprune.estimators import ESTIMATORS

        for method, options in self.options.items():
            if method not in ESTIMATORS:
                raise ValueError(f"options for unknown method '{method}'; choose one of {', '.join(sorted(ESTIMATORS))}")
            ESTIMATORS[method].check_options(options)
        return self

    @property
    def method_options(self) -> dict[str, Any]:
        return dict(self.options.get(self.method, {}))

    @model_validator(mode="after")
    def _known_method(self) -> PruneParams:
        from coopprune.estimators import ESTIMATORS

        if self.method not in ESTIMATORS:
            raise ValueError(f"unknown method '{self.method}'; choose one of {', '.join(sorted(ESTIMATORS))}")
        return self

    @model_validator(mode="after")
    def _one_kind_of_target(self) -> PruneParams:
        if (self.remove is None) == (self.ratio is None):
            raise ValueError("give exactly one of remove or ratio")
        return self


class EvaluationParams(_Section):
    text: str = "boolq"
    #: held-out perplexity per domain (their evaluation documents, never calibrated on), reported
    #: beside ``text`` in metrics.json and MLflow; [] for none
    domains: list[str] = []

    @field_validator("domains")
    @classmethod
    def _known_domains(cls, value: list[str]) -> list[str]:
        from coopprune.domains import DOMAINS

        for name in value:
            if name not in DOMAINS or DOMAINS[name].role == "calibration":
                held = [n for n, d in DOMAINS.items() if d.role != "calibration"]
                raise ValueError(f"'{name}' is not a held-out domain; choose from {', '.join(held)}")
        return list(dict.fromkeys(value))
    window: int = Field(128, ge=2)
    max_windows: int | None = Field(64, ge=1)
    batch_size: int = Field(8, ge=1)


class BenchmarkParams(_Section):
    """Zero-shot accuracy (lm-eval on the bundled data) and inference speed, base vs pruned."""

    tasks: list[str] = ["piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "boolq", "openbookqa"]
    limit: int | None = Field(100, ge=1)  # items per task (seeded subset); None = every item
    seed: int = 0
    batch_size: int = Field(8, ge=1)
    speed: bool = True  # pruned/base tokens/s ratio at batch 1 and 8 (interleaved pairs), peak memory
    new_tokens: int = Field(32, ge=1)
    speed_pairs: int = Field(5, ge=1)  # interleaved base/pruned timings; the median ratio and its spread are reported


class RegistryParams(_Section):
    """MLflow tracking and model registry (MLFLOW_TRACKING_URI overrides the local SQLite store)."""

    enabled: bool = True
    experiment: str = "coopprune"
    model_name: str | None = None  # None: "<base model name>-pruned"
    rule: Literal["zero_shot_mean", "perplexity", "domain_mean_perplexity"] = "zero_shot_mean"
    promote: bool = True  # try to move alias champion to the new candidate


class HealParams(_Section):
    """Healing after pruning (LoRA with peft, merged back); the defaults are the paper's setting:
    r = 8, alpha = 16, every linear projection of the kept layers, lr 1e-4, the LM loss."""

    enabled: bool = False  # in the flow: heal, benchmark and register the healed model as its own version
    data: str = "lambada"  # any text source --calib takes; bundled LAMBADA is disjoint from every evaluation set
    loss: Literal["lm", "distill"] = "lm"  # distill: KL to the base model's next-token distribution
    steps: int = Field(200, ge=1)
    seq_len: int = Field(128, ge=2)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(2, ge=1)
    lr: float = Field(1e-4, gt=0)
    rank: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    temperature: float = Field(1.0, gt=0)  # distillation only
    teacher: str | None = None  # distillation only; None: the base model pruning.json names
    seed: int = 0
    save_every: int = Field(50, ge=1)  # steps between resumable saves


#: The patch's default ridge strength, relative to the mean eigenvalue of the preceding MLP
#: output's Gram matrix (coopprune/patch.py). Measured on SmolLM2-135M (bench/patch.py, fitted on 64 x 128
#: tokens of the default mix, mean held-out perplexity over the validation domains howto, news, fiction,
#: 32 x 128 tokens each): k = 6 (13-18, pruned 73.40): lambda 0 / 0.01 / 0.1 / 1 / 10 give 61.73 / 61.54 /
#: 60.91 / 61.12 / 63.58; k = 12 (3-5, 12-18, 25-26, pruned 204.11): 0.01 / 0.1 / 1 give 157.79 / 167.43 /
#: 176.53. 0.01 is within 1 % of the best at k = 6 and 6 % ahead at k = 12, where the 7-layer run needs a
#: large T that a stronger ridge holds back (residual error left: 0.83 at 0.01, 0.96 at 0.1).
PATCH_LAMBDA = 0.01


class PatchParams(_Section):
    """A training-free linear patch after the cut (ReplaceMe-style, coopprune/patch.py): for each
    run of consecutive removed layers, a transform T fitted on calibration windows and folded into
    the preceding kept layer's MLP ``down_proj``; the checkpoint keeps its plain architecture."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)

    enabled: bool = False  # in the flow: patch the pruned model before healing; benchmark and register it
    #: ridge toward the identity, relative to the data's scale: minimise ||h + M T - Y||^2 +
    #: lambda * (tr(M^T M) / H) * ||T - I||^2; 0 is ReplaceMe's plain least squares, .inf leaves T = I
    lambda_: float = Field(PATCH_LAMBDA, ge=0, alias="lambda")
    objective: Literal["lstsq", "cosine"] = "lstsq"  # cosine: mean cosine distance to Y, from the lstsq solution
    #: where each run's X and M come from: the unpruned model (ReplaceMe; measured better at k = 12)
    #: or the model with the earlier runs already removed and patched (targets: the unpruned model)
    inputs: Literal["unpruned", "pruned"] = "unpruned"
    n_windows: int = Field(64, ge=1)  # calibration windows (of calibration.window tokens) the fit reads
    steps: int = Field(100, ge=1)  # cosine only: L-BFGS iterations


class StabilityParams(_Section):
    """The chosen set's spread across calibration draws (coopprune/stability.py): the same decision
    (sweep + search) repeated with each extra ``calibration.seed``, the sets compared in
    ``<output_dir>/stability.json``. Each seed costs about as much as the main decision."""

    seeds: list[int] = []  # extra calibration seeds to decide again with; [] = off (costs nothing)

    @field_validator("seeds")
    @classmethod
    def _distinct_non_negative(cls, value: list[int]) -> list[int]:
        if any(s < 0 for s in value):
            raise ValueError(f"seeds must be >= 0, got {[s for s in value if s < 0][0]}")
        repeated = sorted({s for s in value if value.count(s) > 1})
        if repeated:
            raise ValueError(f"seed {repeated[0]} is listed twice")
        return value


class ExportParams(_Section):
    """After pruning: a GGUF for llama.cpp (a GGUF source is pruned as is, its quantization kept)."""

    gguf: bool = False
    #: for a checkpoint source (q8_0 / q4_0: gguf-py's quantizers, llama.cpp's choice of which
    #: tensors stay f32 / f16, see gguf_export.tensor_type); a GGUF source keeps its own types
    dtype: Literal["f16", "f32", "q8_0", "q4_0"] = "f16"


class FlowParams(_Section):
    """How the Prefect flow runs its mask shards: threads here, Dask for a cluster."""

    task_runner: Literal["threads", "dask"] = "threads"
    workers: int = Field(1, ge=1)  # one worker: torch already uses both cores
    address: str | None = None  # dask scheduler address; None = a local cluster of ``workers``
    retries: int = Field(1, ge=0)


class ReleaseParams(_Section):
    """Set by the release watcher: which release this run prunes (recorded in the registry)."""

    name: str | None = None
    fingerprint: str | None = None


class Params(_Section):
    """All parameters of a pruning run; every section and field has a default."""

    model: ModelParams = ModelParams()
    calibration: CalibrationParams = CalibrationParams()
    game: GameParams = GameParams()
    sampling: SamplingParams = SamplingParams()
    surrogate: SurrogateParams = SurrogateParams()
    prune: PruneParams = PruneParams()
    evaluation: EvaluationParams = EvaluationParams()
    benchmark: BenchmarkParams = BenchmarkParams()
    registry: RegistryParams = RegistryParams()
    patch: PatchParams = PatchParams()
    heal: HealParams = HealParams()
    stability: StabilityParams = StabilityParams()
    export: ExportParams = ExportParams()
    flow: FlowParams = FlowParams()
    release: ReleaseParams = ReleaseParams()
    output_dir: str = "runs/default"

    @model_validator(mode="after")
    def _aggregate_needs_a_mix(self) -> Params:
        if self.game.aggregate != "mean" and not self.calibration.mix:
            raise ValueError(f"game.aggregate '{self.game.aggregate}' combines the domains of a calibration mix; "
                             "set calibration.mix (or aggregate: mean)")
        return self

    @model_validator(mode="after")
    def _choices_are_not_a_mix(self) -> Params:
        if self.game.utility == "mc_margin" and self.calibration.mix:
            raise ValueError("game.utility mc_margin scores zero-shot items, not calibration text: drop calibration.mix")
        return self

    @model_validator(mode="after")
    def _patch_windows_cover_the_mix(self) -> Params:
        parts = sum(1 for w in (self.calibration.mix or {}).values() if w > 0)
        if self.patch.enabled and parts > self.patch.n_windows:
            raise ValueError(f"patch.n_windows is {self.patch.n_windows}: too few for the {parts} parts of calibration.mix")
        return self

    @model_validator(mode="after")
    def _stability_seeds_are_other_draws(self) -> Params:
        if self.calibration.seed in self.stability.seeds:
            raise ValueError(f"stability.seeds: {self.calibration.seed} is calibration.seed, the release's own draw; "
                             "list only other seeds")
        return self

    @classmethod
    def load(cls, path: str | Path | None = None) -> Params:
        """Parse and validate a YAML file (``None``: all defaults)."""
        if path is None:
            return cls()
        path = Path(path)
        if not path.is_file():
            raise CoopPruneError(f"params file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise CoopPruneError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        return cls.from_dict(data, where=str(path))

    def save(self, path: str | Path) -> Path:
        """Write the settings that differ from the defaults as YAML (atomically): :meth:`load` reads
        back an equal Params, and the file stays as short as the choices it records."""
        from coopprune.atomic import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=True), sort_keys=False))
        return path

    @classmethod
    def from_dict(cls, data: object, where: str = "params") -> Params:
        if not isinstance(data, dict):
            raise CoopPruneError(f"{where}: expected a mapping of sections")
        return super().from_dict(data, where)
