"""What commands print: progress lines without a terminal, JSON results, the exit codes."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

from typer.testing import CliRunner

from featstore.cli.errors import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    EXIT_VIDEOS_FAILED,
)
from featstore.cli.main import app
from featstore.cli.progress import Every, LineProgress

from test_extract import fresh_store, sample_root  # noqa: F401  # isort: skip

runner = CliRunner()
README = Path(__file__).resolve().parents[1] / "README.md"
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (.+?): (\d+)/(\d+|\?) (\w+)")


# ------------------------------------------------------------------ progress lines


def test_lines_every_n_items_and_at_the_end():
    lines: list[str] = []
    clock = iter(range(100)).__next__
    progress = LineProgress("job", Every(seconds=0, items=3), noun="videos", write=lines.append)
    progress.clock = lambda: float(clock())
    for done in range(1, 8):
        progress.update(done, 7, "0 failed")
    progress.close()
    counts = [int(LINE.match(line).group(2)) for line in lines]
    assert counts == [3, 6, 7]  # every 3 finished, then the last state at the end
    assert all(
        line.split(": ", 1)[1].startswith(f"{n}/7 videos")
        for n, line in zip(counts, lines, strict=True)
    )
    assert "(42.9%), 0 failed" in lines[0] and "videos/s, ETA" in lines[0]


def test_a_heartbeat_line_comes_while_nothing_finishes():
    lines: list[str] = []
    progress = LineProgress("slow", Every(seconds=0.02, items=0), write=lines.append)
    progress.update(1, 10)
    deadline = time.monotonic() + 20  # generous: the machine may be loaded
    while len(lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    progress.close()
    assert len(lines) >= 3, lines  # two heartbeats, then the closing line
    assert all(LINE.match(line).group(2) == "1" for line in lines)
    assert not any(t.name == "progress-lines" for t in threading.enumerate())


def _extract(url: str, *args: str):
    return runner.invoke(
        app, ["extract", "--encoder", "toy-visual", "--on", "sample", "--store", url, *args]
    )


def test_extract_without_a_terminal_logs_progress_lines_during_the_run(tmp_path, sample_root):  # noqa: F811
    url = str(tmp_path / "s.zarr")
    fresh_store(tmp_path / "s.zarr", sample_root)
    run = _extract(url, "--batch-frames", "1", "--progress-every", "1", "--progress-every-s", "0")
    assert run.exit_code == 0, run.output
    lines = run.stderr.splitlines()
    progress = [LINE.match(line) for line in lines if LINE.match(line)]
    assert {m.group(1) for m in progress} == {"extract toy-visual on sample"}
    done = [int(m.group(2)) for m in progress]
    assert done == sorted(done) and len(set(done)) >= 3 and done[-1] == 6, lines
    assert {m.group(3) for m in progress} == {"6"}
    # the lines came while it ran: all of them before the summary
    mixed = run.output.splitlines()
    summary = next(i for i, x in enumerate(mixed) if "videos extracted" in x)
    assert max(i for i, x in enumerate(mixed) if LINE.match(x)) < summary


def test_extract_json_is_one_document_on_stdout(tmp_path, sample_root):  # noqa: F811
    url = str(tmp_path / "s.zarr")
    fresh_store(tmp_path / "s.zarr", sample_root)
    plan = json.loads(_extract(url, "--dry-run", "--json").stdout)
    assert plan["dry_run"] is True and plan["videos_to_run"] == 6
    assert [e["layer"] for e in plan["layers"]] == ["last"]
    run = _extract(url, "--json", "--limit", "4", "--progress-every", "1")
    assert run.exit_code == 0, run.output
    doc = json.loads(run.stdout)
    assert LINE.match(run.stderr.splitlines()[0])  # progress stays on stderr
    assert doc["videos_done"] == 4 and doc["videos_failed"] == 0 and doc["failure_groups"] == []
    assert (doc["dataset"], doc["encoder"], doc["source_encoder"]) == (
        "sample",
        "toy-visual",
        "toy-visual",
    )
    assert doc["rows"] > 0 and doc["bytes_written"] > 0


# ------------------------------------------------------------------ exit codes


def _readme_exit_codes() -> set[int]:
    section = README.read_text().split("## Command line", 1)[1].split("**Options**", 1)[0]
    return {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.M)}


def test_the_readme_table_has_exactly_the_codes_the_cli_uses():
    used = {EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_VIDEOS_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED}
    assert _readme_exit_codes() == used == {0, 1, 2, 3, 130, 143}


def test_exit_0_1_2(tmp_path, monkeypatch):
    monkeypatch.delenv("FEATSTORE_STORE", raising=False)
    assert runner.invoke(app, ["encoders", "list", "--json"]).exit_code == EXIT_OK
    error = runner.invoke(app, ["datasets", "show", "nope", "--store", str(tmp_path / "none")])
    assert error.exit_code == EXIT_ERROR, error.output
    assert error.output.startswith("error: ") and len(error.output.strip().splitlines()) == 1
    usage = runner.invoke(app, ["datasets", "show", "nope", "--bogus"])
    assert usage.exit_code == EXIT_USAGE
    assert usage.output.startswith("error: ") and len(usage.output.strip().splitlines()) == 1
    # 3 (extract --fail-on-error): tests/test_extract.py::test_cli_reports_failures


def test_exit_130_when_interrupted(tmp_path, sample_root, monkeypatch):  # noqa: F811
    import featstore.extract

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    url = str(tmp_path / "s.zarr")
    fresh_store(tmp_path / "s.zarr", sample_root)
    monkeypatch.setattr(featstore.extract, "extract", interrupted)
    result = _extract(url)
    assert result.exit_code == EXIT_INTERRUPTED == 130, result.output
    assert result.output.strip() == (
        "interrupted: finished videos are committed; run the same command to resume"
    )
