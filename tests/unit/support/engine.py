"""One scripted Docker engine for every unit test that runs commands.

It stands in for `runner.execute` (the one subprocess door), records every command, and knows
the engine's read-only questions and its volumes and images, so a test states only what its
engine holds and the few answers particular to it:

    engine = FakeEngine().install(monkeypatch)
    engine.volumes["ktrdr-sandbox-1_db-data"] = {"com.docker.compose.project": "ktrdr-sandbox-1"}
    engine.on("docker", "compose", answer=lambda args: Result(args, 1, "", "no such service"))

Answers given with `on` are tried first, the latest first; then the built-in ones below; a
command nobody answers fails the test when the engine is `strict`, else succeeds silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Self

import pytest

from sandbox import runner
from sandbox.docker import Container
from sandbox.runner import Result

Args = tuple[str, ...]
Answer = Result | Callable[[Args], Result]

LOCAL_CONTEXT = json.dumps(
    [{"Name": "default", "Endpoints": {"docker": {"Host": "unix:///var/run/docker.sock"}}}]
)
NOT_REACHABLE = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock"


def ps_line(c: Container) -> str:
    """One line of `docker ps` in the format docker.ps_command asks for."""
    ports = ", ".join(f"{p.host_ip}:{p.host_port}->{p.container_port}/tcp" for p in c.ports)
    row = {"ID": c.id, "Names": c.name, "State": c.state, "Status": c.status, "Ports": ports,
           "Project": c.project, "Service": c.service, "WorkingDir": c.working_dir,
           "App": c.app, "Source": c.source}  # fmt: skip
    return json.dumps(row)


class FakeEngine:
    """A Docker engine as `runner.execute` sees it."""

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict  # an unscripted command fails the test
        self.reachable = True  # False: `docker version` cannot connect
        self.version = "27.3.1"
        self.compose_version = "2.29.7"
        self.containers: list[Container] = []  # what `docker ps` lists
        self.volumes: dict[str, dict[str, str]] = {}  # name -> labels
        self.images: set[str] | None = None  # what `docker image inspect` finds; None: all
        self.commands: list[Args] = []
        self.options: list[dict[str, Any]] = []  # each command's keyword arguments
        self._script: list[tuple[Args, Answer]] = []
        # Called with every command and its options before it is answered: a check that must
        # hold for each call (its timeout, its environment) fails the test at that call.
        self.each: Callable[[Args, dict[str, Any]], None] | None = None

    def install(self, monkeypatch: pytest.MonkeyPatch) -> Self:
        monkeypatch.setattr(runner, "execute", self)
        return self

    def on(self, *prefix: str, answer: Answer) -> None:
        """Answer commands that start with `prefix` (a Result's args become the command's)."""
        self._script.append((prefix, answer))

    def ran(self, *prefix: str) -> list[Args]:
        """The commands run so far that start with `prefix`, in order."""
        return [c for c in self.commands if c[: len(prefix)] == prefix]

    def __call__(self, cmd: Sequence[Any], **options: Any) -> Result:
        args = tuple(str(part) for part in cmd)
        self.commands.append(args)
        self.options.append(options)
        if self.each is not None:
            self.each(args, options)
        for prefix, answer in reversed(self._script):
            if args[: len(prefix)] == prefix:
                return answer(args) if callable(answer) else replace(answer, args=args)
        return self.answer(args, options)

    def answer(self, args: Args, options: dict[str, Any]) -> Result:
        """The built-in answers; a subclass adds its own and calls this for the rest."""
        if args[:2] == ("docker", "version"):
            if not self.reachable:
                return Result(args, 1, "", NOT_REACHABLE)
            return Result(args, 0, f"{self.version}\n")
        if args[:3] == ("docker", "compose", "version"):
            return Result(args, 0, f"{self.compose_version}\n")
        if args[:3] == ("docker", "context", "inspect"):
            return Result(args, 0, LOCAL_CONTEXT)
        if args[:2] == ("docker", "ps"):
            return Result(args, 0, "\n".join(ps_line(c) for c in self.containers))
        if args[:3] == ("docker", "image", "inspect"):
            present = self.images is None or args[-1] in self.images
            return Result(args, 0 if present else 1, "sha256:1\n" if present else "")
        if args[:3] == ("docker", "volume", "inspect"):
            return self.inspect_volumes(args)
        if args[:3] == ("docker", "volume", "create"):
            labels = dict(v.split("=", 1) for v in args[4:-1:2])
            self.volumes[args[-1]] = labels
            return Result(args, 0, f"{args[-1]}\n")
        if args[:3] == ("docker", "volume", "rm"):
            names = [a for a in args[3:] if not a.startswith("-")]
            missing = [n for n in names if self.volumes.pop(n, None) is None]
            if missing:
                return Result(args, 1, "", f"Error: No such volume: {missing[0]}")
            return Result(args, 0, "\n".join(names) + "\n")
        if self.strict:
            raise AssertionError(f"an unexpected command: {args}")
        return Result(args, 0, "")

    def inspect_volumes(self, args: Args) -> Result:
        """`docker volume inspect [--format {{.Mountpoint}}] NAME...`: Docker's JSON list, or
        each mount point; an unknown name fails it."""
        rest = list(args[3:])
        template = rest.pop(rest.index("--format") + 1) if "--format" in rest else None
        names = [a for a in rest if not a.startswith("-")]
        missing = [n for n in names if n not in self.volumes]
        if missing:
            return Result(args, 1, "[]\n", f"Error: No such volume: {missing[0]}")
        if template == "{{.Mountpoint}}":
            return Result(args, 0, "".join(f"{self.mountpoint(n)}\n" for n in names))
        assert template is None, f"a format the fake engine does not know: {template}"
        found = [{"Name": n, "Labels": self.volumes[n]} for n in names]
        return Result(args, 0, json.dumps(found))

    def mountpoint(self, name: str) -> str:
        return f"/var/lib/docker/volumes/{name}/_data"
