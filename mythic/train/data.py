"""Training data: documents from a weighted mixture of sources, tokenized and packed to seq_len.

Sources (``recipe.data.sources``): local files by glob (``text``: one document per file,
``jsonl`` / ``parquet``: one per record), Hugging Face datasets through
``datasets.load_dataset`` (streaming by default), and the Python standard library's own
``.py`` files (offline text that exists on every machine). A record with
``messages_field`` is a chat conversation: it is rendered with the tokenizer's chat template
and only the assistant turns are trained on (the prompt is masked with -100).

Packing: documents are concatenated as ``doc₁ EOS doc₂ EOS …`` into one token stream, and
each sample takes L + 1 consecutive tokens: ``input_ids = s[0:L]``, ``labels = s[1:L+1]``
(masked where the target token is part of a prompt); the next sample starts at s[L].

Mixture: document number n comes from source i ~ Categorical(weights), drawn with
``default_rng([seed, n, salt])``. File sources are shuffled per epoch with
``default_rng([seed, epoch, source index])`` and restart when exhausted (epoch + 1).

Resume: ``state_dict()`` holds the document counter, each source's (epoch, position) and the
packer's leftover tokens, so ``load_state_dict`` continues with exactly the same samples.
All ranks read the same global stream; rank r of W takes rows [r·B, (r+1)·B) of each global
micro-batch of W·B samples, so the samples do not depend on how the stream is sharded.
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
from mythic.train.losses import IGNORE_INDEX
from mythic.train.recipe import Data, FilesSource, HFSource, StdlibSource

Document = str | list[dict[str, Any]]
SALT = 0xDA7A


@dataclass
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor


def load_tokenizer(path: str | Path) -> Any:
    """``AutoTokenizer.from_pretrained(path)``; it must define an EOS token for packing."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise MythicError(f"cannot load a tokenizer from {path}: {str(err).splitlines()[0]}") from None
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
        self.spec = spec
        self.index = index
        self.seed = seed
        self.where = f"data.sources.{index}"
        self.epoch = 0
        self.position = 0
        self._files = self._list_files()
        self._iter: Iterator[Document] | None = None

    def _list_files(self) -> list[Path]:
        if isinstance(self.spec, StdlibSource):
            files = stdlib_files()
        elif isinstance(self.spec, FilesSource):
            found = {Path(p) for pattern in self.spec.paths for p in glob.glob(pattern, recursive=True)}
            files = sorted(p for p in found if p.is_file())
        else:
            return []
        if not files:
            raise MythicError(f"{self.where}: no files found")
        return files

    def _epoch_documents(self) -> Iterator[Document]:
        spec = self.spec
        if isinstance(spec, HFSource):
            yield from self._hf_documents(spec)
            return
        order = np.random.default_rng([self.seed, self.epoch, self.index]).permutation(len(self._files))
        for i in order:
            path = self._files[i]
            if isinstance(spec, StdlibSource) or spec.format == "text":
                yield path.read_text(errors="replace")
            elif spec.format == "jsonl":
                for line in path.read_text().splitlines():
                    if line.strip():
                        yield _record_document(json.loads(line), spec, self.where)
            else:
                yield from self._parquet_documents(path, spec)

    def _parquet_documents(self, path: Path, spec: FilesSource) -> Iterator[Document]:
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

    def _start(self) -> Iterator[Document]:
        documents = self._epoch_documents()
        if isinstance(self.spec, HFSource):
            return documents
        return itertools.islice(documents, self.position, None)

    def next_document(self) -> Document:
        if self._iter is None:
            self._iter = self._start()
        for _ in range(2):
            try:
                document = next(self._iter)
            except StopIteration:
                if self.position == 0:
                    break
                self.epoch, self.position = self.epoch + 1, 0
                self._iter = self._start()
                continue
            self.position += 1
            return document
        raise MythicError(f"{self.where}: the source holds no documents")

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


class PackedStream:
    """The global stream of packed samples; see the module docstring."""

    def __init__(self, spec: Data, tokenizer: Any, seed: int) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        self.seed = seed
        self.readers = [SourceReader(source, i, seed) for i, source in enumerate(spec.sources)]
        weights = np.array([s.weight for s in spec.sources], dtype=np.float64)
        self.weights = weights / weights.sum()
        self.documents = 0
        self.samples = 0
        self.buffer: list[int] = []
        self.mask: list[bool] = []

    def _next_document(self) -> tuple[list[int], list[bool]]:
        rng = np.random.default_rng([self.seed, self.documents, SALT])
        source = int(rng.choice(len(self.readers), p=self.weights)) if len(self.readers) > 1 else 0
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

    def next_batch(self, batch_size: int, rank: int = 0, world_size: int = 1) -> Batch:
        """This rank's ``batch_size`` rows of the next global micro-batch of world_size·batch_size."""
        rows = [self.next_sample() for _ in range(batch_size * world_size)]
        mine = rows[rank * batch_size : (rank + 1) * batch_size]
        return Batch(
            input_ids=torch.tensor([r[0] for r in mine], dtype=torch.long),
            labels=torch.tensor([r[1] for r in mine], dtype=torch.long),
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "samples": self.samples,
            "sources": [reader.state_dict() for reader in self.readers],
            "buffer": list(self.buffer),
            "mask": list(self.mask),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["sources"]) != len(self.readers):
            raise MythicError("the checkpoint's data state has a different number of sources than the recipe")
        self.documents, self.samples = int(state["documents"]), int(state["samples"])
        for reader, reader_state in zip(self.readers, state["sources"], strict=True):
            reader.load_state_dict(reader_state)
        self.buffer, self.mask = list(state["buffer"]), [bool(m) for m in state["mask"]]
