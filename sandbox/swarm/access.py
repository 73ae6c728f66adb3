"""Logs of a swarm slot's services, and `exec` in a task on whichever node runs it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sandbox import (
    runner,
)
from sandbox.errors import Exit, SandboxError
from sandbox.runner import Result
from sandbox.settings import CLI_TIMEOUT, ENGINE_QUERY_TIMEOUT
from sandbox.swarm.cluster import LIVE_STATES, node_engine, nodes, tasks
from sandbox.swarm.record import Record


def logs_command(stack_name: str, service: str, follow: bool, tail: int) -> list[str]:
    return [
        "docker",
        "service",
        "logs",
        "--no-task-ids",
        "--tail",
        str(tail),
        *(["--follow"] if follow else []),
        f"{stack_name}_{service}",
    ]


def failing_logs(
    stack_name: str, services: Sequence[str], environ: Mapping[str, str]
) -> dict[str, str]:
    found = {}
    for service in services:
        result = runner.run(
            logs_command(stack_name, service, False, 20),
            env=dict(environ),
            timeout=ENGINE_QUERY_TIMEOUT,
        )
        found[service] = (result.stdout + result.stderr).strip()
    return found


def exec_target(
    record: Record, service: str, environ: Mapping[str, str]
) -> tuple[dict[str, str], str]:
    """The environment reaching the engine of the node that runs `service`, and its container."""
    env = record.env(environ)
    found = tasks(record.stack, env).get(service)
    if found is None or found.state not in LIVE_STATES:
        raise SandboxError(
            f"{service} of slot {record.slot} is not running (`inv status --slot={record.slot}`)",
            Exit.USAGE,
        )
    address = nodes(env)[found.node].address
    node_env = dict(env)
    if address != record.address:  # the manager's API cannot exec on another node
        node_env.pop("DOCKER_CONTEXT", None)
        node_env["DOCKER_HOST"] = node_engine(environ, address)
    fmt = "{{.ID}}"
    label = f"label=com.docker.swarm.service.name={record.stack}_{service}"
    result = runner.run(
        ["docker", "ps", "--quiet", "--filter", label, "--format", fmt],
        env=node_env,
        timeout=CLI_TIMEOUT,
    )
    ids = result.stdout.split()
    if not result.ok or not ids:
        raise SandboxError(
            f"no container of {record.stack}_{service} on {found.node} ({address})", Exit.USAGE
        )
    return node_env, ids[0]


def exec_command(container: str, argv: Sequence[str], interactive: bool) -> list[str]:
    return [
        "docker",
        "exec",
        *(["--interactive", "--tty"] if interactive else []),
        container,
        *argv,
    ]


def run_exec(
    record: Record, service: str, argv: Sequence[str], environ: Mapping[str, str], interactive: bool
) -> Result:
    env, container = exec_target(record, service, environ)
    return runner.run(exec_command(container, argv, interactive), env=env, capture=False)
