"""Dependency images for apps managed by uv (a KTRDR checkout, or our KTRDR-shaped fixture).

The image holds only the app's locked dependencies, installed from its `pyproject.toml` and
`uv.lock` (`uv sync --frozen --no-install-project --no-dev`) into /opt/venv; the source is
bind-mounted at /app when a slot runs, so an edit reloads without a rebuild. The tag is a hash
of what the image is made from, so every checkout whose branch shares a lock shares the image.

The build context is a small temporary directory, never the checkout: the two files above,
local path dependencies the lock names (rare), the Dockerfile, and the extra CA certificates a
TLS-intercepting proxy needs (pip and uv inside the build fail without them).

KTRDR's own deploy/docker/Dockerfile.dev needs BuildKit (a heredoc, `RUN --mount`), which an
engine without buildx lacks; containers/images/uv-app/Dockerfile builds with DOCKER_BUILDKIT=0.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from sandbox import ROOT, lock, runner, slots
from sandbox.errors import Exit, SandboxError
from sandbox.images import base
from sandbox.runner import display
from sandbox.settings import CLI_TIMEOUT

DEPS_REPOSITORY = "ktrdr-sandbox/uv-app-deps"
DOCKERFILE = ROOT / "containers" / "images" / "uv-app" / "Dockerfile"
# python:3.13-slim is Debian trixie with its own Python in /usr/local; offline, Debian's own
# Python 3.13 from trixie packages, under our name.
ONLINE_PYTHON_BASE = "python:3.13-slim"
OFFLINE_PYTHON_BASE = "ktrdr-sandbox/python-debian:3.13-trixie"
# The app containers' healthcheck, shared with the reference app's image.
HTTP_OK = ROOT / "containers" / "app" / "http-ok.sh"
PYTHON_BASE_DOCKERFILE = ROOT / "containers" / "images" / "python-trixie" / "Dockerfile"
DEBIAN_SUITE = "trixie"
OFFLINE_DEBIAN_BASE = base.image(DEBIAN_SUITE)
ONLINE_DEBIAN_BASE = f"debian:{DEBIAN_SUITE}-slim"

# Where Debian's update-ca-certificates takes local CAs from: what the host itself trusts
# beyond the distribution's bundle. KTRDR_EXTRA_CA_CERTS adds files or directories
# (os.pathsep-separated) for CAs kept elsewhere, e.g. a corporate bundle in $HOME.
HOST_EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
EXTRA_CA_VARIABLE = "KTRDR_EXTRA_CA_CERTS"

# What the image does about torch when an extra asks for it (see the Dockerfile):
# none: skip torch and its CUDA wheels; debian: Debian's CPU-only python3-torch through
# system site packages; locked: what uv.lock pins (PyPI's CUDA build on Linux x86_64).
TORCH_CHOICES = ("none", "debian", "locked")
# Training needs torch, and a slot must train with the defaults. Debian's build is CPU-only
# (these machines and laptops have no GPU), the same package online and offline, on amd64
# and arm64, and a fraction of PyPI's CUDA wheels (figures in docs/designs/Sandbox/DESIGN.md).
DEFAULT_TORCH = "debian"
TORCH_PACKAGE = "torch"
# Another command building the same image: wait this long for it rather than build twice.
BUILD_LOCK_WAIT = 3600.0
REQUIRED_FILES = ("pyproject.toml", "uv.lock")
_EXTRA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
IGNORED_DIRS = frozenset({".git", ".venv", "__pycache__", "node_modules"})
_COPY_IGNORE = shutil.ignore_patterns(*IGNORED_DIRS)


class Ensured(NamedTuple):
    """What `ensure_deps_image` did: the tag, whether it built anything, how long it took,
    the torch choice that applies, and how long it waited for another command's build."""

    tag: str
    built: bool
    seconds: float
    torch: str = "none"
    waited: float = 0.0


@dataclass(frozen=True)
class Step:
    """One command of a build, with what it produces (for progress lines and errors)."""

    what: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)


