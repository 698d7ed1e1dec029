"""The retrofit wrapper: a pretrained decoder whose middle block is looped T times.

    prelude = layers[:s]   (optionally minus a dropped range [a, b) ⊂ [0, s), retrofit-paper surgery)
    block   = layers[s:e]  run T = n_loops times by the runner (``recurrence/runner.py``)
    coda    = layers[e:]

``RetrofitForCausalLM`` (``PreTrainedModel`` + ``GenerationMixin``) owns the base causal LM unchanged and
replaces each block layer in its layer list by a ``BlockSlot``. During the base's own forward, the slots
of layers s … e−2 record their call (mask, rotary table, per-layer input, cache …) and pass the hidden
state through; the slot of layer e−1 hands the recorded calls (``LayerCalls``, this kind's adapter) to
the runner, with the forward's ``Request`` from the model's loop context. Everything else is the base's
own code, so a fresh wrapper at T = 1 computes the base's logits bit for bit. A pass for some rows alone
gathers the recorded calls' arguments by row (``batch_rows``), except through layers that share keys
with others (``families.batch_separable``).

``base_mode()`` switches the recurrence, the Depth-LoRA and any peft LoRA on the base off: the result is
the base model (the eval base row and the KL-anchor target alike).

A surgery/training checkpoint (``config.json`` + ``recurrence.safetensors``, the new parameters only)
loads with ``mythic.loading.load_checkpoint``; a full export (``save_pretrained``) with ``from_pretrained``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import CausalLMOutputWithPast

from mythic.errors import MythicError
from mythic.models.families import batch_separable, check_block, decoder_layers, family_of, final_norm
from mythic.models.protocol import LoopedModel
from mythic.recurrence import RULES
from mythic.recurrence.cache import LoopCache, check_kv_share
from mythic.recurrence.depth_head import DepthHead
from mythic.recurrence.depth_lora import DepthLoRA
from mythic.recurrence.exit import AdaptiveDepth
from mythic.recurrence.loop import LoopCount
from mythic.recurrence.loop_embedding import LoopEmbedding
from mythic.recurrence.rules import ConcatRule, ParcaeRule, ResidualRule, TokenRule, UpdateRule
from mythic.recurrence.runner import Recurrence, Request
from mythic.tensors import copy_strict

RECURRENCE_FILE = "recurrence.safetensors"


@strict
class RetrofitConfig(PreTrainedConfig):
    """The base's config (``text_config``, as it was before surgery) plus the surgery settings."""

    model_type = "mythic"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    block_start: int = 0
    block_end: int = 1
    drop: list[int] | None = None
    max_loops: int = 8
    n_loops: int = 1
    rule: str = "residual"
    inject_scale: float = 0.01
    full_b: bool = False
    gate_bias_init: float = 0.0
    gate_per_channel: bool = False
    layerscale_init: float = 0.05
    layerscale_max: float = 0.5
    layerscale_per_channel: bool = False
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: list[str] | None = None
    loop_embedding: bool = False
    depth_head: bool = False
    base_name_or_path: str | None = None
    base_revision: str | None = None
    kv_share: str | None = None

    def validate_surgery(self) -> None:
        """One-line errors for impossible settings; called before any model is built."""
        if self.rule not in RULES:
            raise MythicError(f"unknown update rule {self.rule!r}: choose one of {', '.join(RULES)}")
        if self.max_loops < 1 or self.n_loops < 1:
            raise MythicError("max_loops and n_loops must be at least 1")
        if self.lora_rank < 0:
            raise MythicError("lora_rank must be >= 0 (0 disables Depth-LoRA)")
        if not 0.0 < self.layerscale_init <= self.layerscale_max <= 1.0:
            raise MythicError(
                f"LayerScale needs 0 < layerscale_init <= layerscale_max <= 1, "
                f"got {self.layerscale_init} and {self.layerscale_max}"
            )
        check_kv_share(self.kv_share)
        drop = tuple(self.drop) if self.drop else None
        check_block(self.text_config, self.block_start, self.block_end, drop)
        if self.rule == "token":
            self._check_token_rule()

    def _check_token_rule(self) -> None:
        """The token rule feeds predictions back as input embeddings: its block is the whole stack, and
        nothing may change a context position's later passes (they must equal its first)."""
        n = self.text_config.get_text_config(decoder=True).num_hidden_layers
        if self.block_start != 0 or self.block_end != n or self.drop:
            raise MythicError(f"rule token loops the whole stack: block_start 0, block_end {n}, no drop")
        if self.lora_rank or self.loop_embedding or self.kv_share:
            raise MythicError(
                "rule token runs every pass with the same weights: set lora_rank 0, loop_embedding false and "
                "no kv_share (train a LoRA on the base instead: trainable.lora)"
            )

    @property
    def kept_layers(self) -> list[int]:
        """Original indices of the layers kept after surgery."""
        n = self.text_config.get_text_config(decoder=True).num_hidden_layers
        a, b = self.drop or (0, 0)
        return [i for i in range(n) if not a <= i < b]


