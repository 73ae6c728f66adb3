"""ktrdr-sandbox's STAND-IN for Jaeger all-in-one: not Jaeger, a span sink with Jaeger's ports.

No registry reachable from this workplace ships Jaeger, so offline slots run this instead.
It stores nothing; it counts what it receives and shows the counts:
  16686  UI: GET / (a page saying this is a stand-in), GET /api/services (empty, Jaeger's
         shape), GET /api/standin/stats (counters as JSON; OTLP/JSON spans also by service,
         "service.namespace/service.name", so a test can tell which slot's traces arrived)
  4318   OTLP/HTTP: POST /v1/traces with JSON or protobuf (optionally gzip) -> 200 and an
         empty ExportTraceServiceResponse in the request's encoding
  4317   OTLP/gRPC: just enough HTTP/2 (cleartext, prior knowledge) to answer every call with
         OK and an empty message, so exporters pointed here do not time out and complain
  14269  admin: GET / (health, as Jaeger's admin port), GET /metrics (counters)
COLLECTOR_OTLP_ENABLED and other Jaeger variables are accepted and ignored.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from httpkit import Request, Response, Shutdown, TcpServer, json_response, log, serve_http
from standin_common import (
    HTTP_RULES,
    banner,
    html_page,
    message_error,
    run_until_signal,
    serve_tcp,
)

NAME = "jaeger-standin"
UI_PORT, OTLP_GRPC_PORT, OTLP_HTTP_PORT, ADMIN_PORT = 16686, 4317, 4318, 14269
JSON_TYPES = ("application/json",)
PROTOBUF_TYPES = ("application/x-protobuf", "application/protobuf")
GRPC_IDLE_TIMEOUT_SECONDS = 300.0
GRPC_MAX_STREAM_BYTES = 16 * 1024 * 1024


class Stats:
    """What arrived since start. Threads share one instance, hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started_at = time.time()
        self.counts = {
            "otlp_http_requests": 0,
            "otlp_http_spans": 0,
            "otlp_http_rejected": 0,
            "grpc_connections": 0,
            "grpc_calls": 0,
            "grpc_spans": 0,
        }
        # Only OTLP/JSON exports are read this far (protobuf and gRPC are counted, not parsed
        # for their resource): spans by "service.namespace/service.name".
        self.json_spans_by_service: dict[str, int] = {}

    def add(self, **increments: int) -> None:
        with self._lock:
            for key, value in increments.items():
                self.counts[key] += value

    def add_services(self, spans: dict[str, int]) -> None:
        with self._lock:
            for service, count in spans.items():
                self.json_spans_by_service[service] = (
                    self.json_spans_by_service.get(service, 0) + count
                )

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def services(self) -> dict[str, int]:
        with self._lock:
            return dict(self.json_spans_by_service)


STATS = Stats()


# --- counting spans --------------------------------------------------------------------------


def count_spans_json(document: Any) -> int:
    """Spans in an OTLP/JSON ExportTraceServiceRequest (camelCase, or snake_case too)."""
    if not isinstance(document, dict):
        raise ValueError("an OTLP/JSON trace export must be a JSON object")
    spans = 0
    for resource in document.get("resourceSpans") or document.get("resource_spans") or []:
        if not isinstance(resource, dict):
            continue
        scopes = (
            resource.get("scopeSpans")
            or resource.get("scope_spans")
            or resource.get("instrumentationLibrarySpans")  # before OTLP 0.15
            or []
        )
        for scope in scopes:
            if isinstance(scope, dict):
                spans += len(scope.get("spans") or [])
    return spans


def _resource_service(resource: dict[str, Any]) -> str:
    """ "namespace/name" from a resource's service.namespace and service.name ("?" unnamed)."""
    found: dict[str, str] = {}
    attributes = (resource.get("resource") or {}).get("attributes") or []
    for attribute in attributes if isinstance(attributes, list) else []:
        if isinstance(attribute, dict) and attribute.get("key") in (
            "service.name",
            "service.namespace",
        ):
            value = (attribute.get("value") or {}).get("stringValue")
            if isinstance(value, str):
                found[attribute["key"]] = value
    name = found.get("service.name", "?")
    return f"{found['service.namespace']}/{name}" if "service.namespace" in found else name