def check_source(source: Path) -> None:
    """A uv-managed app needs pyproject.toml and uv.lock; say which is missing, in one line."""
    if not source.is_dir():
        raise SandboxError(f"{source} is not a directory: pass a checkout", Exit.USAGE)
    missing = [name for name in REQUIRED_FILES if not (source / name).is_file()]
    if missing:
        raise SandboxError(
            f"{source} has no {' and no '.join(missing)}: the dependency image is built from "
            "the checkout's locked dependencies (run `uv lock` there first)",
            Exit.USAGE,
        )


def check_options(extras: Sequence[str], torch: str) -> None:
    bad = [extra for extra in extras if not _EXTRA_NAME.match(extra)]
    if bad:
        raise SandboxError(f"not an extra's name: {bad[0]!r} (letters, digits, . _ -)", Exit.USAGE)
    slots.one_of(torch, TORCH_CHOICES, "--torch")


def _lock_packages(source: Path) -> list[dict[str, object]]:
    try:
        lock = tomllib.loads((source / "uv.lock").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SandboxError(f"cannot read {source / 'uv.lock'}: {exc}", Exit.USAGE) from exc
    return [p for p in lock.get("package", []) if isinstance(p, dict)]


def _names(entries: object) -> list[str]:
    """Package names of a lock entry's dependency list (`[{ name = "x" }, ...]`)."""
    if not isinstance(entries, list):
        return []
    return [e["name"] for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)]


def locked_closure(source: Path, extras: Sequence[str]) -> set[str]:
    """Every package name `uv sync --extra ...` installs from the checkout's lock: the
    project's dependencies and those of the extras, followed through the lock (markers are
    not evaluated: a package for any platform counts)."""
    packages = _lock_packages(source)
    by_name = {str(p.get("name")): p for p in packages}
    project = next((p for p in packages if _is_project(p)), None)
    if project is None:
        return set()
    wanted: list[str] = _names(project.get("dependencies"))
    optional = project.get("optional-dependencies")
    if isinstance(optional, dict):
        for extra in extras:
            wanted += _names(optional.get(extra))
    seen: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name in seen:
            continue
        seen.add(name)
        entry = by_name.get(name, {})
        wanted += _names(entry.get("dependencies"))
        extras_of = entry.get("optional-dependencies")
        if isinstance(extras_of, dict):  # `pkg[extra]` requirements (e.g. sqlalchemy[asyncio])
            for group in extras_of.values():
                wanted += _names(group)
    return seen


def _is_project(package: Mapping[str, object]) -> bool:
    where = package.get("source")
    return isinstance(where, dict) and (where.get("editable") == "." or where.get("virtual") == ".")


def effective_torch(source: Path, extras: Sequence[str], torch: str) -> str:
    """The torch choice that applies: "none" when nothing the image installs needs torch
    (then no choice changes the image, and none is recorded as made)."""
    if torch == "none" or TORCH_PACKAGE in locked_closure(source, extras):
        return torch
    return "none"


def python_base(offline: bool, torch: str = "none") -> str:
    """Debian's Python when no registry answers, and always for Debian's torch, which is built
    for /usr/bin/python3 (python:3.13-slim's Python in /usr/local would not see it)."""
    return OFFLINE_PYTHON_BASE if offline or torch == "debian" else ONLINE_PYTHON_BASE


def local_sources(source: Path) -> list[str]:
    """Relative paths of local packages the lock installs besides the project itself
    (path dependencies, workspace members): `uv sync` needs their files in the context."""
    found: set[str] = set()
    for package in _lock_packages(source):
        where = package.get("source", {})
        for key in ("path", "directory", "editable", "virtual"):
            value = where.get(key) if isinstance(where, dict) else None
            if isinstance(value, str) and Path(value) != Path("."):
                found.add(value)
    for relative in found:
        inside = (source / relative).resolve()
        if Path(relative).is_absolute() or not inside.is_relative_to(source.resolve()):
            raise SandboxError(
                f"{source / 'uv.lock'} installs {relative}, outside the checkout: "
                "only dependencies inside it can be built into the image",
                Exit.USAGE,
            )
        if not inside.exists():
            raise SandboxError(f"{source / 'uv.lock'} installs {relative}, which is missing")
    return sorted(found)


