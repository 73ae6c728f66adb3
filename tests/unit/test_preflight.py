"""Preflight: each decision on fake containers and fake probes, the whole run on a fake engine."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sandbox import (
    COMPOSE_FILE,
    apps,
    compose,
    docker,
    envfiles,
    ownership,
    ports,
    preflight,
    runner,
)
from sandbox import engine as engine_mod
from sandbox import shared as shared_mod
from sandbox.docker import Container, ContainerState, PublishedPort
from sandbox.errors import Exit, SandboxError
from sandbox.images import build as images
from sandbox.ports import Listener, TakenPort
from sandbox.remote import enginehost
from sandbox.runner import Result
from sandbox.status import checkout_gone
from tests.unit.support import engine as support_engine

# The real ones, before the `engine` fixture swaps them for fakes.
REAL_CAN_BIND = ports.can_bind
REAL_READ_LISTENERS = ports.read_listeners


def container(
    project: str,
    service: str,
    *ports: int,
    name: str | None = None,
    working_dir: str = "/checkouts/a",
    state: ContainerState = "running",
) -> Container:
    return Container(
        id=f"id-{project}-{service}",
        name=name or f"{project}-{service}-1",
        project=project,
        service=service,
        state=state,
        status="Up 2 minutes",
        working_dir=working_dir,
        ports=tuple(PublishedPort("127.0.0.1", p, p) for p in ports),
    )


@pytest.fixture
def root(tmp_path: Path, home: Path) -> Path:
    """The checkout beside a HOME of its own (HOME set before the env files are read)."""
    path = tmp_path / "checkout"
    envfiles.write_all(path)
    return path


# --- shared directory ---------------------------------------------------------------------


def test_ensure_shared_dir_creates_what_is_missing_then_nothing(tmp_path: Path) -> None:
    shared = tmp_path / ".ktrdr" / "shared"
    created = shared_mod.ensure(shared)
    assert created == [shared, shared / "data", shared / "models", shared / "strategies"]
    assert all(p.is_dir() for p in created)
    assert shared_mod.ensure(shared) == []


def test_ensure_shared_dir_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "AAPL_1d.csv").write_text("date,close\n")
    assert shared_mod.ensure(tmp_path) == [tmp_path / "models", tmp_path / "strategies"]
    assert (tmp_path / "data" / "AAPL_1d.csv").read_text() == "date,close\n"


def test_ensure_shared_dir_refuses_a_file_in_the_way_and_leaves_it(tmp_path: Path) -> None:
    (tmp_path / "models").write_text("not a directory")
    with pytest.raises(SandboxError) as err:
        shared_mod.ensure(tmp_path)
    assert err.value.code is Exit.SHARED_DIR
    assert err.value.message == (
        f"{tmp_path}/models exists but is not a directory: move it aside, then re-run"
    )
    assert (tmp_path / "models").read_text() == "not a directory"


def test_ensure_shared_dir_refuses_a_broken_symlink(tmp_path: Path) -> None:
    (tmp_path / "strategies").symlink_to(tmp_path / "nowhere")
    with pytest.raises(SandboxError) as err:
        shared_mod.ensure(tmp_path)
    assert err.value.code is Exit.SHARED_DIR
    assert not (tmp_path / "nowhere").exists()


def test_ensure_shared_dir_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SandboxError) as err:
        shared_mod.ensure(tmp_path / "file" / "shared")
    assert err.value.code is Exit.SHARED_DIR
    assert err.value.message.startswith(f"cannot create the shared directory {tmp_path}/file/")
    assert "mkdir -p" in err.value.message


def test_relative_shared_dir_is_relative_to_the_checkout(root: Path) -> None:
    target = compose.Target(1, root, {"KTRDR_SHARED_DIR": "shared"})
    assert target.shared_dir == root / "shared"
    slot0 = compose.load_target(root, 0)
    assert slot0.shared_dir == root


# --- env files ----------------------------------------------------------------------------


def test_env_collision_in_another_file_is_reported_with_file_variable_and_slot(
    root: Path,
) -> None:
    path = envfiles.env_path(root, 3)
    path.write_text(path.read_text().replace("KTRDR_API_PORT=8003", "KTRDR_API_PORT=8001"))
    problems = preflight.env_problems(compose.load_target(root, 1))
    assert len(problems) == 1
    err = preflight.env_error(problems)
    assert err.code is Exit.BAD_ENV
    assert err.message == (
        "env/slot-3.env: KTRDR_API_PORT (slot 3): port 8001 is also KTRDR_API_PORT of slot 1 "
        "(env/slot-1.env): fix it or run `inv env --write` to regenerate env/"
    )


def test_env_problems_of_this_slot_come_first(root: Path) -> None:
    for slot in (5, 1):
        path = envfiles.env_path(root, slot)
        path.write_text(path.read_text().replace("KTRDR_GRAFANA_PORT=", "KTRDR_GRAFANA_PORT=x"))
    target = compose.Target(1, root, envfiles.read(envfiles.env_path(root, 1)))
    problems = preflight.env_problems(target)
    assert [p.slot for p in problems] == [1, 5]
    assert preflight.env_error(problems).message.startswith(
        "env/slot-1.env: KTRDR_GRAFANA_PORT (slot 1): 'x3001' is not a number (and 1 more): "
    )


# --- other checkout -----------------------------------------------------------------------


def test_other_checkout(tmp_path: Path) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    (tmp_path / "link").symlink_to(here)
    ours = container("ktrdr-sandbox-1", "db", working_dir=str(tmp_path / "link"))
    theirs = container("ktrdr-sandbox-1", "backend", working_dir=str(there), state="exited")
    unlabelled = container("ktrdr-sandbox-1", "jaeger", working_dir="")
    assert ownership.other_checkout(here, [ours, unlabelled]) is None
    assert str(ownership.other_checkout(here, [ours, theirs])) == str(there)
    assert ownership.other_checkout(here, []) is None


def a_checkout(path: Path) -> str:
    """A directory that is a checkout as far as orphan detection can tell: its compose file."""
    path.mkdir(parents=True, exist_ok=True)
    (path / COMPOSE_FILE).write_text("services: {}\n")
    return str(path)


def test_other_checkout_message(target: compose.Target, tmp_path: Path) -> None:
    other = a_checkout(tmp_path / "ana" / "ktrdr-sandbox")
    err = ownership.other_checkout_error(target, ownership.Checkout(other))
    assert err.code is Exit.OTHER_CHECKOUT
    assert err.message == (
        f"slot 1 belongs to another checkout: ktrdr-sandbox-1 was started from "
        f"{other}; run `inv down --slot=1` in that checkout, or pick another slot"
    )


def test_an_orphaned_slot_names_the_one_command_that_works_from_here(
    target: compose.Target, tmp_path: Path
) -> None:
    gone = str(tmp_path / "deleted-worktree")
    assert checkout_gone(gone)
    assert not checkout_gone(a_checkout(tmp_path / "here"))
    err = ownership.other_checkout_error(target, ownership.Checkout(gone))
    assert err.code is Exit.OTHER_CHECKOUT
    assert err.message == (
        f"slot 1 is orphaned: it was started from {gone}, which no longer exists; "
        "`inv down --slot=1` (from here) removes its containers and keeps its database"
    )


# --- ports: classification ----------------------------------------------------------------


class FakeProbe:
    """Binds everything except the (address, port) pairs in `busy`; records what it was asked."""

    def __init__(self, busy: set[tuple[str, int]] | None = None) -> None:
        self.busy = busy or set()
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> bool:
        self.asked.append((host, port))
        return (host, port) not in self.busy


def test_all_ports_free(target: compose.Target) -> None:
    probe = FakeProbe()
    assert ports.classify_ports(target, [], probe) == []
    assert len(probe.asked) == 11 * 3
    assert {host for host, _ in probe.asked} == {"127.0.0.1", "0.0.0.0", "::"}


def test_a_port_held_on_any_address_is_taken(target: compose.Target) -> None:
    probe = FakeProbe({("::", 8001), ("0.0.0.0", 9091), ("127.0.0.1", 3001)})
    taken = ports.classify_ports(target, [], probe)
    assert taken == [
        TakenPort(8001, "KTRDR_API_PORT", "backend"),
        TakenPort(9091, "KTRDR_PROMETHEUS_PORT", "prometheus"),
        TakenPort(3001, "KTRDR_GRAFANA_PORT", "grafana"),
    ]


def test_ports_of_the_slots_own_containers_are_fine(target: compose.Target) -> None:
    own = [container("ktrdr-sandbox-1", "backend", 8001), container("ktrdr-sandbox-1", "db", 5433)]
    probe = FakeProbe({(a, p) for a in ("127.0.0.1", "0.0.0.0", "::") for p in (8001, 5433)})
    assert ports.classify_ports(target, own, probe) == []
    assert not any(port in (8001, 5433) for _, port in probe.asked)


def test_a_port_another_container_publishes_is_taken_even_if_it_binds(
    target: compose.Target,
) -> None:
    # An engine without the userland proxy publishes through iptables: nothing listens.
    other = container("ktrdr-sandbox-2", "db", 5433)
    taken = ports.classify_ports(target, [other], FakeProbe())
    assert taken == [TakenPort(5433, "KTRDR_DB_PORT", "db")]


def test_bind_address_is_probed_once(target: compose.Target) -> None:
    probe = FakeProbe()
    ports.classify_ports(target, [], probe, bind_addr="0.0.0.0")
    assert sorted({h for h, _ in probe.asked}) == ["0.0.0.0", "::"]
    assert len(probe.asked) == 22
    assert ports.probe_addresses("192.168.1.5") == ("192.168.1.5", "0.0.0.0", "::")


def test_bind_address_precedence(target: compose.Target) -> None:
    assert compose.bind_address(target, {}) == "127.0.0.1"
    assert compose.bind_address(target, {"KTRDR_BIND_ADDR": "0.0.0.0"}) == "0.0.0.0"
    in_file = compose.Target(1, target.root, {**target.values, "KTRDR_BIND_ADDR": "::1"})
    assert compose.bind_address(in_file, {"KTRDR_BIND_ADDR": "0.0.0.0"}) == "::1"


# --- ports: the real probe ----------------------------------------------------------------


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    with sock:
        yield sock


def test_can_bind_sees_a_listener(listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    assert ports.can_bind("127.0.0.1", port) is False
    assert ports.can_bind("0.0.0.0", port) is False  # the wildcard clashes with it too
    listening.close()
    assert ports.can_bind("127.0.0.1", port) is True
    assert ports.can_bind("0.0.0.0", port) is True


def test_can_bind_ignores_time_wait() -> None:
    # A TIME_WAIT socket keeps its creator's SO_REUSEADDR, and Linux shares the port only when
    # both sides set it. Servers do (Go's net.Listen, so docker-proxy and dockerd; Postgres).
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the server side closes first: its end of the connection enters TIME_WAIT
    client.recv(1)
    client.close()
    server.close()
    plain = socket.socket()
    with plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # without SO_REUSEADDR, TIME_WAIT blocks the port
    assert ports.can_bind("127.0.0.1", port) is True


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 in this Python")
def test_can_bind_ipv6() -> None:
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 on this host")
    with sock:
        sock.listen()
        port = sock.getsockname()[1]
        assert ports.can_bind("::", port) is False
        assert ports.can_bind("127.0.0.1", port) is True


# --- ports: who holds them ----------------------------------------------------------------


def test_holder_is_another_sandbox_slot_first() -> None:
    others = [
        container("myapp", "web", 5433, name="myapp-web-1"),
        container("ktrdr-sandbox-2", "db", 5433),
    ]
    proxy = {5433: Listener(5433, "127.0.0.1", 99, 4242, "docker-proxy")}
    assert ports.port_holder(5433, others, proxy) == "slot 2 (ktrdr-sandbox-2, service db)"
    assert (
        ports.port_holder(5433, others[:1], proxy)
        == "container myapp-web-1 (compose project myapp)"
    )
    assert ports.port_holder(5433, [container("", "", 5433, name="lonely")], {}) == (
        "container lonely"
    )


def test_holder_is_a_process() -> None:
    listeners = {
        8001: Listener(8001, "0.0.0.0", 1, 4242, "python3"),
        8002: Listener(8002, "::", 2, None, None),
        8003: Listener(8003, "127.0.0.1", 3, 777, "docker-proxy"),
    }
    assert ports.port_holder(8001, [], listeners) == "process python3 (pid 4242)"
    assert ports.port_holder(8002, [], listeners) == "an unknown process"
    assert ports.port_holder(8003, [], listeners) == (
        "a Docker container outside Compose (docker-proxy, pid 777; "
        "`docker ps --filter publish=8003` names it)"
    )
    assert ports.port_holder(8004, [], listeners) is None


def test_port_message_one_port() -> None:
    err = ports.port_error(
        [TakenPort(8001, "KTRDR_API_PORT", "backend")], "process python3 (pid 4242)"
    )
    assert err.code is Exit.PORT_TAKEN
    assert err.message == (
        "port 8001 (backend, KTRDR_API_PORT) is taken by process python3 (pid 4242): "
        "stop it or pick another slot"
    )


def test_port_message_several_ports() -> None:
    taken = [
        TakenPort(5433, "KTRDR_DB_PORT", "db"),
        TakenPort(8001, "KTRDR_API_PORT", "backend"),
        TakenPort(9091, "KTRDR_PROMETHEUS_PORT", "prometheus"),
    ]
    err = ports.port_error(taken, "slot 2 (ktrdr-sandbox-2, service db)")
    assert err.message == (
        "port 5433 (db, KTRDR_DB_PORT) is taken by slot 2 (ktrdr-sandbox-2, service db) "
        "(and 2 more: 8001, 9091): stop it or pick another slot"
    )
    assert "\n" not in err.message
    assert ports.port_error(taken[:1], None).message == (
        "port 5433 (db, KTRDR_DB_PORT) is taken by a process this user cannot name "
        "(`lsof -nP -iTCP:5433 -sTCP:LISTEN` or `sudo ss -ltnp 'sport = :5433'` shows it): "
        "stop it or pick another slot"
    )


# --- /proc --------------------------------------------------------------------------------

# Captured from a Linux host; trailing columns shortened. 0A is LISTEN, 01 ESTABLISHED.
PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 51234 1 0
   1: 00000000:1539 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 40001 1 0
   2: 0100007F:1F41 0100007F:D2C4 01 00000000:00000000 00:00000000 00000000  1000        0 51299 1 0
"""
# tcp6 rows are wider than a line here: each split after the remote address.
PROC_TCP6 = (
    "  sl  local_address                         remote_address                        st "
    "tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    "   0: 00000000000000000000000001000000:0BB9 00000000000000000000000000000000:0000 "
    "0A 00000000:00000000 00:00000000 00000000     0        0 16777 1 0\n"
    "   1: 00000000000000000000000000000000:1F41 00000000000000000000000000000000:0000 "
    "0A 00000000:00000000 00:00000000 00000000     0        0 16778 1 0\n"
)


