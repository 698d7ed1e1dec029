"""The training loop: recipe in, run folder out.

One optimizer step = ``grad_accum`` micro-batches per rank through ``Objective``, under HF
``accelerate`` (torchrun / ``accelerate launch``, mixed precision, ``accelerator.accumulate``); ranks
share the model as ``train.parallel`` says (``mythic.train.parallel``). Every micro-batch's depth comes
from the curriculum keyed by (seed, step, micro, rank), its data from the stream.

Non-finite loss or gradient norm (on any rank): the update is skipped and counted; after
``train.max_bad_steps`` in a row the run stops with a ``MythicError``, the last good checkpoint intact.
Checkpoints every ``checkpoint.every`` steps (and at the end), keeping the last ``checkpoint.keep``;
``resume=True`` continues from the newest one exactly (the curriculum is stateless).

Run folder ``recipe.run_dir``: ``recipe.yaml`` (resolved), ``metrics.jsonl`` (one record per logged
step: every loss term (averaged over ranks), ``ce_T{t}`` per loop count, the mean depth ``T`` (rank
0's), lr, grad norm, ``tokens`` (padding included) and ``real_tokens``, each per second too, ``rec/*``
recurrence stats; also sent to accelerate's trackers), ``checkpoints/``, ``final/`` (``finish``) and
``loss.png``. AdamW is PyTorch's fused one; ``train.compile`` compiles the model's forward first.

``train`` reads as its steps: ``setup``, ``resume_from_latest``, ``prepare``, then ``train_step`` /
``log_step`` / ``save_step`` per step, and ``finish``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, gather_object, set_seed
from torch import nn

from mythic.errors import MythicError
from mythic.io import atomic_dir
from mythic.loading import save_base_lora
from mythic.tensors import check_tensors
from mythic.train import parallel
from mythic.train.checkpoint import (
    TrainState,
    check_same_tokenizer,
    latest_checkpoint,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from mythic.train.curriculum import Curriculum
from mythic.train.data import make_stream
from mythic.train.model import build_model, param_groups, select_trainable
from mythic.train.objective import Objective
from mythic.train.plots import plot_run
from mythic.train.recipe import Recipe, differing_setting, load_recipe, recipe_to_yaml
from mythic.train.schedule import make_scheduler

OnStep = Callable[[int, int, dict[str, float]], None]
"""Called on the main process after every step as ``on_step(done, total, record)``."""
BuildFn = Callable[[Recipe, torch.device], tuple[nn.Module, Any]]


@dataclass
class TrainResult:
    run_dir: Path
    final_dir: Path
    steps: int
    skipped_steps: int
    metrics: dict[str, float]
    plot: Path | None


def default_build(recipe: Recipe, device: torch.device) -> tuple[nn.Module, Any]:
    return build_model(recipe.model, device, recipe.data)


class MetricsLog:
    """``metrics.jsonl``: one JSON record per logged step."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[dict[str, Any]]:
        """All complete records (a line cut short by a kill is dropped)."""
        records = []
        for line in self.path.read_text().splitlines() if self.path.exists() else []:
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
        return records

    def truncate(self, through_step: int) -> None:
        """Keep only the records of steps ≤ ``through_step`` (a resumed run rewrites the rest)."""
        kept = [r for r in self.read() if r["step"] <= through_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def check_same_recipe(saved: Path, recipe: Recipe, what: str = "--resume") -> None:
    """A run folder is continued (``what``: --resume) or reused only under the recipe it was trained with:
    every setting but train.steps, log and checkpoint. The saved recipe is resolved again first, so a setting
    added since it was written compares at its default."""
    if not saved.is_file():
        return
    try:
        old = load_recipe(saved)
    except MythicError as err:
        raise MythicError(f"{what}: the run's recipe {saved} no longer validates ({err}); start a new run") from None
    key = differing_setting(old, recipe, ignore=("train.steps", "log.*", "checkpoint.*"))
    if key is not None:
        raise MythicError(f"{what}: the recipe's {key} differs from the run's ({saved}); start a new run instead")


@dataclass
class Training:
    """Everything the steps of one run share: built by ``setup``, advanced by ``train_step``."""

    recipe: Recipe
    accelerator: Accelerator
    model: nn.Module
    objective: nn.Module
    optimizer: Any  # accelerate's wrapper after ``prepare``
    scheduler: Any
    stream: Any
    curriculum: Curriculum
    trainable: dict[str, nn.Parameter]
    tokenizer: Any
    metrics: MetricsLog
    fsdp: bool
    start: int = 0
    skipped: int = 0

    @property
    def checkpoints(self) -> Path:
        return self.recipe.run_dir / "checkpoints"


def make_accelerator(recipe: Recipe) -> Accelerator:
    """accelerate for this recipe: processes from torchrun / ``accelerate launch``, mixed precision,
    gradient accumulation, trackers (FSDP comes from ``train.parallel``, never accelerate's settings)."""
    for name in recipe.log.trackers:
        if importlib.util.find_spec(name) is None:
            raise MythicError(f"recipe log.trackers: {name} is not installed (pip install {name})")
    accelerator = Accelerator(
        cpu=not torch.accelerator.is_available(),  # lets torchrun on a CPU-only machine run DDP over gloo
        mixed_precision=recipe.train.mixed_precision,
        gradient_accumulation_steps=recipe.train.grad_accum,
        log_with=list(recipe.log.trackers) or None,
        project_dir=str(recipe.run_dir),
        device_placement=False,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)],
    )
    if accelerator.distributed_type == DistributedType.FSDP:
        raise MythicError("launch without accelerate's FSDP settings: set train.parallel: fsdp in the recipe instead")
    return accelerator


