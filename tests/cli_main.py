"""Runs `fertrain ...` in-process through `fertrain.cli.main`, as the console script does."""

from __future__ import annotations

import sys

import pytest

from fertrain.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """(exit code, stdout, stderr) of `fertrain *args`."""
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["fertrain", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
