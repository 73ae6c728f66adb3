"""ktrdr-sandbox's STAND-IN for Grafana: not Grafana, just its health endpoint on port 3000.

No registry reachable from this workplace ships Grafana, so offline slots run this instead:
  GET /api/health  200 {"database": "ok", "version": "standin", "commit": "..."}
  GET /            200 an HTML page saying this is a stand-in
Everything else is 404. GF_* variables are accepted and ignored.
"""

from __future__ import annotations

import json
import sys

from standin_common import Incoming, Reply, banner, html_page, run_until_signal, serve_http

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


def route(request: Incoming) -> Reply:
    if request.method != "GET":
        return Reply(405, json.dumps({"message": "Method Not Allowed"}).encode())
    if request.path == "/api/health":
        return Reply(200, json.dumps(HEALTH).encode())
    if request.path in ("/", "/login"):
        return Reply(200, PAGE, "text/html; charset=utf-8")
    return Reply(404, json.dumps({"message": "Not found (Grafana stand-in)"}).encode())


def main() -> int:
    banner(NAME, "Grafana", {PORT: "HTTP: GET /api/health, GET /"})
    return run_until_signal(NAME, lambda: [serve_http(PORT, NAME, route, quiet=["/api/health"])])


if __name__ == "__main__":
    sys.exit(main())
