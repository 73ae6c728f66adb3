"""ktrdr-sandbox's STAND-IN for Grafana: not Grafana, just its health endpoint on port 3000.

No registry reachable from this workplace ships Grafana, so offline slots run this instead:
  GET /api/health  200 {"database": "ok", "version": "standin", "commit": "..."}
  GET /            200 an HTML page saying this is a stand-in
Everything else is 404. GF_* variables are accepted and ignored.
"""

from __future__ import annotations

import sys

from httpkit import Request, Response, Shutdown, TcpServer, json_response, serve_http
from standin_common import HTTP_RULES, banner, html_page, message_error, run_until_signal

NAME = "grafana-standin"
PORT = 3000
HEALTH = {"database": "ok", "version": "standin", "commit": "ktrdr-sandbox-grafana-standin"}

PAGE = html_page(
    "ktrdr-sandbox Grafana stand-in",
    [
        "This is <strong>not Grafana</strong>. It is a small placeholder that ktrdr-sandbox "
        "runs when the real Grafana image cannot be pulled (an offline machine).",
        "It answers <code>GET /api/health</code> so that the slot's health checks pass. "
        "There are no dashboards, data sources or users here.",
        "To get the real Grafana, run the slot with upstream images on a machine that can "
        "reach a container registry.",
    ],
)


def route(request: Request) -> Response:
    if request.method != "GET":
        return message_error(405, "Method Not Allowed")
    if request.path == "/api/health":
        return json_response(200, HEALTH)
    if request.path in ("/", "/login"):
        return Response(200, PAGE, "text/html; charset=utf-8")
    return message_error(404, "Not found (Grafana stand-in)")


def start(shutdown: Shutdown) -> list[TcpServer]:
    return [serve_http(route, PORT, shutdown, NAME, ["/api/health"], HTTP_RULES)]


def main() -> int:
    banner(NAME, "Grafana", {PORT: "HTTP: GET /api/health, GET /"})
    return run_until_signal(NAME, start)


if __name__ == "__main__":
    sys.exit(main())