def setup(recipe: Recipe, build: BuildFn) -> Training:
    """Model, trainable set (sharded under FSDP), objective, optimizer, scheduler, data and curriculum."""
    accelerator = make_accelerator(recipe)
    set_seed(recipe.seed)
    fsdp = recipe.train.parallel == "fsdp" and accelerator.num_processes > 1  # one process: the plain model
    model, tokenizer = build(recipe, torch.device("cpu") if fsdp else accelerator.device)
    trainable = select_trainable(model, recipe)
    model.train()
    if fsdp:
        parallel.shard(model, accelerator.device)
        trainable = {n: p for n, p in model.named_parameters() if n in trainable}  # now the sharded ones
    if recipe.train.compile:
        model.compile()
    optimizer = torch.optim.AdamW(
        param_groups(model, trainable, recipe.optim.weight_decay, recipe.optim.lr, recipe.optim.lr_scale),
        lr=recipe.optim.lr,
        betas=recipe.optim.betas,
        eps=recipe.optim.eps,
        fused=True,  # one kernel per parameter group instead of a few per tensor: ~5× faster steps on CPU
    )
    return Training(
        recipe=recipe,
        accelerator=accelerator,
        model=model,
        objective=Objective(model, recipe.loss),
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, recipe.optim, recipe.train.steps),
        stream=make_stream(recipe.data, tokenizer, recipe.seed),
        curriculum=Curriculum(recipe.curriculum, recipe.seed),
        trainable=trainable,
        tokenizer=tokenizer,
        metrics=MetricsLog(recipe.run_dir / "metrics.jsonl"),
        fsdp=fsdp,
    )


def resume_from_latest(run: Training) -> None:
    """Continue from the newest checkpoint exactly: weights, optimizer, scheduler, data position, every
    rank's RNG; refused under a changed recipe, tokenizer or process count."""
    found = latest_checkpoint(run.checkpoints)
    if found is None:
        return
    recipe, world = run.recipe, run.accelerator.num_processes
    check_same_recipe(recipe.run_dir / "recipe.yaml", recipe)
    check_same_tokenizer(found, run.tokenizer)
    ckpt = read_checkpoint(found)
    check_tensors(run.trainable, ckpt.trainable, f"checkpoint {found}")
    parallel.load_full_state(run.model, ckpt.trainable, run.optimizer, ckpt.optimizer)
    run.scheduler.load_state_dict(ckpt.state.scheduler)
    run.stream.load_state_dict(ckpt.state.data)
    run.start, run.skipped = ckpt.state.step, ckpt.state.skipped_steps
    if len(ckpt.rng) != world:
        raise MythicError(f"{found} was written by {len(ckpt.rng)} processes; resume it with as many, not {world}")
    set_rng_state(ckpt.rng[run.accelerator.process_index])


