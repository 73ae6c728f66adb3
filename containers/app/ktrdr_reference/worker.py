"""A reference KTRDR worker: `python3 -m ktrdr_reference.worker`.

Serves GET /health and GET /metrics (Prometheus text, as KTRDR's workers do) on
0.0.0.0:WORKER_PORT and registers with the backend from a background thread: retries every
0.25 s during start-up, then with a growing backoff (or the backend's Retry-After) until it
succeeds, then renews every RENEW_SECONDS, so a backend that lost its registrations
(restarted, database wiped) has this worker back within seconds. /health answers 200 whether
registered or not: the worker is alive either way, and `registered` says the rest.

Environment (missing or bad -> one line on stderr, exit status 2):
  WORKER_ID                  required, e.g. backtest-worker-1
  WORKER_TYPE                required, backtesting | training
  WORKER_PORT                required, the port to listen on
  WORKER_PUBLIC_BASE_URL     the endpoint_url it registers (default http://WORKER_ID:PORT)
  KTRDR_API_CLIENT_BASE_URL  the backend's API (default http://backend:8000/api/v1)
  SLOT_NUMBER                optional, reported in /health
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from httpkit import (
    Request,
    Response,
    Shutdown,
    error_response,
    json_response,
    log,
    one_line,
    serve_http,
    stop_servers,
    text_response,
)

from ktrdr_reference import __version__
from ktrdr_reference.common import (
    ConfigError,
    HttpReply,
    check_http_url,
    check_worker_id,
    check_worker_type,
    describe_error,
    env_int,
    env_optional_int,
    env_text,
    fail_config,
    http_request,
)

COMPONENT = "worker"
DEFAULT_API_BASE_URL = "http://backend:8000/api/v1"
# A stack starts together: the backend usually answers within a second or two of this worker.
# Retrying every 0.25 s for the first FAST_ATTEMPTS (about 10 s, enough for a loaded machine
# starting ten slots) registers us promptly; a refused connection costs next to nothing.
BACKOFF_FAST_SECONDS = 0.25
FAST_ATTEMPTS = 40
BACKOFF_MAX_SECONDS = 2.0
RETRY_AFTER_MAX_SECONDS = 30.0  # never let a backend's header park us for longer
RENEW_SECONDS = 15.0
REQUEST_TIMEOUT_SECONDS = 5.0
LOG_EVERY_N_FAILURES = 20  # about every 5 s at start-up, besides every change of reason


@dataclass(frozen=True)
class WorkerSettings:
    worker_id: str
    worker_type: str
    port: int
    public_url: str
    api_base_url: str
    slot: int | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerSettings:
        """Settings from the environment; ConfigError naming the variable that is wrong."""
        worker_id = _checked(check_worker_id, env_text(env, "WORKER_ID"), "WORKER_ID")
        worker_type = _checked(check_worker_type, env_text(env, "WORKER_TYPE"), "WORKER_TYPE")
        port = env_int(env, "WORKER_PORT", minimum=1, maximum=65535)
        public = env_text(env, "WORKER_PUBLIC_BASE_URL", f"http://{worker_id}:{port}")
        api = env_text(env, "KTRDR_API_CLIENT_BASE_URL", DEFAULT_API_BASE_URL)
        try:
            public_url = check_http_url(public, "WORKER_PUBLIC_BASE_URL")
            api_base_url = check_http_url(api, "KTRDR_API_CLIENT_BASE_URL")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return cls(
            worker_id=worker_id,
            worker_type=worker_type,
            port=port,
            public_url=public_url,
            api_base_url=api_base_url,
            slot=env_optional_int(env, "SLOT_NUMBER"),
        )

    @property
    def register_url(self) -> str:
        return f"{self.api_base_url}/workers/register"


def _checked(check: Callable[[str], str], value: str, variable: str) -> str:
    try:
        return check(value)
    except ValueError as exc:
        raise ConfigError(f"{variable}: {exc}") from None


def registration_payload(settings: WorkerSettings) -> dict[str, Any]:
    return {
        "worker_id": settings.worker_id,
        "worker_type": settings.worker_type,
        "endpoint_url": settings.public_url,
        "capabilities": {
            "reference_app": True,
            "version": __version__,
            "slot": settings.slot,
        },
    }


def backoff(failures: int) -> float:
    """The wait after the `failures`-th failure in a row: 0.25 s for the first FAST_ATTEMPTS,
    then doubling from 0.5 s, capped at 2 s."""
    if failures <= FAST_ATTEMPTS:
        return BACKOFF_FAST_SECONDS
    return min(BACKOFF_FAST_SECONDS * 2.0 ** (failures - FAST_ATTEMPTS), BACKOFF_MAX_SECONDS)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header; None when absent or not a number of seconds.

    (The HTTP-date form is not used by KTRDR's backend, so it falls back to the backoff.)
    """
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return min(seconds, RETRY_AFTER_MAX_SECONDS)


@dataclass(frozen=True)
class Attempt:
    ok: bool
    detail: str
    retry_after: float | None = None


