"""Run the real ``mythic`` entry point in-process and collect its exit code and output."""

from __future__ import annotations

import sys

import pytest

from mythic.cli import main


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``mythic ARGS``; a MythicError is exit code 2 with one line on stderr."""
    monkeypatch.setattr(sys, "argv", ["mythic", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
