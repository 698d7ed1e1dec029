"""Parsers for the option formats several subcommands share (loop lists, layer ranges)."""

from __future__ import annotations

from transformers import PreTrainedModel

from mythic.errors import MythicError
from mythic.models.protocol import LoopedModel
from mythic.recurrence.exit import DEFAULT_EXIT, TOLD, AdaptiveDepth, parse_depth, parse_exit


def parse_ints(text: str, option: str, minimum: int = 1) -> list[int]:
    """'1,2,4,8' → [1, 2, 4, 8]; every value an integer ≥ ``minimum``, else a one-line error naming ``option``."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < minimum:
        kind = "positive integers" if minimum == 1 else f"integers ≥ {minimum}"
        raise MythicError(f"{option} takes a comma-separated list of {kind}, got {text!r}")
    return values


def parse_loops(text: str, exit_rule: str = DEFAULT_EXIT, told: bool = False) -> list[int | AdaptiveDepth | str]:
    """'1,2,4,auto:16' → [1, 2, 4, AdaptiveDepth(16, …)] for --loops; ``exit_rule`` is --exit; ``told``: the
    entry ``d`` (each example's difficulty as its loop count) is allowed (task files)."""
    depths = [parse_depth(part, exit_rule) for part in text.split(",") if part.strip()]
    if not depths:
        raise MythicError(f"--loops takes positive integers or auto[:MAX], got {text!r}")
    if TOLD in depths and not told:
        raise MythicError("--loops d (each example's difficulty as its loop count) is for task files")
    parse_exit(exit_rule)
    return depths


LOOPS_AUTO_HELP = (
    "auto or auto:MAX adds an adaptive row (each generated token loops until --exit fires, at most MAX loops; "
    "MAX defaults to the model's trained maximum)."
)
EXIT_HELP = (
    "When an auto row's token stops looping: convergence:EPS (relative state change ‖h_t+1 − h_t‖/‖h_t‖ < EPS), "
    "kl:EPS (KL between successive loops' next-token distributions < EPS; costs one head pass per loop), act "
    "(the halting head; OpenMythos with act: true) or depth (after the count the depth head reads off the first "
    "pass; a model trained with depth_head: true). It decides at the token being generated; the prompt's "
    "earlier tokens loop as long as its last one does (with the token rule they keep their first pass)."
)


KV_SHARE_HELP = (
    "Keys and values of loops beyond the first: 'none' (each loop its own slots) or 'last' (one shared slot "
    "per block layer holding each token's last loop, as Ouro; cache memory stops growing with the loop count)."
)


def parse_kv_share(value: str) -> str | None:
    """--kv-share none | last → None | "last"; a one-line error otherwise."""
    if value not in ("none", "last"):
        raise MythicError(f"--kv-share takes none or last, got {value!r}")
    return None if value == "none" else value


def apply_kv_share(model: PreTrainedModel, value: str | None) -> None:
    """Set a looped model's ``config.kv_share`` (a parsed --kv-share); a plain base cannot share loops."""
    if value is None:
        return
    if not isinstance(model, LoopedModel):
        raise MythicError("--kv-share needs a looped model (a mythic checkpoint or an OpenMythos model)")
    model.config.kv_share = value


COMPILE_HELP = (
    "torch.compile the model's forward (inductor, dynamic shapes: one graph for every cache length). The first "
    "calls compile, which takes minutes on a CPU; it pays off on long runs."
)


def apply_compile(model: PreTrainedModel, compile_model: bool) -> None:
    """``--compile``: compile the model's forward in place (its parameters and state dict keep their names)."""
    if compile_model:
        model.compile(dynamic=True)


def parse_counts(text: str) -> list[int]:
    """'1,2,4,8' → [1, 2, 4, 8] for a --loops that takes fixed loop counts only."""
    return parse_ints(text, "--loops")


def require_positive(**options: int) -> None:
    """One-line error for the first option (given as --name=value) that is below 1."""
    for name, value in options.items():
        if value < 1:
            raise MythicError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def parse_range(text: str, option: str) -> tuple[int, int]:
    """'4:23' → (4, 23), a half-open layer range."""
    parts = text.split(":")
    try:
        start, end = (int(p) for p in parts)
    except ValueError:
        raise MythicError(f"{option} takes START:END (a half-open layer range), got {text!r}") from None
    return start, end
