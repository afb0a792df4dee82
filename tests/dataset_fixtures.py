"""Tiny dataset fixtures in every supported metadata format, written into a folder at test time."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path


def touch(root: Path, rel: str) -> None:
    """A placeholder media file: readers only check that it exists."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00")


# --- fixture writers, one per format ------------------------------------------------------


def av1m_entry(file: str, modify_type: str, segments: list, **extra: object) -> dict:
    visual = segments if modify_type in ("visual_modified", "both_modified") else []
    audio = segments if modify_type in ("audio_modified", "both_modified") else []
    return {
        "file": file,
        "original": None if modify_type == "real" else "id0/vid/real.mp4",
        "split": extra.pop("split", "train"),
        "modify_type": modify_type,
        "audio_model": "your_tts" if audio else "",
        "fake_segments": segments,
        "audio_fake_segments": audio,
        "visual_fake_segments": visual,
        "video_frames": 100,
        "audio_frames": 64000,
        **extra,
    }


def write_av1m(root: Path, train: list[dict] | None = None, val: list[dict] | None = None) -> Path:
    if train is None:
        train = [
            av1m_entry("id0/vid/real.mp4", "real", []),
            av1m_entry("id0/vid/fake_v.mp4", "visual_modified", [[1.0, 1.5]]),
            av1m_entry("id0/vid/fake_a.mp4", "audio_modified", [[0.2, 0.6], [2.0, 2.4]]),
            av1m_entry("id0/vid/fake_av.mp4", "both_modified", [[0.5, 1.0]]),
        ]
    if val is None:
        val = [
            av1m_entry("id1/v/real.mp4", "real", [], split="val"),
            av1m_entry("id1/v/fake.mp4", "both_modified", [[0.0, 0.3]], split="val"),
        ]
    root.mkdir(parents=True, exist_ok=True)
    for split, entries in (("train", train), ("val", val)):
        (root / f"{split}_metadata.json").write_text(json.dumps(entries))
        for e in entries:
            if isinstance(e, dict) and isinstance(e.get("file"), str):
                touch(root, f"{split}/{e['file']}")
    return root


FAVC_HEADER = "source,target1,target2,method,category,type,race,gender,path"
FAVC_ROWS = [
    "id00076,-,-,real,A,RealVideo-RealAudio,African,men,00109.mp4,FakeAVCeleb/RealVideo-RealAudio/African/men/id00076",
    "id00076,-,-,rtvc,B,RealVideo-FakeAudio,African,men,00109_fake.mp4,FakeAVCeleb/RealVideo-FakeAudio/African/men/id00076",
    "id00076,id00166,-,faceswap,C,FakeVideo-RealAudio,African,men,00109_10_id00166_wavtolip.mp4,FakeAVCeleb/FakeVideo-RealAudio/African/men/id00076",
    "id00076,id00166,-,faceswap-wav2lip,D,FakeVideo-FakeAudio,African,men,00109_id00166_wavtolip.mp4,FakeAVCeleb/FakeVideo-FakeAudio/African/men/id00076",
]


def write_favc(root: Path, rows: list[str] | None = None, header: str = FAVC_HEADER) -> Path:
    rows = FAVC_ROWS if rows is None else rows
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta_data.csv").write_text("\n".join([header, *rows]) + "\n")
    for row in rows:
        values = row.split(",")
        if len(values) == 10:
            folder = values[9].split("/", 1)[1]
            touch(root, f"{folder}/{values[8]}")
    return root


def write_avlips(root: Path) -> Path:
    for rel in ("AVLips/0_real/0.mp4", "AVLips/0_real/1.mp4", "AVLips/1_fake/0.mp4"):
        touch(root, rel)
    touch(root, "wav/0_real/0.wav")
    return root


DFE_COLUMNS = ["Filename", "Video Ground Truth", "Audio Ground Truth", "Finetuning Set"]


def write_dfe(
    root: Path, rows: list[list[str]] | None = None, columns: list[str] = DFE_COLUMNS
) -> Path:
    rows = rows or [
        ["a.mp4", "Real", "Real", "train"],
        ["b.mp4", "Fake", "Fake", "test"],
        ["c.mp4", "Fake", "Unknown", "test"],
        ["d.mp4", "Fake", "Real", "train"],
    ]
    root.mkdir(parents=True, exist_ok=True)
    with (root / "video-metadata-publish.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    for row in rows:
        touch(root, f"video-data/{row[0]}")
    return root


EXDDV_COLUMNS = [
    "id",
    "username",
    "movie_name",
    "text",
    "dataset",
    "manipulation",
    "click_locations",
    "difficulty",
    "split",
]


def exddv_row(
    movie: str,
    *,
    user: str = "ann1",
    manipulation: str = "Deepfakes",
    clicks: object = None,
    split: str = "train",
) -> list[str]:
    clicks = {"12": {"x": 0.5, "y": 0.25}, "3": {"x": 1.02, "y": 0.9}} if clicks is None else clicks
    click_text = clicks if isinstance(clicks, str) else json.dumps(clicks)
    return [
        "7",
        user,
        movie,
        "blurry mouth, teeth",
        "Faceforensics++",
        manipulation,
        click_text,
        "2",
        split,
    ]


def write_exddv(root: Path, rows: list[list[str]] | None = None) -> Path:
    rows = rows or [
        exddv_row("000_003.mp4"),
        exddv_row("001.mp4", manipulation="real", clicks={}, split="validation"),
        exddv_row("000_003.mp4", user="ann2", clicks={"40": {"x": 0.1, "y": 0.2}}),
    ]
    root.mkdir(parents=True, exist_ok=True)
    with (root / "ExDDV.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(EXDDV_COLUMNS)
        writer.writerows(rows)
    for row in rows:
        touch(root, row[2])
    return root


def write_real(root: Path) -> Path:
    for rel in ("id001/abc/00001.mp4", "id001/abc/00002.mp4", "id002/xyz/00001.mp4"):
        touch(root, rel)
    touch(root, "id001/abc/notes.txt")
    touch(root, ".cache/id9/00001.mp4")
    return root


def write_folder(root: Path) -> Path:
    for rel in ("real/a.mp4", "real/sub/b.mp4", "fake/c.avi"):
        touch(root, rel)
    return root


def write_csv(
    root: Path, text: str | None = None, files: tuple[str, ...] = ("v/a.mp4", "v/b.mp4", "v/c.mp4")
) -> Path:
    text = text or (
        "path,label,split,fake_segments,speaker\n"
        "v/a.mp4,0,train,,s1\n"
        'v/b.mp4,fake,test,"[[0.5, 1.25]]",s2\n'
        "v/c.mp4,1,validation,,s3\n"
    )
    root.mkdir(parents=True, exist_ok=True)
    (root / "list.csv").write_text(text)
    for rel in files:
        touch(root, rel)
    return root / "list.csv"


WRITERS: dict[str, Callable[[Path], Path]] = {
    "av1m": write_av1m,
    "favc": write_favc,
    "avlips": write_avlips,
    "dfe2024": write_dfe,
    "exddv": write_exddv,
    "real": write_real,
    "folder": write_folder,
    "csv": write_csv,
}
