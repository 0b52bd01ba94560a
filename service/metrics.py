"""Prometheus metrics in the text exposition format: request counts, latencies, bytes.

A few counters and one histogram kept in-process (one API process per registry); small
enough not to warrant a client library.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self._values: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        with self._lock:
            self._values[tuple(sorted(labels.items()))] += amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            items = list(self._values.items()) or [((), 0.0)]
        lines += [f"{self.name}{_labels(k)} {v}" for k, v in items]
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self._series: dict[tuple[tuple[str, str], ...], list[float]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(_BUCKETS) + 2))
            for i, bound in enumerate(_BUCKETS):
                if value <= bound:
                    series[i] += 1
            series[-2] += 1
            series[-1] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            items = [(k, list(v)) for k, v in self._series.items()]
        for key, series in items:
            for i, bound in enumerate(_BUCKETS):
                lines.append(f"{self.name}_bucket{_labels(key + (('le', str(bound)),))} "
                             f"{series[i]}")
            lines.append(f"{self.name}_bucket{_labels(key + (('le', '+Inf'),))} {series[-2]}")
            lines.append(f"{self.name}_count{_labels(key)} {series[-2]}")
            lines.append(f"{self.name}_sum{_labels(key)} {series[-1]}")
        return lines


def _labels(items: tuple[tuple[str, str], ...]) -> str:
    if not items:
        return ""
    body = ",".join(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                    for k, v in items)
    return "{" + body + "}"


REQUESTS = Counter("tabxai_http_requests_total", "HTTP requests by method, route and status.")
LATENCY = Histogram("tabxai_http_request_duration_seconds", "HTTP request latency.")
UPLOAD_BYTES = Counter("tabxai_upload_bytes_total", "Bytes received in uploads.")
_ALL = (REQUESTS, LATENCY, UPLOAD_BYTES)


def render_metrics() -> str:
    lines: list[str] = []
    for metric in _ALL:
        lines += metric.render()
    return "\n".join(lines) + "\n"


def install_metrics(app: FastAPI) -> None:
    @app.middleware("http")
    async def _measure(request: Request,
                       call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = _route_template(request)
            REQUESTS.inc(method=request.method, route=route, status=str(status))
            LATENCY.observe(time.perf_counter() - start, method=request.method, route=route)


def _route_template(request: Request) -> str:
    # The router records the matched route in the scope; its template keeps the label
    # set small (no ids in labels).
    route = request.scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(path) if path else "unmatched"
