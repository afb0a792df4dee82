"""What an extraction will do: the videos it runs (resume), the task unit, dry-run estimates.

An :class:`ExtractTask` is the unit of work both local and distributed runs execute
(:func:`featstore.extract.worker.run_task`): a list of videos, the encoder to load and
how to store its output. It is small and picklable (the store pickles as its URL).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featstore import layout, timebase
from featstore.decode_limits import EXTRACT_LIMITS, DecodeLimits
from featstore.errors import EncoderMismatchError, FeatstoreError, StoreError, UnknownEncoderError
from featstore.layout import Layer, layer_key

if TYPE_CHECKING:
    from featstore.encoder_info import EncoderInfo
    from featstore.encoders.base import Encoder, EncoderSpec
    from featstore.store import FeatureStore

log = logging.getLogger(__name__)

STORED_DTYPES = ("float16", "float32")
DEVICES = ("cpu", "cuda")
DEFAULT_BATCH_FRAMES = 2000  # 80 s of 25 fps frames per forward pass
DEFAULT_NUM_WORKERS = 2
LARGE_STORE_BYTES = 50 * 2**30  # dry runs warn above this when several layers are stored


class ExtractError(FeatstoreError):
    """An extraction cannot run as asked (bad options, nothing selected, no cluster)."""


@dataclass(frozen=True)
class VideoRef:
    """One video to extract: its manifest id, the absolute path of its file and the span
    of the file it covers (``[start_s, end_s)`` seconds; the whole file by default).

    A segment dataset's rows (``featstore datasets segment``) are spans of their source
    videos: only the span is decoded (:func:`featstore.media.decode`'s ``start_s`` /
    ``until_s``, a seek), and its rows are stored under the segment's id.
    """

    video_id: str
    path: str
    start_s: float = 0.0
    end_s: float | None = None


@dataclass(frozen=True)
class ExtractTask:
    """One unit of extraction work: these videos, this encoder, stored like this.

    ``dtype`` is the stored dtype; the compute dtype follows from it and the device
    (:func:`compute_dtype`). ``store_as``: the encoder name in the store (None: the
    registered name). ``options``: extra loader options, sorted ``(key, value)`` pairs
    (:func:`freeze_options`). ``limits``: the decode bounds of each video (one past
    them fails alone). The task skips videos committed since it was planned, so a
    retried task never redoes finished work.
    """

    store: FeatureStore
    dataset: str
    encoder: str
    checkpoint: str | None
    random_init: bool
    layers: tuple[Layer, ...] | str  # resolved layers, or "all" (resolved where it is loaded)
    dtype: str
    device: str
    batch_frames: int
    num_workers: int
    videos: tuple[VideoRef, ...] = field(repr=False)
    store_as: str | None = None
    options: tuple[tuple[str, Any], ...] = ()
    limits: DecodeLimits = EXTRACT_LIMITS

    @property
    def stored_name(self) -> str:
        """The encoder's name in the store."""
        return self.store_as or self.encoder

    @property
    def encoder_key(self) -> tuple[str, str | None, bool, str, str, str]:
        """What identifies a loaded encoder (the per-worker cache key), options included."""
        return (
            self.encoder,
            self.checkpoint,
            self.random_init,
            self.device,
            compute_dtype(self.dtype, self.device),
            options_key(self.options),
        )


@dataclass(frozen=True)
class LayerEstimate:
    layer: Layer
    dim: int
    rows: int
    bytes: int


