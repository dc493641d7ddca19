"""`fertrain --help`: commands in the order a user meets them, flags shown without a value placeholder."""

from __future__ import annotations

import re

import pytest
from cli_main import run_cli

COMMANDS = [
    "prepare",
    "train",
    "tune",
    "evaluate",
    "calibrate",
    "report",
    "predict",
    "export",
    "summary",
    "benchmark",
]


def test_commands_are_listed_in_the_order_a_user_meets_them(capsys, monkeypatch):
    code, out, _ = run_cli(["--help"], capsys, monkeypatch)
    assert code == 0
    commands = out[out.index("Commands") :]
    assert re.findall(r"^│ (\w+) ", commands, flags=re.MULTILINE) == COMMANDS


@pytest.mark.parametrize("command", [[], *([name] for name in COMMANDS)], ids=["fertrain", *COMMANDS])
def test_flags_show_no_value_placeholder(command, capsys, monkeypatch):
    code, out, _ = run_cli([*command, "--help"], capsys, monkeypatch)
    assert code == 0
    assert re.search(r"--help\s+Show this message", out)
    assert "<bool>" not in out
