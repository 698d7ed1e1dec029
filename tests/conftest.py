"""Shared fixtures: a tiny sharded Llama folder, a stand-in hub serving it, the real SmolLM2-135M.

- ``tiny_llama_dir``: a random 2-layer ``LlamaForCausalLM`` (seed 0) saved with ``save_pretrained``
  in 3 safetensors shards plus ``model.safetensors.index.json``, and a word-level tokenizer
  (``tiny.write_tiny_base``).
- ``hub``: a ``StandInHub`` on 127.0.0.1 (``HF_ENDPOINT`` points at it) that serves
  ``tiny_llama_dir`` as ``TINY_REPO``.
- ``smollm2_dir``: the converted SmolLM2-135M-Instruct folder, built once and cached under
  ``~/.cache/mythic/smollm2-135m`` (``$MYTHIC_CACHE`` if set); for slow tests.
- ``sandbox_exclusive``: the test runs while no other test runs a sandbox (``sandboxlock.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hubserver import TINY_REPO, StandInHub
from sandboxlock import exclusive
from tiny import write_tiny_base

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One intra-op thread per xdist worker: two workers with a thread per core each oversubscribe a
    # 2-core machine, and torch's spinning threads then make small-tensor tests tens of times slower.
    torch.set_num_threads(1)


@pytest.fixture
def sandbox_exclusive() -> Iterator[None]:
    with exclusive():
        yield


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny.write_tiny_base`` with 2 layers, its weights sharded (the fetch tests serve several files)."""
    return write_tiny_base(tmp_path_factory.mktemp("tiny-llama"), layers=2, max_shard_size="40KB")


@pytest.fixture
def hub(tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandInHub]:
    server = StandInHub()
    server.add_folder(TINY_REPO, tiny_llama_dir)
    monkeypatch.setenv("HF_ENDPOINT", server.start())
    yield server
    server.close()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from mythic.embedded import cached_smollm2

    return cached_smollm2()