def judge_reply(reply: HttpReply) -> Attempt:
    """What one answer to POST /workers/register means for the next step."""
    if 200 <= reply.status < 300:
        return Attempt(True, f"HTTP {reply.status}")
    detail = f"HTTP {reply.status}"
    try:
        body = json.loads(reply.body)
        if isinstance(body, dict) and "detail" in body:
            detail += f": {one_line(body['detail'], 200)}"
    except ValueError:
        pass
    retry_after = parse_retry_after(reply.headers.get("retry-after"))
    return Attempt(False, detail, retry_after if reply.status == 503 else None)


Sender = Callable[[str, dict[str, Any]], HttpReply]


def _post(url: str, payload: dict[str, Any]) -> HttpReply:
    return http_request(
        url,
        method="POST",
        payload=payload,
        timeout=REQUEST_TIMEOUT_SECONDS,
        user_agent=f"ktrdr-reference-worker/{__version__}",
    )


class Registrar:
    """Keeps this worker registered with the backend, from its own thread."""

    def __init__(
        self, settings: WorkerSettings, stopping: threading.Event, send: Sender = _post
    ) -> None:
        self.settings = settings
        self.component = f"{COMPONENT} {settings.worker_id}"
        self.stopping = stopping
        self.send = send
        self.registered = False  # the outcome of the latest attempt
        self.successes = 0

    def attempt(self) -> Attempt:
        try:
            reply = self.send(self.settings.register_url, registration_payload(self.settings))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return Attempt(False, describe_error(exc))
        return judge_reply(reply)

    def run(self) -> None:
        failures = 0
        last_detail = ""
        while not self.stopping.is_set():
            result = self.attempt()
            if result.ok:
                if not self.registered:
                    again = " again" if self.successes else ""
                    log(
                        self.component,
                        f"registered{again} with {self.settings.register_url} as "
                        f"{self.settings.worker_id} -> {self.settings.public_url}",
                    )
                self.registered = True
                self.successes += 1
                failures, last_detail = 0, ""
                self.stopping.wait(RENEW_SECONDS)
                continue
            self.registered = False
            failures += 1
            delay = result.retry_after if result.retry_after is not None else backoff(failures)
            if result.detail != last_detail or failures % LOG_EVERY_N_FAILURES == 0:
                log(
                    self.component,
                    f"registration attempt {failures} failed: {result.detail}; "
                    f"retrying in {delay:g}s",
                )
            last_detail = result.detail
            self.stopping.wait(delay)


def render_metrics(settings: WorkerSettings, registered: bool) -> str:
    """Prometheus text exposition format 0.0.4: the worker is up, and whether it registered."""
    labels = f'worker_id="{settings.worker_id}",worker_type="{settings.worker_type}"'
    lines = [
        "# HELP ktrdr_reference_worker_up 1 while the worker serves HTTP.",
        "# TYPE ktrdr_reference_worker_up gauge",
        f"ktrdr_reference_worker_up{{{labels}}} 1",
        "# HELP ktrdr_reference_worker_registered Whether its last registration succeeded.",
        "# TYPE ktrdr_reference_worker_registered gauge",
        f"ktrdr_reference_worker_registered{{{labels}}} {1 if registered else 0}",
    ]
    return "\n".join(lines) + "\n"


def make_app(settings: WorkerSettings, registrar: Registrar) -> Callable[[Request], Response]:
    def app(request: Request) -> Response:
        path = request.path.rstrip("/")
        if path not in ("/health", "/metrics"):
            return error_response(404, "Not Found")
        if request.method != "GET":
            return error_response(405, "Method Not Allowed", (("Allow", "GET"),))
        if path == "/metrics":
            text = render_metrics(settings, registrar.registered)
            return text_response(200, text, "text/plain; version=0.0.4; charset=utf-8")
        return json_response(
            200,
            {
                "status": "healthy",
                "worker_id": settings.worker_id,
                "worker_type": settings.worker_type,
                "registered": registrar.registered,
                "endpoint_url": settings.public_url,
                "slot": settings.slot,
                "reference_app": True,
                "version": __version__,
            },
        )

    return app


def main() -> int:
    try:
        settings = WorkerSettings.from_env(os.environ)
    except ConfigError as exc:
        return fail_config(COMPONENT, exc)
    component = f"{COMPONENT} {settings.worker_id}"
    log(component, f"starting: {settings.worker_type}, version {__version__}, slot={settings.slot}")
    shutdown = Shutdown()
    shutdown.install()
    log(component, "SIGTERM/SIGINT handlers installed")
    registrar = Registrar(settings, shutdown.stopping)
    try:
        app = make_app(settings, registrar)
        server = serve_http(app, settings.port, shutdown, component, ["/health", "/metrics"])
    except OSError as exc:
        log(component, f"cannot listen on 0.0.0.0:{settings.port}: {exc}")
        return 1
    log(component, f"listening on 0.0.0.0:{settings.port}")
    log(component, f"registering with {settings.register_url} as {settings.public_url}")
    threading.Thread(target=registrar.run, name="registrar", daemon=True).start()

    name = shutdown.wait_for_signal()
    log(component, f"{name} received: stopping")
    stop_servers(server)
    log(component, "stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