@dataclass(frozen=True)
class ExtractPlan:
    """What an extraction would do (``featstore extract --dry-run``); nothing is written."""

    dataset: str
    encoder: str
    checkpoint: str | None
    frame_hz: float
    dtype: str
    videos_selected: int
    videos_skipped: int  # already committed for the requested layers
    videos: tuple[VideoRef, ...] = field(repr=False)
    frames: int  # estimated 25 fps input frames of the videos to run
    unknown_duration: int  # videos whose duration is neither in the manifest nor probeable
    layers: tuple[LayerEstimate, ...]
    warnings: tuple[str, ...] = ()
    store_as: str | None = None  # the name in the store, when not ``encoder``

    @property
    def stored_name(self) -> str:
        return self.store_as or self.encoder

    @property
    def videos_to_run(self) -> int:
        return len(self.videos)

    @property
    def rows(self) -> int:
        return self.layers[0].rows if self.layers else 0

    @property
    def bytes_total(self) -> int:
        return sum(x.bytes for x in self.layers)


def compute_dtype(stored: str, device: str) -> str:
    """The encoder's compute dtype: the stored half precision on CUDA (autocast), else fp32."""
    return stored if device.startswith("cuda") and stored != "float32" else "float32"


def check_options(*, dtype: str, device: str, batch_frames: int, num_workers: int) -> None:
    if dtype not in STORED_DTYPES:
        raise ExtractError(f"dtype must be one of {', '.join(STORED_DTYPES)}, got {dtype!r}")
    if device.split(":")[0] not in DEVICES:
        raise ExtractError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    if batch_frames < 1:
        raise ExtractError(f"batch_frames must be at least 1, got {batch_frames}")
    if num_workers < 0:
        raise ExtractError(f"num_workers must be 0 or more, got {num_workers}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ExtractError(f"device {device} asked for, but torch sees no CUDA device")


def freeze_options(options: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """Loader options as sorted ``(key, value)`` pairs: picklable, comparable, ordered."""
    if not options:
        return ()
    for key in options:
        if not isinstance(key, str) or not key.isidentifier():
            raise ExtractError(f"encoder option names must be identifiers, got {key!r}")
    return tuple(sorted(options.items()))


def options_key(options: Sequence[tuple[str, Any]]) -> str:
    """A hashable text for loader options whose values may be lists or dicts."""
    return json.dumps(dict(options), sort_keys=True, default=repr)


def check_store_as(store_as: str | None, encoder: str) -> None:
    """``store_as`` must be a valid store name and not another registered encoder's."""
    if store_as is None:
        return
    try:
        layout.check_name("encoder", store_as)
    except StoreError as exc:
        raise ExtractError(f"cannot store features as {store_as!r}: {exc}") from None
    from featstore.encoders import specs

    if store_as != encoder and store_as in specs():
        raise ExtractError(
            f"cannot store {encoder} features as {store_as!r}: that is another registered "
            f"encoder's name; choose a new one, e.g. {encoder}-random"
        )


def stored_info(info: EncoderInfo, *, encoder: str, store_as: str | None) -> EncoderInfo:
    """``info`` as the store records it: under ``store_as`` when given, with the
    registered encoder's name kept in ``extra["encoder"]``."""
    extra = {**info.extra, "encoder": encoder}
    return dataclasses.replace(info, name=store_as or info.name, extra=extra)


def mismatch_error(
    dataset: str, name: str, problems: Sequence[str], *, random_init: bool
) -> EncoderMismatchError:
    """The store's mismatch error, with the way out: another name (``--store-as``)."""
    hint = (
        f"--store-as {name}-random (store_as={name + '-random'!r})"
        if random_init
        else "--store-as NAME (store_as=...)"
    )
    return EncoderMismatchError(
        f"{dataset}/{name} already holds features that differ from these: "
        f"{'; '.join(problems)}. Store them beside those under another name: {hint}"
    )


def check_stored_info(store: FeatureStore, dataset: str, info: EncoderInfo) -> None:
    """Raise :func:`mismatch_error` when ``dataset``/``info.name`` holds incompatible features.

    Checked before resuming: otherwise a random-init run would skip every video the
    trained encoder already committed under the same name.
    """
    try:
        stored = store.encoder_info(dataset, info.name)
    except UnknownEncoderError:
        return
    problems = info.conflicts(stored)
    if problems:
        raise mismatch_error(dataset, info.name, problems, random_init=info.random_init)


def check_stored_spec(
    store: FeatureStore,
    dataset: str,
    name: str,
    spec: EncoderSpec,
    *,
    dtype: str,
    random_init: bool,
) -> None:
    """:func:`check_stored_info` from the spec alone (no model loaded: a distributed
    client), comparing what the spec and options fix: rate, dtype, random init,
    preprocessing."""
    try:
        stored = store.encoder_info(dataset, name)
    except UnknownEncoderError:
        return
    given = dataclasses.replace(
        stored,
        frame_hz=spec.frame_hz,
        dtype=dtype,
        random_init=random_init,
        preprocessing_version=spec.preprocessing_version,
        checkpoint_sha256=None,
    )
    problems = given.conflicts(stored)
    if problems:
        raise mismatch_error(dataset, name, problems, random_init=random_init)


def select_videos(
    store: FeatureStore, dataset: str, *, split: str | None = None, limit: int | None = None
) -> tuple[list[VideoRef], dict[str, float]]:
    """The manifest's videos in ``split``, the first ``limit`` of them.

    ``split`` is ``SPLIT``, ``@VIEW``, ``@VIEW:SPLIT`` or ``*``
    (``featstore.datasets.views``); None means every video of the dataset's
    default view, or of the dataset when it has none. ``limit`` counts videos
    of the manifest, not videos left to do, so re-running with the same limit is
    a no-op and running without it later resumes. Rows with ``start_s`` / ``end_s`` (a
    segment dataset) are spans of their file. Returns the videos and the durations the
    manifest declares (seconds; absent where it has none).
    """
    from featstore.datasets.views import ViewError, select_split

    manifest = store.manifest(dataset)
    if split is not None and not split.startswith("@") and "split" not in manifest.columns:
        raise ExtractError(f"dataset {dataset} has no split column; drop --split")
    try:
        manifest = select_split(manifest, split)
    except ViewError as exc:
        text = str(exc)
        raise ExtractError(
            f"dataset {dataset} has {text}"
            if text.startswith("no ")
            else f"dataset {dataset}: {text}"
        ) from None
    if limit is not None:
        if limit < 1:
            raise ExtractError(f"limit must be at least 1, got {limit}")
        manifest = manifest.head(limit)
    root = Path(str(store.manifest_attrs(dataset).get("root", ".")))
    starts, ends = _span_columns(manifest)
    refs = [
        VideoRef(video_id=str(v), path=str(root / str(p)), start_s=a, end_s=b)
        for v, p, a, b in zip(manifest["video_id"], manifest["path"], starts, ends, strict=True)
    ]
    durations: dict[str, float] = {}
    if "duration_s" in manifest.columns:
        for v, d in zip(manifest["video_id"], manifest["duration_s"], strict=True):
            if d is not None and isinstance(d, int | float) and math.isfinite(d) and d >= 0:
                durations[str(v)] = float(d)
    return refs, durations


def _span_columns(manifest: Any) -> tuple[list[float], list[float | None]]:
    """Each row's span: ``start_s`` / ``end_s`` where the manifest has them, else the file."""
    n = len(manifest)
    if not {"start_s", "end_s"} <= set(manifest.columns):
        return [0.0] * n, [None] * n
    starts: list[float] = []
    ends: list[float | None] = []
    for vid, a, b in zip(manifest["video_id"], manifest["start_s"], manifest["end_s"], strict=True):
        a, b = _finite(a), _finite(b)
        if (a is not None and a < 0) or (a is not None and b is not None and b <= a):
            raise ExtractError(f"video {vid}: invalid span start_s={a}, end_s={b}")
        starts.append(a or 0.0)
        ends.append(b)
    return starts, ends


def _finite(x: Any) -> float | None:
    """``x`` as a float, or None when it is missing (None, NaN, NA) or not a number."""
    if x is None or isinstance(x, bool) or not isinstance(x, numbers.Real):
        return None
    return float(x) if math.isfinite(x) else None


def pending_videos(
    store: FeatureStore,
    dataset: str,
    encoder_name: str,
    layers: Sequence[Layer],
    videos: Sequence[VideoRef],
) -> list[VideoRef]:
    """``videos`` minus those already committed for every one of ``layers`` (resume)."""
    store.refresh()  # see what other writers committed since this store was opened
    done = store.committed_videos(dataset, encoder_name, layers)
    return [v for v in videos if v.video_id not in done]


def estimate_plan(
    store: FeatureStore,
    *,
    dataset: str,
    encoder: Encoder,
    layers: Sequence[Layer],
    dtype: str = "float16",
    split: str | None = None,
    limit: int | None = None,
    store_as: str | None = None,
    limits: DecodeLimits | None = None,
) -> ExtractPlan:
    """Estimate an extraction from the manifest (durations) and the encoder's layer dims.

    Durations missing from the manifest are read from the files' headers (no decoding).
    ``store_as``: the encoder's name in the store (resume looks there). ``limits``: the
    run's decode bounds; videos longer than ``limits.max_duration_s`` will fail, and are
    counted in a warning rather than in the estimate.
    """
    from featstore.media import MediaError, probe

    selected, durations = select_videos(store, dataset, split=split, limit=limit)
    info = stored_info(
        encoder.info(dtype=dtype, layers=layers), encoder=encoder.name, store_as=store_as
    )
    check_stored_info(store, dataset, info)
    todo = pending_videos(store, dataset, info.name, layers, selected)
    max_s = (limits or EXTRACT_LIMITS).max_duration_s
    frames = rows = unknown = too_long = 0
    for ref in todo:
        seconds = durations.get(ref.video_id)
        if seconds is None and ref.end_s is not None:
            seconds = ref.end_s - ref.start_s
        if seconds is None:
            try:
                seconds = probe(ref.path).duration_s
            except MediaError as exc:
                log.debug("cannot probe %s: %s", ref.path, exc)
            if seconds is None:
                unknown += 1
                continue
        if max_s is not None and seconds > max_s:
            too_long += 1
            continue
        n = round(seconds * timebase.FRAME_HZ)
        frames += n
        rows += encoder.n_rows(n)
    itemsize = 2 if dtype == "float16" else 4
    estimates = tuple(
        LayerEstimate(
            layer=x,
            dim=encoder.layer_dims[x],
            rows=rows,
            bytes=rows * encoder.layer_dims[x] * itemsize,
        )
        for x in layers
    )
    warnings = []
    total = sum(e.bytes for e in estimates)
    if len(estimates) > 1 and total > LARGE_STORE_BYTES:
        warnings.append(
            f"storing {len(estimates)} layers of {info.name} writes about {format_bytes(total)} "
            f"({format_bytes(total // len(estimates))} per layer); pass --layers last or a short "
            "list of layers to store less"
        )
    if unknown:
        warnings.append(f"{unknown} videos have no known duration and are not in the estimate")
    if too_long:
        warnings.append(
            f"{too_long} videos last longer than the {max_s:g} s limit (--max-duration-s): "
            "they will fail, and are not in the estimate; raise the limit to extract them"
        )
    return ExtractPlan(
        dataset=dataset,
        encoder=encoder.name,
        checkpoint=encoder.checkpoint,
        frame_hz=encoder.spec.frame_hz,
        dtype=dtype,
        videos_selected=len(selected),
        videos_skipped=len(selected) - len(todo),
        videos=tuple(todo),
        frames=frames,
        unknown_duration=unknown,
        layers=estimates,
        warnings=tuple(warnings),
        store_as=store_as,
    )


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"  # pragma: no cover


def describe_layers(layers: Sequence[Layer]) -> str:
    return ",".join(layer_key(x) for x in layers)
