"""The retrofit wrapper: a pretrained decoder whose middle block is looped T times.

    prelude = layers[:s]   (optionally minus a dropped range [a, b) ⊂ [0, s), retrofit-paper surgery)
    block   = layers[s:e]  run T = n_loops times through the loop driver
    coda    = layers[e:]

``MythicForCausalLM`` is a real ``PreTrainedModel`` + ``GenerationMixin``: it owns the base
causal LM unchanged and replaces each block layer in ``model.model.layers`` by a
``BlockSlot``. During the base's own forward, the slots of layers s … e−2 record their
call (hidden-state input aside, each decoder layer gets its mask, rotary table, per-layer
input, cache…) and pass the hidden state through; the slot of layer e−1 then runs the
loop driver over the recorded calls. Embeddings, masks, norms and heads stay the base's
own code for every family, so a fresh wrapper at T = 1 computes exactly what the base
computes: bit-for-bit identical logits.

The cache is a ``LoopCache`` (one KV slot per loop and block layer); the loop index
reaches Depth-LoRA through a per-model ``LoopContext``. ``base_mode()`` switches all of
the recurrence, the Depth-LoRA and any peft LoRA on the base off: the result is the base model
(the eval base row and the KL-anchor target alike).

``n_loops`` may be an ``AdaptiveDepth`` (``exit.py``): each position stops when its criterion
fires, with the fill-forward keys and values in the cache (an uncached call uses a throwaway
one); the ``kl`` criterion reads the loop state through the base's final norm and head. Once
rows of the batch have no running token, a pass is computed for the other rows alone (their
hidden states, masks, rotary tables and cache rows gathered; ``cache.Compacted``), except through
layers that share keys with other layers (gemma4's KV sharing: ``families.batch_separable``).
``config.kv_share = "last"`` keeps one KV slot per block layer for every loop beyond the first
(``cache.SharedPass``), a serving setting that changes no parameter.

Loop counts above ``max_loops`` (the trained maximum) run: the per-loop parameters of
the last trained loop are reused for every deeper loop.

A surgery/training checkpoint holds ``config.json`` plus ``recurrence.safetensors`` (the
new parameters only); ``mythic.loading.load_checkpoint`` loads the base named in the config and
then the recurrence tensors strictly. A full export (``save_pretrained``) holds everything and
loads with ``from_pretrained``.
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
from mythic.recurrence import RULES
from mythic.recurrence.cache import Compacted, FillForward, LoopCache, SharedPass, check_kv_share
from mythic.recurrence.depth_lora import DepthLoRA, LoopContext
from mythic.recurrence.exit import AdaptiveDepth, ExitRun, gathered, running_rows
from mythic.recurrence.loop import LoopCount, max_loops, run_loops
from mythic.recurrence.loop_embedding import LoopEmbedding
from mythic.recurrence.rules import ConcatRule, ParcaeRule, ResidualRule, UpdateRule
from mythic.tensors import copy_strict

RECURRENCE_FILE = "recurrence.safetensors"


@strict
class MythicConfig(PreTrainedConfig):
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

    @property
    def kept_layers(self) -> list[int]:
        """Original indices of the layers kept after surgery."""
        n = self.text_config.get_text_config(decoder=True).num_hidden_layers
        a, b = self.drop or (0, 0)
        return [i for i in range(n) if not a <= i < b]


FINGERPRINT_IGNORES = {"transformers_version", "dtype", "torch_dtype", "use_cache", "architectures"}


def config_fingerprint(config: PreTrainedConfig) -> str:
    """A short hash of the architecture-defining part of a base config (dtype and bookkeeping left out)."""
    diff = config.to_diff_dict()
    kept = {k: v for k, v in diff.items() if not k.startswith("_") and k not in FINGERPRINT_IGNORES}
    kept.pop("quantization_config", None)
    blob = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Run:
    """Settings of one forward call, read by the block slots through the LoopContext."""

    loop: bool
    n_loops: LoopCount | AdaptiveDepth = 1
    grad_loops: int | None = None
    checkpoint: bool = False
    past: int = 0
    readout: Callable[[torch.Tensor], torch.Tensor] | None = None
    kv_share: bool = False
    read: int | torch.Tensor = 0
    calls: list[tuple[nn.Module, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)


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


class Recurrence(nn.Module):
    """Every new parameter: update rule (gate, LayerScale, injection/adapter), Depth-LoRA, loop embedding."""

    def __init__(self, config: MythicConfig, dim: int) -> None:
        super().__init__()
        self.rule: UpdateRule
        if config.rule == "residual":
            self.rule = ResidualRule(
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
            self.rule = ParcaeRule(dim, full_b=config.full_b)
        else:
            self.rule = ConcatRule(dim)
        self.lora = DepthLoRA(config.max_loops, config.lora_rank, config.lora_alpha) if config.lora_rank else None
        self.embedding = LoopEmbedding(dim) if config.loop_embedding else None


class BlockSlot(nn.Module):
    """Stands in for one block layer inside the base's layer list; see the module docstring."""

    def __init__(self, layer: nn.Module, last: bool, context: LoopContext, recurrence: Recurrence) -> None:
        super().__init__()
        self.layer = layer
        self.last = last
        self.context = context
        self._recurrence = [recurrence]  # a plain list: the module is registered on the wrapper, not here

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        run: Run | None = self.context.run
        if run is None or not run.loop:
            return self.layer(hidden_states, *args, **kwargs)
        run.calls.append((self.layer, args, kwargs))
        if not self.last:
            return hidden_states
        calls, run.calls = run.calls, []
        cache = kwargs.get("cache")
        recurrence = self._recurrence[0]

        n_loops, early_exit = run.n_loops, None
        if run.kv_share and isinstance(n_loops, torch.Tensor):
            raise MythicError("kv_share needs one loop count for the whole batch, not per-sequence depths")
        if isinstance(n_loops, AdaptiveDepth):
            if n_loops.criterion == "act":
                raise MythicError("--exit act needs a model with a halting head; a retrofit has none")
            early_exit = ExitRun(
                n_loops, hidden_states, readout=run.readout, fill=lambda t: cache_view(t).fill(), read=run.read
            )
            n_loops = n_loops.max_loops
        total = max_loops(n_loops)

        def cache_view(t: int) -> Any:
            if cache is None:
                return None
            if run.kv_share and t > 0:
                view = SharedPass(cache, lambda j: cache.slot(1, j), store=t == total - 1)
            else:
                view = cache.at_loop(t)
            if early_exit is None:
                return view
            return FillForward(view, t, early_exit.frozen(t), early_exit.written)

        separable = all(batch_separable(layer) for layer, _, _ in calls)

        def layers(x: torch.Tensor, t: int, view: Any, layer_calls: list[Any]) -> torch.Tensor:
            with self.context.at_loop(t):
                for layer, layer_args, layer_kwargs in layer_calls:
                    if view is not None:
                        layer_kwargs = {**layer_kwargs, "cache": view}
                    x = layer(x, *layer_args, **layer_kwargs)
            return x

        def step(x: torch.Tensor, t: int) -> torch.Tensor:
            if cache is not None and t > 0:
                cache.check_loop(min(t, 1) if run.kv_share else t, run.past)
            view = cache_view(t)
            frozen = early_exit.frozen(t) if early_exit is not None else None
            if frozen is None or not separable or not gathered(frozen, positions=False):
                return layers(x, t, view, calls)
            rows = running_rows(frozen)  # the rows that still run: the pass is computed for them alone
            batch, length = frozen.shape
            picked = [batch_rows(call, rows, batch) for call in calls]
            return x.index_copy(0, rows, layers(x[rows], t, Compacted(view, rows, None, batch, length), picked))

        h = run_loops(
            step,
            recurrence.rule,
            hidden_states,
            n_loops,
            embedding=recurrence.embedding,
            grad_loops=run.grad_loops,
            checkpoint=run.checkpoint,
            early_exit=early_exit,
            observer=self.context.observer,
        )
        if early_exit is not None:
            self.context.record_loops(early_exit.steps[:, -1])
        return h


