"""Training recipes: a YAML file validated into a typed ``Recipe`` before any work starts.

A recipe names the model (a tagged union on ``model.kind``: a ``retrofit`` surgery checkpoint, a
``surgery`` base plus surgery settings, or an ``openmythos`` from-scratch config), what is trainable, the
data, the loop curriculum, the loss, the optimizer and schedule, the batch shape, checkpoint/logging
cadence and the seed. The schema is pydantic v2 with ``extra="forbid"``: an unknown key, a wrong type, a
missing required field or an impossible value (negative lr, curriculum weights that do not sum to 1, a
loop count above ``curriculum.max_loops``) is one ``MythicError`` line naming the key path and the
expected form. ``model.surgery`` and ``model.config`` are typed from the model's own config classes
(``RetrofitConfig``, ``MythosConfig``: ``config_section``); an OpenMythos config is checked by
``MythosConfig`` itself, all before anything is loaded.

``--set key=value`` overrides apply to the raw YAML before validation: a dotted key path (list items by
index, ``data.sources.0.weight=0.5``), the value parsed as YAML (``optim.lr=1e-4``, ``loss.focal=null``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from mythic.errors import MythicError
from mythic.models.openmythos.config import MythosConfig
from mythic.models.retrofit import RetrofitConfig

DType = Literal["float32", "bfloat16", "float16"]
PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
WEIGHT_TOLERANCE = 1e-6


class Strict(BaseModel):
    """Base of every recipe section: unknown keys are errors; a validated section is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


StrictT = TypeVar("StrictT", bound=Strict)


# ----------------------------------------------------------------------------- model


def config_section(name: str, source: type, leave_out: set[str], optional: set[str]) -> type[Strict]:
    """A recipe section with the fields of the config class ``source`` itself: the same names, types and
    defaults, so a recipe cannot drift from the model's config (``optional`` fields default to None:
    filled in later; ``leave_out``: fields a recipe must not set)."""
    own = type(name, (), {"__annotations__": dict(source.__annotations__), "__module__": source.__module__})
    kinds = typing.get_type_hints(own)  # the class's own fields only (its bases' need imports we do not have)
    defaults = {f.name: f.default for f in dataclasses.fields(source)}
    fields: dict[str, Any] = {
        key: (kinds[key] | None, None) if key in optional else (kinds[key], defaults[key])
        for key in source.__annotations__
        if key not in leave_out
    }
    return create_model(name, __base__=Strict, __doc__=f"``{source.__name__}``'s own fields.", **fields)


SurgerySettings = config_section(
    "SurgerySettings", RetrofitConfig, leave_out={"text_config", "base_name_or_path", "base_revision"}, optional=set()
)
OpenMythosSettings = config_section("OpenMythosSettings", MythosConfig, leave_out=set(), optional={"vocab_size"})


class Quantization(Strict):
    """bitsandbytes 4-bit quantisation of the frozen base."""

    kind: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: DType = "bfloat16"


class RetrofitModel(Strict):
    """A surgery checkpoint folder (config.json + recurrence.safetensors; base from its config)."""

    kind: Literal["retrofit"]
    checkpoint: str
    dtype: DType = "float32"
    quantization: Quantization | None = None


class SurgeryModel(Strict):
    """A Hugging Face base folder wrapped in memory with the given ``RetrofitConfig`` settings."""

    kind: Literal["surgery"]
    base: str
    surgery: SurgerySettings = Field(default_factory=SurgerySettings)
    dtype: DType = "float32"
    quantization: Quantization | None = None


class OpenMythosModel(Strict):
    """A from-scratch OpenMythos model built from ``MythosConfig(**config)``; every weight trains.
    ``config.vocab_size`` left out: the tokenizer's size."""

    kind: Literal["openmythos"]
    config: OpenMythosSettings
    tokenizer: str
    dtype: DType = "float32"

    @model_validator(mode="after")
    def _check_config(self) -> OpenMythosModel:
        settings = self.config.model_dump(exclude_none=True)
        try:
            MythosConfig(**settings)
        except MythicError as err:
            raise MythicError(f"recipe model.config: {err}") from None
        return self


ModelSpec = Annotated[RetrofitModel | SurgeryModel | OpenMythosModel, Field(discriminator="kind")]


class Lora(Strict):
    """peft LoRA on the frozen base; ``target_parameters`` reaches 3-D MoE expert weights; ``layers``
    restricts it to those decoder layers (peft's ``layers_to_transform``; default: every layer)."""

    rank: PositiveInt = 8
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=list)
    target_parameters: list[str] = Field(default_factory=list)
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _has_target(self) -> Lora:
        if not self.target_modules and not self.target_parameters:
            raise ValueError("target_modules: name at least one of target_modules or target_parameters")
        return self


