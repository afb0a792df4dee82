"""An ExDDV-format dataset with media, tiny-CLIP features and a probe: spatial explanations end to end.

Videos are 160x96 (wider than tall, so CLIP's centre crop matters), 30 frames
at 25 fps; fakes carry a bright square that the clicks point at.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

W, H, N_FRAMES = 160, 96, 30
SQUARE = (96, 30, 16)  # x0, y0, side of the fakes' bright square, in pixels
CLICK_FRAMES = (5, 12)
COLUMNS = [
    "id", "username", "movie_name", "text", "dataset", "manipulation", "click_locations",
    "difficulty", "split",
]  # fmt: skip


@dataclass(frozen=True)
class SpatialSetup:
    root: Path  # the dataset's media and ExDDV.csv
    store: str
    run_dir: Path
    clip_checkpoint: Path
    fakes: tuple[str, ...]  # test fakes (with clicks)


def write_video(path: Path, *, fake: bool, seed: int) -> Path:
    import av

    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, size=(H // 8, W // 8, 3), dtype=np.uint8)
    base = np.kron(base, np.ones((8, 8, 1), np.uint8))  # [H, W, 3] blocky, compresses well
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.options = {"qp": "10", "preset": "ultrafast"}
        for i in range(N_FRAMES):
            img = np.roll(base, i, axis=1).copy()
            if fake:
                x0, y0, s = SQUARE
                img[y0 : y0 + s, x0 : x0 + s] = 255
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(vs.encode(None))
    return path


def click_point() -> dict[str, float]:
    x0, y0, s = SQUARE
    return {"x": (x0 + s / 2) / W, "y": (y0 + s / 2) / H}


def write_dataset(root: Path) -> list[str]:
    """Videos and ``ExDDV.csv``: 6 train (3 fake), 4 test (2 fake, clicked). Returns the test fakes."""
    rows, fakes = [], []
    for split, n in (("train", 6), ("test", 4)):
        for i in range(n):
            fake = i % 2 == 1
            name = f"{split}_{i:02d}.mp4"
            write_video(root / name, fake=fake, seed=hash((split, i)) % 1000)
            clicks = {str(f): click_point() for f in CLICK_FRAMES} if fake else {}
            rows.append(
                [
                    str(len(rows)),
                    "ann1",
                    name,
                    "a bright square",
                    "Faceforensics++",
                    "Deepfakes" if fake else "original",
                    json.dumps(clicks),
                    "1",
                    split,
                ]
            )
            if fake and split == "test":
                fakes.append(name[:-4])
    root.mkdir(parents=True, exist_ok=True)
    with (root / "ExDDV.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return fakes


def build(tmp: Path) -> SpatialSetup:
    """Import, extract tiny-CLIP features (layer ``last``) and train a probe on the train split."""
    from typer.testing import CliRunner

    from featstore.cli.main import app
    from featstore.encoders.tiny import save_tiny_checkpoint
    from featstore.extract import extract
    from featstore.store import open_store

    root = tmp / "exddv"
    fakes = write_dataset(root)
    store_url = str(tmp / "features.zarr")
    imported = CliRunner().invoke(
        app, ["datasets", "import", "exddv", str(root), "--name", "exddv", "--store", store_url]
    )
    assert imported.exit_code == 0, imported.output
    store = open_store(store_url, mode="a", durable=False)
    ckpt = save_tiny_checkpoint("clip", tmp / "tiny-clip")
    extract(store, dataset="exddv", encoder="clip", checkpoint=str(ckpt), num_workers=0)
    run_dir = tmp / "runs" / "clip"
    train_probe(store, run_dir)
    return SpatialSetup(root, store_url, run_dir, ckpt, tuple(fakes))


def train_probe(store, run_dir: Path) -> None:
    from featstore.trainers.kinds.probe import train
    from featstore.trainers.probe import ProbeConfig

    train(
        store,
        features="clip",
        train="exddv:train",
        val=None,
        out=run_dir,
        config=ProbeConfig(max_epochs=3),
    )
