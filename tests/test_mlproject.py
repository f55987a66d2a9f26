"""MLproject and the CLI declare the same parameters with the same defaults, so the two cannot drift.

Each entry point runs ``entry_points/<step>.py``, which is ``wtag <step>``; its parameters are the CLI options of
that subcommand, and each MLproject default, parsed as the CLI parses it, is the CLI's default.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml

from wtag.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
MLPROJECT = yaml.safe_load((REPO / "MLproject").read_text())
ENTRY_POINTS = sorted(MLPROJECT["entry_points"])


def _subcommand(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Options that take a value (on/off switches such as ``--select`` have no MLproject form)."""
    return {a.option_strings[0]: a for a in parser._actions if a.option_strings and a.nargs != 0}


def _parsed(action: argparse.Action, value: object) -> object:
    return action.type(str(value)) if action.type is not None and isinstance(value, str | int | float) else value


def test_every_entry_point_runs_its_own_subcommand():
    for name in ENTRY_POINTS:
        command = MLPROJECT["entry_points"][name]["command"]
        assert f"python entry_points/{name}.py" in command
        assert f'main(["{name}", *sys.argv[1:]])' in (REPO / "entry_points" / f"{name}.py").read_text()


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_parameters_match_the_cli(name):
    spec = MLPROJECT["entry_points"][name]
    flags = dict(re.findall(r"(--[a-z0-9-]+) \{([a-z0-9_]+)\}", spec["command"]))
    positional = set(re.findall(r"\{([a-z0-9_]+)\}", spec["command"])) - set(flags.values())
    assert set(flags.values()) | positional == set(spec["parameters"]), "every parameter is passed"
    for param in positional:  # required in MLproject as on the command line
        assert "default" not in spec["parameters"][param], f"{name}: positional {param} has a default"
        assert any(a.dest.rstrip("s") == param.rstrip("s") and not a.option_strings
                   for a in _subcommand(name)._actions), f"{name}: no positional argument for {param}"
    options = _options(_subcommand(name))
    assert set(flags) == set(options), f"MLproject {name} and `wtag {name}` expose different options"
    for flag, param in flags.items():
        assert flag == "--" + param.replace("_", "-"), f"{param} is passed as {flag}"
        action = options[flag]
        declared = spec["parameters"][param]["default"]
        assert _parsed(action, declared) == _parsed(action, action.default), (
            f"{name}: default of {param} is {declared!r} in MLproject, {action.default!r} in the CLI")
        if action.choices is not None:
            assert _parsed(action, declared) in action.choices
