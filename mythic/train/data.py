"""Training data: documents from a weighted mixture of sources, tokenized and packed to seq_len.

Sources (``recipe.data.sources``): local files by glob (``text``: one document per file, ``jsonl`` /
``parquet``: one per record), Hugging Face datasets (``datasets.load_dataset``, streaming by default),
and the standard library's own ``.py`` files (offline text on every machine). A record with
``messages_field`` is rendered with the tokenizer's chat template and only the assistant turns are
trained on (the prompt is masked with -100).

Packing: ``doc₁ EOS doc₂ EOS …`` as one token stream; each sample takes L + 1 consecutive tokens,
``input_ids = s[0:L]``, ``labels = s[1:L+1]`` (masked where the target is prompt); the next starts at s[L].
Mixture: document n comes from source i ~ Categorical(weights), drawn with ``default_rng([seed, n,
salt])``; file sources are shuffled per epoch (``default_rng([seed, epoch, source index])``) and restart
when exhausted.

Task files (``kind: tasks``, ``TaskStream``): one example a row, never packed (examples would attend to
each other's prompts): ``prompt`` tokens (with the tokenizer's special tokens), ``answer`` tokens and
EOS, right-padded to the longest row of the global micro-batch (no attention mask needed: a causal
model never sees the padding after a token); the labels are the answer and EOS only. Examples follow
the same mixture rule, within a source as ``TaskReader`` says (``difficulty_ramp``: a hop curriculum).
``data.bucket = K`` batches K global micro-batches' examples by length (``TaskStream.bucketed``).

Resume: ``state_dict()`` holds the document counter, each source's (epoch, position) and the packer's
leftover tokens, so ``load_state_dict`` continues with exactly the same samples. All ranks read the same
global stream; rank r of W takes rows [r·B, (r+1)·B) of each global micro-batch of W·B samples.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mythic.errors import MythicError
from mythic.loading import load_tokenizer
from mythic.tasks.files import Task, read_tasks
from mythic.tasks.tokenizer import CHARS, char_tokenizer
from mythic.train.losses import IGNORE_INDEX
from mythic.train.recipe import Data, FilesSource, HFSource, StdlibSource, TasksSource

Document = str | list[dict[str, Any]]
Row = tuple[list[int], list[int], int]  # a task example: input_ids, labels (shifted), difficulty (0: none)
SALT = 0xDA7A
END = object()  # a reader's iterator is exhausted


@dataclass
class Batch:
    """One rank's rows; ``real_tokens``: the positions that hold a token rather than padding (every position of
    packed text); ``difficulty`` (B,): task examples' difficulties (0 where a row has none; None for text)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    real_tokens: int
    difficulty: torch.Tensor | None = None