class Trainable(Strict):
    """The recurrence modules, optionally a LoRA on the base, or every base weight (``base: true``)."""

    recurrence: bool = True
    base: bool = False
    lora: Lora | None = None


# ------------------------------------------------------------------------------ data


class FilesSource(Strict):
    """Local files by glob: ``text`` (one document per file), ``jsonl`` or ``parquet`` records."""

    kind: Literal["files"]
    paths: list[str] = Field(min_length=1)
    format: Literal["text", "jsonl", "parquet"] = "text"
    text_field: str = "text"
    messages_field: str | None = None
    weight: float = Field(1.0, gt=0)


class HFSource(Strict):
    """A Hugging Face dataset through ``datasets.load_dataset`` (streaming by default)."""

    kind: Literal["hf"]
    path: str
    name: str | None = None
    split: str = "train"
    data_dir: str | None = None
    data_files: list[str] | None = None
    streaming: bool = True
    text_field: str = "text"
    messages_field: str | None = None
    weight: float = Field(1.0, gt=0)


class StdlibSource(Strict):
    """The Python standard library's own ``.py`` files: text that exists on every machine."""

    kind: Literal["stdlib"]
    weight: float = Field(1.0, gt=0)


class TasksSource(Strict):
    """A task file (``mythic tasks make``): one example a row, the loss on the answer tokens only.

    ``difficulty_ramp``: a hop curriculum: over this many steps the highest difficulty drawn rises
    linearly from the file's lowest to its highest (0: every difficulty from the start).
    """

    kind: Literal["tasks"]
    path: str
    weight: float = Field(1.0, gt=0)
    difficulty_ramp: int = Field(0, ge=0)


Source = Annotated[FilesSource | HFSource | StdlibSource | TasksSource, Field(discriminator="kind")]


class Data(Strict):
    """``seq_len``: tokens per packed row (task rows: the most an example may have). ``tokenizer``: a
    folder, or ``chars`` (a character tokenizer of the task files); default: the model's own.
    ``bucket``: task rows only: draw this many micro-batches' examples at once and batch them by length,
    so that little of a batch is padding (0 or 1: off)."""

    seq_len: int = Field(ge=2)
    sources: list[Source] = Field(min_length=1)
    tokenizer: str | None = None
    bucket: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _weights_sum_to_one(self) -> Data:
        total = sum(s.weight for s in self.sources)
        if len(self.sources) > 1 and abs(total - 1.0) > WEIGHT_TOLERANCE:
            raise ValueError(f"sources: the weights must sum to 1 (they sum to {total:g})")
        tasks = [isinstance(s, TasksSource) for s in self.sources]
        if any(tasks) and not all(tasks):
            raise ValueError("sources: task files cannot be mixed with text sources (examples are not packed)")
        if self.bucket > 1 and not all(tasks):
            raise ValueError("bucket: batching by length is for task files (text is packed: it has no padding)")
        return self


# ------------------------------------------------------------------------ curriculum


class CurriculumBase(Strict):
    """Shared by every curriculum: the loop-axis bound and truncated backprop settings."""

    max_loops: PositiveInt = 8
    grad_loops: PositiveInt | Literal["uniform"] | None = None
    checkpoint_loops: bool = False

    def _check_loops(self, loops: list[int], where: str) -> None:
        for t in loops:
            if t > self.max_loops:
                raise ValueError(f"{where}: T={t} is above max_loops={self.max_loops}")


class FixedCurriculum(CurriculumBase):
    kind: Literal["fixed"]
    loops: PositiveInt

    @model_validator(mode="after")
    def _bounded(self) -> FixedCurriculum:
        self._check_loops([self.loops], "loops")
        return self


class Stage(Strict):
    start: int = Field(ge=0)
    weights: dict[PositiveInt, Annotated[float, Field(ge=0)]] = Field(min_length=1)

    @model_validator(mode="after")
    def _distribution(self) -> Stage:
        total = sum(self.weights.values())
        if abs(total - 1.0) > WEIGHT_TOLERANCE:
            raise ValueError(f"weights: must sum to 1 (they sum to {total:g})")
        return self