FINGERPRINT_IGNORES = {
    "transformers_version",
    "dtype",
    "torch_dtype",
    "use_cache",
    "architectures",
    "quantization_config",
}


def config_fingerprint(config: PreTrainedConfig) -> str:
    """A short hash of the architecture-defining part of a base config (dtype and bookkeeping left out)."""
    diff = config.to_diff_dict()
    kept = {k: v for k, v in diff.items() if not k.startswith("_") and k not in FINGERPRINT_IGNORES}
    blob = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def batch_rows(value: Any, rows: torch.Tensor, batch: int) -> Any:
    """``value`` (a layer call's arguments: tensors, tuples, lists, dicts) for the batch rows ``rows``
    alone: every tensor of two or more dims whose first is the ``batch`` is indexed; the rest is kept."""
    if isinstance(value, torch.Tensor):
        return value[rows] if value.dim() >= 2 and value.shape[0] == batch else value
    if isinstance(value, (tuple, list)):
        return type(value)(batch_rows(item, rows, batch) for item in value)
    if type(value) is dict:
        return {key: batch_rows(item, rows, batch) for key, item in value.items()}
    return value


def build_recurrence(config: RetrofitConfig, dim: int) -> Recurrence:
    """Every new parameter: update rule (gate, LayerScale, injection/adapter), Depth-LoRA, loop embedding, and the
    depth head (fitted after training, ``recurrence/depth_head.py``)."""
    rule: UpdateRule
    if config.rule == "residual":
        rule = ResidualRule(
            dim,
            config.max_loops,
            inject_scale=config.inject_scale,
            gate_bias_init=config.gate_bias_init,
            gate_per_channel=config.gate_per_channel,
            layerscale_init=config.layerscale_init,
            layerscale_max=config.layerscale_max,
            layerscale_per_channel=config.layerscale_per_channel,
            full_b=config.full_b,
        )
    elif config.rule == "parcae":
        rule = ParcaeRule(dim, full_b=config.full_b)
    elif config.rule == "token":
        rule = TokenRule()
    else:
        rule = ConcatRule(dim)
    lora = DepthLoRA(config.max_loops, config.lora_rank, config.lora_alpha) if config.lora_rank else None
    embedding = LoopEmbedding(dim) if config.loop_embedding else None
    depth_head = DepthHead(dim, config.max_loops) if config.depth_head else None
    return Recurrence(rule, config.max_loops, embedding=embedding, lora=lora, depth_head=depth_head)


Call = tuple[nn.Module, tuple[Any, ...], dict[str, Any]]  # a block layer and the arguments the base called it with


@dataclass
class Forward:
    """What one forward's block slots share (through the loop context): its request (None: base mode, the
    block layers run plain), the tokens its cache held before it, and the block layers' calls recorded so far."""

    request: Request | None
    past: int = 0
    calls: list[Call] = field(default_factory=list)


