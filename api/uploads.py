"""Uploads: the multipart body streamed to a temporary file with a size limit, then vetted.

The body is parsed as it arrives (never buffered whole): the ``file`` part goes
to a temporary file chunk by chunk, other parts are small form fields. Limits,
each checked as the bytes arrive (with or without a Content-Length):

- the whole body (file, fields, multipart framing) at most ``max_bytes`` (413);
- at most ``max_parts`` parts (400) and ``max_field_bytes`` per field (413);
- at most 8 KiB of headers per part (python-multipart also allows at most 8
  lines of ~4 KiB), a boundary of at most 256 characters, and a body that ends
  with its closing boundary: anything else is malformed (400).

The file's declared type and its first bytes must be a video container (415),
and the container header must declare a duration within the limit (422) before
anything is decoded. The temporary file is removed when the ``async with``
block ends, however it ends (error, timeout, client gone).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featstore.errors import FeatstoreError

if TYPE_CHECKING:
    from starlette.requests import Request

    from featstore.media import MediaInfo

__all__ = [
    "MAX_FIELD_BYTES",
    "MAX_FORM_PARTS",
    "BadUploadError",
    "MalformedUploadError",
    "MediaTooLongError",
    "UnsupportedMediaTypeError",
    "Upload",
    "UploadTimeoutError",
    "UploadTooLargeError",
    "check_duration",
    "looks_like_video",
    "receive_upload",
]

FILE_FIELD = "file"
MAX_FIELD_BYTES = 16 * 1024  # default: a form field (e.g. ``runs``) longer than this is refused
MAX_FORM_PARTS = 16  # default: a form with more parts than this is refused
_MAX_PART_HEADER_BYTES = 8 * 1024  # all header lines of one part
_SNIFF_BYTES = 512
_ALLOWED_TYPES = ("application/octet-stream",)


class BadUploadError(FeatstoreError):
    """The form is well formed but not what the endpoint takes: no or two ``file`` parts (422)."""


class MalformedUploadError(BadUploadError):
    """The body is not well-formed multipart: bad boundary, syntax, truncated, too many parts (400)."""


class UploadTimeoutError(FeatstoreError):
    """The client did not send the whole upload within the request time limit (408)."""


class UploadTooLargeError(FeatstoreError):
    """The upload is larger than the server accepts (413)."""


class UnsupportedMediaTypeError(FeatstoreError):
    """The upload is not a video: declared type or content (415)."""


class MediaTooLongError(FeatstoreError):
    """The container declares a duration above the limit (422)."""


@dataclass
class Upload:
    """A received upload: where it is on disk and what the client said about it."""

    path: Path
    filename: str | None = None
    content_type: str | None = None
    size_bytes: int = 0
    fields: dict[str, str] = field(default_factory=dict)
    head: bytes = b""  # the file's first bytes, for sniffing


def looks_like_video(head: bytes) -> bool:
    """True when ``head`` starts like a video container FFmpeg reads.

    ISO BMFF (mp4/mov/3gp: a box type at bytes 4..8), Matroska/WebM (EBML),
    AVI (RIFF....AVI), FLV, Ogg, MPEG-PS (pack header) and MPEG-TS (sync bytes
    188 apart). Audio-only containers (WAV, MP3, FLAC) are not videos.
    """
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return True
    if head.startswith((b"\x1a\x45\xdf\xa3", b"FLV", b"OggS", b"\x00\x00\x01\xba")):
        return True
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return True
    return len(head) > 188 and head[0] == 0x47 and head[188] == 0x47


def _allowed_type(content_type: str | None) -> bool:
    if not content_type:
        return True  # clients that say nothing are judged by the content
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime.startswith("video/") or mime in _ALLOWED_TYPES


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


class _Receiver:
    """python-multipart callbacks: the file part to disk, fields to memory, parts counted."""

    def __init__(
        self,
        upload: Upload,
        *,
        max_parts: int,
        max_field_bytes: int,
        fields: tuple[str, ...] | None = None,
    ) -> None:
        self.upload = upload
        self.fields = fields  # the form fields taken besides the file (None: any)
        self.names: list[str] = []  # of the form fields, in order
        self.fh: Any = None  # the temporary file, set once it is open
        self.max_parts, self.max_field_bytes = max_parts, max_field_bytes
        self.headers: dict[str, str] = {}
        self._field, self._value = b"", b""
        self._header_bytes = 0  # of the current part, bounded whatever the parser's version
        self.part: str | None = None  # name of the part being read
        self.buffer = bytearray()
        self.parts = 0
        self.files = 0
        self.ended = False  # the closing boundary was seen
        self.error: FeatstoreError | None = None

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
            "on_end": self.end,
        }

    def fail(self, error: FeatstoreError) -> None:
        if self.error is None:
            self.error = error

    def part_begin(self) -> None:
        self.headers, self.part, self.buffer = {}, None, bytearray()
        self._header_bytes = 0
        self.parts += 1
        if self.parts > self.max_parts:
            self.fail(
                MalformedUploadError(
                    f"the form has more than {self.max_parts} parts; send one '{FILE_FIELD}' part "
                    "and at most a few small fields"
                )
            )

    def _count_header(self, n: int) -> bool:
        self._header_bytes += n
        if self._header_bytes > _MAX_PART_HEADER_BYTES:
            self.fail(
                MalformedUploadError(
                    f"malformed multipart body: part headers longer than {_MAX_PART_HEADER_BYTES} "
                    "bytes"
                )
            )
        return self.error is None

    def header_field(self, data: bytes, start: int, end: int) -> None:
        if self._count_header(end - start):
            self._field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        if self._count_header(end - start):
            self._value += data[start:end]

    def header_end(self) -> None:
        self.headers[self._field.decode("latin-1").lower()] = self._value.decode("latin-1")
        self._field, self._value = b"", b""

    def headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, params = parse_options_header(self.headers.get("content-disposition", ""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        self.part = name
        if name != FILE_FIELD:
            self.names.append(name)
            return
        self.files += 1
        if self.files > 1:
            self.fail(BadUploadError(f"send exactly one '{FILE_FIELD}' part"))
            return
        filename = params.get(b"filename")
        self.upload.filename = filename.decode("utf-8", "replace") if filename else None
        self.upload.content_type = self.headers.get("content-type")
        if not _allowed_type(self.upload.content_type):
            self.fail(
                UnsupportedMediaTypeError(
                    f"upload type {self.upload.content_type!r} is not a video; send a video file "
                    "(video/* or application/octet-stream)"
                )
            )

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        chunk = data[start:end]
        if self.part == FILE_FIELD:
            self.upload.size_bytes += len(chunk)
            if len(self.upload.head) < _SNIFF_BYTES:
                self.upload.head += chunk[: _SNIFF_BYTES - len(self.upload.head)]
            self.fh.write(chunk)
        else:
            self.buffer += chunk
            if len(self.buffer) > self.max_field_bytes:
                self.fail(
                    UploadTooLargeError(
                        f"form field {self.part!r} is longer than {self.max_field_bytes} bytes"
                    )
                )

    def part_end(self) -> None:
        if self.part and self.part != FILE_FIELD and self.error is None:
            self.upload.fields[self.part] = self.buffer.decode("utf-8", "replace")

    def end(self) -> None:
        self.ended = True


def _check_fields(names: list[str], fields: tuple[str, ...] | None) -> None:
    """Each form field is one the endpoint takes (``fields``; None: any), given once (422):
    a field that would be ignored is refused, once the body is known to be within limits."""
    unknown = [n for n in dict.fromkeys(names) if fields is not None and n not in fields]
    if unknown:
        takes = ", ".join(repr(f) for f in (FILE_FIELD, *(fields or ())))
        raise BadUploadError(
            f"unknown form field{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}: "
            f"the form takes {takes}"
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BadUploadError(f"form field {', '.join(map(repr, twice))} given more than once")


def _parser(content_type: str, receiver: _Receiver) -> Any:
    """A python-multipart parser for the request's boundary; 415/400 when there is none or it is bad."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    mime, params = parse_options_header(content_type)
    if mime != b"multipart/form-data":
        raise UnsupportedMediaTypeError("send the video as multipart/form-data with a 'file' part")
    boundary = params.get(b"boundary")
    if not boundary:
        raise MalformedUploadError("the multipart/form-data content type has no boundary")
    try:
        return MultipartParser(boundary, receiver.callbacks())
    except FormParserError as exc:  # e.g. a boundary over 256 characters
        raise MalformedUploadError(f"invalid multipart boundary: {exc}") from None


