"""OpenMythos, the from-scratch Recurrent-Depth Transformer (prelude → looped MoE block → coda).

    from mythic.models.openmythos import OpenMythos, MythosConfig

Submodules: ``config``, ``attention`` (GQA/MLA), ``moe`` (routed + shared experts), ``model`` (the network
and generation), ``variants`` (the reference's sizes 1b … 1t and parameter counts), ``hf`` (the transformers-native
wrapper ``OpenMythosForCausalLM`` / ``OpenMythosConfig``; importing it registers the ``openmythos`` model
type). The wrapper loads on first use: the bare network imports torch only, which saves seconds and
~150 MB of resident memory where transformers is not needed.
"""

from typing import Any

from mythic.models.openmythos.config import MythosConfig
from mythic.models.openmythos.model import MythosOutput, OpenMythos
from mythic.models.openmythos.variants import VARIANTS, count_parameters, variant

__all__ = [
    "MythosConfig",
    "OpenMythosForCausalLM",
    "OpenMythosConfig",
    "MythosOutput",
    "OpenMythos",
    "VARIANTS",
    "count_parameters",
    "variant",
]


def __getattr__(name: str) -> Any:
    if name in ("OpenMythosForCausalLM", "OpenMythosConfig"):
        from mythic.models.openmythos import hf

        return getattr(hf, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
