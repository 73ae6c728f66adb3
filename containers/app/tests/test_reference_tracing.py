"""The reference app's span export: the OTLP/JSON document, and a real POST to a local sink."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from httpkit import Request
from ktrdr_reference.backend import Backend, Settings
from ktrdr_reference.tracing import Tracer, export_document


def test_export_document_is_one_server_span_with_its_resource() -> None:
    doc = export_document(
        "svc", {"service.namespace": "ktrdr-sandbox-3", "ktrdr.slot": 3}, "GET /x", 1, 2, {}
    )
    [resource] = doc["resourceSpans"]
    attributes = {a["key"]: a["value"] for a in resource["resource"]["attributes"]}
    assert attributes == {
        "service.name": {"stringValue": "svc"},
        "service.namespace": {"stringValue": "ktrdr-sandbox-3"},
        "ktrdr.slot": {"intValue": "3"},
    }
    [span] = resource["scopeSpans"][0]["spans"]
    assert (span["name"], span["kind"], span["startTimeUnixNano"]) == ("GET /x", 2, "1")
    assert len(span["traceId"]) == 32 and len(span["spanId"]) == 16


class Sink(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Sink.received.append((self.path, json.loads(body)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def sink() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    Sink.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()


def test_backend_exports_a_span_per_api_request_but_not_probes(sink: str) -> None:
    tracer = Tracer(sink, "ktrdr-reference-backend", {"service.namespace": "p"})

    class Store:
        def ensure_ready(self) -> None:
            """Always ready."""

        def all_workers(self) -> list[dict[str, Any]]:
            return []

    backend = Backend(Settings.from_env({}), Store(), tracer=tracer)  # type: ignore[arg-type]
    backend.handle(Request.from_target("GET", "/metrics"))
    backend.handle(Request.from_target("GET", "/nope"))
    backend.handle(Request.from_target("DELETE", "/api/v1/workers"))  # 405: still a request
    deadline = time.monotonic() + 5
    while not Sink.received and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # anything else queued would have arrived by now
    assert [path for path, _ in Sink.received] == ["/v1/traces"]
    [span] = Sink.received[0][1]["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert span["name"] == "DELETE /api/v1/workers"
    attributes = {a["key"]: a["value"] for a in span["attributes"]}
    assert attributes["http.status_code"] == {"intValue": "405"}


def test_no_endpoint_exports_nothing() -> None:
    tracer = Tracer.from_env({}, "svc", {})
    assert tracer.endpoint is None
    tracer.span("x", 1, 2, {})  # a no-op, no thread, no error
