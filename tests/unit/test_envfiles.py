"""Env files: the committed ones equal the generator, and the validator names what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import ROOT, envfiles, slots
from sandbox.errors import Exit, SandboxError


def test_read_expands_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    values = envfiles.read(envfiles.env_path(ROOT, 3))
    assert values["KTRDR_SHARED_DIR"] == f"{tmp_path}/.ktrdr/shared"
    assert values["COMPOSE_PROJECT_NAME"] == "ktrdr-sandbox-3"
    assert values["KTRDR_API_PORT"] == "8003"


def test_slot_zero_has_no_shared_dir() -> None:
    assert "KTRDR_SHARED_DIR" not in envfiles.read(envfiles.env_path(ROOT, 0))


def _copy_env(tmp_path: Path) -> Path:
    envfiles.write_all(tmp_path)
    return tmp_path


def test_missing_variable_is_named(tmp_path: Path) -> None:
    root = _copy_env(tmp_path)
    path = envfiles.env_path(root, 4)
    path.write_text(path.read_text().replace("KTRDR_GRAFANA_PORT=3004\n", ""))
    assert [str(p) for p in envfiles.check_all(root)] == [
        "env/slot-4.env: KTRDR_GRAFANA_PORT (slot 4): missing"
    ]


def test_not_a_number_and_out_of_range(tmp_path: Path) -> None:
    root = _copy_env(tmp_path)
    path = envfiles.env_path(root, 2)
    text = path.read_text().replace("KTRDR_API_PORT=8002", "KTRDR_API_PORT=80x2")
    path.write_text(text.replace("KTRDR_DB_PORT=5434", "KTRDR_DB_PORT=80"))
    assert [str(p) for p in envfiles.check_all(root)] == [
        "env/slot-2.env: KTRDR_DB_PORT (slot 2): port 80 is outside 1024-65535",
        "env/slot-2.env: KTRDR_API_PORT (slot 2): '80x2' is not a number",
    ]


def test_port_shared_between_slots_names_both(tmp_path: Path) -> None:
    root = _copy_env(tmp_path)
    path = envfiles.env_path(root, 5)
    path.write_text(path.read_text().replace("KTRDR_API_PORT=8005", "KTRDR_API_PORT=8001"))
    assert [str(p) for p in envfiles.check_all(root)] == [
        "env/slot-5.env: KTRDR_API_PORT (slot 5): port 8001 is also KTRDR_API_PORT of slot 1 "
        "(env/slot-1.env)"
    ]


def test_port_shared_within_a_slot(tmp_path: Path) -> None:
    root = _copy_env(tmp_path)
    path = envfiles.env_path(root, 6)
    path.write_text(path.read_text().replace("KTRDR_GRAFANA_PORT=3006", "KTRDR_GRAFANA_PORT=8006"))
    problems = [str(p) for p in envfiles.check_all(root)]
    assert problems == [
        "env/slot-6.env: KTRDR_GRAFANA_PORT (slot 6): port 8006 is also KTRDR_API_PORT of "
        "slot 6 (env/slot-6.env)"
    ]


def test_a_broken_scheme_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    # A scheme where the OTLP ports step by 1: slot N's gRPC port is slot N-1's HTTP port.
    broken = tuple(
        slots.PortSpec(s.variable, s.service, s.label, s.standard, s.base, 1, s.container_port)
        if s.variable.startswith("KTRDR_JAEGER_OTLP")
        else s
        for s in slots.PORTS
    )
    monkeypatch.setattr(slots, "PORTS", broken)
    problems = [str(p) for p in envfiles.check_scheme()]
    assert (
        "scheme slot 2: KTRDR_JAEGER_OTLP_GRPC_PORT (slot 2): port 4319 is also "
        "KTRDR_JAEGER_OTLP_HTTP_PORT of slot 1 (scheme slot 1)"
    ) in problems


def test_scheme_out_of_range_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = slots.PORTS[0]
    high = slots.PortSpec(spec.variable, spec.service, spec.label, 65530, 65530, 1, 5432)
    monkeypatch.setattr(slots, "PORTS", (high, *slots.PORTS[1:]))
    problems = [str(p) for p in envfiles.check_scheme()]
    assert "scheme slot 6: KTRDR_DB_PORT (slot 6): port 65536 is outside 1024-65535" in problems


def test_load_slot_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SandboxError) as caught:
        envfiles.load_slot(tmp_path, 1)
    assert caught.value.code is Exit.BAD_ENV
    assert "env/slot-1.env is missing: run `inv env --write`" in str(caught.value)
