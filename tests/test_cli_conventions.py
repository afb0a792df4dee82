"""Conventions every ``featstore`` command follows, checked by walking the command tree.

README "Command line" documents them: one meaning per short option letter, one
style of defaults in help, flags shown as flags, ``--json`` on every command that
prints results, one ``error:`` line and the documented exit code for usage errors.
"""

from __future__ import annotations

import logging
import re

import pytest
import typer
from typer.testing import CliRunner

from cli.errors import EXIT_USAGE
from cli.main import OWN_LOGGERS, app

runner = CliRunner()


def _walk(command, path):
    subcommands = getattr(command, "commands", None)
    if subcommands:
        for name, sub in subcommands.items():
            yield from _walk(sub, [*path, name])
    else:
        yield path, command


ROOT = typer.main.get_command(app)
COMMANDS = dict((" ".join(path), cmd) for path, cmd in _walk(ROOT, []))
GROUPS = [[], *([name] for name, c in ROOT.commands.items() if getattr(c, "commands", None))]


def _options(command):
    return [p for p in command.params if p.param_type_name == "option" and not p.hidden]


def test_the_walk_finds_every_command():
    assert {"extract", "train probe", "store ls", "datasets import", "explain temporal"} <= set(
        COMMANDS
    )
    assert len(COMMANDS) > 35


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_unknown_option_is_one_error_line_and_exit_2(path):
    result = runner.invoke(app, [*path.split(), "--no-such-option"])
    assert result.exit_code == EXIT_USAGE == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: no such option: --no-such-option"), lines[0]
    assert f"featstore {path} --help" in lines[0]
    assert "╭" not in result.output and "Usage:" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-command"], "error: no such command 'no-such-command'"),
        (["store", "ls", "--limit", "many"], "error: invalid value for '--limit'"),
        (["datasets", "show"], "error: missing argument"),
        (["extract", "--encoder", "nope"], "error: invalid value for '--encoder'"),
    ],
)
def test_other_usage_errors_are_one_line_and_exit_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.output


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: " ".join(g) or "featstore")
def test_a_group_without_a_command_prints_its_help_and_exits_2(group):
    result = runner.invoke(app, group)
    assert result.exit_code == 2
    assert result.output.startswith("Usage: ") and "Commands:" in result.output


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_help_shows_flags_as_flags(path):
    result = runner.invoke(app, [*path.split(), "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    assert "╭" not in result.output  # plain text: no markup eats "[@VIEW]"
    for param in _options(COMMANDS[path]):
        if getattr(param, "is_flag", False):
            # "--json", never "--json <bool>" nor "--json BOOLEAN"
            assert not re.search(rf"{re.escape(param.opts[-1])} [<A-Z]", result.output), param.opts


def test_help_keeps_brackets_in_option_help():
    result = runner.invoke(app, ["train", "probe", "--help"], env={"COLUMNS": "200"})
    assert "NAME[@VIEW][:SPLIT]" in result.output


# ------------------------------------------------------------------ -v / -vv


@pytest.fixture
def restore_logging():
    levels = {n: logging.getLogger(n).level for n in ("", *OWN_LOGGERS, "urllib3")}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize(
    ("flags", "own", "others"),
    [
        ([], logging.WARNING, logging.WARNING),
        (["-v"], logging.DEBUG, logging.WARNING),
        (["-vv"], logging.DEBUG, logging.DEBUG),
        (["-v", "-v"], logging.DEBUG, logging.DEBUG),
    ],
)
def test_verbosity_opens_featstore_first_then_every_library(restore_logging, flags, own, others):
    result = runner.invoke(app, [*flags, "encoders", "list", "--json"])
    assert result.exit_code == 0, result.output
    for name in ("featstore", "featstore.extract.worker", "trainers.probe", "cli"):
        assert logging.getLogger(name).getEffectiveLevel() == own, name
    for name in ("urllib3", "fsspec", "torch"):
        assert logging.getLogger(name).getEffectiveLevel() == others, name
