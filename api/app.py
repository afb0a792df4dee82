"""The FastAPI app: ``create_app(settings)``; models load in the lifespan, in the background.

Endpoints (DESIGN.md "API"): ``POST /v1/score`` (an uploaded video),
``GET /v1/datasets``, ``GET /v1/datasets/{dataset}/videos/{video_id}/scores``
(a stored video, no encoder), ``GET /v1/models``, ``GET /healthz`` (liveness),
``GET /readyz`` (503 until models are loaded and warmed up), ``GET /metrics``
(Prometheus). Every error is ``{"detail": ...}``; user errors are 4xx. No parameter is
silently ignored: a query parameter a route does not take, or an upload form field other
than ``file`` and ``runs``, is a 422 naming what the route takes.

>>> app = create_app(Settings(store_url="features.zarr", runs=(RunSpec("w2v", Path("runs/w2v")),)))  # doctest: +SKIP
>>> uvicorn.run(app)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import functools
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import ClientDisconnect

from featstore.api.batching import BatcherClosedError
from featstore.api.eligibility import UnscorableUploadError
from featstore.api.metrics import CONTENT_TYPE_LATEST, Metrics, MetricsMiddleware
from featstore.api.models import (
    DatasetsResponse,
    Detail,
    ModelsResponse,
    ReadyResponse,
    ScoreResponse,
    StoredScoreResponse,
)
from featstore.api.scoring import (
    NotReadyError,
    RunNotChosenError,
    ScoreOptions,
    ScoringService,
    UnknownRunError,
)
from featstore.api.segments import SegmentationUnavailableError, SegmentOptionsError
from featstore.api.settings import Settings
from featstore.api.spatial import DEFAULT_FRAMES as SPATIAL_DEFAULT_FRAMES
from featstore.api.spatial import MAX_FRAMES as SPATIAL_MAX_FRAMES
from featstore.api.uploads import (
    BadUploadError,
    MalformedUploadError,
    MediaTooLongError,
    UnsupportedMediaTypeError,
    UploadTimeoutError,
    UploadTooLargeError,
    check_duration,
    receive_upload,
)
from featstore.encoders.base import ClipError
from featstore.errors import (
    FeatstoreError,
    StoreError,
    UnknownDatasetError,
    UnknownEncoderError,
    UnknownLayerError,
    UnknownVideoError,
)
from featstore.layout import check_name
from featstore.media import MediaError, NoAudioStreamError, NoVideoStreamError

log = logging.getLogger(__name__)

__all__ = ["create_app", "get_metrics", "get_service", "get_settings"]

_VIDEO_ID_CONVERTOR = "featstore_video_id"  # a path convertor matching any string
RUNS_FIELD = "runs"  # the runs to score an upload with: query parameter or form field
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the answer


class UnknownParameterError(FeatstoreError):
    """A query parameter the route does not take, or ``runs`` given twice (422)."""


# First match wins: most specific first.
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (UploadTooLargeError, 413),
    (UploadTimeoutError, 408),
    (UnsupportedMediaTypeError, 415),
    (MalformedUploadError, 400),
    (BadUploadError, 422),
    (MediaTooLongError, 422),
    (MediaError, 422),
    (ClipError, 422),
    (UnscorableUploadError, 422),
    (RunNotChosenError, 422),
    (UnknownParameterError, 422),
    (UnknownRunError, 404),
    (UnknownDatasetError, 404),
    (UnknownVideoError, 404),
    (UnknownEncoderError, 404),
    (UnknownLayerError, 404),
    (NotReadyError, 503),
    (BatcherClosedError, 503),
    (SegmentationUnavailableError, 501),
    (FeatstoreError, 422),
)


# ------------------------------------------------------------------ dependencies


def get_service(request: Request) -> ScoringService:
    """The app's scoring service (tests override this with a fake)."""
    return request.app.state.service


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def require_api_key(
    request: Request,
    x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None,
) -> None:
    """401 unless the ``X-API-Key`` header matches (constant-time) when keys are on."""
    expected: str | None = request.app.state.api_key
    if expected is None:
        return
    given = (x_api_key or "").encode()
    if not hmac.compare_digest(given, expected.encode()):
        raise _Unauthorized("missing or invalid API key (send it in the X-API-Key header)")


class _Unauthorized(Exception):
    pass


