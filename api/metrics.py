"""Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "MetricsMiddleware"]

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)


class Metrics:
    """Request counts and latencies per endpoint and status, upload bytes, batch sizes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "featstore_http_requests",
            "HTTP requests by endpoint (route template), method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "featstore_http_request_duration_seconds",
            "HTTP request latency by endpoint, method and status",
            ["endpoint", "method", "status"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "featstore_upload_bytes", "Bytes of uploaded media received", registry=self.registry
        )
        self.batch_size = Histogram(
            "featstore_encoder_batch_size",
            "Clips per encoder forward (micro-batching)",
            ["encoder"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )

    def observe_batch(self, encoder: str, size: int) -> None:
        self.batch_size.labels(encoder=encoder).observe(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request by its route template."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # the route's template without convertors: {video_id}, not {video_id:...}
            endpoint = getattr(route, "path_format", None) or "unmatched"
            labels = {
                "endpoint": endpoint,
                "method": scope.get("method", ""),
                "status": str(status["code"]),
            }
            self.metrics.requests.labels(**labels).inc()
            self.metrics.latency.labels(**labels).observe(time.perf_counter() - start)
