"""Slots reached from containers on this host, and the tool run from inside a container.

`test_an_agent_container_reaches_a_bridge_slot`: a slot started with KTRDR_AGENT_REACH=bridge is
reached by a container started exactly as KTRDR's orchestrator starts its coding agent
(`docker run --add-host=host.docker.internal:host-gateway ...`, here the reference-app image:
no registry is reachable) at the URL `inv status --json` gives it, while every port of the slot
stays closed elsewhere: a connection to the gateway of a network this test creates (an address
of this machine that is neither loopback nor the bridge) is refused, and for this machine's
other addresses, which the team's rules keep traffic away from, the kernel's listening
sockets and the engine's DNAT rules show nothing bound there (no packet sent).

`test_the_tool_runs_inside_a_container_with_the_socket`: `inv up` run in a container with the
engine's socket mounted, the checkout at the same path and HOME at another one: the shared
directory is translated to the engine host's path, the ports are reached at the bridge gateway,
the gate passes; a path that exists only in the container is refused in one line.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import ROOT, compose, reach, slots
from sandbox.errors import Exit
from sandbox.ports import parse_proc_net
from sandbox.runner import Result, run
from tests.e2e.conftest import E2E_SLOTS, Sandbox, claim_slots, project_containers, remove_project

pytestmark = pytest.mark.docker

A, B = E2E_SLOTS
PROBE_NETWORK = "ktrdr-sandbox-reach-probe"
AGENT_HOME = "/home/agent"
SITE = "/opt/sandbox-site"


def app_image() -> str:
    return compose.image_settings(ROOT).get("KTRDR_APP_IMAGE", "ktrdr-sandbox/reference-app:latest")


def assert_ok(result: Result) -> None:
    assert result.ok, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


def with_env(sandbox: Sandbox, **more: str) -> Sandbox:
    return Sandbox(sandbox.home, {**sandbox.env, **more})


@pytest.fixture
def free(sandbox: Sandbox) -> Iterator[None]:
    claim_slots((A, B), sandbox.env)
    try:
        yield
    finally:
        for slot in (A, B):
            if project_containers(slot):
                remove_project(slot, sandbox.env)


@pytest.fixture
def probe_network(sandbox: Sandbox) -> Iterator[str]:
    """A network of the test's own: its gateway is an address of this machine that is neither
    loopback nor the Docker bridge's, so it may be probed."""
    run(["docker", "network", "rm", PROBE_NETWORK], env=sandbox.env, timeout=60)
    made = run(["docker", "network", "create", PROBE_NETWORK], env=sandbox.env, timeout=60)
    assert_ok(made)
    try:
        inspect = run(
            ["docker", "network", "inspect", PROBE_NETWORK, "--format", "{{json .IPAM.Config}}"],
            env=sandbox.env,
            timeout=60,
        )
        gateway = reach.gateway_from_ipam(json.loads(inspect.stdout))
        assert gateway is not None, inspect.stdout
        yield gateway
    finally:
        run(["docker", "network", "rm", PROBE_NETWORK], env=sandbox.env, timeout=60)


def bindings(slot: int) -> list[tuple[str, int]]:
    return [(p.host_ip, p.host_port) for c in project_containers(slot) for p in c.ports]


def refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def machine_addresses(env: dict[str, str]) -> set[str]:
    found = set()
    for family in ("-4", "-6"):
        listed = run(["ip", "-j", family, "addr"], env=env, timeout=30)
        assert_ok(listed)
        for link in json.loads(listed.stdout):
            found |= {a["local"] for a in link.get("addr_info", [])}
    return found


def nat_destinations(env: dict[str, str], ports: set[int]) -> set[str]:
    """The destination addresses of the engine's DNAT rules for `ports` (iptables -t nat)."""
    rules = run(["iptables", "-t", "nat", "-S", "DOCKER"], env=env, timeout=30)
    assert_ok(rules)
    found = set()
    for line in rules.stdout.splitlines():
        words = line.split()
        if "DNAT" not in words or "--dport" not in words:
            continue
        if int(words[words.index("--dport") + 1]) in ports:
            destination = words[words.index("-d") + 1] if "-d" in words else "0.0.0.0/0"
            found.add(destination.split("/")[0])
    return found


def agent_get(url: str, env: dict[str, str]) -> Result:
    """GET `url` from a container started as KTRDR's orchestrator starts its coding agent."""
    script = (
        "import sys, urllib.request\n"
        "with urllib.request.urlopen(sys.argv[1], timeout=10) as r:\n"
        "    print(r.status, r.read().decode())\n"
    )
    cmd = ["docker", "run", "--rm", reach.AGENT_ADD_HOST, app_image(), "python3", "-c", script]
    return run([*cmd, url], env=env, timeout=120)