def prepare(run: Training) -> None:
    """Hand the objective and optimizer to accelerate (FSDP: the optimizer only), write recipe.yaml,
    cut metrics.jsonl back to the resumed step, start the trackers."""
    recipe, accelerator = run.recipe, run.accelerator
    if run.fsdp:
        run.optimizer = accelerator.prepare(run.optimizer)
    else:
        run.objective, run.optimizer = accelerator.prepare(run.objective, run.optimizer)
    if accelerator.is_main_process:
        recipe.run_dir.mkdir(parents=True, exist_ok=True)
        (recipe.run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe))
        run.metrics.truncate(run.start)
    if recipe.log.trackers:
        accelerator.init_trackers(recipe.name, config={"recipe": recipe_to_yaml(recipe)})
    accelerator.wait_for_everyone()


def train_step(run: Training, step: int) -> tuple[dict[str, Any], bool]:
    """One optimizer step of ``grad_accum`` micro-batches: (its metrics record, whether it was skipped)."""
    recipe, accelerator, cfg = run.recipe, run.accelerator, run.recipe.train
    rank, world = accelerator.process_index, accelerator.num_processes
    began = time.perf_counter()
    kl = recipe.loss.kl_anchor
    anchor = kl is not None and step % kl.every == 0
    lr = run.scheduler.get_last_lr()[0]
    totals: dict[str, float] = defaultdict(float)
    per_t: dict[int, list[float]] = defaultdict(list)
    depths: list[int] = []
    positions = real = 0
    finite = True
    for micro in range(cfg.grad_accum):
        batch = run.stream.next_batch(cfg.micro_batch, rank, world, step)
        positions, real = positions + batch.input_ids.numel(), real + batch.real_tokens
        depth = run.curriculum.sample(step, micro, cfg.micro_batch, rank, batch.difficulty)
        depths += depth.per_sequence(cfg.micro_batch)
        with accelerator.accumulate(run.objective), accelerator.autocast():
            out = run.objective(
                batch.input_ids.to(accelerator.device), batch.labels.to(accelerator.device), depth, anchor
            )
            accelerator.backward(out["loss"])
        finite = finite and bool(torch.isfinite(out["loss"].detach()))
        for name, value in out.items():
            if name not in ("seq_ce", "seq_loops"):
                totals[name] += float(value.detach()) / cfg.grad_accum
        for ce, t in zip(out["seq_ce"].tolist(), out["seq_loops"].tolist(), strict=True):
            per_t[int(t)].append(ce)
    clip = recipe.optim.grad_clip or math.inf
    grad_norm = float(parallel.whole(accelerator.clip_grad_norm_(list(run.trainable.values()), clip)))
    bad_here = torch.tensor(0.0 if finite and math.isfinite(grad_norm) else 1.0, device=accelerator.device)
    bad = bool(accelerator.reduce(bad_here, reduction="sum") > 0)
    router: dict[str, float] = {}
    if not bad:
        run.optimizer.step()
        router = run.model.after_optimizer_step()  # OpenMythos' aux-loss-free MoE balancing
    run.optimizer.zero_grad()
    run.scheduler.step()
    run.skipped += int(bad)

    keys = sorted(totals)
    reduced = accelerator.reduce(torch.tensor([totals[k] for k in keys], device=accelerator.device), "mean")
    counted = accelerator.reduce(torch.tensor([float(positions), float(real)], device=accelerator.device), "sum")
    tokens, real_tokens = (int(v) for v in counted.tolist())
    seconds = max(time.perf_counter() - began, 1e-9)
    record = {"step": step + 1, **dict(zip(keys, reduced.tolist(), strict=True))}
    record |= {f"ce_T{t}": sum(v) / len(v) for t, v in sorted(per_t.items())}
    record |= {
        "T": sum(depths) / len(depths),
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens": tokens,
        "real_tokens": real_tokens,
        "tokens_per_s": tokens / seconds,
        "real_tokens_per_s": real_tokens / seconds,
        "skipped": int(bad),
        "skipped_total": run.skipped,
    }
    record |= {f"router/{k}": v for k, v in router.items()}
    return record, bad


def log_step(run: Training, record: dict[str, Any]) -> None:
    """Every ``log.every`` steps and at the end: recurrence stats, then metrics.jsonl and the trackers."""
    done, recipe = record["step"], run.recipe
    if done % recipe.log.every and done != recipe.train.steps:
        return
    with parallel.gathered(run.model):
        record |= {f"rec/{k}": v for k, v in run.model.recurrence_stats().items()}
    if run.accelerator.is_main_process:
        run.metrics.append(record)
    if recipe.log.trackers:
        run.accelerator.log(record, step=done)