def score_options(
    threshold: Annotated[
        str | None,
        Query(
            description="frame threshold of the segments: a number, or a name of the run's "
            "card (segment_f1, real_videos: calibrated when it was trained; paper: 0); "
            "default: the run's chosen one (GET /v1/models)"
        ),
    ] = None,
    smooth_s: Annotated[
        float | None, Query(ge=0, description="running-median window, seconds (default: run's)")
    ] = None,
    min_segment_s: Annotated[
        float | None, Query(ge=0, description="drop shorter segments (default: run's)")
    ] = None,
    merge_gap_s: Annotated[
        float | None, Query(ge=0, description="merge segments this close (default: run's)")
    ] = None,
    windows: Annotated[
        Literal["auto", "off"],
        Query(
            description="auto: inputs longer than the run's window (its training lengths) "
            "are scored in windows, the video score their maximum; off: whole, as the paper"
        ),
    ] = "auto",
) -> ScoreOptions:
    """The request's segment rules and windowing (query parameters of both score endpoints)."""
    return ScoreOptions(
        threshold=threshold,
        smooth_s=smooth_s,
        min_segment_s=min_segment_s,
        merge_gap_s=merge_gap_s,
        windows=windows == "auto",
    )


def _query_names(route: APIRoute) -> tuple[str, ...]:
    """The query parameters ``route`` takes, its dependencies' included."""
    names: list[str] = []
    todo = [route.dependant]
    while todo:
        dependant = todo.pop()
        names += [f.alias for f in dependant.query_params if f.alias not in names]
        todo += dependant.dependencies
    return tuple(names)


async def reject_unknown_query(request: Request) -> None:
    """422 for a query parameter the route does not take, or one given twice (it would be
    silently ignored), naming those it takes and the closest one."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    if not request.query_params:
        return
    known = _query_names(route)
    given = [k for k, _ in request.query_params.multi_items()]
    unknown = [k for k in dict.fromkeys(given) if k not in known]
    if not unknown:
        twice = [k for k in dict.fromkeys(given) if given.count(k) > 1]
        if twice:  # each takes one value: all but one would be ignored
            raise UnknownParameterError(
                f"query parameter {twice[0]!r} given more than once: give it once"
                + (" (several runs: runs=a,b)" if twice[0] == RUNS_FIELD else "")
            )
        return
    takes = f"it takes {', '.join(known)}" if known else "it takes no query parameters"
    hints = [
        f"{name!r} instead of {k!r}"
        for k in unknown
        for name in difflib.get_close_matches(k, known, n=1, cutoff=0.6)
    ]
    raise UnknownParameterError(
        f"unknown query parameter{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} "
        f"for {request.method} {route.path_format}: {takes}"
        + (f" (did you mean {', '.join(hints)}?)" if hints else "")
    )


ServiceDep = Annotated[ScoringService, Depends(get_service)]
OptionsDep = Annotated[ScoreOptions, Depends(score_options)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def _timeout(settings: Settings) -> asyncio.Timeout:
    return asyncio.timeout(settings.request_timeout_s)


# ------------------------------------------------------------------ path checks


def _check_dataset(dataset: str) -> str:
    """The store's own rule for dataset names (they are path components of the store)."""
    try:
        return check_name("dataset", dataset)
    except StoreError:
        raise UnknownDatasetError(f"no dataset {dataset!r}: not a valid dataset name") from None


def _check_video_id(video_id: str) -> str:
    """Any non-empty string, as the store accepts: an id is a key looked up in the store's
    index and manifest, never joined to a file path, so '..' or '/' in it reach no file."""
    if not video_id:
        raise UnknownVideoError("no video '': ids are non-empty")
    return video_id


# ------------------------------------------------------------------ routes

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Detail} for code in (400, 401, 404, 408, 413, 415, 422, 503, 504)
}

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "runs": {
                            "type": "string",
                            "description": "comma-separated run names (default: every loaded "
                            "run that can score the upload); or as the runs query parameter",
                        },
                    },
                }
            }
        },
    }
}

v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=_ERRORS)


def _run_names(text: str | None) -> list[str] | None:
    """``a,b`` -> run names; None or blank: every loaded run."""
    names = [r.strip() for r in (text or "").split(",") if r.strip()]
    return names or None


ExplainQuery = Annotated[
    Literal["spatial"] | None,
    Query(
        description="spatial: add each run's spatial explanation (probe runs on visual encoders)"
    ),
]
ExplainFramesQuery = Annotated[
    int,
    Query(
        ge=1,
        le=SPATIAL_MAX_FRAMES,
        description="frames explained per run: the highest-scoring rows (16 x 16 cells each)",
    ),
]