def recipe_tokenizer(path: str | Path, data: Data | None = None) -> Any:
    """The tokenizer a recipe names: a model folder's (``mythic.loading.load_tokenizer``), or ``chars``:
    a character tokenizer of ``data``'s task files.

    It must define an EOS token (between packed documents, after every task answer).
    """
    if str(path) == CHARS:
        sources = [] if data is None else [s for s in data.sources if isinstance(s, TasksSource)]
        if not sources:
            raise MythicError("tokenizer: chars builds its vocabulary from task files: add a data source of kind tasks")
        return char_tokenizer(task for source in sources for task in read_tasks(source.path))
    tokenizer = load_tokenizer(Path(path))
    if tokenizer.eos_token_id is None:
        raise MythicError(f"the tokenizer in {path} has no EOS token (needed between packed documents)")
    return tokenizer


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files (installed packages excluded), sorted."""
    root = sysconfig.get_paths()["stdlib"]
    found: list[Path] = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in {"site-packages", "dist-packages", "__pycache__"}]
        found += [Path(folder) / n for n in names if n.endswith(".py")]
    return sorted(found)


def _record_document(record: dict[str, Any], spec: FilesSource | HFSource, where: str) -> Document:
    field = spec.messages_field or spec.text_field
    if field not in record:
        raise MythicError(f"{where}: a record has no field {field!r} (fields: {sorted(record)})")
    return record[field]


class SourceReader:
    """One source as an endless, deterministic document iterator that can skip to a position."""

    def __init__(self, spec: FilesSource | HFSource | StdlibSource, index: int, seed: int) -> None:
        self.spec, self.index, self.seed = spec, index, seed
        self.where = f"data.sources.{index}"
        self.epoch = self.position = 0
        self._iter: Iterator[Document] | None = None
        self._files: list[Path] = []
        if isinstance(spec, StdlibSource):
            self._files = stdlib_files()
        elif isinstance(spec, FilesSource):
            found = {Path(p) for pattern in spec.paths for p in glob.glob(pattern, recursive=True)}
            self._files = sorted(p for p in found if p.is_file())
        if not self._files and not isinstance(spec, HFSource):
            raise MythicError(f"{self.where}: no files found")

    def _start(self) -> Iterator[Document]:
        """This epoch's documents from ``position`` on (a source's files in an order drawn per epoch)."""
        if isinstance(self.spec, HFSource):
            return self._hf_documents(self.spec)
        order = np.random.default_rng([self.seed, self.epoch, self.index]).permutation(len(self._files))
        documents = (doc for i in order for doc in self._file_documents(self._files[i]))
        return itertools.islice(documents, self.position, None)

    def _file_documents(self, path: Path) -> Iterator[Document]:
        spec = self.spec
        if isinstance(spec, StdlibSource) or spec.format == "text":
            yield path.read_text(errors="replace")
        elif spec.format == "jsonl":
            for line in path.read_text().splitlines():
                if line.strip():
                    yield _record_document(json.loads(line), spec, self.where)
        else:
            import pyarrow.parquet as pq

            field = spec.messages_field or spec.text_field
            table = pq.ParquetFile(path)
            if field not in table.schema_arrow.names:
                raise MythicError(f"{self.where}: {path} has no column {field!r}")
            for batch in table.iter_batches(columns=[field]):
                yield from batch.column(0).to_pylist()

    def _hf_documents(self, spec: HFSource) -> Iterator[Document]:
        try:
            import datasets
        except ImportError:
            raise MythicError(f"{self.where}: the 'datasets' package is needed (pip install datasets)") from None
        try:
            dataset = datasets.load_dataset(
                spec.path,
                spec.name,
                split=spec.split,
                data_dir=spec.data_dir,
                data_files=spec.data_files,
                streaming=spec.streaming,
            )
        except Exception as err:  # datasets raises many types (hub offline, bad config, missing files)
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise MythicError(f"{self.where}: cannot load dataset {spec.path!r}: {first}") from None
        if self.position:
            dataset = dataset.skip(self.position)
        for record in dataset:
            yield _record_document(record, spec, self.where)

    def next_document(self) -> Document:
        """The next document; at the end of an epoch, the first of the next (reshuffled) one."""
        if self._iter is None:
            self._iter = self._start()
        document = next(self._iter, END)
        if document is END and self.position:
            self.epoch, self.position = self.epoch + 1, 0
            self._iter = self._start()
            document = next(self._iter, END)
        if document is END:
            raise MythicError(f"{self.where}: the source holds no documents")
        self.position += 1
        return document

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iter = None


def encode_text(tokenizer: Any, text: str) -> tuple[list[int], list[bool]]:
    """Token ids of a plain document followed by EOS; every token is a target."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    return ids, [True] * len(ids)


