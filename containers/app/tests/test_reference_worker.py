"""The reference worker: its environment, backoff, and registration loop with a fake backend."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from httpkit import Request
from ktrdr_reference.common import ConfigError, HttpReply
from ktrdr_reference.worker import (
    BACKOFF_MAX_SECONDS,
    FAST_ATTEMPTS,
    RETRY_AFTER_MAX_SECONDS,
    Registrar,
    WorkerSettings,
    backoff,
    judge_reply,
    make_app,
    parse_retry_after,
    registration_payload,
)

ENV = {"WORKER_ID": "training-worker-2", "WORKER_TYPE": "training", "WORKER_PORT": "5006"}


def test_settings_defaults_follow_the_compose_conventions() -> None:
    s = WorkerSettings.from_env(ENV)
    assert s.public_url == "http://training-worker-2:5006"
    assert s.register_url == "http://backend:8000/api/v1/workers/register"
    assert s.slot is None


def test_settings_from_env() -> None:
    s = WorkerSettings.from_env(
        {
            **ENV,
            "WORKER_PUBLIC_BASE_URL": "http://training-worker-2:5026/",
            "KTRDR_API_CLIENT_BASE_URL": "http://backend:8000/api/v1/",
            "SLOT_NUMBER": "2",
        }
    )
    assert (s.public_url, s.slot) == ("http://training-worker-2:5026", 2)
    assert s.register_url == "http://backend:8000/api/v1/workers/register"


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"WORKER_ID": ""}, "WORKER_ID"),
        ({"WORKER_ID": "bad id"}, "WORKER_ID"),
        ({"WORKER_TYPE": "gpu"}, "WORKER_TYPE"),
        ({"WORKER_PORT": "http"}, "WORKER_PORT"),
        ({"WORKER_PORT": "70000"}, "WORKER_PORT"),
        ({"WORKER_PUBLIC_BASE_URL": "worker:5006"}, "WORKER_PUBLIC_BASE_URL"),
        ({"KTRDR_API_CLIENT_BASE_URL": "ftp://backend"}, "KTRDR_API_CLIENT_BASE_URL"),
        ({"SLOT_NUMBER": "one"}, "SLOT_NUMBER"),
    ],
)
def test_settings_name_the_bad_variable(change: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        WorkerSettings.from_env({**ENV, **change})


def test_settings_need_the_worker_port() -> None:
    with pytest.raises(ConfigError, match="WORKER_PORT is not set"):
        WorkerSettings.from_env({"WORKER_ID": "w", "WORKER_TYPE": "training"})


def test_registration_payload() -> None:
    payload = registration_payload(WorkerSettings.from_env(ENV))
    assert payload["worker_id"] == "training-worker-2"
    assert payload["worker_type"] == "training"
    assert payload["endpoint_url"] == "http://training-worker-2:5006"
    assert payload["capabilities"]["reference_app"] is True


def test_backoff_is_quick_during_start_up_then_doubles_up_to_two_seconds() -> None:
    assert [backoff(n) for n in (1, 2, FAST_ATTEMPTS)] == [0.25, 0.25, 0.25]
    later = [backoff(FAST_ATTEMPTS + n) for n in range(1, 6)]
    assert later == [0.5, 1.0, 2.0, BACKOFF_MAX_SECONDS, BACKOFF_MAX_SECONDS]
    assert BACKOFF_MAX_SECONDS == 2.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("5", 5.0),
        (" 2 ", 2.0),
        ("0", 0.0),
        ("-1", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("3600", RETRY_AFTER_MAX_SECONDS),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def reply(status: int, detail: str | None = None, retry_after: str | None = None) -> HttpReply:
    headers = {} if retry_after is None else {"retry-after": retry_after}
    raw = b"{}" if detail is None else json.dumps({"detail": detail}).encode()
    return HttpReply(status, headers, raw)


def test_judge_reply() -> None:
    assert judge_reply(reply(200)).ok
    shutting = judge_reply(reply(503, "shutting down", "5"))
    assert (shutting.ok, shutting.detail, shutting.retry_after) == (
        False,
        "HTTP 503: shutting down",
        5.0,
    )
    # Retry-After is honoured on 503 only; other errors use the backoff.
    assert judge_reply(reply(400, "missing field(s)", "5")).retry_after is None


class FakeBackend:
    """Answers registrations from a script, then stops the registrar."""

    def __init__(self, script: list[HttpReply | Exception], stopping: threading.Event) -> None:
        self.script = script
        self.stopping = stopping
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, url: str, payload: dict[str, Any]) -> HttpReply:
        self.calls.append((url, payload))
        if len(self.calls) >= len(self.script):
            self.stopping.set()
        step = self.script[len(self.calls) - 1]
        if isinstance(step, Exception):
            raise step
        return step


def test_registrar_retries_until_registered_and_reregisters_after_losing_it() -> None:
    stopping = threading.Event()
    # Retry-After 0 keeps the test instant; the first failure is a refused connection.
    script: list[HttpReply | Exception] = [
        OSError("connection refused"),
        reply(503, "shutting down", "0"),
        reply(200),
    ]
    backend = FakeBackend(script, stopping)
    settings = WorkerSettings.from_env(ENV)
    registrar = Registrar(settings, stopping, send=backend)
    registrar.run()
    assert len(backend.calls) == 3
    assert backend.calls[0][0] == "http://backend:8000/api/v1/workers/register"
    assert registrar.registered
    assert registrar.successes == 1


def test_registrar_reports_a_failed_attempt() -> None:
    stopping = threading.Event()
    registrar = Registrar(
        WorkerSettings.from_env(ENV), stopping, send=FakeBackend([OSError("boom")], stopping)
    )
    attempt = registrar.attempt()
    assert not attempt.ok
    assert "boom" in attempt.detail


def test_health_says_whether_registered() -> None:
    settings = WorkerSettings.from_env(ENV)
    registrar = Registrar(settings, threading.Event())
    app = make_app(settings, registrar)
    response = app(Request.from_target("GET", "/health"))
    assert response.status == 200
    assert response.json()["status"] == "healthy"
    assert response.json()["registered"] is False
    registrar.registered = True
    assert app(Request.from_target("GET", "/health")).json()["registered"] is True
    assert app(Request.from_target("GET", "/other")).status == 404
    assert app(Request.from_target("POST", "/health")).status == 405


def test_metrics_say_up_and_whether_registered() -> None:
    settings = WorkerSettings.from_env(ENV)
    registrar = Registrar(settings, threading.Event())
    app = make_app(settings, registrar)
    response = app(Request.from_target("GET", "/metrics"))
    assert response.status == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    text = response.body.decode()
    labels = f'worker_id="{settings.worker_id}",worker_type="{settings.worker_type}"'
    assert f"ktrdr_reference_worker_up{{{labels}}} 1" in text
    assert f"ktrdr_reference_worker_registered{{{labels}}} 0" in text
    registrar.registered = True
    text = app(Request.from_target("GET", "/metrics")).body.decode()
    assert f"ktrdr_reference_worker_registered{{{labels}}} 1" in text