@v1.post("/score", response_model=ScoreResponse, openapi_extra=_UPLOAD_BODY)
async def score_upload(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    options: OptionsDep,
    explain: ExplainQuery = None,
    explain_frames: ExplainFramesQuery = SPATIAL_DEFAULT_FRAMES,
    segment: Annotated[
        bool,
        Query(
            description="cut the upload into single-speaker segments first (as the paper does "
            "for Deepfake-Eval-2024) and score each; the video's verdict is their maximum; "
            "422 when it has none"
        ),
    ] = False,
    runs: Annotated[
        str | None,
        Query(
            description="comma-separated run names (see /v1/models), here or as the form "
            "field, not both; each must score the upload (422 otherwise). Default: every loaded "
            "run that can, the others listed under skipped with the reason"
        ),
    ] = None,
) -> ScoreResponse:
    """Score an uploaded video (multipart ``file``) with the loaded runs, or those in ``runs``
    (query parameter or form field); ``?explain=spatial`` adds spatial explanations; with
    ``segment=true``, in single-speaker segments."""
    service.check_ready()
    query_runs = _run_names(runs)
    if query_runs:
        service.upload_runs(query_runs)  # unknown runs fail before the upload is read
    if segment:
        if explain:
            raise SegmentOptionsError(
                "explain=spatial cannot be combined with segment=true yet: score in segments, "
                "then explain a segment cut to a file"
            )
        service.asd_detector()  # a server that cannot segment says so before the upload
    received_at: float | None = None
    try:
        async with (
            _timeout(settings) as deadline,
            receive_upload(
                request,
                max_bytes=settings.max_upload_bytes,
                max_parts=settings.max_form_parts,
                max_field_bytes=settings.max_field_bytes,
                directory=settings.upload_dir,
                fields=(RUNS_FIELD,),
            ) as upload,
        ):
            received_at = asyncio.get_running_loop().time()
            metrics.upload_bytes.inc(upload.size_bytes)
            chosen = query_runs
            if RUNS_FIELD in upload.fields:
                if runs is not None:
                    raise UnknownParameterError(
                        "runs was given both as a query parameter and as a form field: give it once"
                    )
                chosen = _run_names(upload.fields[RUNS_FIELD])
            service.upload_runs(chosen)  # unknown runs fail before decoding
            await asyncio.to_thread(check_duration, upload.path, settings.max_duration_s)
            extra: dict[str, Any] = {"explain_frames": explain_frames} if explain else {}
            if segment:
                extra["segment"] = True
            return await service.score_upload(
                str(upload.path), chosen, filename=upload.filename, options=options, **extra
            )
    except TimeoutError:
        when = deadline.when()
        if received_at is not None and when is not None and received_at < when:
            raise  # the upload came in time: our own slowness, 504
        raise UploadTimeoutError(
            f"the upload was not received within {settings.request_timeout_s:g} s (--timeout-s)"
        ) from None


@v1.get("/datasets", response_model=DatasetsResponse)
async def list_datasets(service: ServiceDep, settings: SettingsDep) -> DatasetsResponse:
    """Datasets in the store: videos, labels, official splits, views and stored encoders."""
    async with _timeout(settings):
        return await asyncio.to_thread(service.datasets)


class _VideoIdConvertor(PathConvertor):
    """Starlette's ``path`` (``.*``) stops at a newline; the store takes any string as an id."""

    regex = r"[\s\S]*"


register_url_convertor(_VIDEO_ID_CONVERTOR, _VideoIdConvertor())


@v1.get(
    f"/datasets/{{dataset}}/videos/{{video_id:{_VIDEO_ID_CONVERTOR}}}/scores",
    response_model=StoredScoreResponse,
)
async def stored_scores(
    dataset: Annotated[str, Path(description="dataset name")],
    video_id: Annotated[
        str,
        Path(
            description="video id, e.g. train/id0001/clip, percent-encoded as "
            "urllib.parse.quote(id, safe='') or encodeURIComponent(id) do; any id the store "
            "holds works (spaces, non-ASCII, '%', '#', '?', '/')"
        ),
    ],
    service: ServiceDep,
    settings: SettingsDep,
    options: OptionsDep,
    run: Annotated[
        str | None,
        Query(
            description="run name (see /v1/models); may be left out when one run is loaded "
            "(422 naming them when several are)"
        ),
    ] = None,
    explain: ExplainQuery = None,
    explain_frames: ExplainFramesQuery = SPATIAL_DEFAULT_FRAMES,
) -> StoredScoreResponse:
    """Scores and fake segments of a stored video, from its stored features (no encoder);
    ``?explain=spatial`` adds spatial explanations from its media."""
    _check_dataset(dataset)
    _check_video_id(video_id)
    extra = {"explain_frames": explain_frames} if explain else {}
    async with _timeout(settings):
        return await asyncio.to_thread(
            functools.partial(
                service.score_stored, dataset, video_id, run, options=options, **extra
            )
        )


