"""What ``featstore serve`` was asked to run: the store, the runs, limits and batching."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from featstore.api.uploads import MAX_FIELD_BYTES, MAX_FORM_PARTS
from featstore.errors import FeatstoreError

__all__ = ["RunSpec", "Settings", "SettingsError", "parse_checkpoints", "parse_run"]

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class SettingsError(FeatstoreError, ValueError):
    """A serve option is malformed (bad ``NAME=DIR``, duplicate run names, bad limits)."""


@dataclass(frozen=True)
class RunSpec:
    """A run directory and the name the API knows it by."""

    name: str
    path: Path


@dataclass(frozen=True)
class Settings:
    """Everything the app needs; built by the CLI or by tests, never read from globals."""

    store_url: str
    runs: tuple[RunSpec, ...]
    device: str = "cpu"
    checkpoints: Mapping[str, str] = field(default_factory=dict)  # encoder -> checkpoint
    api_key_env: str | None = None  # name of the environment variable holding the key
    max_upload_bytes: int = 200 * 2**20
    max_duration_s: float = 120.0
    request_timeout_s: float = 120.0
    max_batch_clips: int = 8
    max_wait_ms: float = 10.0
    warmup: bool = True
    upload_dir: str | None = None  # temporary files go here (default: the system's tmp)
    upload_chunk_bytes: int = 1 << 20
    max_form_parts: int = MAX_FORM_PARTS  # parts of one multipart body (400 beyond)
    max_field_bytes: int = MAX_FIELD_BYTES  # bytes of one form field (413 beyond)
    # The HTTP server (api/server.py): request headers must be complete this long after
    # a connection opens or its previous response ends (slowloris), else it is closed.
    header_timeout_s: float = 10.0
    limit_concurrency: int = 64  # open connections; requests beyond get 503
    backlog: int = 2048  # connections waiting to be accepted (the listen queue)
    # Segmenting uploads (POST /v1/score?segment=true, api/segments.py): the active speaker
    # detector (None: talknet when its checkpoint is found, else sync) and TalkNet's weights.
    asd: str | None = None
    asd_checkpoint: str | None = None

    def __post_init__(self) -> None:
        if not self.runs:
            raise SettingsError("serve needs at least one --run")
        names = [r.name for r in self.runs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SettingsError(
                f"run names must be unique, got {', '.join(dupes)} twice; name them NAME=DIR"
            )
        for what, value in (
            ("max upload size", self.max_upload_bytes),
            ("max duration", self.max_duration_s),
            ("request timeout", self.request_timeout_s),
            ("max batch clips", self.max_batch_clips),
            ("upload chunk size", self.upload_chunk_bytes),
            ("max form parts", self.max_form_parts),
            ("max field size", self.max_field_bytes),
            ("header timeout", self.header_timeout_s),
            ("connection limit", self.limit_concurrency),
            ("backlog", self.backlog),
        ):
            if not value > 0:
                raise SettingsError(f"{what} must be positive, got {value}")
        if self.asd is not None:
            from featstore.asd.detectors import ASD_NAMES

            if self.asd not in ASD_NAMES:
                raise SettingsError(
                    f"--asd must be one of {', '.join(ASD_NAMES)}, got {self.asd!r}"
                )
        if self.max_wait_ms < 0:
            raise SettingsError(f"max wait must be >= 0 ms, got {self.max_wait_ms}")

    def api_key(self) -> str | None:
        """The API key from ``api_key_env`` (None when keys are off); an unset variable is an error."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise SettingsError(
                f"--api-key-env names {self.api_key_env}, but that environment variable is "
                "unset or empty"
            )
        return key


def parse_run(text: str) -> RunSpec:
    """``DIR`` (named after the directory) or ``NAME=DIR``."""
    name, sep, path = text.partition("=")
    if not sep:
        path, name = text, Path(text.rstrip("/")).name
    if not path:
        raise SettingsError(f"--run {text!r}: expected DIR or NAME=DIR")
    if not _RUN_NAME.match(name):
        raise SettingsError(
            f"--run {text!r}: run name {name!r} must be letters, digits, '.', '_' or '-' "
            "(name it with NAME=DIR)"
        )
    return RunSpec(name=name, path=Path(path))


def parse_checkpoints(items: Sequence[str]) -> dict[str, str]:
    """``ENCODER=PATH`` pairs as a dict (one checkpoint per encoder)."""
    out: dict[str, str] = {}
    for item in items:
        encoder, sep, path = item.partition("=")
        if not sep or not encoder or not path:
            raise SettingsError(f"--checkpoint {item!r}: expected ENCODER=PATH")
        if encoder in out:
            raise SettingsError(f"--checkpoint given twice for encoder {encoder!r}")
        out[encoder] = path
    return out
