"""Slots on a remote Docker engine, driven from the client by `inv` as a user runs it.

The remote engine is the simulated remote host (conftest): published ports are reached at
127.0.0.2, never at a container's bridge address. Two slots go through tcp://, one through
ssh:// (the private ssh wrapper); each passes the gate (Prometheus included: its config reaches
the remote as Compose `configs:` content), `inv status` and `inv verify` use 127.0.0.2, taking
one slot down leaves the other healthy, and nothing is created on the client's filesystem.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sandbox import ROOT, docker, engine, ports, slots
from sandbox.errors import Exit
from sandbox.images import app as appimages
from sandbox.images import build as images
from sandbox.remote import enginehost
from sandbox.runner import Result, display, run
from sandbox.shared import SUBDIRS
from tests.remote.conftest import SSH_SLOT, TCP_SLOTS, Remote

pytestmark = [pytest.mark.docker, pytest.mark.remote]

ADDRESS = "127.0.0.2"


def port(variable: str, slot: int) -> int:
    return next(spec.host_port(slot) for spec in slots.PORTS if spec.variable == variable)


def check(result: Result) -> Result:
    assert result.ok, f"{display(result.args)} failed:\n{result.tail(40)}"
    return result


def health(slot: int, timeout: float = 5) -> dict[str, object]:
    url = f"http://{ADDRESS}:{port('KTRDR_API_PORT', slot)}/api/v1/health"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200
        payload: dict[str, object] = json.loads(response.read())
        return payload


def answers(slot: int) -> bool:
    try:
        health(slot)
    except (OSError, urllib.error.URLError):
        return False
    return True


def remote_containers(remote: Remote, transport: str, slot: int) -> list[docker.Container]:
    return [c for c in docker.containers(remote.env(transport)) if c.slot == slot]


@pytest.fixture
def started(remote: Remote) -> Iterator[list[tuple[int, str]]]:
    """Slots a test started (slot, transport); removed with their volumes afterwards by plain
    Compose (whatever state `inv` left them in)."""
    slots_started: list[tuple[int, str]] = []
    yield slots_started
    for slot, transport in slots_started:
        cmd = ["docker", "compose", "-p", slots.project_name(slot), "down", "--volumes"]
        run([*cmd, "--timeout", "5"], env=remote.env(transport), timeout=300)


def up(remote: Remote, started: list[tuple[int, str]], slot: int, transport: str) -> Result:
    started.append((slot, transport))
    began = time.monotonic()
    result = check(remote.inv(transport, "up", f"--slot={slot}"))
    print(f"inv up --slot={slot} over {transport}: {time.monotonic() - began:.1f}s")
    return result


def assert_remote_urls(text: str) -> None:
    """URLs name the remote host, never this machine's loopback."""
    assert f"http://{ADDRESS}:" in text
    assert "127.0.0.1" not in text


def test_the_engine_is_seen_as_remote(remote: Remote) -> None:
    for transport, kind in (("tcp", engine.Kind.TCP), ("ssh", engine.Kind.SSH)):
        found = engine.detect(remote.env(transport))
        assert found.kind is kind
        assert not found.local
        assert found.connect_host("0.0.0.0") == ADDRESS
        assert found.unreachable_bind("127.0.0.1") is not None