class StagesCurriculum(CurriculumBase):
    """Stage table: from ``start`` on, T is drawn from ``weights`` ({T: probability})."""

    kind: Literal["stages"]
    stages: list[Stage] = Field(min_length=1)
    per_sequence: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> StagesCurriculum:
        if self.stages[0].start != 0:
            raise ValueError("stages.0.start: the first stage must start at step 0")
        for i, (a, b) in enumerate(zip(self.stages, self.stages[1:], strict=False), start=1):
            if b.start <= a.start:
                raise ValueError(f"stages.{i}.start: must be greater than the previous stage's start")
        for i, stage in enumerate(self.stages):
            self._check_loops(list(stage.weights), f"stages.{i}.weights")
        return self


class PoissonLognormalCurriculum(CurriculumBase):
    """Retrofit-paper depth: τ ~ LogNormal(log r̄ − σ²/2, σ), r = Poisson(τ) + 1, r̄ ramps to ``mean``."""

    kind: Literal["poisson_lognormal"]
    mean: float = Field(ge=1)
    mean_start: float = Field(1.0, ge=1)
    sigma: float = Field(0.5, gt=0)
    ramp: Literal["linear", "sqrt"] = "linear"
    ramp_steps: int = Field(0, ge=0)
    per_sequence: bool = False

    @model_validator(mode="after")
    def _bounded(self) -> PoissonLognormalCurriculum:
        if self.mean > self.max_loops:
            raise ValueError(f"mean: {self.mean:g} is above max_loops={self.max_loops}")
        return self


class Hold(Strict):
    """Micro-batches that loop far past the stop: with probability ``fraction`` (from ``extra_after`` on),
    T_b = max(d_b, L) with L ~ U{loops[0], …, loops[1]} drawn once for the micro-batch, and backprop through
    each sequence's last ``grad_loops`` loops only (the loops before run without gradient)."""

    fraction: float = Field(gt=0, le=1)
    loops: tuple[PositiveInt, PositiveInt]
    grad_loops: PositiveInt

    @model_validator(mode="after")
    def _ordered(self) -> Hold:
        if self.loops[1] < self.loops[0]:
            raise ValueError(f"loops: {list(self.loops)} must be [lowest, highest]")
        return self


class DifficultyCurriculum(CurriculumBase):
    """Depth tied to each example's difficulty d (task files; 1 when an example has none):
    T_b = min(d_b + U{0, …, extra}, max_loops), drawn per sequence; before step ``extra_after``, T_b = d_b.
    ``hold`` adds micro-batches run far past the stop (see ``Hold``)."""

    kind: Literal["difficulty"]
    extra: int = Field(0, ge=0)
    extra_after: int = Field(0, ge=0)
    hold: Hold | None = None

    @model_validator(mode="after")
    def _bounded(self) -> DifficultyCurriculum:
        if self.hold is not None:
            self._check_loops(list(self.hold.loops), "hold.loops")
        return self


CurriculumSpec = Annotated[
    FixedCurriculum | StagesCurriculum | PoissonLognormalCurriculum | DifficultyCurriculum, Field(discriminator="kind")
]


# ------------------------------------------------------------------------------ loss


class DualT(Strict):
    """Every step runs T_lo and T_hi (T_hi drawn from the curriculum)."""

    t_lo: PositiveInt = 1


class Margin(Strict):
    """α_m · ReLU(CE_hi − CE_lo + m)."""

    alpha: float = Field(0.10, ge=0)
    m: float = 0.02


class Focal(Strict):
    """Weight CE_hi by (1 − p_lo(y))^γ (no gradient through the weight)."""

    gamma: float = Field(1.0, gt=0)


class KLAnchor(Strict):
    """α · KL(p_base ‖ p_model@T_hi) every ``every`` steps, against the true base."""

    alpha: float = Field(gt=0)
    every: PositiveInt = 1


class SelfDistill(Strict):
    """α · KL(p_lo ‖ p_hi.detach())."""

    alpha: float = Field(gt=0)


class Loss(Strict):
    dual_t: DualT | None = None
    margin: Margin | None = None
    focal: Focal | None = None
    kl_anchor: KLAnchor | None = None
    self_distill: SelfDistill | None = None
    aux_weights: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _dual_terms(self) -> Loss:
        for name in ("margin", "focal", "self_distill"):
            if getattr(self, name) is not None and self.dual_t is None:
                raise ValueError(f"{name}: needs loss.dual_t (it compares the T_lo and T_hi passes)")
        return self


# ----------------------------------------------------------------- optimizer, loop