def test_parse_proc_net() -> None:
    assert ports.parse_proc_net(PROC_TCP, ipv6=False) == [
        Listener(8001, "127.0.0.1", 51234),
        Listener(5433, "0.0.0.0", 40001),
    ]
    assert ports.parse_proc_net(PROC_TCP6, ipv6=True) == [
        Listener(3001, "::1", 16777),
        Listener(8001, "::", 16778),
    ]
    assert ports.parse_proc_net("", ipv6=False) == []


def fake_proc(tmp_path: Path, sockets: Mapping[int, tuple[str, Sequence[int]]]) -> Path:
    """A /proc with net/tcp{,6} and, per pid, a comm and fd/ links to socket inodes."""
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "tcp").write_text(PROC_TCP)
    (proc / "net" / "tcp6").write_text(PROC_TCP6)
    (proc / "self").mkdir()  # not a pid: skipped
    for pid, (comm, inodes) in sockets.items():
        (proc / str(pid) / "fd").mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(comm + "\n")
        (proc / str(pid) / "fd" / "0").symlink_to("/dev/null")
        for n, inode in enumerate(inodes, start=3):
            (proc / str(pid) / "fd" / str(n)).symlink_to(f"socket:[{inode}]")
    (proc / "999").mkdir()  # a process whose fd/ we may not read
    return proc