def test_two_slots_over_tcp_through_inv(remote: Remote, started: list[tuple[int, str]]) -> None:
    first, second = TCP_SLOTS
    with ThreadPoolExecutor(max_workers=2) as pool:
        outputs = list(pool.map(lambda s: up(remote, started, s, "tcp").stdout, TCP_SLOTS))
    for slot, out in zip(TCP_SLOTS, outputs, strict=True):
        assert "remote, from DOCKER_HOST" in out
        assert f"ports bound on 0.0.0.0 on {ADDRESS} (every network of that host)" in out
        assert f"[on {ADDRESS}]" in out  # ports, shared dir, images checked there
        assert_remote_urls(out.split("exposure:", 1)[1])
        assert health(slot)["slot"] == slot
        containers = remote_containers(remote, "tcp", slot)
        assert {c.service for c in containers} == set(slots.SERVICES)
        assert {c.client for c in containers} == {docker.client_name()}
        ports = {p.host_port for c in containers for p in c.ports}
        assert ports == {s.host_port(slot) for s in slots.PORTS}
    status = check(remote.inv("tcp", "status"))
    for slot in TCP_SLOTS:
        assert f"http://{ADDRESS}:{port('KTRDR_API_PORT', slot)}/api/v1" in status.stdout
    assert "127.0.0.1" not in status.stdout
    document = json.loads(check(remote.inv("tcp", "status", "--json")).stdout)
    urls = {e["slot"]: e["urls"]["backend"] for e in document["slots"]}
    assert urls == {s: f"http://{ADDRESS}:{port('KTRDR_API_PORT', s)}/api/v1" for s in TCP_SLOTS}
    verified = check(remote.inv("tcp", "verify", f"--slot={first}", f"--slot={second}"))
    assert "shared-dir" in verified.stdout
    # Isolation: one slot down leaves the other healthy.
    check(remote.inv("tcp", "down", f"--slot={first}", "--volumes"))
    assert remote_containers(remote, "tcp", first) == []
    assert not answers(first)
    assert health(second)["slot"] == second
    # Nothing reached the client: the shared directory lives on the remote host.
    assert not remote.client_home.exists()


def test_one_slot_over_ssh_through_inv(remote: Remote, started: list[tuple[int, str]]) -> None:
    out = up(remote, started, SSH_SLOT, "ssh").stdout
    assert "remote, from DOCKER_HOST" in out
    assert_remote_urls(out.split("exposure:", 1)[1])
    assert health(SSH_SLOT)["slot"] == SSH_SLOT
    status = check(remote.inv("ssh", "status", f"--slot={SSH_SLOT}"))
    assert f"http://{ADDRESS}:{port('KTRDR_API_PORT', SSH_SLOT)}/api/v1" in status.stdout
    check(remote.inv("ssh", "verify", f"--slot={SSH_SLOT}"))
    check(remote.inv("ssh", "down", f"--slot={SSH_SLOT}", "--volumes"))
    assert remote_containers(remote, "ssh", SSH_SLOT) == []
    assert not remote.client_home.exists()


def test_a_loopback_bind_on_the_remote_is_refused(remote: Remote) -> None:
    slot = TCP_SLOTS[0]
    result = remote.inv("tcp", "up", f"--slot={slot}", extra={"KTRDR_BIND_ADDR": "127.0.0.1"})
    assert result.returncode == int(Exit.BAD_ENV), result.tail(10)
    assert f"ports bound to 127.0.0.1 on {ADDRESS} are reachable only on that host" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert remote_containers(remote, "tcp", slot) == []


def test_init_shared_streams_a_checkout_to_the_remote_host(remote: Remote, tmp_path: Path) -> None:
    source = tmp_path / "ktrdr-checkout"
    (source / "data").mkdir(parents=True)
    (source / "data" / "EURUSD_1h.csv").write_text("timestamp,open\n")
    (source / "README.md").write_text("not shared data")
    out = check(remote.inv("tcp", "init-shared", f"--from={source}")).stdout
    assert f"on {ADDRESS}: created" in out
    assert "streamed data" in out
    shared = str(remote.client_home / ".ktrdr" / "shared")
    image = enginehost.helper_image(ROOT, remote.base_env)
    listing = check(
        run(
            [*engine.HELPER_RUN, "-v", f"{shared}:/s", image, "sh", "-c", "cat /s/data/*; ls /s"],
            env=remote.env("tcp"),
        )
    )
    assert listing.stdout.split("\n")[0] == "timestamp,open"
    assert "README.md" not in listing.stdout
    assert not remote.client_home.exists()


def test_engine_helpers_run_on_the_remote_host(remote: Remote, tmp_path: Path) -> None:
    env = remote.env("tcp")
    image = enginehost.helper_image(ROOT, remote.base_env)
    # A path of its own: the slots' shared directory may already exist on the remote host.
    client_side = tmp_path / "remote-only" / "shared"
    shared = str(client_side)
    assert not enginehost.shared_state(shared, image, env).exists
    assert enginehost.create_shared(shared, image, env) == SUBDIRS
    assert enginehost.shared_state(shared, image, env).ready
    taken = enginehost.taken_ports([2375, 8009], "0.0.0.0", image, env)
    assert [p.port for p in taken] == [2375]
    assert not client_side.parent.exists()


