"""`inv verify` of a swarm slot: the same named checks as on one engine (sandbox/verify.py),
asked of the swarm.

- `health`: the backend answers at the address of the node that runs it.
- `own-database`: the db task runs on a node labelled for the databases, and its container
  there mounts `<stack>_db-data`, which no other stack's db on that node mounts.
- `ports`: every port of the env file is published by its service's task, and no service of
  another stack publishes one of them.
- `shared-dir`: a probe file written into data/, models/ and strategies/ on a node labelled
  for the shared directory is seen by the backend and every worker, wherever they run (on a
  second shared node only if the directory really is shared, an NFS mount say).

Each node's engine is reached as `exec` reaches it (KTRDR_SWARM_NODE_ENGINE for the nodes
that are not the manager).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from sandbox import net, runner, slotfiles, slots
from sandbox import verify as slot_verify
from sandbox.compose import Target
from sandbox.errors import SandboxError
from sandbox.remote import enginehost
from sandbox.settings import CLI_TIMEOUT, VERIFY_EXEC_TIMEOUT, VERIFY_HTTP_TIMEOUT
from sandbox.swarm import stackfile
from sandbox.swarm.access import exec_target
from sandbox.swarm.cluster import LIVE_STATES, Node, labelled_engines, nodes
from sandbox.swarm.deploy import ports_elsewhere
from sandbox.swarm.record import Record, stack_document
from sandbox.swarm.status import ServiceRow, slot_rows
from sandbox.verify import VerifyCheck, VerifyReport

SERVICE_LABEL = "com.docker.swarm.service.name"
Rows = Mapping[str, ServiceRow]


def url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def check_health(target: Target, rows: Rows, http_get: net.HttpGet) -> VerifyCheck:
    backend = rows.get("backend")
    if backend is None or backend.state not in LIVE_STATES or not backend.address:
        return VerifyCheck("health", False, "the backend runs on no node")
    port = target.port("KTRDR_API_PORT")
    url = f"http://{url_host(backend.address)}:{port}/api/v1/health"
    return slot_verify.check_health(*http_get(url, VERIFY_HTTP_TIMEOUT))


def check_database(
    stack: str, own: str, services: Mapping[str, str], mounts: Mapping[str, list[slot_verify.Mount]]
) -> VerifyCheck:
    """`own`: the slot's db container; `services`: every container of a swarm service on its
    node -> its service; `mounts`: container -> mounts."""
    name = "own-database"
    expected = slots.db_volume(stack)
    volumes = {m.name for m in mounts.get(own, []) if m.type == "volume"}
    if expected not in volumes:
        seen = ", ".join(sorted(volumes)) or "no named volume"
        return VerifyCheck(name, False, f"data volume should be {expected}; mounts {seen}")
    sharing = sorted(
        services[c]
        for c, found in mounts.items()
        if c != own and any(m.name == expected for m in found)
    )
    if sharing:
        return VerifyCheck(name, False, f"volume {expected} is also mounted by {sharing[0]}")
    return VerifyCheck(name, True, f"db {own[:12]} on volume {expected}, shared with no other slot")


def containers_command() -> list[str]:
    fmt = f'{{{{.ID}}}} {{{{.Label "{SERVICE_LABEL}"}}}}'
    return ["docker", "ps", "--no-trunc", "--filter", f"label={SERVICE_LABEL}", "--format", fmt]


def own_database(
    record: Record, rows: Rows, known: Mapping[str, Node], environ: Mapping[str, str]
) -> VerifyCheck:
    db = rows.get("db")
    if db is None or db.state not in LIVE_STATES:
        return VerifyCheck("own-database", False, f"db task is {db.state if db else 'missing'}")
    if known.get(db.node, Node("", "", "")).labels.get(stackfile.DB_LABEL) != "true":
        return VerifyCheck("own-database", False, f"db runs on {db.node}, not a db node")
    try:
        node_env, _ = exec_target(record, "db", environ)
    except SandboxError as error:
        return VerifyCheck("own-database", False, error.message)
    listed = runner.run(containers_command(), env=node_env, timeout=CLI_TIMEOUT).stdout
    services = dict(line.split(" ", 1) for line in listed.splitlines() if " " in line)
    own = [c for c, s in services.items() if s == f"{record.stack}_db"]
    if not own:
        return VerifyCheck("own-database", False, f"no db container on {db.node}")
    dbs = [c for c, s in services.items() if s.endswith("_db")]
    mounts = slot_verify.inspect_mounts(dbs, node_env)
    return check_database(record.stack, own[0], services, mounts)


def check_ports(
    target: Target, deployed: Sequence[str], rows: Rows, others: Mapping[int, str]
) -> VerifyCheck:
    """Every env-file port of the deployed services is its task's; none is another's."""
    problems: list[str] = []
    waiting: list[str] = []
    specs = [s for s in slots.PORTS if s.service in deployed]
    for spec in specs:
        port, row = target.port(spec.variable), rows.get(spec.service)
        if row is None or row.state not in LIVE_STATES:
            waiting += [] if spec.service in waiting else [spec.service]
        elif port not in row.ports:
            problems.append(f"{spec.variable}={port} is not published by {spec.service}")
    if waiting:
        problems.append(f"not running: {', '.join(waiting)}")
    for spec in specs:
        holder = others.get(target.port(spec.variable))
        if holder is not None:
            problems.append(f"port {target.port(spec.variable)} is also published by {holder}")
    if problems:
        return VerifyCheck("ports", False, "; ".join(problems))
    return VerifyCheck(
        "ports", True, f"{len(specs)} ports as in {target.env_file.name}, none published by another"
    )


def probe_args(name: str) -> list[str]:
    """`test -f A -a -f B -a -f C` for the probe under the three shared mounts."""
    tests: list[str] = []
    for mount in slot_verify.SHARED_MOUNTS:
        tests += [*(["-a"] if tests else []), "-f", f"{mount}/{name}"]
    return ["test", *tests]


def shared_dir(
    target: Target,
    record: Record,
    known: Mapping[str, Node],
    environ: Mapping[str, str],
    app_services: Sequence[str],
) -> VerifyCheck:
    env = record.env(environ)
    engines = labelled_engines(known, stackfile.SHARED_LABEL, (record.address, env), environ)
    document = stack_document(target.root, target.slot) or {}
    image = str(document.get("services", {}).get("backend", {}).get("image", ""))
    if not engines or not image:
        return VerifyCheck("shared-dir", False, "no shared node whose engine this tool reaches")
    node, node_env = engines[0]
    name, directory = slot_verify.probe_name(target.slot), str(target.shared_dir)

    def look(service: str) -> str | None:
        try:
            found_env, container = exec_target(record, service, environ)
        except SandboxError as error:
            return error.message
        cmd = ["docker", "exec", container, *probe_args(name)]
        return slot_verify.exec_seen(runner.run(cmd, env=found_env, timeout=VERIFY_EXEC_TIMEOUT))

    try:
        failed = enginehost.write_probe(directory, name, image, node_env)
        if failed is not None:
            return VerifyCheck(
                "shared-dir", False, f"cannot write a probe on {node.hostname}: {failed}"
            )
        with ThreadPoolExecutor(max_workers=max(1, len(app_services))) as pool:
            seen = dict(zip(app_services, pool.map(look, app_services), strict=True))
    finally:
        enginehost.remove_probe(directory, name, image, node_env)
    return slot_verify.check_shared_dir(f"{directory}/*/{name} on {node.hostname}", seen)


def verify(
    target: Target,
    record: Record,
    environ: Mapping[str, str],
    http_get: net.HttpGet = net.http_get,
    others: Callable[[Mapping[str, str], str], dict[int, str]] | None = None,
) -> VerifyReport:
    """The swarm slot's checks, in the order `inv verify` shows them on one engine."""
    env = record.env(environ)
    rows = {r.service: r for r in slot_rows(record, environ, target.root).rows}
    known = nodes(env)
    deployed = sorted((stack_document(target.root, target.slot) or {}).get("services", {}))
    taken = (others or ports_elsewhere)(env, record.stack)
    app_services = [s for s in slotfiles.APP_SERVICES if s in deployed]
    return VerifyReport(
        target.slot,
        [
            check_health(target, rows, http_get),
            own_database(record, rows, known, environ),
            check_ports(target, deployed, rows, taken),
            shared_dir(target, record, known, environ, app_services),
        ],
    )
