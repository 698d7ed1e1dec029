"""OpenMythos, the from-scratch Recurrent-Depth Transformer (prelude → looped MoE block → coda).

    from mythic.models.openmythos import OpenMythos, MythosConfig

Submodules: ``config``, ``attention`` (GQA/MLA), ``moe`` (routed + shared experts), ``model`` (the network
and generation), ``variants`` (mythos_1b … mythos_1t and parameter counts), ``hf`` (the transformers-native
wrapper ``OpenMythosForCausalLM`` / ``OpenMythosConfig``; importing it registers the ``openmythos`` model
type). The wrapper loads on first use: the bare network imports torch only, which saves seconds and
~150 MB of resident memory where transformers is not needed.
"""

from typing import Any

from mythic.models.openmythos.config import MythosConfig
from mythic.models.openmythos.model import MythosOutput, OpenMythos
from mythic.models.openmythos.variants import (
    count_parameters,
    mythos_1b,
    mythos_1t,
    mythos_3b,
    mythos_10b,
    mythos_50b,
    mythos_100b,
    mythos_500b,
)

__all__ = [
    "MythosConfig",
    "OpenMythosForCausalLM",
    "OpenMythosConfig",
    "MythosOutput",
    "OpenMythos",
    "count_parameters",
    "mythos_100b",
    "mythos_10b",
    "mythos_1b",
    "mythos_1t",
    "mythos_3b",
    "mythos_500b",
    "mythos_50b",
]


def __getattr__(name: str) -> Any:
    if name in ("OpenMythosForCausalLM", "OpenMythosConfig"):
        from mythic.models.openmythos import hf

        return getattr(hf, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
