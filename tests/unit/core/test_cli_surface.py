"""The `splitft` command line keeps its surface: every command, option, default, choice and help
text as recorded in tests/unit/core/cli_surface.json, and every command runs a handler that exists.

The record was taken from the single-module CLI before it became a package. When a command or
option changes on purpose, regenerate it:
`python tests/unit/core/test_cli_surface.py > tests/unit/core/cli_surface.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from splitft.cli import build_parser, load_handler

RECORD = Path(__file__).with_name("cli_surface.json")


def _parsers(parser: argparse.ArgumentParser, path: str = "splitft") -> dict[str, argparse.ArgumentParser]:
    found = {path: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_parsers(sub, f"{path} {name}"))
    return found


def _action(action: argparse.Action) -> dict[str, Any]:
    subcommands = isinstance(action, argparse._SubParsersAction)
    return {
        "options": action.option_strings or [action.dest],
        "kind": type(action).__name__,
        "default": action.default,
        "required": action.required,
        "choices": list(action.choices) if action.choices is not None else None,
        "nargs": action.nargs,
        "metavar": action.metavar,
        # the subcommands' help is recorded with each subcommand's parser, through its description
        "help": None if subcommands else action.help,
        "subcommand_help": [a.help for a in action._choices_actions] if subcommands else None,
    }


def surface() -> dict[str, Any]:
    """Every parser of the CLI by its command path, with its options (not the handlers)."""
    return {
        path: {
            "description": parser.description,
            "actions": [_action(a) for a in parser._actions],
            "defaults": {k: v for k, v in parser._defaults.items() if k not in ("handler", "func")},
        }
        for path, parser in _parsers(build_parser()).items()
    }


def test_the_commands_and_options_are_the_recorded_ones(monkeypatch) -> None:
    for name in ("SPLITFT_EDGE_SECRET", "SPLITFT_EDGE_CREDENTIAL_FILE"):  # defaults of edge serve flags
        monkeypatch.delenv(name, raising=False)
    recorded = json.loads(RECORD.read_text())
    current = json.loads(json.dumps(surface()))  # tuples as lists, like the record
    assert sorted(current) == sorted(recorded)
    for path in recorded:
        assert current[path] == recorded[path], path


def test_every_command_runs_a_handler_that_exists() -> None:
    leaves = [
        parser
        for parser in _parsers(build_parser()).values()
        if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    ]
    assert len(leaves) == 46  # every leaf command, each checked to load its handler below
    for parser in leaves:
        handler = load_handler(parser.get_default("handler"))
        assert callable(handler), parser.prog


def dumps(record: dict[str, Any]) -> str:
    """The record as JSON with one line per option, so a change shows as a one-line diff."""
    entries = []
    for path, entry in record.items():
        actions = ",\n".join(f"   {json.dumps(a)}" for a in entry["actions"])
        head = f' {json.dumps(path)}: {{"description": {json.dumps(entry["description"])}'
        entries.append(f'{head}, "defaults": {json.dumps(entry["defaults"])}, "actions": [\n{actions}\n ]}}')
    return "{\n" + ",\n".join(entries) + "\n}\n"


if __name__ == "__main__":
    sys.stdout.write(dumps(surface()))