def test_a_docker_context_names_the_remote_engine(
    remote: Remote, started: list[tuple[int, str]], tmp_path: Path
) -> None:
    """`docker context use` instead of DOCKER_HOST: the same up, status and image check. The
    context lives in a private DOCKER_CONFIG (the Compose plugin linked in), never the user's."""
    config = tmp_path / "docker-config"
    (config / "cli-plugins").mkdir(parents=True)
    real = Path(remote.base_env["DOCKER_CONFIG"]) / "cli-plugins" / "docker-compose"
    if real.exists():
        (config / "cli-plugins" / "docker-compose").symlink_to(real)
    env = {**remote.base_env, "DOCKER_CONFIG": str(config)}
    create = ["docker", "context", "create", "ktrdr-remote", "--docker"]
    check(run([*create, f"host={remote.host.tcp_url}"], env=env))
    check(run(["docker", "context", "use", "ktrdr-remote"], env=env))
    found = engine.detect(env)
    assert (found.kind, found.host, found.source) == (
        engine.Kind.TCP,
        ADDRESS,
        "context ktrdr-remote",
    )
    as_user = {"DOCKER_CONFIG": str(config)}
    # Whatever changed locally since the suite loaded the images is sent (compared by image
    # ID, not tag: on a shared engine a tag can move); a second run then sends nothing.
    first = check(remote.inv("context", "images", "--to-engine", extra=as_user)).stdout
    assert "already on the engine" in first.splitlines()[-1]
    again = check(remote.inv("context", "images", "--to-engine", extra=as_user)).stdout
    assert again.splitlines()[-1].startswith("images: 0 sent"), again
    slot = TCP_SLOTS[0]
    started.append((slot, "tcp"))
    out = check(remote.inv("context", "up", f"--slot={slot}", extra=as_user)).stdout
    assert "remote, from context ktrdr-remote" in out
    assert_remote_urls(out.split("exposure:", 1)[1])
    check(remote.inv("context", "down", f"--slot={slot}", "--volumes", extra=as_user))
    assert not remote.client_home.exists()


FIXTURE = ROOT / "containers" / "fixtures" / "ktrdr-fixture"


def version_after(slot: int, wanted: str, seconds: float = 60.0) -> float:
    """Seconds until the slot's health reports `wanted` (the app reloaded the copy)."""
    began = time.monotonic()
    seen: object = None
    while time.monotonic() - began < seconds:
        try:
            seen = health(slot).get("version")
        except (OSError, urllib.error.URLError) as exc:  # restarting: not an answer yet
            seen = exc
        if seen == wanted:
            return time.monotonic() - began
        time.sleep(0.25)
    pytest.fail(f"slot {slot} still reports {seen!r}, not {wanted!r}, after {seconds}s")


def set_version(checkout: Path, version: str) -> None:
    (checkout / "ktrdr" / "version.py").write_text(f'VERSION = "{version}"\n')


