"""The JSON documents the MCP server's tools answer with, built by pure functions.

`status` and `verify` answer with exactly the documents of `inv status --json` and
`inv verify --json` (sandbox/ui/statusjson.py). The other tools' documents follow the same rules
(docs/designs/Sandbox/MCP.md): a `schema` naming the kind, an integer `version`, keys only ever
added within one version. A refused call is an `error` document: the one-line message a task
would print and the exit code it would exit with, never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sandbox import checks
from sandbox.errors import SandboxError

VERSION = 1
PREFIX = "ktrdr-sandbox/"
# Output of a command kept in a document: the tail, as `inv logs --tail` would show it; an
# agent asks for less with `tail`, and a runaway command cannot fill the client's context.
MAX_OUTPUT = 64 * 1024


def header(kind: str) -> dict[str, Any]:
    return {"schema": PREFIX + kind, "version": VERSION}


def error(exc: SandboxError, document: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A refused or failed call: the task's one line, its exit code, what the command said,
    and (when the call got that far) the document of what did happen, e.g. a failed gate."""
    return {
        **header("error"),
        "error": str(exc),
        "exit_code": int(exc.code),
        "details": exc.details,
        "result": dict(document) if document is not None else None,
    }


def clip(text: str, limit: int = MAX_OUTPUT) -> str:
    """The last `limit` characters of `text` (a command's output is read from its end)."""
    return text if len(text) <= limit else text[-limit:]


def check(result: checks.CheckResult) -> dict[str, Any]:
    return {
        "name": result.name,
        "label": result.label,
        "state": result.state.value,
        "detail": result.detail,
        "seconds": None if result.elapsed is None else round(result.elapsed, 3),
    }


def gate(result: checks.GateResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {
        "passed": result.passed,
        "seconds": round(result.elapsed, 3),
        "checks": [check(c) for c in result.checks],
    }


def up(
    slot: int,
    started: bool,
    outcome: checks.GateResult | None,
    preflight: Sequence[tuple[str, str]],
    logs: Mapping[str, str],
    status: Mapping[str, Any],
) -> dict[str, Any]:
    """`up`: the preflight steps, whether Compose ran, the gate's checks, the failing
    services' last lines when it did not pass, and the slot's `status` document after it."""
    return {
        **header("up"),
        "slot": slot,
        "started": started,
        "ready": outcome is not None and outcome.passed,
        "preflight": [{"name": name, "detail": detail} for name, detail in preflight],
        "gate": gate(outcome),
        "urls": dict(outcome.urls) if outcome is not None else {},
        "logs": {name: clip(text) for name, text in logs.items()},
        "status": dict(status),
    }


def new(branch: str, worktree: str, up_document: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **header("new"),
        "branch": branch,
        "worktree": worktree,
        "slot": up_document["slot"],
        "up": dict(up_document),
    }


def logs(slot: int, service: str | None, tail: int, text: str) -> dict[str, Any]:
    return {
        **header("logs"),
        "slot": slot,
        "service": service,
        "tail": tail,
        "text": clip(text),
    }


def exec_result(
    slot: int, service: str, argv: Sequence[str], code: int, stdout: str, stderr: str
) -> dict[str, Any]:
    """`exec`: the command's own exit status is a result, as `inv exec` returns it."""
    return {
        **header("exec"),
        "slot": slot,
        "service": service,
        "argv": list(argv),
        "exit_code": code,
        "stdout": clip(stdout),
        "stderr": clip(stderr),
    }


def snapshot(name: str, slot: int, app: str, size: int, migration: str | None) -> dict[str, Any]:
    return {
        **header("snapshot"),
        "name": name,
        "slot": slot,
        "app": app,
        "size": size,
        "migration": migration,
    }


def restore(slot: int, source: str, replaced_tables: int, size: int, note: str) -> dict[str, Any]:
    return {
        **header("restore"),
        "slot": slot,
        "source": source,
        "replaced_tables": replaced_tables,
        "size": size,
        "note": note,
    }


def down(slot: int, volumes: bool, removed: Sequence[str] = ()) -> dict[str, Any]:
    return {**header("down"), "slot": slot, "volumes": volumes, "removed": list(removed)}


def done(slot: int | None, worktree: str, repo: str, forced: Sequence[str]) -> dict[str, Any]:
    """`done`: the slot taken down (None when it was down already), the worktree removed,
    and what `force` threw away (empty when nothing was at risk)."""
    return {
        **header("done"),
        "slot": slot,
        "worktree": worktree,
        "repo": repo,
        "forced": list(forced),
    }
