"""Parsers for the option formats several subcommands share (loop lists, layer ranges)."""

from __future__ import annotations

from mythic.errors import MythicError


def parse_loops(text: str) -> list[int]:
    """'1,2,4,8' → [1, 2, 4, 8]; every value a positive integer."""
    try:
        loops = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MythicError(f"--loops takes a comma-separated list of positive integers, got {text!r}") from None
    if not loops or min(loops) < 1:
        raise MythicError(f"--loops takes a comma-separated list of positive integers, got {text!r}")
    return loops


def parse_range(text: str, option: str) -> tuple[int, int]:
    """'4:23' → (4, 23), a half-open layer range."""
    parts = text.split(":")
    try:
        start, end = (int(p) for p in parts)
    except ValueError:
        raise MythicError(f"{option} takes START:END (a half-open layer range), got {text!r}") from None
    return start, end