def test_read_listeners_maps_sockets_to_processes(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {4242: ("python3", [51234]), 77: ("docker-proxy", [40001])})
    found = ports.read_listeners({8001, 5433, 3001}, proc)
    assert found == {
        8001: Listener(8001, "127.0.0.1", 51234, 4242, "python3"),
        5433: Listener(5433, "0.0.0.0", 40001, 77, "docker-proxy"),
        3001: Listener(3001, "::1", 16777, None, None),
    }
    assert ports.read_listeners({9999}, proc) == {}
    assert ports.read_listeners({8001}, tmp_path / "no-proc") == {}


def test_read_listeners_prefers_the_socket_whose_owner_is_known(tmp_path: Path) -> None:
    # 8001 listens twice (IPv4 51234, IPv6 16778); only the IPv6 one's owner is visible.
    proc = fake_proc(tmp_path, {4242: ("node", [16778])})
    assert ports.read_listeners({8001}, proc)[8001] == Listener(8001, "::", 16778, 4242, "node")


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="needs Linux /proc")
def test_read_listeners_finds_this_process(listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    found = ports.read_listeners({port})
    assert found[port].address == "127.0.0.1"
    assert found[port].pid == os.getpid()
    holder = ports.port_holder(port, [], found)
    assert holder == f"process {found[port].process} (pid {os.getpid()})"


# --- the whole preflight, on a fake engine -------------------------------------------------


class FakeEngine(support_engine.FakeEngine):
    """The scripted engine (strict: preflight runs nothing unexpected); as a remote engine's
    host (`DOCKER_HOST` set by the test) it also answers the helper containers: `taken` ports
    fail to bind, `shared` holds the subdirectories that exist there (None: not even the
    directory), `images` the images its store has.
    """

    def __init__(self) -> None:
        super().__init__(strict=True)
        self.taken: set[int] = set()
        self.shared: set[str] | None = None

    def answer(self, args: tuple[str, ...], options: dict[str, Any]) -> Result:
        if args[:2] == ("docker", "run"):
            return self.helper(args)
        return super().answer(args, options)

    def helper(self, args: tuple[str, ...]) -> Result:
        """A helper container on the engine's host (sandbox/engine.py's commands)."""
        if "perl" in args:
            ports = [int(p) for p in args[args.index("perl") + 4 :]]
            lines = [f"taken {p} Address in use" if p in self.taken else f"free {p}" for p in ports]
            return Result(args, 0, "\n".join(lines))
        if engine_mod.CHECK_SCRIPT in args:
            if self.shared is None:
                return Result(
                    args, 125, "", "invalid mount config: bind source path does not exist"
                )
            found = [
                f"{'present' if d in self.shared else 'missing'} {d}" for d in shared_mod.SUBDIRS
            ]
            return Result(args, 0, "\n".join(found))
        if engine_mod.CREATE_SCRIPT in args:
            made = [d for d in shared_mod.SUBDIRS if d not in (self.shared or set())]
            self.shared = set(shared_mod.SUBDIRS)
            return Result(args, 0, "\n".join(f"created {d}" for d in made))
        raise AssertionError(f"an unexpected helper container: {args}")


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    fake = FakeEngine()
    monkeypatch.setattr(runner, "execute", fake)
    monkeypatch.setattr(ports, "can_bind", lambda host, port: True)
    monkeypatch.setattr(ports, "read_listeners", lambda ports: {})
    return fake


def test_preflight_passes_and_creates_the_shared_dir(
    engine: FakeEngine, target: compose.Target, home: Path
) -> None:
    result = preflight.run_preflight(target, {"PATH": os.environ.get("PATH", "")})
    shared = home / ".ktrdr" / "shared"
    assert [s.name for s in result.steps] == [
        "engine",
        "compose",
        "env",
        "checkout",
        "source",
        "volume",
        "layout",
        "observability",
        "ports",
        "shared",
    ]
    assert result.compose == ["docker", "compose"]
    assert result.running == []
    assert result.steps[0].detail == "Docker engine 27.3.1 reachable"
    details = {step.name: step.detail for step in result.steps}
    assert details["shared"] == (
        f"created {shared}, {shared}/data, {shared}/models, {shared}/strategies"
    )
    assert details["ports"] == "11 host ports free on 127.0.0.1, 0.0.0.0, ::"
    # Read-only questions only, one `docker ps` and one look at the database volume.
    assert [c[:3] for c in engine.commands] == [
        ("docker", "version", "--format"),
        ("docker", "compose", "version"),
        tuple(docker.ps_command()[:3]),
        ("docker", "volume", "inspect"),
    ]
    again = preflight.run_preflight(target, {})
    assert again.steps[-1].detail == f"{shared} has data/, models/, strategies/"


def test_a_refused_preflight_creates_no_shared_dir(
    engine: FakeEngine, target: compose.Target, home: Path
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ports, "can_bind", lambda host, port: port != 8001)
        mp.setattr(ports, "read_listeners", lambda ports: {})
        with pytest.raises(SandboxError) as caught:
            preflight.run_preflight(target, {})
    assert caught.value.code is Exit.PORT_TAKEN
    assert not (home / ".ktrdr").exists()


def test_a_bracketed_ipv6_bind_address_is_probed_bare(target: compose.Target) -> None:
    values = {**target.values, "KTRDR_BIND_ADDR": "[::1]"}
    bracketed = compose.Target(target.slot, target.root, values)
    assert compose.bind_address(bracketed, {}) == "::1"


def test_preflight_with_the_stack_already_up(engine: FakeEngine, target: compose.Target) -> None:
    root = str(target.root)
    own = [
        container("ktrdr-sandbox-1", "db", 5433, working_dir=root),
        container("ktrdr-sandbox-1", "backend", 8001, working_dir=root),
    ]
    engine.containers = [*own, container("ktrdr-sandbox-2", "db", 5434)]
    busy = {5433, 8001}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ports, "can_bind", lambda host, port: port not in busy)
        result = preflight.run_preflight(target, {})
    assert [c.service for c in result.running] == ["db", "backend"]
    details = {step.name: step.detail for step in result.steps}
    assert details["checkout"] == "ktrdr-sandbox-1 has 2 container(s) from this checkout"
    assert details["ports"].endswith(", 2 published by ktrdr-sandbox-1")


