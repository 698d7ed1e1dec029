"""Per-token loss and perplexity of a model at several loop counts.

Documents are tokenized, joined with EOS between them and cut into non-overlapping windows of
``seq_len`` tokens (the last one may be shorter). Every window predicts its tokens 2…L from the
ones before, so with N predicted tokens and per-token loss ℓ_i = −log p(x_i | x_<i):

    NLL = (1/N) Σ ℓ_i,    PPL = exp(NLL),    SE(NLL) = std(ℓ, ddof 1) / √N,    SE(PPL) ≈ PPL · SE(NLL)

(the standard errors treat tokens as independent, so they are optimistic).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mythic.errors import MythicError
from mythic.eval.rows import row_mode
from mythic.io import read_jsonl


def load_texts(source: str, field: str = "text", split: str = "train", max_docs: int | None = None) -> list[str]:
    """Documents from a .jsonl file (``field`` of each line), any other text file (one document),
    or a ``datasets`` dataset (a local folder or a name in the local cache)."""
    path = Path(source)
    if path.is_file() and path.suffix == ".jsonl":
        texts = []
        for i, row in enumerate(read_jsonl(path)):
            if not isinstance(row.get(field), str):
                raise MythicError(f"{path.name} object {i + 1} has no string field {field!r}")
            texts.append(row[field])
    elif path.is_file():
        texts = [path.read_text(encoding="utf-8")]
    else:
        import datasets

        try:
            data = datasets.load_dataset(source, split=split)
        except Exception as err:
            raise MythicError(f"cannot load dataset {source!r} (split {split!r}): {err}") from None
        if field not in data.column_names:
            raise MythicError(f"dataset {source!r} has no column {field!r} (columns: {data.column_names})")
        texts = list(data[field][: max_docs or len(data)])
    texts = [t for t in texts[:max_docs] if t.strip()]
    if not texts:
        raise MythicError(f"no text in {source}")
    return texts


def token_windows(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], seq_len: int, max_tokens: int | None = None
) -> list[torch.Tensor]:
    """Token stream (EOS between documents, truncated to ``max_tokens``) cut into windows of ``seq_len``."""
    if seq_len < 2:
        raise MythicError("--seq-len must be at least 2")
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False).input_ids
        if tokenizer.eos_token_id is not None:
            stream.append(tokenizer.eos_token_id)
        if max_tokens is not None and len(stream) >= max_tokens:
            break
    stream = stream[:max_tokens]
    windows = [torch.tensor(stream[i : i + seq_len]) for i in range(0, len(stream), seq_len)]
    return [w for w in windows if len(w) >= 2]


def token_losses(
    model: PreTrainedModel,
    windows: Sequence[torch.Tensor],
    n_loops: int | None = None,
    batch_size: int = 4,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """ℓ_i for every predicted token of every window (float64, window order), at one row setting."""
    losses = []
    with row_mode(model, n_loops) as loop_kwargs, torch.no_grad():
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            ids = pad_sequence(batch, batch_first=True).to(model.device)  # right-padded with 0
            mask = pad_sequence([torch.ones_like(w) for w in batch], batch_first=True).to(model.device)
            logits = model(input_ids=ids, attention_mask=mask, **loop_kwargs).logits.double()
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").cpu()
            losses += [nll[i, : len(w) - 1] for i, w in enumerate(batch)]
            if on_batch is not None:
                on_batch(len(batch))
    return torch.cat(losses)


def summarize(losses: torch.Tensor) -> dict[str, dict[str, float | None]]:
    """NLL and PPL with standard errors (module docstring)."""
    n = losses.numel()
    nll = float(losses.mean())
    se = float(losses.std(correction=1)) / math.sqrt(n) if n > 1 else None
    ppl = math.exp(nll)
    return {"nll": {"value": nll, "stderr": se}, "ppl": {"value": ppl, "stderr": ppl * se if se is not None else None}}
