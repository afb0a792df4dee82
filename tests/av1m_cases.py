"""Seeded AV-Deepfake1M localization cases for parity with the official evaluator.

The official evaluator is PyPI ``avdeepfake1m`` (a Rust extension, CC BY-NC 4.0).
It cannot be a dependency here (it pins ``numpy<2`` and pulls torchvision and
torchaudio), so its numbers on these cases are kept as test data,
``tests/data/av1m_official_reference.json``, written by::

    python3.11 -m venv /tmp/av1m-venv
    /tmp/av1m-venv/bin/pip install --no-deps avdeepfake1m==0.0.4
    PYTHONPATH=$PWD:/tmp/av1m-venv/lib/python3.11/site-packages \\
        .venv/bin/python tests/av1m_cases.py

Only the compiled ``avdeepfake1m._evaluation`` module is loaded (straight from
its file, without running the package's ``__init__``, which imports torch), so
the extension runs in this project's environment. ``tests/test_segments.py``
compares with the stored numbers always, and with the live tool on fresh cases
when it can be found on ``sys.path``.

The cases hold what makes the tool differ from textbook definitions:
confidences that tie in float32 but not in float64, proposals out of
confidence order within a video, videos with no proposals (the tool panics on
an empty list, so the file gets ``featstore.trainers.segments.write_proposals``'
placeholder), IoUs on the thresholds, real videos with proposals.
"""

from __future__ import annotations

import glob
import importlib.machinery
import importlib.util
import json
import random
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

REFERENCE = Path(__file__).parent / "data" / "av1m_official_reference.json"
AR_N = (50, 30, 20, 10, 5, 2, 1)
SEEDS = (0, 1, 2, 3)


def official_tool() -> ModuleType | None:
    """The official evaluator's compiled module, or None when it is not installed."""
    spec = importlib.util.find_spec("avdeepfake1m")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    found = glob.glob(str(Path(spec.submodule_search_locations[0]) / "_evaluation*.so"))
    if not found:
        return None
    name = "avdeepfake1m._evaluation"
    loader = importlib.machinery.ExtensionFileLoader(name, found[0])
    module = importlib.util.module_from_spec(
        importlib.util.spec_from_file_location(name, found[0], loader=loader)
    )
    loader.exec_module(module)
    return module


def make_case(seed: int, n_videos: int = 60) -> dict[str, Any]:
    """``{"metadata": [{file, fake_segments}], "proposals": {file: [[c, s, e]]}}``."""
    rng = random.Random(seed)
    metadata: list[dict[str, Any]] = []
    proposals: dict[str, list[list[float]]] = {}
    tie_base = [round(rng.random(), 3) for _ in range(4)]
    for v in range(n_videos):
        file = f"test/id{seed:02d}/{v:05d}.mp4"
        duration = rng.uniform(3.0, 20.0)
        truth = []
        for _ in range(0 if rng.random() < 0.3 else rng.randint(1, 3)):
            start = round(rng.uniform(0.0, duration - 1.0), 2)
            truth.append([start, round(start + rng.uniform(0.1, 1.5), 2)])
        metadata.append({"file": file, "fake_segments": truth})
        rows: list[list[float]] = []
        for _ in range(0 if rng.random() < 0.12 else rng.randint(1, 12)):
            r = rng.random()
            if truth and r < 0.45:  # a jittered copy of a truth segment
                s, e = rng.choice(truth)
                s, e = s + rng.gauss(0, 0.15), e + rng.gauss(0, 0.15)
            elif truth and r < 0.6:  # an IoU on a threshold: [s, s + t (e - s)] in [s, e]
                s, e = rng.choice(truth)
                t = rng.choice([0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
                e = s + t * (e - s)
            else:
                s = rng.uniform(0.0, duration - 0.2)
                e = s + rng.uniform(0.04, 2.0)
            s, e = max(0.0, min(s, e)), max(s, e)
            c = rng.random()
            if rng.random() < 0.3:  # equal in float32, not in float64
                c = rng.choice(tie_base) + rng.choice([0.0, 1e-9, 2e-9, -1e-9])
            elif rng.random() < 0.2:  # equal in float64 too
                c = rng.choice(tie_base)
            rows.append([c, s, e])
        if rows and rng.random() < 0.5:  # most pipelines sort; some files are not sorted
            rows.sort(key=lambda row: -row[0])
        proposals[file] = rows
    return {"metadata": metadata, "proposals": proposals}


def run_official(tool: ModuleType, case: dict[str, Any]) -> dict[str, Any]:
    """The tool's AP and AR on a case (its proposals written as a file the tool can read)."""
    from featstore.trainers.segments import AP_IOU_THRESHOLDS, AR_IOU_THRESHOLDS, write_proposals

    with tempfile.TemporaryDirectory() as tmp:
        props, meta = Path(tmp) / "proposals.json", Path(tmp) / "metadata.json"
        write_proposals(props, case["proposals"])
        meta.write_text(json.dumps(case["metadata"]))
        out = tool.ap_ar_1d(
            str(props),
            str(meta),
            "file",
            "fake_segments",
            1.0,
            list(AP_IOU_THRESHOLDS),
            list(AR_N),
            list(AR_IOU_THRESHOLDS),
        )
    ap = dict(zip(AP_IOU_THRESHOLDS, out["ap"].values(), strict=True))  # keys come back float32
    return {
        "ap": {str(t): float(ap[t]) for t in AP_IOU_THRESHOLDS},
        "ar": {str(n): float(out["ar"][n]) for n in AR_N},
    }


def main() -> int:
    tool = official_tool()
    if tool is None:
        print("avdeepfake1m is not importable; see this module's docstring", file=sys.stderr)
        return 1
    cases = []
    for seed in SEEDS:
        case = make_case(seed)
        cases.append({"seed": seed, **case, "official": run_official(tool, case)})
    doc = {"tool": f"avdeepfake1m {tool.__version__}", "ar_n": list(AR_N), "cases": cases}
    REFERENCE.write_text(json.dumps(doc) + "\n")
    print(f"wrote {REFERENCE} ({len(cases)} cases)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