def test_no_engine_stops_before_anything_else(engine: FakeEngine, target: compose.Target) -> None:
    engine.reachable = False
    with pytest.raises(SandboxError) as err:
        preflight.run_preflight(target, {})
    assert err.value.code is Exit.NO_ENGINE
    assert engine.commands == [("docker", "version", "--format", "{{.Server.Version}}")]


def test_bad_env_stops_before_the_shared_dir(engine: FakeEngine, root: Path, home: Path) -> None:
    target = compose.load_target(root, 1)
    path = envfiles.env_path(root, 4)
    path.write_text(path.read_text().replace("KTRDR_DB_PORT=5436", "KTRDR_DB_PORT=5433"))
    with pytest.raises(SandboxError) as err:
        preflight.run_preflight(target, {})
    assert err.value.code is Exit.BAD_ENV
    assert "env/slot-4.env: KTRDR_DB_PORT (slot 4)" in err.value.message
    assert not (home / ".ktrdr").exists()


def test_missing_shared_dir_without_create(
    engine: FakeEngine, target: compose.Target, home: Path
) -> None:
    with pytest.raises(SandboxError) as err:
        preflight.run_preflight(target, {}, create_shared=False)
    assert err.value.code is Exit.SHARED_DIR
    assert err.value.message == (
        f"the shared directory {home}/.ktrdr/shared lacks data/, models/, strategies/: "
        "run `inv init-shared` to create it"
    )
    assert not (home / ".ktrdr").exists()


