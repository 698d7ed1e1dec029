"""lm-evaluation-harness model ``mythic``: lm-eval's HFLM over a mythic checkpoint at a fixed loop count.

    python -m mythic.eval.lm_eval_adapter --model mythic \\
        --model_args pretrained=CKPT,n_loops=4 --tasks hellaswag ...

takes exactly ``lm_eval``'s arguments: lm-eval (0.4.x) has no entry-point discovery, so the ``mythic``
name exists once this module is imported, and its entry point then runs lm-eval's own CLI. From Python:
``lm_eval.simple_evaluate(model=MythicLM(pretrained=CKPT, n_loops=4), tasks=[...])``.

``n_loops`` is an integer (every forward and generate call runs the block that many times), ``base``
(recurrence and Depth-LoRA off: the base model) or absent (the checkpoint's ``config.n_loops``).
``pretrained`` may also be a plain base folder (no ``n_loops`` then).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from mythic.errors import MythicError
from mythic.models.protocol import LoopedModel


@register_model("mythic")
class MythicLM(HFLM):
    """HFLM whose model is loaded by mythic and always called with the chosen loop count."""

    def __init__(
        self,
        pretrained: str,
        n_loops: int | str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        **kwargs: Any,
    ) -> None:
        from mythic.loading import load_any, load_tokenizer

        model = load_any(Path(pretrained), dtype=dtype).to(device)
        if n_loops is not None and not isinstance(model, LoopedModel):
            raise MythicError(f"{pretrained} is a plain base: n_loops needs a mythic checkpoint")
        self.n_loops = n_loops if n_loops in (None, "base") else int(n_loops)
        super().__init__(pretrained=model, tokenizer=load_tokenizer(Path(pretrained)), backend="causal", **kwargs)

    @contextlib.contextmanager
    def _loops(self) -> Iterator[dict[str, Any]]:
        if self.n_loops == "base":
            with self.model.base_mode():
                yield {}
        else:
            yield {} if self.n_loops is None else {"n_loops": self.n_loops}

    def _model_call(
        self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        with torch.no_grad(), self._loops() as loop_kwargs:
            return self.model(inps, **loop_kwargs).logits

    def _model_generate(
        self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any
    ) -> torch.Tensor:
        with self._loops() as loop_kwargs:
            return super()._model_generate(context, max_length, stop, **generation_kwargs, **loop_kwargs)


if __name__ == "__main__":  # lm_eval's command line, with the ``mythic`` model registered
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
