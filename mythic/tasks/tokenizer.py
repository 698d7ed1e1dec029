"""A character-level tokenizer built from task files (recipe ``tokenizer: chars``).

    vocabulary = <pad> <eos> <unk>, then every character of the training prompts and answers, sorted

One token per character (``tokenizers``' WordLevel model, a split-every-character pre-tokenizer, a
``Fuse`` decoder), no BOS, so ``decode(encode(text)) == text`` for every text of seen characters; an
unseen character becomes ``<unk>``. A ``PreTrainedTokenizerFast``: ``save_pretrained`` writes
``tokenizer.json``, which every checkpoint, ``final/`` and export loads back with ``AutoTokenizer``.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mythic.tasks.files import Task

SPECIALS = ("<pad>", "<eos>", "<unk>")
CHARS = "chars"


def char_tokenizer(tasks: Iterable[Task]) -> PreTrainedTokenizerFast:
    """The character vocabulary of ``tasks``' prompts and answers; see the module docstring."""
    chars = sorted({c for task in tasks for c in task.prompt + task.answer})
    vocab = {token: i for i, token in enumerate([*SPECIALS, *chars])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