def test_other_checkout_is_refused(
    engine: FakeEngine, target: compose.Target, tmp_path: Path
) -> None:
    other = a_checkout(tmp_path / "other")
    engine.containers = [container("ktrdr-sandbox-1", "db", 5433, working_dir=other)]
    with pytest.raises(SandboxError) as err:
        preflight.run_preflight(target, {})
    assert err.value.code is Exit.OTHER_CHECKOUT
    assert f"started from {other}; run `inv down --slot=1` in that checkout" in err.value.message


def test_a_slot_running_another_source_is_refused(
    engine: FakeEngine, target: compose.Target, tmp_path: Path
) -> None:
    checkout = str(target.root)
    engine.containers = [
        replace(
            container("ktrdr-sandbox-1", "db", 5433, working_dir=checkout),
            app="ktrdr",
            source="/code/ktrdr-fix-y",
        )
    ]
    asked = apps.Source(apps.KTRDR, tmp_path / "ktrdr-feature-x")
    with pytest.raises(SandboxError) as err:
        preflight.run_preflight(target, {}, source=asked)
    assert err.value.code is Exit.OTHER_SOURCE
    assert err.value.message == (
        f"slot 1 runs ktrdr: /code/ktrdr-fix-y, not ktrdr: {tmp_path}/ktrdr-feature-x: "
        "`inv down --slot=1` first, or pick another slot"
    )
    # The same source, and containers from before kinds were labelled (the built-in app),
    # pass.
    engine.containers = [replace(engine.containers[0], app="", source="")]
    steps = preflight.run_preflight(target, {}).steps
    assert ("source", "reference (built in)") in [(s.name, s.detail) for s in steps]