def token_rows(value: Any, index: torch.Tensor, length: int) -> Any:
    """``value`` (a layer call's arguments, already for the computed rows) for the tokens ``index`` (R, Q)
    of ``length`` alone: every tensor of two or more dims whose second is ``length`` and first is 1 or R
    (rotary tables, position ids, per-layer inputs) is gathered along it; the rest is kept."""
    if isinstance(value, torch.Tensor):
        rows = index.shape[0]
        if value.dim() < 2 or value.shape[1] != length or value.shape[0] not in (1, rows):
            return value
        value = value.expand(rows, *value.shape[1:])
        picked = index.view(*index.shape, *([1] * (value.dim() - 2))).expand(-1, -1, *value.shape[2:])
        return value.gather(1, picked)
    if isinstance(value, (tuple, list)):
        return type(value)(token_rows(item, index, length) for item in value)
    if type(value) is dict:
        return {key: token_rows(item, index, length) for key, item in value.items()}
    return value


def query_rows(mask: torch.Tensor | None, index: torch.Tensor, length: int, past: int) -> torch.Tensor:
    """The attention mask (rows, 1, Q, past + length) of the query tokens ``index`` (R, Q): the rows of the
    forward's mask at those tokens, or the causal mask when the forward had none (sdpa's causal shortcut)."""
    rows = index.shape[0]
    if mask is None:
        keys = torch.arange(past + length, device=index.device)
        return (keys.view(1, 1, 1, -1) <= (past + index).view(rows, 1, -1, 1)).expand(rows, 1, -1, -1)
    mask = mask.expand(rows, *mask.shape[1:])
    return mask.gather(2, index.view(rows, 1, -1, 1).expand(-1, mask.shape[1], -1, mask.shape[3]))


