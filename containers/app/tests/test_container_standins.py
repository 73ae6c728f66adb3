"""The Jaeger and Grafana stand-ins: span counting, OTLP replies, HTTP/2 framing, routes."""

from __future__ import annotations

import gzip
import io
import json

# The stand-ins are top-level modules (conftest puts containers/standins on sys.path).
import grafana_standin
import jaeger_standin
import pytest
from httpkit import BodyError, Request, Response, read_body
from jaeger_standin import (
    count_spans_json,
    count_spans_protobuf,
    grpc_messages,
    h2_frame,
    otlp_http_route,
    protobuf_fields,
)
from standin_common import HTTP_RULES


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def trace_request(spans_per_scope: list[int]) -> bytes:
    """An ExportTraceServiceRequest: one ResourceSpans per entry, one ScopeSpans each."""
    span = field(5, b"span-name") + varint(7 << 3 | 0) + varint(300)  # name, kind-ish varint
    out = b""
    for count in spans_per_scope:
        scope = field(1, field(1, b"scope")) + field(2, span) * count
        out += field(1, field(1, b"resource") + field(2, scope))
    return out


def test_count_spans_protobuf() -> None:
    assert count_spans_protobuf(trace_request([3, 2])) == 5
    assert count_spans_protobuf(b"") == 0


def test_protobuf_fields_reject_truncated_input() -> None:
    with pytest.raises(ValueError):
        list(protobuf_fields(field(1, b"abcdef")[:-2]))


def test_count_spans_json() -> None:
    doc: dict[str, object] = {
        "resourceSpans": [
            {"scopeSpans": [{"spans": [{}, {}]}, {"spans": [{}]}]},
            {"instrumentationLibrarySpans": [{"spans": [{}]}]},
        ]
    }
    assert count_spans_json(doc) == 4
    assert count_spans_json({}) == 0
    with pytest.raises(ValueError):
        count_spans_json([])


def test_json_spans_are_counted_by_service_and_shown_in_the_stats() -> None:
    def resource(name: str, namespace: str | None, spans: int) -> dict[str, object]:
        attributes = [{"key": "service.name", "value": {"stringValue": name}}]
        if namespace:
            attributes.append({"key": "service.namespace", "value": {"stringValue": namespace}})
        return {"resource": {"attributes": attributes}, "scopeSpans": [{"spans": [{}] * spans}]}

    doc = {"resourceSpans": [resource("api", "ktrdr-sandbox-3", 2), resource("cli", None, 1)]}
    assert jaeger_standin.spans_by_service_json(doc) == {"ktrdr-sandbox-3/api": 2, "cli": 1}
    before = jaeger_standin.STATS.services().get("ktrdr-sandbox-3/api", 0)
    assert post(json.dumps(doc).encode(), "application/json").status == 200
    stats = json.loads(jaeger_standin.ui_route(Request("GET", "/api/standin/stats", {}, b"")).body)
    assert stats["otlp_http_json_spans_by_service"]["ktrdr-sandbox-3/api"] == before + 2
    assert stats["standin"] is True


def post(body: bytes, content_type: str, path: str = "/v1/traces") -> Response:
    return otlp_http_route(Request("POST", path, {"content-type": content_type}, body))


def test_otlp_http_json_gets_an_empty_json_success() -> None:
    reply = post(b'{"resourceSpans": []}', "application/json; charset=utf-8")
    assert (reply.status, reply.body, reply.content_type) == (200, b"{}", "application/json")


def test_otlp_http_protobuf_gets_an_empty_protobuf_success() -> None:
    reply = post(trace_request([1]), "application/x-protobuf")
    assert (reply.status, reply.body, reply.content_type) == (200, b"", "application/x-protobuf")


@pytest.mark.parametrize(
    ("body", "content_type", "path", "status"),
    [
        (b"{", "application/json", "/v1/traces", 400),
        (b"\xff\xff", "application/x-protobuf", "/v1/traces", 400),
        (b"{}", "text/plain", "/v1/traces", 415),
        (b"{}", "application/json", "/v1/metrics", 404),
    ],
)
def test_otlp_http_rejects(body: bytes, content_type: str, path: str, status: int) -> None:
    assert post(body, content_type, path).status == status


def test_read_body_handles_chunked_and_gzip() -> None:
    payload = gzip.compress(b"hello world")
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    headers = {"transfer-encoding": "chunked", "content-encoding": "gzip"}
    assert read_body(headers, io.BytesIO(chunked), HTTP_RULES) == b"hello world"
    with pytest.raises(BodyError):
        read_body(
            {"content-length": "3", "content-encoding": "gzip"}, io.BytesIO(b"abc"), HTTP_RULES
        )


def test_grpc_messages_unframe_and_gunzip() -> None:
    plain, packed = b"abc", gzip.compress(b"xyz")
    body = b"\x00" + len(plain).to_bytes(4, "big") + plain
    body += b"\x01" + len(packed).to_bytes(4, "big") + packed
    assert list(grpc_messages(body)) == [b"abc", b"xyz"]


def test_h2_frame_layout() -> None:
    frame = h2_frame(jaeger_standin.SETTINGS, jaeger_standin.FLAG_ACK, 0)
    assert frame == b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"
    data = h2_frame(jaeger_standin.DATA, 0, 3, b"xy")
    assert data[:3] == b"\x00\x00\x02" and data[5:9] == b"\x00\x00\x00\x03" and data[9:] == b"xy"


def test_jaeger_ui_says_it_is_a_stand_in() -> None:
    reply = jaeger_standin.ui_route(Request("GET", "/", {}, b""))
    assert reply.status == 200
    assert b"not Jaeger" in reply.body
    assert jaeger_standin.admin_route(Request("GET", "/", {}, b"")).status == 200


def test_grafana_health_and_page() -> None:
    health = grafana_standin.route(Request("GET", "/api/health", {}, b""))
    assert health.status == 200
    assert json.loads(health.body) == {
        "database": "ok",
        "version": "standin",
        "commit": "ktrdr-sandbox-grafana-standin",
    }
    page = grafana_standin.route(Request("GET", "/", {}, b""))
    assert page.status == 200 and b"not Grafana" in page.body
    assert grafana_standin.route(Request("GET", "/api/dashboards", {}, b"")).status == 404