def test_taken_port_names_the_holder(engine: FakeEngine, target: compose.Target) -> None:
    engine.containers = [container("ktrdr-sandbox-2", "backend", 8001, working_dir="/srv/b")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ports, "can_bind", lambda host, port: port != 9091)
        with pytest.raises(SandboxError) as err:
            preflight.run_preflight(target, {})
    assert err.value.code is Exit.PORT_TAKEN
    assert err.value.message == (
        "port 8001 (backend, KTRDR_API_PORT) is taken by slot 2 (ktrdr-sandbox-2, service "
        "backend) (and 1 more: 9091): stop it or pick another slot"
    )
    assert sum(1 for c in engine.commands if c[:2] == ("docker", "ps")) == 1


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="needs Linux /proc")
def test_taken_port_held_by_a_real_process(
    engine: FakeEngine, root: Path, listening: socket.socket
) -> None:
    port = listening.getsockname()[1]
    values = {**envfiles.read(envfiles.env_path(root, 1)), "KTRDR_GRAFANA_PORT": str(port)}
    target = compose.Target(1, root, values)
    with pytest.MonkeyPatch.context() as mp:
        # The real probe, but only for our port: the slot's others may be busy on this host.
        mp.setattr(ports, "can_bind", lambda h, p: p != port or REAL_CAN_BIND(h, p))
        mp.setattr(ports, "read_listeners", REAL_READ_LISTENERS)
        with pytest.raises(SandboxError) as err:
            preflight.run_preflight(target, {})
    comm = Path("/proc/self/comm").read_text().strip()
    assert err.value.code is Exit.PORT_TAKEN
    assert err.value.message == (
        f"port {port} (grafana, KTRDR_GRAFANA_PORT) is taken by process {comm} "
        f"(pid {os.getpid()}): stop it or pick another slot"
    )


DB_VOLUME = "ktrdr-sandbox-1_db-data"


def test_a_volume_made_with_another_password_is_refused_before_anything_starts(
    engine: FakeEngine, target: compose.Target
) -> None:
    made = preflight.expected_volume(target, {}, apps.BUILT_IN)
    engine.volumes[DB_VOLUME] = dict(made.labels())
    preflight.run_preflight(target, {})  # the same password: goes on
    with pytest.raises(SandboxError) as err:
        preflight.run_preflight(target, {"KTRDR_DB_PASSWORD": "s3cret-other"})
    assert err.value.code is Exit.BAD_ENV
    assert "created with another password" in err.value.message
    assert "`inv up --slot=1 --fresh`" in err.value.message
    assert "s3cret" not in err.value.message
    # --fresh: compared no more, it is to be recreated
    result = preflight.run_preflight(target, {"KTRDR_DB_PASSWORD": "s3cret-other"}, fresh=True)
    assert result.steps[5].detail == "ktrdr-sandbox-1_db-data will be recreated (--fresh)"


def test_a_volume_of_another_checkout_is_refused(
    engine: FakeEngine, target: compose.Target
) -> None:
    labels = preflight.expected_volume(target, {}, apps.BUILT_IN).labels()
    labels["io.ktrdr.sandbox.checkout"] = "/srv/elsewhere"
    engine.volumes[DB_VOLUME] = dict(labels)
    with pytest.raises(SandboxError) as err:
        preflight.run_preflight(target, {})
    assert err.value.code is Exit.OTHER_CHECKOUT
    assert "/srv/elsewhere" in err.value.message
    # --fresh recreates it only with --other-checkouts: the same refusal, with the override
    with pytest.raises(SandboxError) as err:
        preflight.run_preflight(target, {}, fresh=True)
    assert err.value.code is Exit.OTHER_CHECKOUT
    assert "`inv up --slot=1 --fresh --other-checkouts` to recreate it anyway" in str(err.value)
    result = preflight.run_preflight(target, {}, fresh=True, other_checkouts=True)
    assert result.steps[5].detail == "ktrdr-sandbox-1_db-data will be recreated (--fresh)"