def running_inv(remote: Remote, transport: str, *args: str) -> subprocess.Popen[str]:
    """`inv ARGS` left running (a watch, a tunnel), stopped by `interrupt`. SIGINT is
    restored to its default in the child: a CI shell may have started us ignoring it."""
    inv = Path(sys.executable).parent / "inv"
    return subprocess.Popen(
        [str(inv), "--search-root", str(ROOT), *args],
        env=remote.env(transport, {"KTRDR_BIND_ADDR": "0.0.0.0"}),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def interrupt(process: subprocess.Popen[str]) -> str:
    """Ctrl-C for a running `inv`: it must end by itself, with status 0; its output."""
    process.send_signal(signal.SIGINT)
    out, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    return out


def test_a_source_checkout_is_copied_to_the_remote_and_kept_in_step(
    remote: Remote, started: list[tuple[int, str]], tmp_path: Path
) -> None:
    """`inv up --source` over tcp://: the KTRDR-shaped fixture's code goes to the remote host
    as a copy (its dependency image sent from this machine), migrations run, and `inv sync`,
    then `inv sync --watch`, bring edits that the app reloads; `down --volumes` removes the
    copy with the database."""
    checkout = tmp_path / "ktrdr-remote"
    shutil.copytree(FIXTURE, checkout, ignore=shutil.ignore_patterns("__pycache__", ".env*"))
    set_version(checkout, "remote-1")
    # The dependency image is built here when this machine lacks it (a run without the E2E
    # suite before it), then sent.
    appimages.ensure_deps_image(checkout, remote.base_env, images.offline_selected(ROOT))
    slot = TCP_SLOTS[0]
    started.append((slot, "tcp"))
    out = check(remote.inv("tcp", "up", f"--slot={slot}", f"--source={checkout}")).stdout
    assert f"ktrdr: {checkout}, copied to {ADDRESS}" in out
    assert "files (" in out and f": ktrdr-sandbox-{slot}_source on {ADDRESS}, " in out
    assert "migrations passed" in out
    assert health(slot)["version"] == "remote-1"
    assert f"KTRDR_API_URL=http://{ADDRESS}:" in (checkout / ".env.sandbox").read_text()

    set_version(checkout, "remote-2")
    synced = check(remote.inv("tcp", "sync", f"--slot={slot}")).stdout
    assert synced.startswith("source: sent 1 file ("), synced
    print(f"inv sync: reloaded after {version_after(slot, 'remote-2'):.1f}s")

    watcher = running_inv(remote, "tcp", "sync", f"--slot={slot}", "--watch")
    try:
        time.sleep(2)  # its first round: the copy already matches
        set_version(checkout, "remote-3")
        print(f"inv sync --watch: reloaded after {version_after(slot, 'remote-3'):.1f}s")
    finally:
        watched = interrupt(watcher)
    assert "sent 1 file" in watched and watched.rstrip().endswith("stopped watching")

    check(remote.inv("tcp", "down", f"--slot={slot}", "--volumes"))
    volumes = check(run(["docker", "volume", "ls", "-q"], env=remote.env("tcp"))).stdout
    assert f"ktrdr-sandbox-{slot}_source" not in volumes.split()
    assert not (checkout / ".env.sandbox").exists()
    assert not remote.client_home.exists()


def test_an_ssh_tunnel_keeps_the_ports_on_the_remote_loopback(
    remote: Remote, started: list[tuple[int, str]]
) -> None:
    """Over ssh:// the slot binds the remote host's loopback (the default); `inv tunnel`
    forwards its ports to this machine's, and KTRDR_CONNECT_HOST=127.0.0.1 sends the gate,
    verify and URLs through it. The remote host's own address answers nothing."""
    slot = SSH_SLOT
    through = {"KTRDR_BIND_ADDR": "127.0.0.1", "KTRDR_CONNECT_HOST": "127.0.0.1"}
    tunnel = running_inv(remote, "ssh", "tunnel", f"--slot={slot}")
    try:
        started.append((slot, "ssh"))
        out = check(remote.inv("ssh", "up", f"--slot={slot}", extra=through)).stdout
        assert (
            f"ports bound on 127.0.0.1 on {ADDRESS}, reached at 127.0.0.1 (through `inv tunnel "
            f"--slot={slot}`)"
        ) in out
        api = port("KTRDR_API_PORT", slot)
        assert f"http://127.0.0.1:{api}/api/v1" in out
        with urllib.request.urlopen(f"http://127.0.0.1:{api}/api/v1/health", timeout=5) as got:
            assert json.loads(got.read())["slot"] == slot
        assert not answers(slot)  # nothing on the remote host's network
        check(remote.inv("ssh", "verify", f"--slot={slot}", extra=through))
        check(remote.inv("ssh", "down", f"--slot={slot}", "--volumes", extra=through))
    finally:
        closed = interrupt(tunnel)
    assert f"forwarding slot {slot}'s 11 ports from {ADDRESS}'s loopback" in closed
    assert closed.rstrip().endswith("tunnel closed")
    # Its own connection: Ctrl-C closed every forward (none left with a shared ssh master).
    assert ports.can_bind("127.0.0.1", port("KTRDR_API_PORT", slot))
