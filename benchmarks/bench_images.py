"""Measure `inv images --offline` from nothing: its wall time on an empty Docker engine, and the
unique bytes of what it built (each layer once: the Debian base counted once, not per image).

    .venv/bin/python benchmarks/bench_images.py                      # this checkout
    .venv/bin/python benchmarks/bench_images.py --checkout ../other  # e.g. a worktree of main

The empty engine is a simulated remote host of its own (tests/support/remotehost.py's image, Docker
in Docker): container ktrdr-bench-images on a new volume, its API on tcp://127.0.0.3:2375, so
it runs beside the remote tests' host (127.0.0.2) and never touches this machine's images.
`inv images --offline` runs from the checkout with DOCKER_HOST pointed at it: debootstrap here
(root, a Debian mirror), `docker import` of the base there, then every build there. The
container and its volume are removed at the end whatever happened, and the checkout's ./.env
(which `inv images` rewrites) is put back as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox.compose import IMAGES_ENV  # noqa: E402
from sandbox.runner import run  # noqa: E402
from tests.support import remotehost  # noqa: E402

PLACE = remotehost.Place("ktrdr-bench-images", "ktrdr-bench-images-docker", "127.0.0.3")
INV = str(Path(sys.executable).parent / "inv")
BUILD_TIMEOUT = 3600.0
# The entrypoint wants a public key for its sshd; nothing here logs in.
NO_KEY = "no-key: the image benchmark never uses ssh"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def refuse_leftovers(place: remotehost.Place, environ: Mapping[str, str]) -> None:
    """A container or volume of that name is an interrupted run's: say how to remove it
    rather than guess that it is ours."""
    for kind, name in (("container", place.container), ("volume", place.volume)):
        if run(["docker", kind, "inspect", name], env=dict(environ)).ok:
            sys.exit(f"{kind} {name} exists (an interrupted run?): `docker {kind} rm -f {name}`")


@contextmanager
def empty_engine(place: remotehost.Place, environ: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """An empty engine in its own container and volume; yields the environment that reaches
    it. Both are removed on the way out."""
    refuse_leftovers(place, environ)
    if not run(["docker", "image", "inspect", remotehost.IMAGE], env=dict(environ)).ok:
        remotehost.ensure_image(ROOT, environ)
    try:
        started = run(remotehost.run_command(NO_KEY, (), place), env=dict(environ), timeout=120)
        if not started.ok:
            sys.exit(f"docker run of {place.container} failed: {started.tail(5)}")
        with tempfile.TemporaryDirectory(prefix="bench-images-") as state:
            host = remotehost.RemoteHost(Path(state), place)
            version = remotehost.wait_for_engine(host, environ, remotehost.READY_TIMEOUT)
            print(f"empty engine {version} at {host.tcp_url} ({place.container})", flush=True)
            yield host.client_env(environ, "tcp")
    finally:
        print("removed " + ", ".join(remotehost.stop(environ, place=place)), flush=True)


@contextmanager
def kept(path: Path) -> Iterator[None]:
    """`path` as it was before, afterwards (or absent again)."""
    before = path.read_bytes() if path.exists() else None
    try:
        yield
    finally:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(before)


def disk_usage(address: str) -> dict[str, Any]:
    """The engine's own accounting (`docker system df`'s API): LayersSize counts each layer
    once however many images share it."""
    url = f"http://{address}:{remotehost.API_PORT}/system/df"
    with NO_PROXY.open(url, timeout=60) as response:
        found: dict[str, Any] = json.load(response)
        return found


def report(seconds: float, usage: Mapping[str, Any]) -> None:
    images = sorted(usage["Images"], key=lambda i: -int(i["Size"]))
    unique, summed = int(usage["LayersSize"]), sum(int(i["Size"]) for i in images)
    print(f"wall time: {seconds:.1f} s")
    print(f"unique bytes: {unique / 1e6:.0f} MB (each layer once; images' sizes add up to ", end="")
    print(f"{summed / 1e6:.0f} MB, the base counted in each)")
    for image in images:
        tags = ", ".join(image.get("RepoTags") or ["<none>"])
        print(f"  {int(image['Size']) / 1e6:6.0f} MB  {tags}")


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", default=str(ROOT), help="the checkout whose `inv` to run")
    args = parser.parse_args(argv)
    checkout = Path(args.checkout).resolve()
    environ = dict(os.environ)
    with empty_engine(PLACE, environ) as remote, kept(checkout / IMAGES_ENV):
        cmd = [INV, "--search-root", str(checkout), "images", "--offline"]
        started = time.monotonic()
        result = run(cmd, env=remote, cwd=checkout, timeout=BUILD_TIMEOUT)
        seconds = time.monotonic() - started
        print(result.stdout.rstrip(), flush=True)
        if not result.ok:
            sys.exit(f"`inv images --offline` failed after {seconds:.0f} s:\n{result.tail(30)}")
        report(seconds, disk_usage(PLACE.address))


if __name__ == "__main__":
    main(sys.argv[1:])
