"""`inv status` from fabricated containers: one `docker ps`, every slot summarized."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sandbox import COMPOSE_FILE, docker, engine, lastup, slots, status
from sandbox.docker import PublishedPort
from sandbox.errors import Exit, SandboxError
from sandbox.runner import Result
from sandbox.settings import ENGINE_ANSWER_TIMEOUT
from tests.unit.support.engine import FakeEngine
from tests.unit.support.factories import make


def full_stack(slot: int, working_dir: str = "/home/dev/ktrdr-sandbox") -> list[docker.Container]:
    found = []
    for service in slots.SERVICES:
        ports: tuple[PublishedPort, ...] = ()
        if service == "backend":
            ports = (
                PublishedPort("127.0.0.1", 8000 + slot, 8000),
                PublishedPort("127.0.0.1", 9999, 9999),
            )
        found.append(make(slot, service, ports=ports, working_dir=working_dir))
    return found


def test_running_slot(tmp_path: Path) -> None:
    here = a_checkout(tmp_path / "here")
    [row] = status.summarize(full_stack(1, working_dir=here))
    assert row == status.SlotStatus(
        slot=1,
        state="running",
        services=status.Services(total=9, running=9, healthy=9),
        ports=slots.ports(1),
        urls=slots.service_urls("127.0.0.1", slots.ports(1).__getitem__),
        api_url="http://127.0.0.1:8001/api/v1",
        checkout=here,
    )
    assert row.project == "ktrdr-sandbox-1" and not row.orphaned and row.reason == ""


def test_a_running_slot_whose_checkout_is_gone_is_orphaned_whatever_runs() -> None:
    [row] = status.summarize(full_stack(1))  # no such checkout on this machine
    assert (row.state, row.orphaned, row.gone) == ("orphaned", True, "/home/dev/ktrdr-sandbox")


def a_checkout(path: Path) -> str:
    path.mkdir(parents=True)
    (path / COMPOSE_FILE).write_text("services: {}\n")
    return str(path)


def test_a_slot_whose_checkout_is_gone_is_orphaned(tmp_path: Path) -> None:
    here = a_checkout(tmp_path / "here")
    [row] = status.summarize(full_stack(1, working_dir=here))
    assert not row.orphaned and row.state == "running" and row.last_up is None
    [row] = status.summarize(full_stack(1, working_dir=str(tmp_path / "deleted")))
    assert row.orphaned


def test_a_slot_whose_source_checkout_is_gone_is_orphaned(tmp_path: Path) -> None:
    here = a_checkout(tmp_path / "here")
    branch = tmp_path / "ktrdr-feature-x"
    branch.mkdir()
    stack = [replace(c, app="ktrdr", source=str(branch)) for c in full_stack(1, working_dir=here)]
    assert not status.summarize(stack)[0].orphaned
    branch.rmdir()
    [row] = status.summarize(stack)
    assert (row.state, row.orphaned, row.gone) == ("orphaned", True, str(branch))


def test_an_up_that_did_not_finish_shows_as_failed_with_its_reason(tmp_path: Path) -> None:
    here = a_checkout(tmp_path / "here")
    root = Path(here)
    lastup.write(root, 1, lastup.INTERRUPTED)
    [row] = status.summarize(full_stack(1, working_dir=here))
    assert row.state == "failed" and row.reason.startswith("last up interrupted at ")
    lastup.write(root, 1, lastup.FAILED, "gate: backend: HTTP 503")
    [row] = status.summarize(full_stack(1, working_dir=here))
    assert row.reason.endswith(": gate: backend: HTTP 503")
    lastup.write(root, 1, lastup.STARTING)  # by this process, which runs: still starting
    assert status.summarize(full_stack(1, working_dir=here))[0].state == "running"
    record = lastup.path(root, 1)
    record.write_text(record.read_text().replace(f'"pid": {os.getpid()}', '"pid": 999999999'))
    [row] = status.summarize(full_stack(1, working_dir=here))
    assert row.state == "failed" and "was killed" in row.reason
    lastup.write(root, 1, lastup.READY)
    assert status.summarize(full_stack(1, working_dir=here))[0].last_up is None


def test_the_source_a_slot_runs_is_its_labels() -> None:
    stack = [replace(c, app="ktrdr", source="/code/ktrdr-x") for c in full_stack(3)]
    [row] = status.summarize(stack)
    assert (row.source, row.sources_agree) == (status.SlotSource("/code/ktrdr-x", "ktrdr"), True)
    stack[0] = replace(stack[0], source="/code/other")
    assert not status.summarize(stack)[0].sources_agree


def test_partial_and_stopped_slots_sorted_by_slot(tmp_path: Path) -> None:
    here = a_checkout(tmp_path / "here")
    partial = full_stack(2, working_dir=here)
    partial[0] = make(2, "db", "exited", "Exited (0) 1 minute ago", working_dir=here)
    stopped = [
        make(7, s, "exited", "Exited (137) 1 hour ago", working_dir=here) for s in slots.SERVICES
    ]
    rows = status.summarize([*stopped, *partial])
    assert [(r.slot, r.state) for r in rows] == [(2, "partial"), (7, "stopped")]
    assert rows[0].services == status.Services(total=9, running=8, healthy=8)
    assert (rows[1].services, rows[1].api_url) == (status.Services(9, 0, 0), None)


@pytest.mark.parametrize(
    ("state", "text", "healthy"),
    [
        ("running", "Up 3 seconds (health: starting)", False),
        ("running", "Up 3 minutes (unhealthy)", False),
        ("running", "Up 3 minutes (healthy)", True),
        ("running", "Up 3 minutes", True),  # no healthcheck: running is all we can know
        ("created", "Created", False),
        ("exited", "Exited (1) 3 minutes ago", False),
    ],
)
def test_healthy_counts(state: docker.ContainerState, text: str, healthy: bool) -> None:
    [row] = status.summarize([make(3, "grafana", state, text)])
    assert row.services.healthy == int(healthy)
    assert row.services.total == len(slots.SERVICES)  # the other eight have no container at all


def test_api_url_from_the_backends_published_port() -> None:
    wildcard = make(
        4,
        "backend",
        ports=(PublishedPort("::", 8004, 8000), PublishedPort("0.0.0.0", 8004, 8000)),
    )
    assert status.summarize([wildcard])[0].api_url == "http://127.0.0.1:8004/api/v1"
    lan = make(4, "backend", ports=(PublishedPort("192.168.1.9", 8004, 8000),))
    assert status.summarize([lan])[0].api_url == "http://192.168.1.9:8004/api/v1"
    # Only the backend's container port 8000 counts, not another service's.
    other = make(4, "grafana", ports=(PublishedPort("127.0.0.1", 8004, 8000),))
    assert status.summarize([other])[0].api_url is None


def test_checkout_several_when_containers_disagree() -> None:
    stack = full_stack(5)
    stack[-1] = make(5, "grafana", working_dir="/elsewhere")
    assert status.summarize(stack)[0].checkout == "several"
    assert status.summarize(full_stack(5, working_dir=""))[0].checkout == ""


def test_only_slot_and_foreign_projects() -> None:
    containers = [
        *full_stack(1),
        *full_stack(3),
        make("ktrdr", "backend"),  # a real KTRDR dev stack, not a sandbox slot
        make("ktrdr-sandbox-11", "backend"),  # outside 0-10
        make("ktrdr-sandbox-01", "backend"),
        make("", "backend"),
    ]
    assert [r.slot for r in status.summarize(containers)] == [1, 3]
    assert [r.slot for r in status.summarize(containers, only_slot=3)] == [3]
    assert status.summarize(containers, only_slot=2) == []
    assert status.summarize([]) == []


def test_collect_asks_docker_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, float]] = []

    def fake(environ: object = None, *, timeout: float = 0.0) -> list[docker.Container]:
        calls.append((environ, timeout))
        return [*full_stack(0), *full_stack(1), *full_stack(2)]

    monkeypatch.setattr(docker, "containers", fake)
    local = {"PATH": "/bin", "DOCKER_HOST": "unix:///var/run/docker.sock"}
    rows = status.collect(local)
    assert [r.slot for r in rows] == [0, 1, 2]
    assert calls == [(local, ENGINE_ANSWER_TIMEOUT)]
    assert rows[1].api_url == "http://127.0.0.1:8001/api/v1"


def fake_engine(monkeypatch: pytest.MonkeyPatch, answer: Result) -> list[tuple[str, ...]]:
    """Every command run, each answered with `answer`'s return code and output."""

    def within_the_answer_timeout(args: tuple[str, ...], options: dict[str, Any]) -> None:
        assert options.get("timeout") == ENGINE_ANSWER_TIMEOUT

    fake = FakeEngine().install(monkeypatch)
    fake.on(answer=answer)
    fake.each = within_the_answer_timeout
    return fake.commands