def spans_by_service_json(document: Any) -> dict[str, int]:
    """Spans of an OTLP/JSON export by their resource's service (see `_resource_service`)."""
    found: dict[str, int] = {}
    if not isinstance(document, dict):
        return found
    for resource in document.get("resourceSpans") or document.get("resource_spans") or []:
        if isinstance(resource, dict):
            spans = count_spans_json({"resourceSpans": [resource]})
            if spans:
                service = _resource_service(resource)
                found[service] = found.get(service, 0) + spans
    return found


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def protobuf_fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field of one protobuf message.

    Length-delimited values come back as bytes, so nested messages can be walked the same
    way. Enough of the wire format (protobuf.dev/programming-guides/encoding) to count spans.
    """
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated field")
        yield number, wire, value


def count_spans_protobuf(buf: bytes) -> int:
    """Spans in a protobuf ExportTraceServiceRequest.

    request.resource_spans = 1; ResourceSpans.scope_spans = 2 (instrumentation_library_spans
    = 1000 before OTLP 0.15); ScopeSpans.spans = 2.
    """
    spans = 0
    for number, wire, resource in protobuf_fields(buf):
        if number != 1 or wire != 2:
            continue
        for number2, wire2, scope in protobuf_fields(resource):
            if number2 in (2, 1000) and wire2 == 2:
                spans += sum(1 for n, w, _ in protobuf_fields(scope) if n == 2 and w == 2)
    return spans


# --- OTLP/HTTP, UI and admin -----------------------------------------------------------------


def otlp_http_route(request: Request) -> Response:
    if request.path != "/v1/traces":
        return message_error(404, "the Jaeger stand-in accepts POST /v1/traces only")
    if request.method != "POST":
        return message_error(405, "use POST")
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    try:
        if content_type in JSON_TYPES:
            document = json.loads(request.body or b"{}")
            spans = count_spans_json(document)
            STATS.add_services(spans_by_service_json(document))
            reply = Response(200, b"{}", "application/json")
        elif content_type in PROTOBUF_TYPES:
            spans = count_spans_protobuf(request.body)
            reply = Response(200, b"", content_type)  # an empty ExportTraceServiceResponse
        else:
            STATS.add(otlp_http_rejected=1)
            return message_error(415, "send application/json or application/x-protobuf")
    except (ValueError, UnicodeDecodeError) as exc:
        STATS.add(otlp_http_rejected=1)
        return message_error(400, f"cannot decode the trace export: {exc}")
    STATS.add(otlp_http_requests=1, otlp_http_spans=spans)
    return reply


def _ui_page() -> bytes:
    counts = STATS.snapshot()
    spans = counts["otlp_http_spans"] + counts["grpc_spans"]
    return html_page(
        "ktrdr-sandbox Jaeger stand-in",
        [
            "This is <strong>not Jaeger</strong>. It is a small placeholder that ktrdr-sandbox "
            "runs when the real Jaeger all-in-one image cannot be pulled (an offline machine).",
            "It accepts OTLP trace exports on ports 4317 (gRPC) and 4318 (HTTP), counts them "
            "and throws them away: there is no trace search and no storage here.",
            f"Received since start: {counts['otlp_http_requests']} OTLP/HTTP exports, "
            f"{counts['grpc_calls']} OTLP/gRPC calls, {spans} spans in all.",
            "To see traces, run the slot with the upstream Jaeger image on a machine that can "
            "reach a container registry.",
        ],
    )


def ui_route(request: Request) -> Response:
    if request.method != "GET":
        return message_error(405, "use GET")
    if request.path in ("/", "/search"):
        return Response(200, _ui_page(), "text/html; charset=utf-8")
    if request.path == "/api/services":
        return json_response(200, {"data": [], "total": 0, "limit": 0, "offset": 0, "errors": None})
    if request.path == "/api/standin/stats":
        stats: dict[str, Any] = {"standin": True, "imitates": "Jaeger all-in-one"}
        stats |= STATS.snapshot()
        stats["otlp_http_json_spans_by_service"] = STATS.services()
        return json_response(200, stats)
    return message_error(404, "not found (Jaeger stand-in)")


def admin_route(request: Request) -> Response:
    if request.method != "GET":
        return message_error(405, "use GET")
    if request.path == "/":
        uptime = time.time() - STATS.started_at
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(STATS.started_at))
        health = {"status": "Server available", "upSince": started, "uptime": f"{uptime:.0f}s"}
        return json_response(200, {**health, "standin": True})
    if request.path == "/metrics":
        lines = []
        for key, value in sorted(STATS.snapshot().items()):
            metric = f"jaeger_standin_{key}_total"
            lines += [f"# TYPE {metric} counter", f"{metric} {value}"]
        return Response(200, ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4")
    return message_error(404, "not found (Jaeger stand-in admin)")


# --- OTLP/gRPC: the least HTTP/2 that answers a unary call (RFC 9113, RFC 7541) ---------------

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0,
    1,
    3,
    4,
    6,
    7,
    8,
    9,
)
FLAG_END_STREAM = FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
# HPACK with literals only, so there is no compression state to keep: 0x88 is ":status: 200"
# (static table entry 8); 0x0f 0x10 is "literal, not indexed, name = static entry 31
# (content-type)"; then a 16-byte plain string. Trailers: a literal with a new name.
RESPONSE_HEADER_BLOCK = b"\x88\x0f\x10\x10application/grpc"
TRAILER_BLOCK = b"\x00\x0bgrpc-status\x010"
# gRPC framing: not compressed, length 0 -> an empty Export*ServiceResponse.
EMPTY_GRPC_MESSAGE = b"\x00\x00\x00\x00\x00"
HTTP1_REPLY = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
    b"This port speaks OTLP/gRPC (HTTP/2). It is the ktrdr-sandbox Jaeger stand-in.\n"
)


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + (stream & 0x7FFFFFFF).to_bytes(4, "big")
        + payload
    )


def grpc_messages(body: bytes) -> Iterator[bytes]:
    """The messages in a gRPC request body: 1 byte 'compressed', 4 bytes length, message."""
    pos = 0
    while pos + 5 <= len(body):
        compressed = body[pos]
        size = int.from_bytes(body[pos + 1 : pos + 5], "big")
        message = body[pos + 5 : pos + 5 + size]
        pos += 5 + size
        yield gzip.decompress(message) if compressed else message


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


class GrpcConnection(socketserver.BaseRequestHandler):
    """One client connection: answer every gRPC call with OK and an empty message."""

    request: socket.socket

    def handle(self) -> None:
        sock = self.request
        sock.settimeout(GRPC_IDLE_TIMEOUT_SECONDS)
        STATS.add(grpc_connections=1)
        # The client went away or sent something we cannot follow: drop it.
        with contextlib.suppress(OSError, ValueError):
            self._converse(sock)

    def _converse(self, sock: socket.socket) -> None:
        preface = _recv_exact(sock, len(H2_PREFACE))
        if preface != H2_PREFACE:
            if preface and preface[:4] in (b"GET ", b"POST", b"HEAD", b"PUT "):
                sock.sendall(HTTP1_REPLY)
            return
        sock.sendall(h2_frame(SETTINGS, 0, 0))  # the server preface: default settings
        bodies: dict[int, bytearray] = {}
        ended_awaiting_headers: set[int] = set()
        while True:
            header = _recv_exact(sock, 9)
            if header is None:
                return
            length = int.from_bytes(header[:3], "big")
            kind, flags = header[3], header[4]
            stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
            payload = _recv_exact(sock, length) if length else b""
            if payload is None:
                return
            if kind == SETTINGS and not flags & FLAG_ACK:
                sock.sendall(h2_frame(SETTINGS, FLAG_ACK, 0))
            elif kind == PING and not flags & FLAG_ACK:
                sock.sendall(h2_frame(PING, FLAG_ACK, 0, payload))
            elif kind in (HEADERS, CONTINUATION):
                bodies.setdefault(stream, bytearray())
                if kind == HEADERS and flags & FLAG_END_STREAM:
                    ended_awaiting_headers.add(stream)
                if flags & FLAG_END_HEADERS and stream in ended_awaiting_headers:
                    ended_awaiting_headers.discard(stream)
                    self._answer(sock, stream, bodies.pop(stream, bytearray()))
            elif kind == DATA:
                data = payload
                if flags & FLAG_PADDED and payload:
                    data = payload[1 : len(payload) - payload[0]]
                body = bodies.setdefault(stream, bytearray())
                if len(body) + len(data) > GRPC_MAX_STREAM_BYTES:
                    raise ValueError("gRPC request too large")
                body += data
                if length:  # give back the flow-control credit the frame used
                    update = length.to_bytes(4, "big")
                    sock.sendall(h2_frame(WINDOW_UPDATE, 0, 0, update))
                    if not flags & FLAG_END_STREAM:
                        sock.sendall(h2_frame(WINDOW_UPDATE, 0, stream, update))
                if flags & FLAG_END_STREAM:
                    self._answer(sock, stream, bodies.pop(stream))
            elif kind == RST_STREAM:
                bodies.pop(stream, None)
            elif kind == GOAWAY:
                return

    @staticmethod
    def _answer(sock: socket.socket, stream: int, body: bytes | bytearray) -> None:
        spans = 0
        # Not a trace export we can read (other service, other compression): count no spans.
        with contextlib.suppress(ValueError, OSError, EOFError):
            spans = sum(count_spans_protobuf(m) for m in grpc_messages(bytes(body)))
        STATS.add(grpc_calls=1, grpc_spans=spans)
        sock.sendall(
            h2_frame(HEADERS, FLAG_END_HEADERS, stream, RESPONSE_HEADER_BLOCK)
            + h2_frame(DATA, 0, stream, EMPTY_GRPC_MESSAGE)
            + h2_frame(HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, stream, TRAILER_BLOCK)
        )


def start(shutdown: Shutdown) -> list[TcpServer]:
    return [
        serve_http(ui_route, UI_PORT, shutdown, NAME, ["/"], HTTP_RULES),  # "/": healthcheck
        serve_http(otlp_http_route, OTLP_HTTP_PORT, shutdown, NAME, ["/v1/traces"], HTTP_RULES),
        serve_http(admin_route, ADMIN_PORT, shutdown, NAME, ["/", "/metrics"], HTTP_RULES),
        serve_tcp(OTLP_GRPC_PORT, NAME, GrpcConnection),
    ]


def main() -> int:
    banner(
        NAME,
        "Jaeger all-in-one",
        {
            UI_PORT: "UI (a page saying this is a stand-in)",
            OTLP_GRPC_PORT: "OTLP/gRPC (calls answered OK, spans counted, then dropped)",
            OTLP_HTTP_PORT: "OTLP/HTTP POST /v1/traces (counted, then dropped)",
            ADMIN_PORT: "admin: GET / health, GET /metrics",
        },
    )
    log(NAME, "no spans are stored: this stand-in only counts them")
    return run_until_signal(NAME, start)


if __name__ == "__main__":
    sys.exit(main())