def test_a_database_changing_command_checks_the_owner_as_up_does(
    engine: FakeEngine, target: compose.Target
) -> None:
    labels = preflight.expected_volume(target, {}, apps.BUILT_IN).labels()
    engine.volumes[DB_VOLUME] = dict(labels)

    def check(containers: Sequence[Container] = (), others: bool = False) -> None:
        ownership.check_database_owner(
            target, {}, containers, command="inv restore --slot=1 base",
            action="replace it anyway", other_checkouts=others,
        )  # fmt: skip

    check()  # ours
    labels["io.ktrdr.sandbox.checkout"] = "/srv/elsewhere"
    engine.volumes[DB_VOLUME] = dict(labels)
    with pytest.raises(SandboxError) as err:
        check()
    assert err.value.code is Exit.OTHER_CHECKOUT
    assert str(err.value).startswith(
        "slot 1's database was created by another checkout (/srv/elsewhere on "
    )
    assert "`inv restore --slot=1 base --other-checkouts` to replace it anyway" in str(err.value)
    check(others=True)
    engine.volumes.clear()  # no volume: nothing to lose; a legacy one is adopted as by `up`
    check()
    engine.volumes[DB_VOLUME] = {"com.docker.compose.project": "ktrdr-sandbox-1"}
    check()
    # containers started from another checkout: that checkout's, whatever the volume says
    with pytest.raises(SandboxError, match=r"another checkout \(/srv/other\)"):
        check([container("ktrdr-sandbox-1", "db", working_dir="/srv/other")])


def test_a_bind_address_that_is_not_an_ip_is_refused_in_preflight(
    engine: FakeEngine, target: compose.Target
) -> None:
    for good in ("127.0.0.1", "::1", "[::1]", "localhost", "0.0.0.0"):
        preflight.check_bind_address(good.strip("[]"))
    with pytest.raises(SandboxError) as err:
        preflight.run_preflight(target, {"KTRDR_BIND_ADDR": "not-an-ip"})
    assert err.value.code is Exit.BAD_ENV
    assert err.value.message.startswith("KTRDR_BIND_ADDR='not-an-ip' is not an IP address")


# --- a remote engine: the same questions, asked on its host ---------------------------------

REMOTE = {"DOCKER_HOST": "tcp://127.0.0.2:2375", "KTRDR_BIND_ADDR": "0.0.0.0"}


def test_remote_preflight_asks_the_engines_host_and_creates_nothing_here(
    engine: FakeEngine, target: compose.Target, home: Path
) -> None:
    result = preflight.run_preflight(target, REMOTE)
    details = {step.name: step.detail for step in result.steps}
    assert list(details) == [
        "engine",
        "compose",
        "env",
        "exposure",
        "checkout",
        "source",
        "volume",
        "layout",
        "observability",
        "images",
        "ports",
        "shared",
    ]
    assert result.where.host == "127.0.0.2"
    assert details["engine"] == (
        "Docker engine 27.3.1 at tcp://127.0.0.2:2375 (remote, from DOCKER_HOST) [on this machine]"
    )
    assert details["exposure"] == (
        "ports bound on 0.0.0.0 on 127.0.0.2 (every network of that host), reached at "
        "127.0.0.2; the database has the default password (set KTRDR_DB_PASSWORD) "
        "[on this machine]"
    )
    assert details["ports"] == "11 host ports free on 0.0.0.0 [on 127.0.0.2]"
    shared = home / ".ktrdr" / "shared"
    assert details["shared"] == (f"created {shared} with data, models, strategies [on 127.0.0.2]")
    assert not (home / ".ktrdr").exists()  # created on the engine's host only
    # The images the slot runs are asked for; the build-only base is not.
    asked = [c[-1] for c in engine.commands if c[:3] == ("docker", "image", "inspect")]
    assert asked == [images.APP_IMAGE]
    dotenv = "KTRDR_APP_IMAGE=app:1\nKTRDR_BASE_IMAGE=base:1\nKTRDR_DB_IMAGE=db:1\n"
    (target.root / ".env").write_text(dotenv)
    reloaded = compose.load_target(target.root, target.slot)  # ./.env is read when it is made
    assert enginehost.slot_images(reloaded, {}) == ["db:1", "app:1"]
    # DOCKER_HOST names the engine: no context is read.
    assert ("docker", "context", "inspect") not in [c[:3] for c in engine.commands]
    again = preflight.run_preflight(target, {**REMOTE, "KTRDR_DB_PASSWORD": "s3cret"})
    details = {step.name: step.detail for step in again.steps}
    assert "default password" not in details["exposure"]
    assert details["shared"] == f"{shared} has data/, models/, strategies/ [on 127.0.0.2]"


