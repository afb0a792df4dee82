"""Conventions every ``featstore`` command follows, checked by walking the command tree.

README "Command line" documents them: one meaning per short option letter, one
style of defaults in help, flags shown as flags, ``--json`` on every command that
prints results, one ``error:`` line and the documented exit code for usage errors.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import typer
from typer.testing import CliRunner

from featstore.cli.errors import EXIT_USAGE
from featstore.cli.main import OWN_LOGGERS, app

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
    for name in (
        "featstore",
        "featstore.extract.worker",
        "featstore.trainers.probe",
        "featstore.cli.main",
    ):
        assert logging.getLogger(name).getEffectiveLevel() == own, name
    for name in ("urllib3", "fsspec", "some.library"):
        assert logging.getLogger(name).getEffectiveLevel() == others, name


# ------------------------------------------------------------------ short options


def _short_letters():
    """letter -> {long name: [commands]} over every visible option of every command."""
    letters: dict[str, dict[str, list[str]]] = {}
    for path, command in [("", ROOT), *COMMANDS.items()]:
        for param in _options(command):
            names = [*param.opts, *param.secondary_opts]
            long = next((n for n in names if n.startswith("--")), None)
            for name in names:
                if not name.startswith("--"):
                    letters.setdefault(name, {}).setdefault(long, []).append(path or "featstore")
    return letters


def test_no_short_option_letter_means_two_things():
    clashes = {k: v for k, v in _short_letters().items() if len(v) > 1}
    assert not clashes, clashes


def test_the_readme_table_lists_every_short_option():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = dict(re.findall(r"^ *\| `(-[a-zA-Z])` \| `(--[a-z-]+)` \|", readme, re.M))
    assert table == {k: next(iter(v)) for k, v in _short_letters().items()}


@pytest.fixture
def store_url(tmp_path, monkeypatch):
    import pandas as pd

    from featstore.store import open_store

    monkeypatch.delenv("FEATSTORE_STORE", raising=False)
    url = str(tmp_path / "s.zarr")
    frame = pd.DataFrame(
        {
            "video_id": ["a", "b", "c"],
            "path": ["a.mp4", "b.mp4", "c.mp4"],
            "label": [0, 1, 0],
            "split": ["train", "test", "test"],
        }
    )
    open_store(url, mode="a", durable=False).write_manifest("ds", frame)
    return url


def test_deprecated_short_option_warns_and_works(store_url):
    old = runner.invoke(app, ["datasets", "show", "ds", "-s", store_url, "-l", "1"])
    new = runner.invoke(app, ["datasets", "show", "ds", "-s", store_url, "-n", "1"])
    assert old.exit_code == new.exit_code == 0, old.output
    warning = "warning: -l is deprecated here and will be removed: use --limit"
    assert old.output.startswith(warning + "\n")
    assert old.output[len(warning) + 1 :] == new.output
    assert "warning" not in new.output


def test_deprecated_dataset_option_of_extract_warns_and_selects_the_same(store_url):
    base = ["extract", "--encoder", "logfbank", "-s", store_url, "--dry-run"]
    new = runner.invoke(app, [*base, "--on", "ds:test"])
    old = runner.invoke(app, [*base, "--dataset", "ds", "--split", "test"])
    assert new.exit_code == old.exit_code == 0, old.output
    assert "2 videos to extract" in new.output
    warnings = [line for line in old.output.splitlines() if "deprecated" in line]
    assert warnings == [
        "warning: --dataset is deprecated here and will be removed: use --on",
        "warning: --split is deprecated and will be removed: use --on ds:test",
    ]
    assert [line for line in old.output.splitlines() if "deprecated" not in line] == (
        new.output.splitlines()
    )
    both = runner.invoke(app, [*base, "--on", "ds:test", "--split", "train"])
    assert both.exit_code == 2 and both.output.startswith("error: ")


@pytest.mark.parametrize(
    ("args", "expected", "warned"),
    [
        (["-n", "x", "--store", "-n"], ["--name", "x", "--store", "-n"], ["-n"]),  # a value stays
        (["-nx", "-n", "y"], ["--name=x", "--name", "y"], ["-n"]),  # one warning per spelling
        (["--", "-n"], ["--", "-n"], []),
        (["--dataset=x", "-d", "y"], ["--on=x", "--on", "y"], ["--dataset", "-d"]),
    ],
)
def test_rewrite_aliases_leaves_values_alone(args, expected, warned):
    from featstore.cli.group import rewrite_aliases

    command = COMMANDS["datasets import"]
    aliases = {"-n": "--name", "--dataset": "--on", "-d": "--on"}
    messages: list[str] = []
    assert rewrite_aliases(command, args, aliases, warn=messages.append) == expected
    assert [m.split()[0] for m in messages] == warned


def test_a_layer_named_twice_is_a_usage_error_naming_both(store_url, tmp_path):
    args = ["train", "probe", "-s", store_url, "--train", "ds", "--out", str(tmp_path / "r")]
    result = runner.invoke(app, [*args, "--encoder", "logfbank:last", "--layer", "0"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        "error: --encoder logfbank:last names its layer and --layer 0 gives another: give the "
        "layer in one place (logfbank:0, or logfbank with --layer)"
    ]


# ------------------------------------------------------------------ defaults in help

DEFAULT_IN_PROSE = re.compile(r"\(default\b|\bdefault:|;\s*default\b|\bdefault \d", re.I)


@pytest.mark.parametrize("path", ["", *sorted(COMMANDS)])
def test_help_gives_every_default_one_way(path):
    command = COMMANDS.get(path, ROOT)
    for param in command.params:
        if param.hidden:
            continue
        assert not DEFAULT_IN_PROSE.search(param.help or ""), (path, param.name, param.help)
    result = runner.invoke(app, [*path.split(), "--help"], env={"COLUMNS": "100"})
    text = " ".join(result.output.split())
    # every default is "[default: VALUE]", or "[default: (what)]" when filled in at run time
    prose = re.sub(r"\[(?:env var: [^;\]]*; )?default: [^\]]*\]", "", text)
    assert "default:" not in prose, text


def test_defaults_filled_in_at_run_time_are_in_parentheses():
    result = runner.invoke(app, ["train", "probe", "--help"], env={"COLUMNS": "300"})
    text = " ".join(result.output.split())
    assert "Maximum epochs. [default: (100)]" in text
    assert "[default: (the train dataset's val split)]" in text
    listing = runner.invoke(app, ["store", "ls", "--help"], env={"COLUMNS": "300"})
    assert "[default: 50]" in " ".join(listing.output.split())


# ------------------------------------------------------------------ --json

# commands with no result to print as one document: serve runs a server
NO_RESULT_DOCUMENT = {"serve"}


def test_every_command_that_prints_results_takes_json():
    missing = [
        path
        for path, command in COMMANDS.items()
        if path not in NO_RESULT_DOCUMENT and not any("--json" in p.opts for p in _options(command))
    ]
    assert not missing, missing


def test_the_readme_documents_every_json_shape():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### JSON output", 1)[1].split("\n### ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z0-9 -]+)` \|", section, re.M))
    assert documented == set(COMMANDS) - NO_RESULT_DOCUMENT


def _json(args):
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def features_url(store_url):
    from featstore.store import open_store

    from trainer_fixtures import write_planted_dataset  # isort: skip

    write_planted_dataset(
        open_store(store_url, mode="a", durable=False), "planted", n_videos=6, dim=8, encoder="enc"
    )
    return store_url


def test_store_and_datasets_commands_print_json(features_url):
    url = features_url
    assert {d["name"] for d in _json(["store", "ls", url])["datasets"]} == {"ds", "planted"}
    encoders = _json(["store", "ls", url, "planted"])["encoders"]
    assert [e["name"] for e in encoders] == ["enc"] and encoders[0]["layers"] == ["last"]
    videos = _json(["store", "ls", url, "planted", "enc", "-n", "2"])
    assert videos["total"] == 6 and len(videos["videos"]) == 2
    assert set(videos["videos"][0]) == {"video_id", "n_frames", "part"}
    verify = _json(["store", "verify", url])
    assert verify["ok"] is True and verify["problems"] == [] and verify["rows"] > 0
    gc = _json(["store", "gc", url, "--dry-run"])
    assert gc["dry_run"] is True and gc["removed_uncommitted"] == []
    compact = _json(["store", "compact", url, "planted", "enc"])
    assert compact["dataset"] == "planted" and "merged" in compact
    listed = {d["name"]: d for d in _json(["datasets", "list", "-s", url])}
    assert listed["ds"]["videos"] == 3 and listed["ds"]["fake"] == 1
    assert listed["ds"]["splits"] == {"test": 2, "train": 1}
    shown = _json(["datasets", "show", "ds", "-s", url, "-n", "2"])
    assert shown["videos"] == 3 and [r["video_id"] for r in shown["rows"]] == ["a", "b"]
    assert sum(c["videos"] for c in shown["counts"]) == 3
    made = _json(["datasets", "protocol", "ds", "-s", url, "-p", "all-test", "--as", "t"])
    assert made["view"] == "t" and made["protocol"] == "all-test"
    assert _json(["datasets", "default-view", "ds", "t", "-s", url]) == {
        "dataset": "ds",
        "default_view": "t",
    }
    assert _json(["datasets", "drop-view", "ds", "t", "-s", url])["removed_view"] == "t"