@v1.get("/models", response_model=ModelsResponse)
async def list_models(service: ServiceDep) -> ModelsResponse:
    """Loaded runs: kind, inputs (encoder, layer, checkpoint of each feature), and each
    evaluation in their metrics.json with its headline numbers (AUC, AP, EER, temporal AUC,
    AP/AR)."""
    return await asyncio.to_thread(service.models)


health = APIRouter()


@health.get("/healthz", response_model=ReadyResponse)
async def healthz() -> ReadyResponse:
    """Liveness: the process answers."""
    return ReadyResponse(status="ok")


@health.get("/readyz", response_model=ReadyResponse, responses={503: {"model": Detail}})
async def readyz(service: ServiceDep) -> Any:
    """Readiness: 200 once models are loaded and warmed up, 503 before (or if loading failed)."""
    if service.ready:
        return ReadyResponse(status="ready")
    detail = f"models failed to load: {service.error}" if service.error else "models are loading"
    return JSONResponse({"detail": detail}, status_code=503)


@health.get(
    "/metrics",
    dependencies=[Depends(require_api_key)],
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics_endpoint(metrics: MetricsDep) -> Response:
    """Prometheus text: requests and latency per endpoint/status, upload bytes, batch sizes."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


# ------------------------------------------------------------------ app


def _status(exc: BaseException) -> int:
    return next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)


def _message(exc: BaseException) -> str:
    if isinstance(exc, NoAudioStreamError | NoVideoStreamError):  # not Python's advice
        stream = "audio" if isinstance(exc, NoAudioStreamError) else "video"
        return f"the upload has no {stream} stream, which the runs scoring it need"
    if isinstance(exc, MediaError):  # the decoder's reason, not our temporary path
        return f"cannot decode the upload: {exc.reason}"
    return str(exc.args[0]) if exc.args else type(exc).__name__


async def _featstore_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": _message(exc)}, status_code=_status(exc))


async def _timeout_error(request: Request, exc: Exception) -> JSONResponse:
    settings: Settings = request.app.state.settings
    return JSONResponse(
        {"detail": f"request took longer than {settings.request_timeout_s:g} s"}, status_code=504
    )


async def _unauthorized(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": "X-API-Key"}
    )


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client left mid-request (nginx's 499): nobody reads this answer; metrics count it."""
    log.info("client went away during %s %s", request.method, request.url.path)
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def create_app(settings: Settings, *, service: ScoringService | None = None) -> FastAPI:
    """The app for ``settings``; ``service`` replaces the real one (tests)."""
    metrics = Metrics()
    api_key = settings.api_key()  # fails now when --api-key-env names an unset variable
    service = service or ScoringService(settings, on_batch=metrics.observe_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_load(service), name="load-models")
        try:
            yield
        finally:
            if not loading.done():
                loading.cancel()
            await service.close()

    app = FastAPI(
        title="featstore scoring service",
        version="1",
        summary="Deepfake scores of uploaded and stored videos from self-supervised features.",
        lifespan=lifespan,
        dependencies=[Depends(reject_unknown_query)],
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = service
    app.state.api_key = api_key
    app.include_router(health)
    app.include_router(v1)
    app.add_exception_handler(FeatstoreError, _featstore_error)
    app.add_exception_handler(TimeoutError, _timeout_error)
    app.add_exception_handler(_Unauthorized, _unauthorized)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _internal)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


async def _load(service: ScoringService) -> None:
    """Load in a worker thread so liveness answers while big checkpoints load."""
    if service.ready:
        return
    try:
        await asyncio.to_thread(service.load)
    except Exception as exc:
        service.error = f"{type(exc).__name__}: {exc}"
        log.error("could not load models: %s", service.error)