def encode_chat(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[list[int], list[bool]]:
    """Chat-template tokens of a conversation + EOS; only assistant turns (and EOS) are targets."""

    def render(turns: list[dict[str, Any]], prompt: bool) -> list[int]:
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=prompt)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    ids: list[int] = []
    mask: list[bool] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        for tokens, target in ((render(messages[:i], True), False), (render(messages[: i + 1], False), True)):
            if tokens[: len(ids)] != ids:
                raise MythicError("the chat template is not prefix-stable: cannot mask the prompt turns")
            mask += [target] * (len(tokens) - len(ids))
            ids = tokens
    tail = render(messages, False)
    if tail[: len(ids)] == ids:
        mask += [False] * (len(tail) - len(ids))
        ids = tail
    return ids + [tokenizer.eos_token_id], mask + [True]


def pick_source(seed: int, n: int, weights: np.ndarray) -> int:
    """Which source document (or example) number ``n`` comes from: Categorical(weights), keyed by (seed, n)."""
    if len(weights) == 1:
        return 0
    return int(np.random.default_rng([seed, n, SALT]).choice(len(weights), p=weights))


class Stream:
    """What both streams share: one reader per source, the mixture weights, the sample counter, and
    the readers' and counter's state."""

    Reader: Any

    def __init__(self, spec: Data, tokenizer: Any, seed: int) -> None:
        self.spec, self.tokenizer, self.seed = spec, tokenizer, seed
        self.readers = [self.Reader(source, i, seed) for i, source in enumerate(spec.sources)]
        weights = np.array([s.weight for s in spec.sources], dtype=np.float64)
        self.weights = weights / weights.sum()
        self.samples = 0

    def state_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "sources": [reader.state_dict() for reader in self.readers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["sources"]) != len(self.readers):
            raise MythicError("the checkpoint's data state has a different number of sources than the recipe")
        self.samples = int(state["samples"])
        for reader, reader_state in zip(self.readers, state["sources"], strict=True):
            reader.load_state_dict(reader_state)


class PackedStream(Stream):
    """The global stream of packed samples; see the module docstring."""

    Reader = SourceReader

    def __init__(self, spec: Data, tokenizer: Any, seed: int) -> None:
        super().__init__(spec, tokenizer, seed)
        self.documents = 0
        self.buffer: list[int] = []
        self.mask: list[bool] = []

    def _next_document(self) -> tuple[list[int], list[bool]]:
        source = pick_source(self.seed, self.documents, self.weights)
        self.documents += 1
        document = self.readers[source].next_document()
        if isinstance(document, str):
            return encode_text(self.tokenizer, document)
        if isinstance(document, list):
            return encode_chat(self.tokenizer, document)
        raise MythicError(f"data.sources.{source}: expected text or a list of chat messages")

    def next_sample(self) -> tuple[list[int], list[int]]:
        """(input_ids, labels), each ``seq_len`` long."""
        length = self.spec.seq_len
        while len(self.buffer) < length + 1:
            ids, mask = self._next_document()
            self.buffer += ids
            self.mask += mask
        window = self.buffer[: length + 1]
        labels = [t if m else IGNORE_INDEX for t, m in zip(window[1:], self.mask[1 : length + 1], strict=True)]
        self.buffer, self.mask = self.buffer[length:], self.mask[length:]
        self.samples += 1
        return window[:length], labels

    def next_batch(self, batch_size: int, rank: int = 0, world_size: int = 1, step: int = 0) -> Batch:
        """This rank's ``batch_size`` rows of the next global micro-batch of world_size·batch_size (``step``
        is unused: text has no curriculum)."""
        rows = [self.next_sample() for _ in range(batch_size * world_size)]
        mine = rows[rank * batch_size : (rank + 1) * batch_size]
        input_ids = torch.tensor([r[0] for r in mine], dtype=torch.long)
        return Batch(input_ids, torch.tensor([r[1] for r in mine], dtype=torch.long), input_ids.numel())

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"documents": self.documents, "buffer": self.buffer[:], "mask": self.mask[:]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.documents = int(state["documents"])
        self.buffer, self.mask = list(state["buffer"]), [bool(m) for m in state["mask"]]