@dataclass
class LayerCalls:
    """The retrofit's block for the runner: the block layers with the arguments the base called them with in
    this forward (masks, rotary tables, per-layer inputs …), replayed for every pass with the pass's cache view.
    Rows of the batch, and tokens in them, are computed apart (``subset``: the arguments gathered by row,
    then by token, each query's mask row kept) unless a layer shares keys with another (gemma4); ``past``:
    the tokens the cache held before this forward."""

    calls: list[Call]
    past: int = 0
    positions = True

    @property
    def separable(self) -> bool:
        return all(batch_separable(layer) for layer, _, _ in self.calls)

    def __call__(self, x: torch.Tensor, view: Any, token_mask: torch.Tensor | None) -> torch.Tensor:
        return self.replay(x, view, self.calls)

    def subset(self, x: torch.Tensor, view: Any, rows: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        picked = [batch_rows(call, rows, x.shape[0]) for call in self.calls]
        x = x[rows]
        if index is not None:
            length = x.shape[1]
            picked = [self.tokens(call, index, length) for call in picked]
            x = x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return self.replay(x, view, picked)

    def tokens(self, call: Call, index: torch.Tensor, length: int) -> Call:
        layer, args, kwargs = call
        mask = query_rows(kwargs.get("attention_mask"), index, length, self.past)
        kwargs = token_rows({k: v for k, v in kwargs.items() if k != "attention_mask"}, index, length)
        return layer, token_rows(args, index, length), {**kwargs, "attention_mask": mask}

    @staticmethod
    def replay(x: torch.Tensor, view: Any, calls: list[Call]) -> torch.Tensor:
        for layer, args, kwargs in calls:
            x = layer(x, *args, **(kwargs if view is None else {**kwargs, "cache": view}))
        return x


class BlockSlot(nn.Module):
    """Stands in for one block layer inside the base's layer list (see the module docstring): with a
    ``Request`` in the loop context it records its call, and the last slot runs the recurrence over the
    recorded calls; without one (base mode, or the base called directly) it is its plain layer."""

    def __init__(self, layer: nn.Module, last: bool, recurrence: Recurrence, readout: Callable[..., Any]) -> None:
        super().__init__()
        self.layer = layer
        self.last = last
        self._owners = (recurrence, readout)  # a tuple: both belong to the wrapper, not to this slot

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        recurrence, readout = self._owners
        state: Forward | None = recurrence.context.forward
        if state is None or state.request is None:
            return self.layer(hidden_states, *args, **kwargs)
        state.calls.append((self.layer, args, kwargs))
        if not self.last:
            return hidden_states
        calls, state.calls = state.calls, []
        block = LayerCalls(calls, state.past)
        h, _ = recurrence.run(block, hidden_states, state.request, kwargs.get("cache"), state.past, readout)
        return h


class RetrofitForCausalLM(PreTrainedModel, LoopedModel, GenerationMixin):
    """A pretrained causal LM with a looped middle block; ``n_loops`` is a forward/generate argument."""

    config_class = RetrofitConfig
    base_model_prefix = "mythic"
    supports_gradient_checkpointing = False
    _keep_in_fp32_modules_strict = ["recurrence"]
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: RetrofitConfig, base: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        config.validate_surgery()
        if base is not None:  # it comes initialised (loaded or built): post_init must not touch it
            for module in base.modules():
                module._is_hf_initialized = True
        else:  # from_pretrained builds it empty and then loads (and initialises what it does not load)
            base = AutoModelForCausalLM.from_config(copy.deepcopy(config.text_config))
        self.base = base
        self.family = family_of(config.text_config)
        layers = decoder_layers(base)
        if config.drop:
            self._drop_layers(layers)
        start = config.kept_layers.index(config.block_start)
        end = start + (config.block_end - config.block_start)
        self.block_range = (start, end)
        self.recurrence = build_recurrence(config, base.config.get_text_config(decoder=True).hidden_size)
        block = nn.ModuleList(layers[start:end])
        if self.recurrence.lora is not None:
            targets = tuple(config.lora_targets or self.family.lora_targets)
            if not self.recurrence.lora.attach(block, targets, self.recurrence.context):
                raise MythicError(f"no Depth-LoRA target {targets} found in the block's layers")
        self.recurrence.to(base.get_input_embeddings().weight.device)  # where the base lives
        if isinstance(self.recurrence.rule, TokenRule):
            self.recurrence.rule.bind(self.readout, base.get_input_embeddings())
        for j in range(start, end):
            layers[j] = BlockSlot(layers[j], j == end - 1, self.recurrence, self.readout)
        if base.generation_config is not None:
            self.generation_config = copy.deepcopy(base.generation_config)
        self.post_init()

    def _drop_layers(self, layers: nn.ModuleList) -> None:
        """Retrofit-paper surgery: remove layers [a, b) and renumber the rest (cache indices follow)."""
        kept = self.config.kept_layers
        new = [layers[i] for i in kept]
        for idx, layer in enumerate(new):
            for module in layer.modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = idx
        layers._modules.clear()
        layers.extend(new)
        cfg = self.base.config
        cfg.num_hidden_layers = len(kept)
        if getattr(cfg, "layer_types", None) is not None:
            cfg.layer_types = [cfg.layer_types[i] for i in kept]

    @classmethod
    def from_base(cls, base: PreTrainedModel, **settings: Any) -> RetrofitForCausalLM:
        """Surgery in memory on a loaded base: ``from_base(base, block_start=4, block_end=8, max_loops=8)``.

        The new parameters stay in float32 whatever the base's dtype (they are few, and trained).
        """
        text_config = copy.deepcopy(base.config)
        settings.setdefault("base_name_or_path", getattr(base.config, "_name_or_path", None) or None)
        return cls(RetrofitConfig(text_config=text_config, **settings), base=base)

    def get_input_embeddings(self) -> nn.Module:
        return self.base.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.base.get_output_embeddings()

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing to do: the recurrence modules initialise themselves when built (identity-preserving
        values such as B = 0 and the [0 | I] adapter), and the base is initialised by its own loading."""

    has_base = True

    def new_cache(self) -> LoopCache:
        """An empty KV cache with one slot per (loop, block layer)."""
        return LoopCache.of_config(self.base.config, *self.block_range)

    @contextlib.contextmanager
    def base_mode(self) -> Iterator[None]:
        """The base model, the one definition every "base" uses (eval's base row, perplexity, lm-eval,
        generate, the KL anchor): the recurrence, the Depth-LoRA and any peft LoRA on the base all off."""
        try:
            from peft.tuners.tuners_utils import BaseTunerLayer
        except ImportError:  # without peft there is no base LoRA to switch off
            lora_layers = []
        else:
            lora_layers = [m for m in self.modules() if isinstance(m, BaseTunerLayer) and not m.disable_adapters]
        with self.recurrence.context.forwarding(Forward(None)):
            for layer in lora_layers:
                layer.enable_adapters(False)
            try:
                yield
            finally:
                for layer in lora_layers:
                    layer.enable_adapters(True)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: LoopCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        n_loops: LoopCount | None = None,
        grad_loops: int | None = None,
        checkpoint_loops: bool = False,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """The base's forward with the block looped ``n_loops`` times (int, or LongTensor (B,) per sequence).

        ``grad_loops=k`` backpropagates through the last k loops only; ``checkpoint_loops``
        recomputes each loop's activations in backward (training without a cache).
        """
        n_loops = self.config.n_loops if n_loops is None else n_loops
        adaptive = isinstance(n_loops, AdaptiveDepth)
        if use_cache is None:
            use_cache = not self.training and bool(getattr(self.base.config, "use_cache", True))
        keeps = adaptive or self.config.rule == "token"  # fill-forward keys (an exit's, the token rule's context)
        if (use_cache or keeps) and cache is None:
            cache = self.new_cache()  # the fill-forward keys live in a cache, even uncached
        if checkpoint_loops and cache is not None:
            raise MythicError("checkpoint_loops needs use_cache=False: recomputation would write the KV cache twice")
        if cache is not None and not isinstance(cache, LoopCache):
            raise MythicError("cache must be a LoopCache: create it with model.new_cache()")
        state = self.recurrence.context.forward
        if state is None or state.request is not None:  # base mode keeps its plain layers for the whole call
            check_kv_share(self.config.kv_share)
            request = Request(n_loops, grad_loops, checkpoint_loops, self.config.kv_share == "last", logits_to_keep)
            state = Forward(request, cache.get_seq_length() if cache is not None else 0)
        with self.recurrence.context.forwarding(state):
            out = self.base(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                inputs_embeds=inputs_embeds,
                labels=labels,
                use_cache=use_cache or keeps,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        if keeps and not use_cache:
            out.past_key_values = None
        return out

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """Next-token logits read straight off a loop state: the base's final norm and head (the logit lens)."""
        return self.base.get_output_embeddings()(final_norm(self.base)(h))

    def recurrence_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of the new recurrence modules only: the default trainable set."""
        return self.recurrence.named_parameters(prefix="recurrence")

    def recurrence_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.recurrence_parameters()}

    def save_recurrence(self, directory: str | Path, tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Write ``config.json`` and the new parameters (``recurrence.safetensors``) into ``directory``.

        ``tensors``: whole tensors by name to write instead of the live parameters (what a sharded
        training run gathered); only the recurrence's names are taken from it.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(directory)
        source = self.recurrence_state_dict() if tensors is None else tensors
        tensors = {name: source[name].contiguous().cpu() for name, _ in self.recurrence_parameters()}
        save_file(tensors, directory / RECURRENCE_FILE, metadata={"format": "pt", "mythic": "recurrence"})

    def load_recurrence(self, directory: str | Path) -> None:
        """Load ``recurrence.safetensors`` strictly: every tensor present, none extra, every shape equal."""
        path = Path(directory) / RECURRENCE_FILE
        if not path.exists():
            raise MythicError(f"{path} is missing: not a mythic checkpoint")
        copy_strict(dict(self.recurrence_parameters()), load_file(path), f"checkpoint {directory}")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args: Any, **kwargs: Any) -> Any:
        """A full ``save_pretrained`` folder, strictly. A surgery or training checkpoint holds the new
        parameters only, its base elsewhere: ``mythic.loading.load_checkpoint`` loads it."""
        path = Path(pretrained_model_name_or_path)
        if (path / RECURRENCE_FILE).exists():
            raise MythicError(
                f"{path} is a mythic checkpoint (its base lives in {path / 'config.json'}'s base_name_or_path): "
                "load it with mythic.loading.load_checkpoint or load_any"
            )
        if kwargs.pop("output_loading_info", False):
            raise MythicError("mythic checkpoints load strictly; output_loading_info is not supported")
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            if info.get(kind):
                names = sorted(str(k) for k in info[kind])
                raise MythicError(f"{path} does not match its config: {kind.replace('_', ' ')} {names[:3]}")
        return model


AutoConfig.register("mythic", RetrofitConfig)
AutoModelForCausalLM.register(RetrofitConfig, RetrofitForCausalLM)
