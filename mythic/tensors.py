"""Strict tensor loading: every name present, none extra, every shape equal — then copy.

The one loader behind every file of weights mythic reads back (recurrence tensors, a base
LoRA, a training checkpoint's trainable set). It refuses before anything is copied, so a
failed load never leaves a model half-overwritten.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mythic.errors import MythicError


def check_tensors(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], where: object) -> None:
    """One-line error unless ``found`` has exactly the names of ``expected``, each with its shape."""
    if missing := sorted(expected.keys() - found.keys()):
        raise MythicError(f"{where} lacks tensor {missing[0]} ({len(missing)} missing)")
    if extra := sorted(found.keys() - expected.keys()):
        raise MythicError(f"{where} has tensor {extra[0]} that the model does not have ({len(extra)} extra)")
    for name, tensor in expected.items():
        if tuple(found[name].shape) != tuple(tensor.shape):
            raise MythicError(
                f"tensor {name} has shape {tuple(found[name].shape)} in {where}, "
                f"but the model expects {tuple(tensor.shape)}"
            )


def copy_strict(params: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], where: object) -> None:
    """``check_tensors``, then copy every tensor of ``found`` into the parameter of the same name."""
    check_tensors(params, found, where)
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(found[name])
