"""The distribution installs one top-level package, ``featstore``: the repository's api/, cli/
and trainers/ go in as ``featstore.api``, ``featstore.cli`` and ``featstore.trainers``, so they
can neither shadow nor be shadowed by a user's own top-level ``api`` or ``cli`` (issue 20.9)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {
    "featstore": "featstore",
    "api": "featstore.api",
    "cli": "featstore.cli",
    "trainers": "featstore.trainers",
}


def _tree_packages() -> set[str]:
    found = set()
    for top, name in MAPPED.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found.add(".".join([name, *rel.parts]))
    return found


def test_pyproject_lists_every_package_of_the_tree() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = config["tool"]["setuptools"]
    assert set(tool["packages"]) == _tree_packages(), "update [tool.setuptools] packages"
    assert tool["package-dir"] == {v: k for k, v in MAPPED.items() if k != "featstore"}
    assert config["project"]["scripts"]["featstore"] == "featstore.cli.main:app"
    assert isinstance(config["project"]["license"], str)  # SPDX string, not the deprecated table


def test_wheel_installs_only_featstore(tmp_path: Path) -> None:
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-v",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "SetuptoolsDeprecationWarning" not in build.stdout + build.stderr
    (wheel,) = tmp_path.glob("featstore-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"featstore", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    for module in (
        "featstore/api/app.py",
        "featstore/cli/main.py",
        "featstore/trainers/kinds/probe.py",
    ):
        assert module in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "featstore = featstore.cli.main:app" in zipfile.ZipFile(wheel).read(entry_points).decode()
    )