def save_step(run: Training, done: int) -> None:
    """A checkpoint of whole tensors (gathered from every rank) at ``done``; keeps the newest ``keep``."""
    rng = gather_object([rng_state()])
    tensors = parallel.full_state(run.model, set(run.trainable))
    optimizer_state = parallel.full_optimizer_state(run.model, run.optimizer.optimizer)
    if run.accelerator.is_main_process:
        save_checkpoint(
            run.checkpoints,
            TrainState(done, run.scheduler.state_dict(), run.stream.state_dict(), run.skipped),
            trainable=tensors,
            optimizer=optimizer_state,
            rng=rng,
            keep=run.recipe.checkpoint.keep,
            tokenizer=run.tokenizer,
        )
    run.accelerator.wait_for_everyone()


def finish(run: Training, record: dict[str, Any]) -> TrainResult:
    """``final/`` from whole tensors with the tokenizer: ``save_pretrained`` of the whole model when every
    weight trained, else ``save_recurrence`` (the folder ``mythic.loading.load_checkpoint`` loads) plus the
    base LoRA's tensors and spec (``mythic.loading.save_base_lora``); the loss plot; trackers closed."""
    recipe, model = run.recipe, run.model
    final_dir = recipe.run_dir / "final"
    plot = None
    whole_model = not model.has_base or recipe.trainable.base  # OpenMythos, trainable.base
    # A recurrence checkpoint holds the recurrence whether or not it trained (a LoRA-only control's stays at init).
    kept = None if whole_model else set(run.trainable) | {n for n, _ in model.recurrence_parameters()}
    state = parallel.full_state(model, kept)
    if run.accelerator.is_main_process:
        with atomic_dir(final_dir, force=True) as tmp:
            run.tokenizer.save_pretrained(tmp)
            if whole_model:
                model.save_pretrained(tmp, state_dict=state)
            else:
                model.save_recurrence(tmp, state)
                lora = {n: t for n, t in state.items() if "lora_" in n}
                if lora and recipe.trainable.lora is not None:
                    save_base_lora(tmp, lora, recipe.trainable.lora.model_dump())
        if recipe.log.plot:
            plot = plot_run(run.metrics.read(), recipe.run_dir / "loss.png", title=recipe.name)
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return TrainResult(recipe.run_dir, final_dir, recipe.train.steps, run.skipped, record, plot)


def train(
    recipe: Recipe, *, resume: bool = False, build: BuildFn = default_build, on_step: OnStep | None = None
) -> TrainResult:
    """Run (or resume) the recipe's training; see the module docstring."""
    run_dir = recipe.run_dir  # a new run must not write over an earlier run's folder
    if not resume and any((run_dir / name).exists() for name in ("checkpoints", "final", "metrics.jsonl")):
        raise MythicError(f"run folder {run_dir} already holds a run: pass --resume to continue it, or set out_dir")
    run = setup(recipe, build)
    if resume:
        resume_from_latest(run)
    prepare(run)
    cfg, streak, record = recipe.train, 0, {}
    for step in range(run.start, cfg.steps):
        record, bad = train_step(run, step)
        streak = streak + 1 if bad else 0
        log_step(run, record)
        done = step + 1
        if on_step is not None and run.accelerator.is_main_process:
            on_step(done, cfg.steps, record)
        if streak >= cfg.max_bad_steps:
            run.accelerator.end_training()
            last = latest_checkpoint(run.checkpoints)
            where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
            raise MythicError(f"{streak} non-finite steps in a row (loss or gradient), stopped at step {done}; {where}")
        if (done % recipe.checkpoint.every == 0 or done == cfg.steps) and streak == 0:
            save_step(run, done)
    if getattr(run.model.recurrence, "depth_head", None) is not None:
        fit_depth(run)
    return finish(run, record)


def fit_depth(run: Training) -> None:
    """Fit the depth head on the recipe's task files (``train/depth.py``); its record: ``depth_head.json``."""
    from mythic.tasks.files import read_tasks
    from mythic.train.depth import fit_depth_head

    paths = [s.path for s in run.recipe.data.sources if getattr(s, "kind", None) == "tasks"]
    if not paths:
        raise MythicError("a depth head is fitted on task files (data.sources of kind tasks)")
    tasks = [task for path in paths for task in read_tasks(Path(path))]
    record = fit_depth_head(run.model, run.tokenizer, tasks, run.recipe.train.depth_examples, run.recipe.seed)
    if run.accelerator.is_main_process:
        (run.recipe.run_dir / "depth_head.json").write_text(json.dumps(record) + "\n")
