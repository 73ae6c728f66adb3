"""The reference backend's pure parts and its endpoints, against an in-memory store."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from httpkit import Request
from ktrdr_reference.backend import (
    Backend,
    Registration,
    RequestError,
    Settings,
    StoreError,
    WorkerFilter,
    filter_workers,
    list_files,
    parse_registration,
    parse_worker_filter,
    prepare_database,
    render_metrics,
    shared_listing,
)
from ktrdr_reference.common import ConfigError

VALID = {
    "worker_id": "backtest-worker-1",
    "worker_type": "backtesting",
    "endpoint_url": "http://backtest-worker-1:5003/",
    "capabilities": {"reference_app": True},
}


def body(payload: object) -> bytes:
    return json.dumps(payload).encode()


# --- registration validation -----------------------------------------------------------------


def test_parse_registration_accepts_a_valid_body_and_trims_the_url() -> None:
    registration = parse_registration(body(VALID))
    assert registration == Registration(
        "backtest-worker-1", "backtesting", "http://backtest-worker-1:5003", {"reference_app": True}
    )


def test_parse_registration_defaults_capabilities_to_empty() -> None:
    payload = {k: v for k, v in VALID.items() if k != "capabilities"}
    assert parse_registration(body(payload)).capabilities == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "must be a JSON object"),
        (b"not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (body(["a"]), "must be a JSON object"),
        (body({"worker_id": "w"}), "missing field(s): worker_type, endpoint_url"),
        (body({**VALID, "worker_type": "gpu"}), "worker_type must be one of"),
        (body({**VALID, "worker_id": "a b"}), "may hold only"),
        (body({**VALID, "worker_id": ""}), "non-empty"),
        (body({**VALID, "worker_id": 7}), "non-empty string"),
        (body({**VALID, "endpoint_url": "ftp://x"}), "http:// or https://"),
        (body({**VALID, "endpoint_url": "http://:5003"}), "with a host"),
        (body({**VALID, "endpoint_url": "http://w:99999"}), "invalid port"),
        (body({**VALID, "capabilities": [1]}), "capabilities must be a JSON object"),
    ],
)
def test_parse_registration_rejects_bad_bodies(raw: bytes, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_registration(raw)
    assert message in str(caught.value)


# --- filtering -------------------------------------------------------------------------------

WORKERS = [
    {"worker_id": "b1", "worker_type": "backtesting", "status": "available"},
    {"worker_id": "t1", "worker_type": "training", "status": "available"},
    {"worker_id": "t2", "worker_type": "training", "status": "busy"},
]


def test_parse_worker_filter_reads_both_filters() -> None:
    query = {"worker_type": ["training"], "status": ["AVAILABLE"]}
    assert parse_worker_filter(query) == WorkerFilter("training", "available")


def test_parse_worker_filter_treats_empty_values_as_no_filter() -> None:
    assert parse_worker_filter({"worker_type": [""], "other": ["x"]}) == WorkerFilter()


@pytest.mark.parametrize("query", [{"worker_type": ["gpu"]}, {"status": ["sleeping"]}])
def test_parse_worker_filter_rejects_unknown_values(query: dict[str, list[str]]) -> None:
    with pytest.raises(RequestError):
        parse_worker_filter(query)


@pytest.mark.parametrize(
    ("wanted", "ids"),
    [
        (WorkerFilter(), ["b1", "t1", "t2"]),
        (WorkerFilter(worker_type="training"), ["t1", "t2"]),
        (WorkerFilter(status="available"), ["b1", "t1"]),
        (WorkerFilter("training", "busy"), ["t2"]),
        (WorkerFilter("backtesting", "busy"), []),
    ],
)
def test_filter_workers(wanted: WorkerFilter, ids: list[str]) -> None:
    assert [w["worker_id"] for w in filter_workers(WORKERS, wanted)] == ids


# --- shared directories ----------------------------------------------------------------------


def make_files(root: Path, names: list[str]) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")


def test_list_files_is_recursive_sorted_and_skips_hidden(tmp_path: Path) -> None:
    make_files(tmp_path, ["b.csv", "a/AAPL_1d.csv", ".gitkeep", ".cache/x", "a/.hidden"])
    assert list_files(tmp_path) == ["a/AAPL_1d.csv", "b.csv"]


def test_list_files_is_bounded(tmp_path: Path) -> None:
    make_files(tmp_path, [f"f{i:03}.csv" for i in range(20)])
    assert list_files(tmp_path, limit=5) == [f"f{i:03}.csv" for i in range(5)]


def test_list_files_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    assert list_files(tmp_path / "absent") == []


def test_shared_listing_has_one_list_per_directory(tmp_path: Path) -> None:
    make_files(tmp_path / "data", ["AAPL_1d.csv"])
    make_files(tmp_path / "strategies", ["s.yaml"])
    dirs = {n: tmp_path / n for n in ("data", "models", "strategies")}
    assert shared_listing(dirs) == {"data": ["AAPL_1d.csv"], "models": [], "strategies": ["s.yaml"]}


# --- settings --------------------------------------------------------------------------------


def test_settings_defaults() -> None:
    s = Settings.from_env({})
    assert (s.db_host, s.db_port, s.db_name, s.db_user, s.db_password) == (
        "db",
        5432,
        "ktrdr",
        "ktrdr",
        "localdev",
    )
    assert (s.slot, s.project) == (None, None)
    assert s.shared_dirs() == {
        "data": Path("/app/data"),
        "models": Path("/app/models"),
        "strategies": Path("/app/strategies"),
    }


def test_settings_from_env() -> None:
    s = Settings.from_env(
        {
            "KTRDR_DB_HOST": "pg",
            "KTRDR_DB_PORT": "6543",
            "SLOT_NUMBER": "3",
            "COMPOSE_PROJECT_NAME": "ktrdr-sandbox-3",
            "KTRDR_DATA_DIR": "/d",
        }
    )
    assert (s.db_host, s.db_port, s.slot, s.project, s.data_dir) == (
        "pg",
        6543,
        3,
        "ktrdr-sandbox-3",
        Path("/d"),
    )


@pytest.mark.parametrize(
    "env", [{"KTRDR_DB_PORT": "abc"}, {"KTRDR_DB_PORT": "0"}, {"SLOT_NUMBER": "-1"}]
)
def test_settings_reject_bad_values(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env(env)


# --- metrics ---------------------------------------------------------------------------------


def test_render_metrics_is_prometheus_text() -> None:
    text = render_metrics({("/api/v1/health", 200): 3}, 2, True, 4, 1000.0)
    assert 'ktrdr_reference_http_requests_total{route="/api/v1/health",code="200"} 3' in text
    assert "ktrdr_reference_worker_registrations_total 2" in text
    assert "ktrdr_reference_database_up 1" in text
    assert "ktrdr_reference_workers_registered 4" in text
    assert text.endswith("\n")
    for line in text.splitlines():
        assert line.startswith("#") or len(line.rsplit(" ", 1)) == 2


def test_render_metrics_leaves_out_the_worker_gauge_without_a_database() -> None:
    text = render_metrics({}, 0, False, None, 0.0)
    assert "ktrdr_reference_database_up 0" in text
    assert "workers_registered" not in text


# --- endpoints, with an in-memory store ------------------------------------------------------


class FakeStore:
    def __init__(self) -> None:
        self.error: str | None = None
        self.rows: dict[str, dict[str, Any]] = {}
        self.clock = 0

    def ensure_ready(self) -> None:
        if self.error:
            raise StoreError(self.error)

    def upsert(self, r: Registration) -> dict[str, Any]:
        self.ensure_ready()
        self.clock += 1
        first = self.rows.get(r.worker_id, {}).get("registered_at", f"t{self.clock}")
        row = {
            "worker_id": r.worker_id,
            "worker_type": r.worker_type,
            "endpoint_url": r.endpoint_url,
            "capabilities": r.capabilities,
            "status": "available",
            "registered_at": first,
            "last_seen_at": f"t{self.clock}",
        }
        self.rows[r.worker_id] = row
        return dict(row)

    def all_workers(self) -> list[dict[str, Any]]:
        self.ensure_ready()
        return [dict(self.rows[k]) for k in sorted(self.rows)]


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def backend(store: FakeStore, tmp_path: Path) -> Backend:
    env = {
        "SLOT_NUMBER": "2",
        "COMPOSE_PROJECT_NAME": "ktrdr-sandbox-2",
        "KTRDR_DATA_DIR": str(tmp_path / "data"),
    }
    return Backend(Settings.from_env(env), store)


def call(backend: Backend, method: str, target: str, payload: object = None) -> Any:
    raw = b"" if payload is None else body(payload)
    return backend.handle(Request.from_target(method, target, {}, raw))


def test_health_ok(backend: Backend) -> None:
    response = call(backend, "GET", "/api/v1/health")
    assert response.status == 200
    data = response.json()
    assert data["status"] == "ok"
    assert data["service"] == "ktrdr-reference-backend"
    assert data["reference_app"] is True
    assert (data["slot"], data["project"]) == (2, "ktrdr-sandbox-2")
    assert data["database"] == {"reachable": True, "host": "db", "port": 5432, "name": "ktrdr"}


def test_health_degraded_without_database(backend: Backend, store: FakeStore) -> None:
    store.error = "connection refused"
    response = call(backend, "GET", "/api/v1/health")
    assert response.status == 503
    data = response.json()
    assert data["status"] == "degraded"
    assert data["database"]["reachable"] is False
    assert data["database"]["error"] == "connection refused"


def test_register_is_an_idempotent_upsert(backend: Backend) -> None:
    first = call(backend, "POST", "/api/v1/workers/register", VALID)
    assert first.status == 200
    assert first.json()["status"] == "available"
    moved = {**VALID, "endpoint_url": "http://backtest-worker-1:5013"}
    second = call(backend, "POST", "/api/v1/workers/register", moved).json()
    assert second["registered_at"] == first.json()["registered_at"]
    listed = call(backend, "GET", "/api/v1/workers").json()
    assert [w["endpoint_url"] for w in listed] == ["http://backtest-worker-1:5013"]


def test_register_rejects_bad_input_with_400(backend: Backend) -> None:
    response = call(backend, "POST", "/api/v1/workers/register", {"worker_id": "x"})
    assert response.status == 400
    assert "missing field(s)" in response.json()["detail"]


def test_register_during_an_outage_is_503_with_retry_after_at_once(
    backend: Backend, store: FakeStore
) -> None:
    backend.database_ready.set()  # the database answered once: this is an outage
    store.error = "down"
    started = time.monotonic()
    response = call(backend, "POST", "/api/v1/workers/register", VALID)
    assert time.monotonic() - started < 1.0
    assert response.status == 503
    assert dict(response.headers)["Retry-After"] == "1"


def test_register_before_the_database_was_ready_waits_for_it(
    backend: Backend, store: FakeStore
) -> None:
    store.error = "connection refused"
    stopping = threading.Event()

    def database_comes_up() -> None:
        time.sleep(0.3)
        store.error = None

    threading.Thread(target=database_comes_up, daemon=True).start()
    preparing = threading.Thread(
        target=prepare_database,
        args=(store, backend.settings, stopping, backend.database_ready),
        daemon=True,
    )
    preparing.start()
    response = call(backend, "POST", "/api/v1/workers/register", VALID)
    stopping.set()
    preparing.join(timeout=5)
    assert response.status == 200
    assert backend.database_ready.is_set()
    assert response.json()["worker_id"] == "backtest-worker-1"


def test_prepare_database_stops_without_setting_ready_when_stopping(
    backend: Backend, store: FakeStore
) -> None:
    store.error = "connection refused"
    stopping = threading.Event()
    stopping.set()
    prepare_database(store, backend.settings, stopping, backend.database_ready)
    assert not backend.database_ready.is_set()


def test_workers_is_a_filtered_list(backend: Backend) -> None:
    call(backend, "POST", "/api/v1/workers/register", VALID)
    training = {**VALID, "worker_id": "training-worker-1", "worker_type": "training"}
    call(backend, "POST", "/api/v1/workers/register", training)
    everyone = call(backend, "GET", "/api/v1/workers").json()
    assert isinstance(everyone, list)
    assert [w["worker_id"] for w in everyone] == ["backtest-worker-1", "training-worker-1"]
    only = call(backend, "GET", "/api/v1/workers?worker_type=training&status=available").json()
    assert [w["worker_id"] for w in only] == ["training-worker-1"]
    assert call(backend, "GET", "/api/v1/workers?worker_type=gpu").status == 400


def test_data_lists_the_shared_directories(backend: Backend, tmp_path: Path) -> None:
    make_files(tmp_path / "data", ["AAPL_1d.csv"])
    response = call(backend, "GET", "/api/v1/data")
    assert response.status == 200
    assert response.json()["data"] == ["AAPL_1d.csv"]
    assert set(response.json()) == {"data", "models", "strategies"}


def test_metrics_count_requests_and_registrations(backend: Backend) -> None:
    call(backend, "GET", "/api/v1/health")
    call(backend, "POST", "/api/v1/workers/register", VALID)
    response = call(backend, "GET", "/metrics")
    assert response.status == 200
    assert response.content_type.startswith("text/plain")
    text = response.body.decode()
    assert 'route="/api/v1/health",code="200"} 1' in text
    assert "ktrdr_reference_worker_registrations_total 1" in text
    assert "ktrdr_reference_workers_registered 1" in text


def test_unknown_path_is_404_and_wrong_method_is_405(backend: Backend) -> None:
    assert call(backend, "GET", "/nope").status == 404
    response = call(backend, "POST", "/api/v1/health")
    assert response.status == 405
    assert ("Allow", "GET") in response.headers


def test_trailing_slash_is_tolerated(backend: Backend) -> None:
    assert call(backend, "GET", "/api/v1/health/").status == 200