def test_an_agent_container_reaches_a_bridge_slot(
    sandbox: Sandbox, free: None, probe_network: str
) -> None:
    bridged = with_env(sandbox, KTRDR_AGENT_REACH="bridge")
    gateway = reach.gateway_or_none(sandbox.env)
    assert gateway is not None
    up = bridged.inv("up", f"--slot={B}", "--workers=none")
    assert_ok(up)
    assert f"reach: ports on 127.0.0.1 and on {gateway} (the Docker bridge gateway)" in up.stdout

    status = json.loads(bridged.inv("status", "--json", f"--slot={B}").stdout)
    api = slots.ports(B)["KTRDR_API_PORT"]
    url = status["slots"][0]["agent_url"]
    assert url == f"http://host.docker.internal:{api}/api/v1"
    got = agent_get(f"{url}/health", sandbox.env)
    assert_ok(got)
    code, body = got.stdout.split(" ", 1)
    assert code == "200" and json.loads(body)["status"] == "ok", got.stdout

    published = bindings(B)
    ports = {port for _, port in published}
    assert {ip for ip, _ in published} == {"127.0.0.1", gateway}, published
    # Closed on an address of this machine the test made for probing: nothing answers there.
    assert all(refused(probe_network, port) for port in ports), probe_network
    # Every other address: nothing listens on it or on a wildcard, and no DNAT rule sends it
    # anywhere (asked of the kernel, not probed: no traffic to this machine's other addresses).
    others = machine_addresses(sandbox.env) - {"127.0.0.1", "::1", gateway, probe_network}
    assert others, "this machine has no other address to check"
    listeners = [
        listener
        for name, ipv6 in (("tcp", False), ("tcp6", True))
        for listener in parse_proc_net(Path(f"/proc/net/{name}").read_text(), ipv6=ipv6)
        if listener.port in ports
    ]
    assert listeners, "docker-proxy listens on nothing: the check below would prove nothing"
    assert {listener.address for listener in listeners} <= {"127.0.0.1", gateway}, listeners
    assert nat_destinations(sandbox.env, ports) <= {"127.0.0.1", gateway}
    print(
        f"reach: agent got {code} at {url}; refused on {probe_network}; bound on none of "
        f"{len(others)} other addresses (listeners {len(listeners)}, DNAT rules checked)"
    )

    # The default stays loopback only: the same slot started again without the setting.
    assert_ok(sandbox.inv("down", f"--slot={B}"))
    assert_ok(sandbox.inv("up", f"--slot={B}", "--workers=none"))
    assert {ip for ip, _ in bindings(B)} == {"127.0.0.1"}
    assert not agent_get(f"{url}/health", sandbox.env).ok
    assert_ok(sandbox.inv("down", f"--slot={B}", "--volumes"))


def in_container(sandbox: Sandbox, agent_home: Path, *args: str, **env: str) -> Result:
    """`inv ARGS` in a container of this engine with its socket mounted, as an agent would
    run it: the checkout at the same path, HOME at another, the CLIs and packages mounted."""
    docker_cli = shutil.which("docker")
    compose_cli = Path(sys.executable).parent / "docker-compose"
    # Pure-Python packages (invoke, python-dotenv, rich): the image's Python 3.11 reads them.
    site = Path(sysconfig.get_paths()["purelib"])
    assert docker_cli and compose_cli.is_file() and site.is_dir()
    mounts = [
        ("/var/run/docker.sock", "/var/run/docker.sock"),
        (str(ROOT), str(ROOT)),
        (str(agent_home), AGENT_HOME),
        (str(site), SITE),
        (docker_cli, "/usr/local/bin/docker"),
        (str(compose_cli), "/usr/local/lib/docker/cli-plugins/docker-compose"),
    ]
    variables = {"HOME": AGENT_HOME, "PYTHONPATH": SITE, "KTRDR_LOCK_DIR": f"{AGENT_HOME}/locks"}
    variables |= env
    # A fixed host name: the slot's database volume records the machine that made it, and
    # each `docker run` would otherwise be another machine to `down --volumes`.
    cmd = ["docker", "run", "--rm", "--hostname=ktrdr-agent", "-w", str(ROOT)]
    cmd += [f"--volume={src}:{dst}" for src, dst in mounts]
    cmd += [f"--env={k}={v}" for k, v in variables.items()]
    cmd += [app_image(), "python3", "-m", "invoke", "--search-root", str(ROOT), *args]
    return run(cmd, env=sandbox.env, timeout=600)


def test_the_tool_runs_inside_a_container_with_the_socket(sandbox: Sandbox, free: None) -> None:
    agent_home = sandbox.home / "agent-home"
    agent_home.mkdir(exist_ok=True)
    gateway = reach.gateway_or_none(sandbox.env)

    up = in_container(sandbox, agent_home, "up", f"--slot={A}", "--workers=none")
    assert_ok(up)
    shared = agent_home / ".ktrdr" / "shared"
    assert f"{AGENT_HOME}/.ktrdr/shared is {shared} there" in up.stdout, up.stdout
    assert f"ports reached at {gateway}" in up.stdout
    assert "is ready" in up.stdout and f"http://{gateway}:" in up.stdout
    # The engine bound the host's directory, which the container's preflight created.
    backend = run(
        ["docker", "inspect", f"ktrdr-sandbox-{A}-backend-1", "--format", "{{json .Mounts}}"],
        env=sandbox.env,
        timeout=60,
    )
    sources = {m["Destination"]: m["Source"] for m in json.loads(backend.stdout)}
    assert sources["/app/data"] == str(shared / "data")
    assert (shared / "data").is_dir()

    # A path that exists only in the container: one line naming it and the fix; nothing runs.
    lost = in_container(
        sandbox, agent_home, "up", f"--slot={B}", "--workers=none", KTRDR_SHARED_DIR="/tmp/lost"
    )
    assert lost.returncode == Exit.USAGE, lost.stdout + lost.stderr
    lines = lost.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: /tmp/lost exists only inside"), lines
    assert "-v HOSTPATH:/tmp/lost" in lines[0] and "Traceback" not in lost.stderr
    assert not project_containers(B)

    assert_ok(in_container(sandbox, agent_home, "down", f"--slot={A}", "--volumes"))
    assert not project_containers(A)