class Optim(Strict):
    name: Literal["adamw"] = "adamw"
    lr: float = Field(gt=0, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float | None = Field(1.0, gt=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    decay_steps: PositiveInt | None = None
    """Decay over the last ``decay_steps`` steps only, at full lr before them (warmup–stable–decay); None:
    over every step after the warmup."""
    lr_scale: dict[str, PositiveFloat] = Field(default_factory=dict)
    """Learning-rate factors by trainable parameter name (fnmatch patterns, the first match wins), e.g.
    ``{"recurrence.rule.gate.*": 10}`` trains the gates at 10 × lr; a pattern that names no trainable
    parameter is refused."""

    @model_validator(mode="after")
    def _ranges(self) -> Optim:
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError("betas: both must be in [0, 1)")
        if self.decay_steps is not None and self.schedule == "constant":
            raise ValueError("decay_steps: a constant schedule has no decay (use cosine or linear)")
        return self


class TrainLoop(Strict):
    """Batch shape per rank, precision, and how ranks share the model (``mythic.train.parallel``;
    ``fsdp`` in a single process is the plain model)."""

    steps: PositiveInt
    micro_batch: PositiveInt = 1
    grad_accum: PositiveInt = 1
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    max_bad_steps: PositiveInt = 5
    parallel: Literal["ddp", "fsdp"] = "ddp"
    compile: bool = False
    """``torch.compile`` the model's forward (inductor) before training; each distinct loop count
    compiles once, on first use."""
    depth_examples: PositiveInt = 500
    """A model with a depth head (surgery ``depth_head: true``): the task examples per difficulty it is fitted
    on after the last step (``train/depth.py``)."""


class Checkpointing(Strict):
    every: PositiveInt = 100
    keep: PositiveInt = 2


class Logging(Strict):
    every: PositiveInt = 1
    trackers: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)
    plot: bool = True


class Recipe(Strict):
    name: str = Field(min_length=1)
    seed: int = 0
    out_dir: str | None = None
    model: ModelSpec
    trainable: Trainable = Trainable()
    data: Data
    curriculum: CurriculumSpec
    loss: Loss = Loss()
    optim: Optim
    train: TrainLoop
    checkpoint: Checkpointing = Checkpointing()
    log: Logging = Logging()

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.loss.dual_t is not None and self.loss.dual_t.t_lo > self.curriculum.max_loops:
            raise ValueError(
                f"loss.dual_t.t_lo: T={self.loss.dual_t.t_lo} is above curriculum.max_loops={self.curriculum.max_loops}"
            )
        for i, stage in enumerate(getattr(self.curriculum, "stages", [])):
            if stage.start >= self.train.steps:
                raise ValueError(f"curriculum.stages.{i}.start: {stage.start} is past train.steps={self.train.steps}")
        if self.model.kind == "openmythos" and self.loss.kl_anchor is not None:
            raise ValueError("loss.kl_anchor: a from-scratch openmythos model has no base to anchor to")
        if self.model.kind == "openmythos" and self.trainable.lora is not None:
            raise ValueError("trainable.lora: LoRA on the base applies to retrofit/surgery models only")
        if self.loss.kl_anchor is not None and self.trainable.base:
            raise ValueError("loss.kl_anchor: needs a frozen base (trainable.base is true)")
        if self.trainable.base and getattr(self.model, "quantization", None) is not None:
            raise ValueError("trainable.base: a 4-bit base cannot be trained in place; use trainable.lora")
        if self.trainable.base and self.trainable.lora is not None:
            raise ValueError("trainable.lora: pointless when trainable.base trains every base weight")
        if self.train.parallel == "fsdp" and getattr(self.model, "quantization", None) is not None:
            raise ValueError("train.parallel: fsdp cannot shard a 4-bit base (bitsandbytes' packed weights); use ddp")
        if self.train.parallel == "fsdp" and self.train.mixed_precision == "fp16":
            raise ValueError("train.mixed_precision: fp16 needs a sharded gradient scaler under fsdp; use bf16")
        if isinstance(self.curriculum, DifficultyCurriculum) and not isinstance(self.data.sources[0], TasksSource):
            raise ValueError("curriculum.kind: difficulty needs task files (data sources of kind tasks)")
        tokenizers = [self.data.tokenizer, getattr(self.model, "tokenizer", None)]
        if "chars" in tokenizers and not isinstance(self.data.sources[0], TasksSource):
            raise ValueError("data.tokenizer: chars is built from task files: use data sources of kind tasks")
        if "chars" in tokenizers and self.model.kind != "openmythos":
            raise ValueError("data.tokenizer: chars is for from-scratch models; a retrofit keeps its base's tokenizer")
        if self.optim.warmup_steps > self.train.steps:
            raise ValueError(f"optim.warmup_steps: {self.optim.warmup_steps} exceeds train.steps")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name


# ------------------------------------------------------------------------- loading


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``key.path=value`` to the raw recipe mapping in place (value parsed as YAML)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise MythicError(f"--set {assignment!r}: expected key.path=value")
    parts = key.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                where = ".".join(parts[: i + 1])
                raise MythicError(f"--set {key}: {where} is not an index of a list of {len(node)}")
            index: int | str = int(part)
        elif isinstance(node, dict):
            index = int(part) if part.isdigit() and int(part) in node else part
        else:
            raise MythicError(f"--set {key}: {'.'.join(parts[:i])} is not a mapping")
        if i == len(parts) - 1:
            node[index] = yaml.safe_load(raw)
            return
        if isinstance(node, dict) and node.get(index) is None:
            node[index] = {}
        node = node[index]


def _walk_loc(data: Any, loc: tuple[int | str, ...]) -> list[str]:
    """The user-facing key path of a pydantic error location, dropping union tags and ``[key]`` markers."""
    path: list[str] = []
    node = data
    tag = data.get("kind") if isinstance(data, dict) else None  # a union member's tag follows its field
    for part in loc:
        if part == tag or part == "[key]":
            tag = None
            continue
        path.append(str(part))
        if isinstance(node, dict):
            node = node.get(int(part) if str(part).isdigit() and int(part) in node else part)
        else:
            node = node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None
        tag = node.get("kind") if isinstance(node, dict) else None
    return path


def format_validation_error(err: ValidationError, data: Any, what: str = "recipe") -> str:
    """One line: ``what key.path: expected form (got …)`` for the first error, plus a count of the rest."""
    errors = err.errors(include_url=False)
    first = errors[0]
    path = _walk_loc(data, tuple(first["loc"]))
    kind, ctx = first["type"], first.get("ctx", {})
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "required field is missing"
    elif kind in {"union_tag_invalid", "union_tag_not_found"}:
        path.append(ctx.get("discriminator", "kind").strip("'"))
        got = f" (got {ctx['tag']!r})" if "tag" in ctx else ""
        message = f"expected one of {ctx['expected_tags']}{got}"
    else:
        message = first["msg"].removeprefix("Value error, ")
        head, sep, rest = message.partition(": ")
        if sep and " " not in head:
            path.extend(head.split("."))
            message = rest
        if kind not in {"value_error", "assertion_error"} and "input" in first:
            message += f" (got {first['input']!r})"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{what} {'.'.join(path) or 'top level'}: {message}{more}"


def validate(schema: type[StrictT], data: Any, what: str = "recipe") -> StrictT:
    """Validate a raw mapping into ``schema``; a problem becomes one ``MythicError`` line naming ``what``."""
    if not isinstance(data, dict):
        raise MythicError(f"{what}: expected a YAML mapping at the top level")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise MythicError(format_validation_error(err, data, what)) from None


def validate_recipe(data: Any) -> Recipe:
    """Validate a raw mapping into a ``Recipe``; a problem becomes one ``MythicError`` line."""
    return validate(Recipe, data)


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's content ({} when empty); a missing file or bad YAML is one ``MythicError`` line."""
    if not path.is_file():
        raise MythicError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise MythicError(f"{what} {path}: not valid YAML{where}") from None
    return {} if data is None else data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply ``--set`` overrides and validate it."""
    data = read_yaml(Path(path), "recipe")
    if isinstance(data, dict):
        for assignment in overrides or []:
            apply_override(data, assignment)
    return validate_recipe(data)


def recipe_to_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe (defaults filled in) as YAML, written into every run folder."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def flatten_settings(data: Any, prefix: str = "") -> dict[str, Any]:
    """A resolved recipe's values by dotted key, the ``--set`` spelling (``data.sources.0.path``); an empty
    mapping or list is a value of its own."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    flat: dict[str, Any] = {}
    for key, value in items:
        flat |= flatten_settings(value, f"{prefix}.{key}" if prefix else str(key))
    return flat or {prefix: data}


def differing_setting(old: Recipe, new: Recipe, ignore: tuple[str, ...] = ()) -> str | None:
    """The first dotted setting (in sorted order) set differently in two recipes, or None; a key matching an
    ``ignore`` pattern (fnmatch: ``log.*``, ``data.sources.*.path``) is not compared."""
    a, b = (flatten_settings(recipe.model_dump(mode="json")) for recipe in (old, new))
    keys = sorted(k for k in a.keys() | b.keys() if not any(fnmatch.fnmatchcase(k, p) for p in ignore))
    return next((k for k in keys if (k in a, a.get(k)) != (k in b, b.get(k))), None)
