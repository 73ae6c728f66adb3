"""Trace export for the reference app: one span per API request, sent as OTLP/HTTP JSON.

KTRDR exports its traces with OpenTelemetry's SDK over OTLP/gRPC (KTRDR_OTEL_OTLP_ENDPOINT).
The reference app has no dependencies beyond the standard library and psycopg2, so it speaks
the simplest OTLP encoding instead: JSON over HTTP (opentelemetry.io/docs/specs/otlp/#otlphttp)
to OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, the standard variable. Unset: nothing is exported.

Export never slows a request down or fails it: spans go through a bounded queue to one
background thread, and a full queue or an unreachable collector drops them (said once in the
log, not per span).
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from httpkit import log

QUEUE_SIZE = 1000
EXPORT_TIMEOUT_SECONDS = 3.0
SPAN_KIND_SERVER = 2
ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
# No proxies: the collector is a container on the slot's (or the shared) network.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _attribute(key: str, value: str | int) -> dict[str, Any]:
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": value}}


def export_document(
    service: str,
    resource: Mapping[str, str | int],
    name: str,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, str | int],
) -> dict[str, Any]:
    """An OTLP/JSON ExportTraceServiceRequest holding one server span."""
    span = {
        "traceId": secrets.token_hex(16),
        "spanId": secrets.token_hex(8),
        "name": name,
        "kind": SPAN_KIND_SERVER,
        "startTimeUnixNano": str(start_ns),
        "endTimeUnixNano": str(end_ns),
        "attributes": [_attribute(k, v) for k, v in attributes.items()],
    }
    resource_attributes = [_attribute("service.name", service)]
    resource_attributes += [_attribute(k, v) for k, v in resource.items()]
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": resource_attributes},
                "scopeSpans": [{"scope": {"name": "ktrdr_reference"}, "spans": [span]}],
            }
        ]
    }


class Tracer:
    """Sends spans to `endpoint` from a background thread; `None` endpoint: a no-op."""

    def __init__(
        self, endpoint: str | None, service: str, resource: Mapping[str, str | int]
    ) -> None:
        self.endpoint = endpoint
        self.service = service
        self.resource = dict(resource)
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(QUEUE_SIZE)
        self._warned = False
        if endpoint:
            threading.Thread(target=self._send_forever, name="otlp-export", daemon=True).start()

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], service: str, resource: Mapping[str, str | int]
    ) -> Tracer:
        return cls(env.get(ENDPOINT_VARIABLE, "").strip() or None, service, resource)

    def span(
        self, name: str, start_ns: int, end_ns: int, attributes: Mapping[str, str | int]
    ) -> None:
        if not self.endpoint:
            return
        document = export_document(self.service, self.resource, name, start_ns, end_ns, attributes)
        try:
            self._queue.put_nowait(document)
        except queue.Full:
            self._warn("the export queue is full: spans dropped")

    def _send_forever(self) -> None:
        while True:
            document = self._queue.get()
            request = urllib.request.Request(
                str(self.endpoint),
                data=json.dumps(document).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            try:
                with _OPENER.open(request, timeout=EXPORT_TIMEOUT_SECONDS) as response:
                    response.read()
            except (OSError, ValueError) as exc:
                self._warn(f"cannot export spans to {self.endpoint}: {exc}")

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log("tracing", f"{message} (said once; the app goes on)")
