"""Every command line says what each of its arguments is, its version and its exit codes."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import fleet
from agents.main import parse_args  # noqa: F401 (the agent's parser is built inside it)
from fleet.coordinator.cli import _parser

ROOT = Path(__file__).resolve().parent.parent


def _undocumented(parser: argparse.ArgumentParser, path: str = "fleet") -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _undocumented(sub, f"{path} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            if not action.help:
                out.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return out


def test_every_argument_of_fleet_has_help_text():
    assert _undocumented(_parser()) == []


def test_the_version_is_the_packages():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert fleet.__version__ == meta["project"]["version"]


def test_exit_codes_are_in_the_help():
    text = _parser().format_help()
    for code in ("0 ", "1 ", "2 ", "3 ", "130", "143"):
        assert f"  {code}" in text