def encode_task(tokenizer: Any, task: Task) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one example, labels already shifted: labels[i] is what position i must predict.

    The prompt's tokens (with the tokenizer's special tokens) then the answer's and EOS; the last prompt
    token predicts the answer's first token, and so on to EOS. Each intermediate answer (end, text) puts
    text's first token as the label of the prompt token that ends at character ``end`` (dense steps);
    every other position is IGNORE_INDEX. Prompt and answer are tokenized apart, as generation sees them.
    """
    encoded = tokenizer(task.prompt, return_offsets_mapping=bool(task.intermediate))
    prompt = list(encoded["input_ids"])
    answer = list(tokenizer(task.answer, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    labels = [IGNORE_INDEX] * (len(prompt) - 1) + answer
    if task.intermediate:
        ends = {end: i for i, (start, end) in enumerate(encoded["offset_mapping"]) if end > start}
        for end, text in task.intermediate:
            if ends.get(end, len(prompt) - 1) == len(prompt) - 1:
                raise MythicError(
                    f"intermediate answer at character {end} of {task.prompt!r} does not end a prompt token "
                    "before the last one"
                )
            labels[ends[end]] = tokenizer(text, add_special_tokens=False)["input_ids"][0]
    return (prompt + answer)[:-1], labels


class TaskReader:
    """The examples of one task file, grouped by difficulty, each group shuffled per epoch.

    An example is drawn by choosing a group with probability ∝ its size among the groups at or below
    the current difficulty cap (``default_rng([seed, n, index])`` for draw n), then taking that
    group's next example (its order: ``default_rng([seed, epoch, index, difficulty])``). With no cap
    this samples the file's own mix of difficulties.
    """

    def __init__(self, spec: TasksSource, index: int, seed: int) -> None:
        self.spec, self.index, self.seed = spec, index, seed
        groups: dict[int, list[Task]] = {}
        for task in read_tasks(spec.path):
            groups.setdefault(task.difficulty or 0, []).append(task)
        self.difficulties = sorted(groups)
        self.groups = [groups[d] for d in self.difficulties]
        self.state = [[0, 0] for _ in self.groups]  # (epoch, position) per group
        self._orders = [self._permutation(g) for g in range(len(self.groups))]

    def _permutation(self, group: int) -> np.ndarray:
        key = [self.seed, self.state[group][0], self.index, self.difficulties[group]]  # the group's epoch
        return np.random.default_rng(key).permutation(len(self.groups[group]))

    def cap(self, step: int) -> int:
        """The highest difficulty drawn at ``step``: it rises linearly from the file's lowest to its highest
        over ``difficulty_ramp`` steps (0: the highest from the start)."""
        low, high = self.difficulties[0], self.difficulties[-1]
        if not self.spec.difficulty_ramp:
            return high
        return min(high, low + (high - low + 1) * step // self.spec.difficulty_ramp)

    def next_task(self, n: int, step: int) -> Task:
        """Draw number ``n`` (a global counter) at optimizer step ``step``."""
        allowed = [g for g, d in enumerate(self.difficulties) if d <= self.cap(step)]
        sizes = np.array([len(self.groups[g]) for g in allowed], dtype=np.float64)
        group = int(np.random.default_rng([self.seed, n, self.index]).choice(allowed, p=sizes / sizes.sum()))
        epoch, position = self.state[group]
        if position == len(self.groups[group]):
            self.state[group] = [epoch + 1, 0]
            self._orders[group] = self._permutation(group)
        task = self.groups[group][self._orders[group][self.state[group][1]]]
        self.state[group][1] += 1
        return task

    def state_dict(self) -> dict[str, Any]:
        return {"groups": [list(s) for s in self.state]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["groups"]) != len(self.groups):
            raise MythicError(f"{self.spec.path}: the checkpoint's data state does not fit this task file")
        self.state = [[int(e), int(p)] for e, p in state["groups"]]
        self._orders = [self._permutation(g) for g in range(len(self.groups))]


def pad_id_of(tokenizer: Any) -> int:
    """The id task rows are right-padded with: the tokenizer's pad token, else EOS."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def right_padded(
    rows: list[tuple[list[int], list[int]]], pad_id: int, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) (B, width) of (ids, labels) rows: ids padded with ``pad_id``, labels with
    IGNORE_INDEX; ``width`` defaults to the longest row."""
    width = max(len(ids) for ids, _ in rows) if width is None else width
    ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in rows], dtype=torch.long)
    labels = torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in rows], dtype=torch.long)
    return ids, labels


class TaskStream(Stream):
    """Task-file examples as right-padded rows with answer-only labels; see the module docstring."""

    Reader = TaskReader

    def __init__(self, spec: Data, tokenizer: Any, seed: int) -> None:
        super().__init__(spec, tokenizer, seed)
        self.pad_id = pad_id_of(tokenizer)
        self.pending: list[list[Row]] = []  # bucketed micro-batches not yet handed out

    def next_sample(self, step: int = 0) -> Row:
        """(input_ids, labels, difficulty) of the next example, unpadded; labels already shifted
        (labels[i] = ids[i + 1]); difficulty 0 when the example has none."""
        source = pick_source(self.seed, self.samples, self.weights)
        task = self.readers[source].next_task(self.samples, step)
        ids, labels = encode_task(self.tokenizer, task)
        self.samples += 1
        if len(ids) > self.spec.seq_len:
            raise MythicError(
                f"data.sources.{source}: an example has {len(ids)} tokens, above data.seq_len={self.spec.seq_len}"
            )
        return ids, labels, task.difficulty or 0

    def next_batch(self, batch_size: int, rank: int = 0, world_size: int = 1, step: int = 0) -> Batch:
        """This rank's rows of the next global micro-batch at optimizer ``step``, right-padded to its longest row."""
        size = batch_size * world_size
        if self.spec.bucket > 1:
            if not self.pending:
                self.pending = self.bucketed(size, step)
            rows = self.pending.pop(0)
        else:
            rows = [self.next_sample(step) for _ in range(size)]
        width = max(len(ids) for ids, _, _ in rows)
        mine = rows[rank * batch_size : (rank + 1) * batch_size]
        input_ids, labels = right_padded([(ids, lab) for ids, lab, _ in mine], self.pad_id, width)
        return Batch(
            input_ids=input_ids,
            labels=labels,
            difficulty=torch.tensor([d for _, _, d in mine], dtype=torch.long),
            real_tokens=sum(len(ids) for ids, _, _ in mine),
        )

    def bucketed(self, size: int, step: int) -> list[list[Row]]:
        """``bucket`` global micro-batches of ``size`` rows: one pool (all at ``step``'s difficulty cap) sorted
        by length (stable), cut, then shuffled by ``default_rng([seed, samples drawn, SALT])``."""
        pool = [self.next_sample(step) for _ in range(size * self.spec.bucket)]
        pool.sort(key=lambda row: len(row[0]))
        batches = [pool[i : i + size] for i in range(0, len(pool), size)]
        order = np.random.default_rng([self.seed, self.samples, SALT]).permutation(len(batches))
        return [batches[i] for i in order]

    def state_dict(self) -> dict[str, Any]:
        pending = [[[list(ids), list(labels), difficulty] for ids, labels, difficulty in b] for b in self.pending]
        return super().state_dict() | {"pending": pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "buffer" in state:
            raise MythicError("the checkpoint's data state is packed text, not the recipe's task sources")
        super().load_state_dict(state)
        self.pending = [[(list(ids), list(labels), int(d)) for ids, labels, d in b] for b in state.get("pending", [])]


def make_stream(spec: Data, tokenizer: Any, seed: int) -> PackedStream | TaskStream:
    """The training stream a recipe's data section asks for: task examples or packed text."""
    if isinstance(spec.sources[0], TasksSource):
        return TaskStream(spec, tokenizer, seed)
    return PackedStream(spec, tokenizer, seed)
