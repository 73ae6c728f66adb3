"""Fixtures for the remote-engine suite: a simulated remote Docker host, started once.

`scripts/remote-host.sh`'s machinery (tests/support/remotehost.py) starts a Docker-in-Docker
container whose API, sshd and slot ports are published on 127.0.0.2; the tests drive `inv` (and
plain `docker compose`) through `DOCKER_HOST=tcp://127.0.0.2:2375` and
`ssh://root@127.0.0.2:2222`. When the remote host cannot start, every test fails with the
reason; nothing skips.

HOME points at a directory that does not exist on the client: the slots' shared directory
(`${HOME}/.ktrdr/shared` in the env files) resolves on the remote host, and the tests check
that the client never gets it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox import ROOT, compose
from sandbox.errors import SandboxError
from sandbox.images import build as images
from sandbox.runner import Result, run
from tests.support import remotehost
from tests.support.remotehost import RemoteHost

# The slots the suite takes on the remote engine (its own engine: no other helper's slots
# live there). Two over tcp://, one over ssh://; the remote host publishes exactly these.
TCP_SLOTS = (1, 2)
SSH_SLOT = 3
# KTRDR_REMOTE_KEEP=1 leaves the remote host running afterwards (to look at it); otherwise its
# container goes, and its volume (the inner engine's images) goes too unless
# KTRDR_REMOTE_KEEP_IMAGES=1 (the nox session's default: the next run skips the 1.4 GB load).
KEEP = os.environ.get("KTRDR_REMOTE_KEEP", "") not in ("", "0")
KEEP_IMAGES = os.environ.get("KTRDR_REMOTE_KEEP_IMAGES", "") not in ("", "0")


@dataclass(frozen=True)
class Remote:
    """The running remote host and the client environments that reach it."""

    host: RemoteHost
    base_env: dict[str, str]  # no DOCKER_HOST: the local engine
    client_home: Path  # never created on the client

    def env(self, transport: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The client's environment over "tcp" or "ssh"; "context": no DOCKER_HOST at all
        (`extra` then names a DOCKER_CONFIG whose current context is the remote)."""
        if transport == "context":
            return {**self.base_env, **(extra or {})}
        return {**self.host.client_env(self.base_env, transport), **(extra or {})}

    def inv(self, transport: str, *args: str, extra: Mapping[str, str] | None = None) -> Result:
        """`inv ARGS` as a user runs it with DOCKER_HOST pointed at the remote host, the slots'
        ports bound on all of its addresses (the only ones the outer engine forwards)."""
        env = self.env(transport, {"KTRDR_BIND_ADDR": "0.0.0.0", **(extra or {})})
        inv = Path(sys.executable).parent / "inv"
        cmd = [str(inv), "--search-root", str(ROOT), *args]
        return run(cmd, env=env, cwd=ROOT, timeout=900)


def _client_env(home: Path, state_dir: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KTRDR_", "COMPOSE_", "DOCKER_HOST", "DOCKER_CONTEXT"))
        and key != "SLOT_NUMBER"
    }
    env["DOCKER_CONFIG"] = os.environ.get("DOCKER_CONFIG", str(Path.home() / ".docker"))
    # The slot locks are the client's own business: kept out of the client HOME, which the
    # tests hold empty.
    env.update(
        HOME=str(home),
        KTRDR_REMOTE_DIR=str(state_dir),
        KTRDR_LOCK_DIR=str(state_dir.parent / "locks"),
        KTRDR_GATE_TIMEOUT="300",
    )
    # Machine-wide image choices (./.env from `inv images --offline`) reach Compose the way a
    # user's exports would: the slot's env file carries no image names.
    env.update(compose.image_settings(ROOT))
    return env


@pytest.fixture(scope="session")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    """Start the remote host and load the images; a loud failure when it cannot."""
    work = tmp_path_factory.mktemp("remote")
    home = work / "client-home-never-created"
    env = _client_env(home, work / "remote-host")
    if not compose.image_settings(ROOT):
        pytest.fail(
            "the remote suite loads this checkout's images into the remote host: run "
            "`inv images --offline` first (./.env is missing)",
            pytrace=False,
        )
    try:
        started = remotehost.start(ROOT, (*TCP_SLOTS, SSH_SLOT), env)
        leftovers = remotehost.reset(started.host, env)  # a kept volume's earlier slots
        # Only what the slots run (./.env), not the build-only Debian base.
        loaded = remotehost.load_images(started.host, images.engine_images(ROOT), env)
    except SandboxError as error:
        pytest.fail(
            f"the remote host could not start: {error.message}\n{error.details}", pytrace=False
        )
    print(
        f"\nremote host: engine after {started.seconds_to_engine:.1f}s; images: "
        f"{len(loaded.images)} loaded, {loaded.bytes} bytes in {loaded.seconds:.1f}s, "
        f"{len(loaded.skipped)} already there; {leftovers} leftover objects removed"
    )
    yield Remote(started.host, env, home)
    if not KEEP:
        remotehost.stop(env, keep_volume=KEEP_IMAGES)