class MythicForCausalLM(PreTrainedModel, GenerationMixin):
    """A pretrained causal LM with a looped middle block; ``n_loops`` is a forward/generate argument."""

    config_class = MythicConfig
    base_model_prefix = "mythic"
    supports_gradient_checkpointing = False
    _keep_in_fp32_modules_strict = ["recurrence"]
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: MythicConfig, base: PreTrainedModel | None = None) -> None:
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
        self.context = LoopContext()
        self.recurrence = Recurrence(config, base.config.get_text_config(decoder=True).hidden_size)
        block = nn.ModuleList(layers[start:end])
        if self.recurrence.lora is not None:
            targets = tuple(config.lora_targets or self.family.lora_targets)
            if not self.recurrence.lora.attach(block, targets, self.context):
                raise MythicError(f"no Depth-LoRA target {targets} found in the block's layers")
        self.recurrence.to(base.get_input_embeddings().weight.device)  # where the base lives
        for j in range(start, end):
            layers[j] = BlockSlot(layers[j], j == end - 1, self.context, self.recurrence)
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
    def from_base(cls, base: PreTrainedModel, **settings: Any) -> MythicForCausalLM:
        """Surgery in memory on a loaded base: ``from_base(base, block_start=4, block_end=8, max_loops=8)``.

        The new parameters stay in float32 whatever the base's dtype (they are few, and trained).
        """
        text_config = copy.deepcopy(base.config)
        settings.setdefault("base_name_or_path", getattr(base.config, "_name_or_path", None) or None)
        config = MythicConfig(text_config=text_config, **settings)
        config.validate_surgery()
        return cls(config, base=base)

    def get_input_embeddings(self) -> nn.Module:
        return self.base.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.base.get_output_embeddings()

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing to do: the recurrence modules initialise themselves when built (identity-preserving
        values such as B = 0 and the [0 | I] adapter), and the base is initialised by its own loading."""

    def new_cache(self) -> LoopCache:
        """An empty KV cache with one slot per (loop, block layer)."""
        return LoopCache(self.base.config, *self.block_range)

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
        with self.context.running(Run(loop=False)):
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
        if adaptive:
            n_loops = n_loops.bounded(self.config.max_loops)
        if not adaptive and ((n_loops < 1).any() if isinstance(n_loops, torch.Tensor) else n_loops < 1):
            raise MythicError(f"n_loops must be >= 1, got {n_loops}")
        if use_cache is None:
            use_cache = not self.training and bool(getattr(self.base.config, "use_cache", True))
        if (use_cache or adaptive) and cache is None:
            cache = self.new_cache()  # an adaptive run's fill-forward keys live in a cache, even uncached
        if checkpoint_loops and cache is not None:
            raise MythicError("checkpoint_loops needs use_cache=False: recomputation would write the KV cache twice")
        if cache is not None and not isinstance(cache, LoopCache):
            raise MythicError("cache must be a LoopCache: create it with model.new_cache()")
        outer = self.context.run
        past = cache.get_seq_length() if cache is not None else 0
        run = outer
        if outer is None or outer.loop:
            check_kv_share(self.config.kv_share)
            run = Run(
                True,
                n_loops,
                grad_loops,
                checkpoint_loops,
                past,
                self.readout,
                self.config.kv_share == "last",
                logits_to_keep,
            )
        with self.context.running(run):
            out = self.base(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                inputs_embeds=inputs_embeds,
                labels=labels,
                use_cache=use_cache or adaptive,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        if adaptive and not use_cache:
            out.past_key_values = None
        return out

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """Next-token logits read straight off a loop state: the base's final norm and head (the logit lens)."""
        return self.base.get_output_embeddings()(final_norm(self.base)(h))

    def _prepare_cache_for_generation(
        self, generation_config: Any, model_kwargs: dict[str, Any], *args: Any, **kwargs: Any
    ) -> None:
        if model_kwargs.get("cache") is None and generation_config.use_cache is not False:
            model_kwargs["cache"] = self.new_cache()
            return
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    def recurrence_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of the new recurrence modules only: the default trainable set."""
        return self.recurrence.named_parameters(prefix="recurrence")

    def recurrence_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.recurrence_parameters()}

    def recurrence_stats(self) -> dict[str, float]:
        """ρ(Ā), gate and LayerScale values per loop: what a run logs to see the recurrence wake up."""
        stats: dict[str, float] = {}
        rule = self.recurrence.rule
        with torch.no_grad():
            if hasattr(rule, "injection"):
                stats["rho_A"] = float(rule.injection.get_A().max())
            if isinstance(rule, ResidualRule):
                for t in range(1, self.config.max_loops):
                    stats[f"gate/{t}"] = float(rule.gate(t).mean())
                    stats[f"layerscale/{t}"] = float(rule.scale(t).mean())
        return stats

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


AutoConfig.register("mythic", MythicConfig)
AutoModelForCausalLM.register(MythicConfig, MythicForCausalLM)
