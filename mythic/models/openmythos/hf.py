"""The transformers-native OpenMythos: ``OpenMythosConfig`` / ``OpenMythosForCausalLM``.

A ``PreTrainedModel`` + ``GenerationMixin`` owning one ``OpenMythos`` (``.model``), so a from-scratch
model saves (``save_pretrained``: config.json + safetensors, head tied to the embedding), loads
(``from_pretrained`` / ``AutoModelForCausalLM``) and generates (``generate(ids, n_loops=4, ...)``; n_loops
may be a LongTensor (B,)) like any HF model. The config's fields are exactly ``MythosConfig``'s.
``forward`` returns a ``MythosOutput``: loss (with ``labels``), logits, cache, and ``aux_losses`` (MoE
balance, ACT ponder) for the trainer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig
from transformers import PreTrainedModel as HFPreTrainedModel

from mythic.models.openmythos.config import MythosConfig
from mythic.models.openmythos.model import MythosCache, MythosOutput, OpenMythos
from mythic.models.protocol import LoopedModel
from mythic.recurrence.cache import check_kv_share
from mythic.recurrence.loop import LoopCount
from mythic.recurrence.runner import Recurrence


@strict
class OpenMythosConfig(PreTrainedConfig, MythosConfig):
    """``MythosConfig`` as a transformers config (model_type ``openmythos``): its fields and checks are
    inherited, not repeated; added are the serving options (``kv_share``; ``n_loops``, the loops a call
    without ``n_loops`` runs, default ``max_loop_iters``) and the token ids."""

    model_type = "openmythos"

    kv_share: str | None = None
    n_loops: int | None = None
    tie_word_embeddings: bool = True
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.check()

    @classmethod
    def from_mythos(cls, cfg: MythosConfig, **kwargs: Any) -> OpenMythosConfig:
        return cls(**cfg.to_dict(), **kwargs)

    def to_mythos(self) -> MythosConfig:
        return MythosConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(MythosConfig)})


class OpenMythosForCausalLM(HFPreTrainedModel, LoopedModel, GenerationMixin):
    """OpenMythos as a transformers causal LM; see the module docstring."""

    config_class = OpenMythosConfig
    base_model_prefix = "model"
    _tied_weights_keys = {"model.head.weight": "model.embed.weight"}
    _no_split_modules = ["Block"]  # the unit of device maps and of FSDP sharding
    _supports_sdpa = True

    def __init__(self, config: OpenMythosConfig) -> None:
        super().__init__(config)
        self.model = OpenMythos(config.to_mythos())
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed

    def get_output_embeddings(self) -> nn.Module:
        return self.model.head

    def _init_weights(self, module: nn.Module) -> None:
        if module is not self:
            self.model.init_module(module)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: MythosCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        n_loops: LoopCount | None = None,
        grad_loops: int | None = None,
        checkpoint_loops: bool = False,
        **kwargs: Any,
    ) -> MythosOutput:
        check_kv_share(self.config.kv_share)
        if use_cache is None:
            use_cache = not self.training and self.config.use_cache
        if use_cache and cache is None:
            cache = self.new_cache()
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None
        out = self.model(
            input_ids,
            self.config.n_loops if n_loops is None else n_loops,
            cache=cache if use_cache else None,
            attention_mask=attention_mask,
            position_ids=position_ids,
            return_aux=True,
            grad_loops=grad_loops,
            checkpoint_loops=checkpoint_loops,
            logits_to_keep=logits_to_keep,
            kv_share=self.config.kv_share == "last",
        )
        loss = None
        if labels is not None:
            loss = self.loss_function(out.logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return dataclasses.replace(out, loss=loss, cache=cache if use_cache else None)

    # ------------------------------------------------- the LoopedModel interface (models/protocol.py)

    has_base = False

    @property
    def recurrence(self) -> Recurrence:
        return self.model.recurrence

    def new_cache(self) -> MythosCache:
        return self.model.new_cache()

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.readout(h)

    def after_optimizer_step(self) -> dict[str, float]:
        """The aux-loss-free balancing step of the MoE router; its load statistics."""
        return self.model.update_router_bias()


AutoConfig.register("openmythos", OpenMythosConfig)
AutoModelForCausalLM.register(OpenMythosConfig, OpenMythosForCausalLM)