def test_remote_loopback_bind_is_refused_before_anything_runs_there(
    engine: FakeEngine, target: compose.Target
) -> None:
    with pytest.raises(SandboxError) as caught:
        preflight.run_preflight(target, {"DOCKER_HOST": "ssh://me@big-box"})
    assert caught.value.code is Exit.BAD_ENV
    assert caught.value.message == (
        "ports bound to 127.0.0.1 on big-box are reachable only on that host: forward them with "
        "`inv tunnel --slot=1` and set KTRDR_CONNECT_HOST=127.0.0.1 (they stay on that host's "
        "loopback), or set KTRDR_BIND_ADDR=0.0.0.0 (exposes them, the database included, to "
        "big-box's network)"
    )
    assert not [c for c in engine.commands if c[:2] == ("docker", "run")]
    # Forwarded ports: the client reaches them where KTRDR_CONNECT_HOST says.
    forwarded = {"DOCKER_HOST": "ssh://me@big-box", "KTRDR_CONNECT_HOST": "127.0.0.1"}
    steps = {s.name: s.detail for s in preflight.run_preflight(target, forwarded).steps}
    assert steps["exposure"] == (
        "ports bound on 127.0.0.1 on big-box, reached at 127.0.0.1 (through `inv tunnel "
        "--slot=1`) [on this machine]"
    )


def test_remote_taken_port_is_named_on_the_engines_host(
    engine: FakeEngine, target: compose.Target, home: Path
) -> None:
    engine.taken = {9091}
    engine.containers = [container("ktrdr-sandbox-2", "backend", 8001, working_dir="/srv/b")]
    with pytest.raises(SandboxError) as caught:
        preflight.run_preflight(target, REMOTE)
    assert caught.value.code is Exit.PORT_TAKEN
    assert caught.value.message == (
        "port 8001 (backend, KTRDR_API_PORT) is taken by slot 2 (ktrdr-sandbox-2, service "
        "backend) (and 1 more: 9091): stop it or pick another slot"
    )
    engine.containers = []
    with pytest.raises(SandboxError) as caught:
        preflight.run_preflight(target, REMOTE)
    assert caught.value.message == (
        "port 9091 (prometheus, KTRDR_PROMETHEUS_PORT) is taken by a process on 127.0.0.2 "
        "(`ss -ltnp 'sport = :9091'` there names it): stop it or pick another slot"
    )
    assert not (home / ".ktrdr").exists()


def test_remote_engine_without_the_images_says_how_to_send_them(
    engine: FakeEngine, target: compose.Target
) -> None:
    engine.images = set()
    with pytest.raises(SandboxError) as caught:
        preflight.run_preflight(target, REMOTE)
    assert caught.value.code is Exit.COMMAND
    assert "`inv images --to-engine`" in caught.value.message
    assert caught.value.message.startswith("the engine on 127.0.0.2 has no image ")


def test_remote_engine_takes_a_source_checkout_as_a_copy(
    engine: FakeEngine, target: compose.Target, tmp_path: Path
) -> None:
    asked = apps.Source(apps.KTRDR, tmp_path / "ktrdr")
    checked = preflight.run_preflight(target, REMOTE, source=asked)
    step = next(s for s in checked.steps if s.name == "source")
    assert step.detail == (
        f"ktrdr: {tmp_path / 'ktrdr'}, copied to 127.0.0.2 (edits: `inv sync --slot=1`, or "
        "`--watch`) [on this machine]"
    )


def test_remote_missing_shared_dir_without_create(
    engine: FakeEngine, target: compose.Target, home: Path
) -> None:
    engine.shared = {"data"}
    with pytest.raises(SandboxError) as caught:
        preflight.run_preflight(target, REMOTE, create_shared=False)
    assert caught.value.code is Exit.SHARED_DIR
    assert caught.value.message == (
        f"the shared directory {home}/.ktrdr/shared on 127.0.0.2 lacks models/, strategies/: "
        "run `inv init-shared` with the same DOCKER_HOST to create it"
    )


def test_a_checkout_is_a_client_and_a_path() -> None:
    here = Path("/checkouts/a")
    mine = replace(container("p", "db", working_dir=str(here)), client="laptop")
    theirs = replace(mine, client="desktop")
    unlabelled = replace(mine, client="")
    assert ownership.other_checkout(here, [mine, unlabelled], client="laptop") is None
    found = ownership.other_checkout(here, [theirs], client="laptop")
    assert found == ownership.Checkout("/checkouts/a", "desktop")
    assert str(found) == "desktop:/checkouts/a"
    moved = replace(mine, working_dir="/checkouts/b")
    assert ownership.other_checkout(here, [moved], client="laptop") == ownership.Checkout(
        "/checkouts/b"
    )


def test_another_machines_checkout_is_never_taken_for_gone(
    target: compose.Target, tmp_path: Path
) -> None:
    """Its path is on that machine: absent here says nothing (a remote engine both use)."""
    theirs = ownership.Checkout(str(tmp_path / "not-here"), "desktop")
    assert not theirs.gone and ownership.Checkout(theirs.path).gone
    error = ownership.other_checkout_error(target, theirs)
    assert error.code is Exit.OTHER_CHECKOUT and "belongs to another checkout" in error.message