def test_status_is_one_docker_call(monkeypatch: pytest.MonkeyPatch) -> None:
    commands = fake_engine(monkeypatch, Result((), 0, ""))
    assert status.collect({"DOCKER_HOST": "unix:///var/run/docker.sock"}) == []
    assert commands == [tuple(docker.ps_command())]


def test_a_wedged_engine_is_one_line_within_the_answer_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_engine(monkeypatch, Result((), docker.TIMED_OUT, "", "timed out after 8.0s"))
    with pytest.raises(SandboxError) as err:
        status.collect({"DOCKER_HOST": "unix:///tmp/wedged.sock"})
    assert err.value.code is Exit.NO_ENGINE
    assert str(err.value).startswith(
        "the Docker engine at unix:///tmp/wedged.sock does not answer (no reply within 8 s)"
    )


def test_no_engine_is_told_by_the_one_docker_ps(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = "Cannot connect to the Docker daemon at unix:///nowhere. Is the daemon running?"
    fake_engine(monkeypatch, Result((), 1, "", refused))
    with pytest.raises(SandboxError) as err:
        status.collect({"DOCKER_HOST": "unix:///nowhere"})
    assert err.value.code is Exit.NO_ENGINE and "not reachable" in str(err.value)


def test_a_remote_engines_api_urls_use_its_host() -> None:
    wild = docker.Container(
        "id", "n", "ktrdr-sandbox-2", "backend", "running", "Up", "/c",
        (PublishedPort("0.0.0.0", 8002, 8000), PublishedPort("::", 8002, 8000)),
    )  # fmt: skip
    remote = engine.resolve({"DOCKER_HOST": "tcp://127.0.0.2:2375"}, None)
    [row] = status.summarize([wild], where=remote)
    assert row.api_url == "http://127.0.0.2:8002/api/v1"
    [row] = status.summarize([wild])
    assert row.api_url == "http://127.0.0.1:8002/api/v1"


def test_a_stack_missing_services_is_partial(tmp_path: Path) -> None:
    [row] = status.summarize([make(4, "db", working_dir=a_checkout(tmp_path / "here"))])
    assert row.state == "partial"
    assert (row.services.healthy, row.services.total) == (1, 9)


def test_a_start_that_failed_before_any_container_shows_from_its_checkout(tmp_path: Path) -> None:
    root = Path(a_checkout(tmp_path / "here"))
    lastup.write(root, 4, lastup.FAILED, "docker build failed")
    lastup.write(root, 6, lastup.READY)
    ran = full_stack(1, working_dir=str(root))
    assert [(r.slot, r.state) for r in status.summarize(ran, root=root)] == [
        (1, "running"),
        (4, "failed"),
    ]
    [row] = status.summarize([], 4, root=root)
    assert (row.state, row.checkout, row.services.total) == ("failed", "", 9)
    assert row.reason.endswith(": docker build failed")
    assert status.summarize([], 5, root=root) == []
    assert status.summarize([]) == []  # no checkout named: no record read


@pytest.mark.parametrize(
    ("streak", "retries", "state", "healthy"),
    [
        (0, 3, "running", 8),  # thawed, not checked again yet: starting, not failed
        (2, 3, "running", 8),  # failing, not yet as often as a failure needs
        (3, 3, "failed", 8),  # failed its checks
        (0, 0, "running", 8),  # no retries set: Docker's three
        (3, 0, "failed", 8),
    ],
)
def test_unhealthy_only_because_its_checks_stopped_is_starting(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    streak: int,
    retries: int,
    state: status.State,
    healthy: int,
) -> None:
    stack = full_stack(1, working_dir=a_checkout(tmp_path / "here"))
    stack[1] = replace(stack[1], status="Up 9 minutes (unhealthy)")
    fake = FakeEngine(strict=True).install(monkeypatch)
    fake.containers = stack
    fake.on("docker", "inspect", answer=Result((), 0, f"{stack[1].id}0f3a {streak} {retries}\n"))
    [row] = status.collect({"PATH": "/bin"})
    assert (row.state, row.services.healthy) == (state, healthy)
    [inspect] = fake.ran("docker", "inspect")
    assert inspect[-1] == stack[1].id  # the unhealthy one only


def test_an_unhealthy_container_that_cannot_be_inspected_stays_unhealthy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stack = full_stack(1, working_dir=a_checkout(tmp_path / "here"))
    stack[1] = replace(stack[1], status="Up 9 minutes (unhealthy)")
    fake = FakeEngine(strict=True).install(monkeypatch)
    fake.containers = stack
    fake.on("docker", "inspect", answer=Result((), 1, "", "Error: No such object"))
    [row] = status.collect({"PATH": "/bin"})
    assert row.state == "failed"


def test_no_unhealthy_container_no_inspect(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeEngine(strict=True).install(monkeypatch)
    fake.containers = full_stack(1, working_dir=a_checkout(tmp_path / "here"))
    [row] = status.collect({"PATH": "/bin"})
    assert row.state == "running" and not fake.ran("docker", "inspect")