def _tree_bytes(path: Path) -> Iterator[bytes]:
    """Names and contents of the files of a local dependency, in a stable order."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if not set(file.relative_to(path.parent).parts) & IGNORED_DIRS:
            yield str(file.relative_to(path.parent)).encode() + b"\0"
            yield file.read_bytes()


def deps_tag(source: Path, extras: Sequence[str], base: str, torch: str = "none") -> str:
    """`ktrdr-sandbox/uv-app-deps:<12 hex>`, keyed by everything the image is made from: the
    lock, pyproject.toml, local path dependencies, the extras, the base, the torch choice and
    our Dockerfile. A non-default torch choice shows in the tag (`-torch-debian`)."""
    digest = hashlib.sha256()
    for name in REQUIRED_FILES:
        digest.update(name.encode() + b"\0" + (source / name).read_bytes() + b"\0")
    for relative in local_sources(source):
        for chunk in _tree_bytes(source / relative):
            digest.update(chunk)
    options = f"extras={' '.join(sorted(set(extras)))}\0base={base}\0torch={torch}\0"
    digest.update(options.encode())
    digest.update(DOCKERFILE.read_bytes())
    digest.update(HTTP_OK.read_bytes())
    suffix = "" if torch == "none" else f"-torch-{torch}"
    return f"{DEPS_REPOSITORY}:{digest.hexdigest()[:12]}{suffix}"


def extra_certs(environ: Mapping[str, str], host_dir: Path | None = None) -> list[Path]:
    """The host's extra CA certificates (*.crt under host_dir) and those KTRDR_EXTRA_CA_CERTS
    names. A named file or directory that does not exist is an error, not silently skipped."""
    host_dir = HOST_EXTRA_CA_DIR if host_dir is None else host_dir
    found = sorted(host_dir.rglob("*.crt")) if host_dir.is_dir() else []
    for entry in filter(None, environ.get(EXTRA_CA_VARIABLE, "").split(os.pathsep)):
        path = Path(entry).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise SandboxError(
                f"{EXTRA_CA_VARIABLE} names {entry}, which does not exist: fix the variable "
                "(files or directories of PEM certificates, separated by ':')",
                Exit.USAGE,
            )
    return found


def assemble_context(source: Path, tmpdir: Path, certs: Iterable[Path]) -> Path:
    """Lay out the build context in tmpdir: the Dockerfile, pyproject.toml, uv.lock, local/
    (local path dependencies at their relative paths) and ca-certificates/ (each certificate
    renamed NN-name.crt: update-ca-certificates only reads *.crt, and names may collide)."""
    context = tmpdir / "context"
    context.mkdir()
    shutil.copy2(DOCKERFILE, context / "Dockerfile")
    shutil.copy2(HTTP_OK, context / "http-ok.sh")
    for name in REQUIRED_FILES:
        shutil.copy2(source / name, context / name)
    local = context / "local"
    local.mkdir()
    for relative in local_sources(source):
        origin, copy = source / relative, local / relative
        copy.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(origin, copy, ignore=_COPY_IGNORE)
        else:
            shutil.copy2(origin, copy)
    cas = context / "ca-certificates"
    cas.mkdir()
    for index, cert in enumerate(certs):
        stem = cert.name.removesuffix(".crt")
        shutil.copyfile(cert, cas / f"{index:02d}-{stem}.crt")
    return context


def build_command(
    tag: str, context: Path, base: str, extras: Sequence[str] = (), torch: str = "none"
) -> list[str]:
    return [
        "docker",
        "build",
        "-f",
        str(context / "Dockerfile"),
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--build-arg",
        f"EXTRAS={' '.join(extras)}",
        "--build-arg",
        f"TORCH={torch}",
        "-t",
        tag,
        str(context),
    ]


def build_env(environ: Mapping[str, str]) -> dict[str, str]:
    # The Dockerfiles are written for the legacy builder (no heredocs, no RUN --mount), which
    # every engine has; BuildKit would need buildx, which Debian's engine lacks.
    return {**environ, "DOCKER_BUILDKIT": "0"}


def python_base_steps(offline: bool, environ: Mapping[str, str]) -> list[Step]:
    """Commands that make the Debian Python base: debootstrap trixie first when offline."""
    env = build_env(environ)
    debian = OFFLINE_DEBIAN_BASE if offline else ONLINE_DEBIAN_BASE
    steps = []
    if offline:
        script_env = base.environment(DEBIAN_SUITE, environ)
        steps.append(Step(OFFLINE_DEBIAN_BASE, base.command(ROOT), script_env))
    build = ["docker", "build", "--build-arg", f"BASE_IMAGE={debian}"]
    build += [
        "-f",
        str(PYTHON_BASE_DOCKERFILE),
        "-t",
        OFFLINE_PYTHON_BASE,
        str(ROOT / "containers"),
    ]
    return [*steps, Step(OFFLINE_PYTHON_BASE, build, env)]


def image_exists(tag: str, environ: Mapping[str, str]) -> bool:
    return runner.run(
        ["docker", "image", "inspect", tag], env=dict(environ), timeout=CLI_TIMEOUT
    ).ok


def run_step(step: Step, hint: str) -> None:
    """Run one build command; on failure raise with its last lines and what to do next."""
    result = runner.run(step.cmd, env=step.env)
    if not result.ok:
        raise SandboxError(
            f"building {step.what} failed ({display(step.cmd)}); {hint}",
            Exit.COMMAND,
            details=result.tail(20),
        )


def ensure_deps_image(
    source: Path,
    environ: Mapping[str, str],
    offline: bool,
    on_step: Callable[[str], None] | None = None,
    extras: Sequence[str] = (),
    torch: str = "none",
    on_wait: Callable[[str], None] | None = None,
) -> Ensured:
    """The dependency image for `source`: reused when its tag exists, else built (and the
    Debian Python base before it when that is missing). Raises with the build's last lines.

    One build per tag on this machine: commands that need the same image while another
    builds it wait for that build (`on_wait` hears it once) and then reuse its image.
    """
    source = source.resolve()
    check_source(source)
    check_options(extras, torch)
    torch = effective_torch(source, extras, torch)
    base = python_base(offline, torch)
    tag = deps_tag(source, extras, base, torch)
    if image_exists(tag, environ):
        return Ensured(tag, False, 0.0, torch)
    started = time.monotonic()
    with build_lock(tag, environ, on_wait):
        if image_exists(tag, environ):  # built by the command we waited for
            return Ensured(tag, False, 0.0, torch, waited=time.monotonic() - started)
        _build(source, environ, offline, on_step or (lambda _: None), extras, torch, tag)
    return Ensured(tag, True, time.monotonic() - started, torch)


def build_lock(
    tag: str, environ: Mapping[str, str], on_wait: Callable[[str], None] | None
) -> AbstractContextManager[None]:
    """This machine's lock on building `tag`."""
    return lock.image_lock(tag, environ, wait=BUILD_LOCK_WAIT, on_busy=on_wait)