@contextlib.asynccontextmanager
async def receive_upload(
    request: Request,
    *,
    max_bytes: int,
    max_parts: int = MAX_FORM_PARTS,
    max_field_bytes: int = MAX_FIELD_BYTES,
    directory: str | None = None,
    fields: tuple[str, ...] | None = None,
) -> AsyncIterator[Upload]:
    """Stream the request's multipart body into a temporary file; remove it afterwards.

    ``max_bytes`` bounds the whole body, form fields and multipart framing included.
    ``fields``: the form fields taken besides ``file`` (another is a 422; None: any).
    A client that goes away mid-body raises Starlette's ``ClientDisconnect``.
    """
    from python_multipart.exceptions import FormParserError

    upload = Upload(path=Path())
    receiver = _Receiver(
        upload, max_parts=max_parts, max_field_bytes=max_field_bytes, fields=fields
    )
    parser = _parser(request.headers.get("content-type", ""), receiver)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise UploadTooLargeError(
            f"upload of {_mb(int(length))} is larger than the limit of {_mb(max_bytes)}"
        )
    fd, name = tempfile.mkstemp(prefix="featstore-upload-", suffix=".media", dir=directory)
    upload.path = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            receiver.fh = fh
            received = 0
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_bytes:  # chunked bodies, or a Content-Length that lied
                    raise UploadTooLargeError(
                        f"upload is larger than the limit of {_mb(max_bytes)}"
                    )
                try:
                    parser.write(chunk)
                except FormParserError as exc:
                    raise MalformedUploadError(f"malformed multipart body: {exc}") from None
                if receiver.error is not None:
                    raise receiver.error
            try:
                parser.finalize()
            except FormParserError as exc:
                raise MalformedUploadError(f"malformed multipart body: {exc}") from None
        if not receiver.ended:
            raise MalformedUploadError(
                "malformed multipart body: it ends before its closing boundary (truncated upload?)"
            )
        if receiver.files == 0:
            raise BadUploadError(f"the form has no '{FILE_FIELD}' part")
        _check_fields(receiver.names, fields)
        if upload.size_bytes == 0:
            raise BadUploadError("the uploaded file is empty")
        if not looks_like_video(upload.head):
            raise UnsupportedMediaTypeError(
                "the uploaded file is not a video container (mp4, mov, mkv, webm, avi, flv, "
                "mpeg-ts, ogg)"
            )
        yield upload
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def check_duration(path: str | os.PathLike[str], max_duration_s: float) -> MediaInfo:
    """Probe the container headers; refuse media declaring more than ``max_duration_s``.

    Raises the decoder's :class:`~featstore.media.MediaError` for unreadable files.
    A file that declares no duration is checked after decoding instead.
    """
    from featstore.media import probe

    info = probe(path)
    declared = [
        d
        for d in (
            info.duration_s,
            info.video.duration_s if info.video else None,
            info.audio.duration_s if info.audio else None,
        )
        if d is not None
    ]
    if declared and max(declared) > max_duration_s:
        raise MediaTooLongError(
            f"media lasts {max(declared):.1f} s, above the limit of {max_duration_s:g} s "
            "(--max-duration-s)"
        )
    return info
