"""The port scheme: the README's port table, and what parse_slot accepts."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sandbox import slots
from sandbox.errors import Exit, SandboxError

# Straight from the port scheme's table: (variable, slot 0, slot N as a function of N).
TABLE: dict[str, tuple[int, Callable[[int], int]]] = {
    "KTRDR_DB_PORT": (5432, lambda n: 5432 + n),
    "KTRDR_API_PORT": (8000, lambda n: 8000 + n),
    "KTRDR_JAEGER_UI_PORT": (16686, lambda n: 16686 + n),
    "KTRDR_JAEGER_OTLP_GRPC_PORT": (4317, lambda n: 4317 + 10 * n),
    "KTRDR_JAEGER_OTLP_HTTP_PORT": (4318, lambda n: 4318 + 10 * n),
    "KTRDR_PROMETHEUS_PORT": (9090, lambda n: 9090 + n),
    "KTRDR_GRAFANA_PORT": (3000, lambda n: 3000 + n),
    "KTRDR_WORKER_PORT_1": (5003, lambda n: 5000 + 10 * n),
    "KTRDR_WORKER_PORT_2": (5004, lambda n: 5001 + 10 * n),
    "KTRDR_WORKER_PORT_3": (5005, lambda n: 5002 + 10 * n),
    "KTRDR_WORKER_PORT_4": (5006, lambda n: 5003 + 10 * n),
}


@pytest.mark.parametrize("slot", list(slots.SLOTS))
def test_ports_follow_the_table(slot: int) -> None:
    expected = {
        name: (standard if slot == 0 else formula(slot))
        for name, (standard, formula) in TABLE.items()
    }
    assert slots.ports(slot) == expected


def test_no_two_ports_anywhere_are_equal() -> None:
    every = [port for slot in slots.SLOTS for port in slots.ports(slot).values()]
    assert len(every) == len(set(every)) == 11 * 11


def test_project_names_round_trip() -> None:
    for slot in slots.SLOTS:
        assert slots.slot_of_project(slots.project_name(slot)) == slot
    for other in ("ktrdr-sandbox-11", "ktrdr-sandbox-01", "ktrdr-sandbox-x", "ktrdr", "main"):
        assert slots.slot_of_project(other) is None


@pytest.mark.parametrize("value,expected", [("0", 0), ("10", 10), (" 3 ", 3), (7, 7)])
def test_parse_slot_accepts(value: object, expected: int) -> None:
    assert slots.parse_slot(value) == expected


@pytest.mark.parametrize(
    "value,message",
    [
        ("11", "slot 11 is outside 0-10: pick a slot from 0 to 10"),
        ("-1", "slot -1 is outside 0-10: pick a slot from 0 to 10"),
        ("abc", "slot must be a whole number from 0 to 10, not 'abc' (e.g. --slot=1)"),
        ("1.5", "slot must be a whole number from 0 to 10, not '1.5' (e.g. --slot=1)"),
    ],
)
def test_parse_slot_refuses(value: str, message: str) -> None:
    with pytest.raises(SandboxError) as caught:
        slots.parse_slot(value)
    assert str(caught.value) == message
    assert caught.value.code is Exit.USAGE


def test_parse_service() -> None:
    assert slots.parse_service("backend") == "backend"
    with pytest.raises(SandboxError, match="unknown service 'api': use one of db, backend"):
        slots.parse_service("api")


def test_services_are_the_nine() -> None:
    assert sorted(slots.SERVICES) == sorted(
        [
            "db",
            "backend",
            "jaeger",
            "prometheus",
            "grafana",
            "backtest-worker-1",
            "backtest-worker-2",
            "training-worker-1",
            "training-worker-2",
        ]
    )


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon", ""])
def test_parse_seconds_refuses_what_is_not_a_positive_number(value: str) -> None:
    with pytest.raises(SandboxError) as caught:
        slots.parse_seconds(value, "--timeout")
    assert caught.value.code is Exit.USAGE
    assert str(caught.value).startswith("timeout must be a positive number of seconds")


def test_parse_seconds_and_count_accept_numbers() -> None:
    assert slots.parse_seconds("2.5") == 2.5
    assert slots.parse_count("0", "--tail") == 0
    assert slots.parse_count("50", "--tail") == 50
    with pytest.raises(SandboxError, match="--tail takes a number of lines"):
        slots.parse_count("\u00b2", "--tail")