def _python_base(offline: bool, environ: Mapping[str, str], say: Callable[[str], None]) -> None:
    """The Debian Python base, and the Debian base under it, where they are missing."""
    if image_exists(OFFLINE_PYTHON_BASE, environ):
        return  # made by the command we waited for
    for step in python_base_steps(offline, environ):
        if step.what == OFFLINE_DEBIAN_BASE and image_exists(step.what, environ):
            continue
        say(f"{step.what} (the Python base)")
        run_step(step, "fix it and run the same command again")


def _build(
    source: Path,
    environ: Mapping[str, str],
    offline: bool,
    say: Callable[[str], None],
    extras: Sequence[str],
    torch: str,
    tag: str,
) -> None:
    base = python_base(offline, torch)
    if base == OFFLINE_PYTHON_BASE and not image_exists(base, environ):
        # Several locks' first builds at once need the one base: built once, the others wait.
        with build_lock(base, environ, say):
            _python_base(offline, environ, say)
    certs = extra_certs(environ)
    with tempfile.TemporaryDirectory(prefix="ktrdr-uv-app-") as tmp:
        context = assemble_context(source, Path(tmp), certs)
        shown = f"extras: {' '.join(extras) or 'none'}, torch: {torch}"
        say(
            f"{tag} from {source / 'uv.lock'} ({shown}) on {base}, "
            f"{len(certs)} extra CA certificate(s)"
        )
        step = Step(tag, build_command(tag, context, base, extras, torch), build_env(environ))
        run_step(step, "the lines above say why: fix it and run the same command again")
