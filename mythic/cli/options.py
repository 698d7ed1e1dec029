"""Parsers for the option formats several subcommands share (loop lists, layer ranges)."""

from __future__ import annotations

from mythic.errors import MythicError


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


def parse_loops(text: str) -> list[int]:
    """'1,2,4,8' → [1, 2, 4, 8] for --loops."""
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
