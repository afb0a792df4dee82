"""Remove one encoder's features from a dataset (``featstore store rm``), safely.

An encoder is many objects (commit records, parts, failure records, its
group), and no storage offers removing them at once, so removal is ordered
for readers:

1. the marker ``<dataset>/<encoder>/_removing.json`` is written: from then on
   the encoder is not listed, readers that list its commits refuse it
   (``UnknownEncoderError``) and writers refuse to add to it. A reader checks
   the marker *after* listing the commits, so a listing it accepts was made
   before any commit record was removed: it is the whole encoder;
2. the commit records are removed (no reader can see a part any more),
3. then the failure records, the parts and the encoder's group,
4. the marker last.

A reader that listed the encoder before step 1 keeps reading until a part it
wants is gone, then gets an error (its next listing sees the marker), never
a part of the encoder. A removal that stops half-way (a crash) leaves the
marker: the encoder stays invisible and running the removal again finishes
it. Stop any extraction writing this encoder first: a part it commits after
step 2 would be removed with the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from featstore import layout
from featstore.errors import CorruptStoreError, UnknownEncoderError
from featstore.store import FeatureStore

log = logging.getLogger(__name__)

__all__ = ["RemovalPlan", "plan_removal", "remove_encoder"]


@dataclass(frozen=True)
class RemovalPlan:
    """What removing ``dataset/encoder`` deletes."""

    dataset: str
    encoder: str
    layers: tuple[str, ...]
    videos: int  # committed for at least one layer
    commits: int
    parts: int  # part folders, committed or not
    failure_records: int
    files: int
    bytes: int
    resumed: bool  # a removal was under way (its marker is there)


def _encoder_exists(store: FeatureStore, dataset: str, encoder: str) -> bool:
    path = layout.encoder_path(dataset, encoder)
    return store.backend.exists(f"{path}/zarr.json") or bool(store.backend.list_dir(path))


def plan_removal(store: FeatureStore, dataset: str, encoder: str) -> RemovalPlan:
    """Count what :func:`remove_encoder` would delete (deletes nothing)."""
    store.refresh()
    store.encoders(dataset)  # checks the dataset exists
    if not _encoder_exists(store, dataset, encoder):
        known = ", ".join(store.encoders(dataset)) or "none"
        raise UnknownEncoderError(
            f"no encoder {encoder!r} in dataset {dataset} (encoders: {known})"
        )
    backend = store.backend
    resumed = backend.exists(layout.removal_key(dataset, encoder))
    layers: tuple[str, ...] = ()
    videos = 0
    if not resumed:
        try:
            state = store.snapshot(dataset, encoder)
        except CorruptStoreError as exc:
            log.warning("%s/%s: %s", dataset, encoder, exc)
        else:
            layers = tuple(layout.layer_key(x) for x in state.layers())
            ids: set[str] = set()
            for x in state.layers():
                ids.update(state.index(x).video_ids())
            videos = len(ids)
    commits = [n for n in backend.list_dir(layout.commits_path(dataset, encoder))]
    parts = [n for n in backend.list_dir(layout.parts_path(dataset, encoder))]
    failures = [n for n in backend.list_dir(layout.failures_path(dataset, encoder))]
    files, nbytes = backend.walk_size(layout.encoder_path(dataset, encoder))
    return RemovalPlan(
        dataset=dataset,
        encoder=encoder,
        layers=layers,
        videos=videos,
        commits=sum(n.endswith(".json") for n in commits),
        parts=sum(layout.is_part_id(n) for n in parts),
        failure_records=sum(n.endswith(".json") for n in failures),
        files=files,
        bytes=nbytes,
        resumed=resumed,
    )


def remove_encoder(store: FeatureStore, dataset: str, encoder: str) -> RemovalPlan:
    """Delete every object of ``dataset/encoder`` in the order the module docstring gives.

    Returns what was removed. Raises ``UnknownEncoderError`` when there is nothing.
    """
    store.check_writable()
    plan = plan_removal(store, dataset, encoder)
    backend = store.backend
    marker = layout.removal_key(dataset, encoder)
    if not plan.resumed:
        backend.put_json(marker, {"dataset": dataset, "encoder": encoder, "videos": plan.videos})
    # 2. Commit records: from here no reader can locate a row.
    commits = layout.commits_path(dataset, encoder)
    for name in backend.list_dir(commits):
        backend.delete(f"{commits}/{name}")
    # 3. Failure records, parts, then everything else but the marker.
    failures = layout.failures_path(dataset, encoder)
    for name in backend.list_dir(failures):
        backend.delete(f"{failures}/{name}")
    parts = layout.parts_path(dataset, encoder)
    for name in backend.list_dir(parts):
        if name == "zarr.json":
            continue
        backend.delete_tree(f"{parts}/{name}")
    path = layout.encoder_path(dataset, encoder)
    backend.delete(f"{parts}/zarr.json")
    backend.delete(f"{path}/zarr.json")
    for name in backend.list_dir(path):
        if f"{path}/{name}" != marker:
            backend.delete_tree(f"{path}/{name}")
    # 4. The marker, and the (now empty) folder.
    backend.delete(marker)
    backend.delete_tree(path)
    store.refresh()
    log.info("removed %s/%s: %d commits, %d parts", dataset, encoder, plan.commits, plan.parts)
    return plan
