"""What a checkout may expose to a slot, and the one file a slot writes into it.

Both are refused in one line before anything starts (`check_checkout`, from `apps.detect`):
a mounted link that leads outside the checkout, and a `.env.sandbox` this tool did not write.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox.errors import Exit, SandboxError

if TYPE_CHECKING:
    from sandbox.apps import Mount, Source

# The file KTRDR's CLI reads to find its slot's API (KTRDR's .gitignore ignores it).
ENV_SANDBOX = ".env.sandbox"
ENV_SANDBOX_HEADER = "# Written by ktrdr-sandbox"


# # A bind mount's source is resolved by Docker on the engine's host: `config -> /etc` in a
# checkout (a branch from someone else's pull request is enough) would give the root backend
# the host's /etc. Links inside a mounted tree are resolved by the container, in its own
# filesystem, so they expose nothing of the host; they are refused all the same when they
# leave the checkout, because the remote copy (sandbox/remote/codesync.py) sends them as links, and
# one such link made into a mount root later would be followed there. One rule, everywhere:
# no link of a mounted path may resolve outside the checkout.


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _links(top: Path) -> Iterator[Path]:
    """`top` when it is a link, and every link under it (directories behind links are not
    entered: the link itself is what counts)."""
    if top.is_symlink():
        yield top
    if not top.is_dir():
        return
    pending = [top]
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue  # unreadable: nothing in it can be mounted into a container by us either
        for entry in entries:
            if entry.is_symlink():
                yield Path(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))


def outside_links(checkout: Path, mounts: tuple[Mount, ...]) -> Iterator[tuple[str, str]]:
    """(path relative to `checkout`, where it leads) for each link in a mounted path whose
    real path is outside the checkout; dangling links are judged by where they point."""
    root = os.path.realpath(checkout)
    for mount in mounts:
        for link in _links(checkout / mount.source):
            real = os.path.realpath(link)
            if not _inside(real, root):
                yield link.relative_to(checkout).as_posix(), real


def check_links(source: Source) -> None:
    """SandboxError(USAGE) naming the first mounted link that leads outside the checkout."""
    if source.path is None:
        return
    for name, real in outside_links(source.path, source.kind.mounts):
        raise SandboxError(
            f"--source {source.path}: {name} is a link to {real}, outside the checkout, which "
            "a container would read: remove or replace the link (e.g. `git checkout` a clean "
            "branch), then re-run",
            Exit.USAGE,
        )


def check_env_sandbox(source: Source) -> None:
    """The checkout's `.env.sandbox`, which `up` writes and `down` removes, must be absent or
    a regular file this tool wrote: a link is never followed (a committed `.env.sandbox ->
    ~/.bashrc` would have `up` write there), nor is someone else's file replaced."""
    if source.path is None or not source.kind.writes_env_sandbox:
        return
    path = source.path / ENV_SANDBOX
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise SandboxError(
            f"{path} is a symbolic link (to {os.readlink(path)}), which ktrdr-sandbox will not "
            "follow: remove it from the checkout (`git rm` if committed), then re-run",
            Exit.USAGE,
        )
    if not stat.S_ISREG(mode) or not ours(path):
        raise SandboxError(
            f"{path} exists and was not written by ktrdr-sandbox: move it away, then re-run",
            Exit.USAGE,
        )


def check_checkout(source: Source) -> None:
    """Everything a checkout must satisfy before a slot runs it: no mounted link leaves it,
    and its `.env.sandbox` is ours to write. Refused in one line, before anything starts."""
    check_links(source)
    check_env_sandbox(source)


def write_env_sandbox(source: Source, text: str) -> Path | None:
    """Write `.env.sandbox` into the checkout, for kinds whose CLI reads it. Never replaces a
    file that ktrdr-sandbox did not write."""
    if source.path is None or not source.kind.writes_env_sandbox:
        return None
    check_env_sandbox(source)
    path = source.path / ENV_SANDBOX
    # O_NOFOLLOW: a link that appeared since the check is refused by the kernel, not followed.
    # No O_TRUNC: a file of someone else's that appeared since the check is looked at through
    # the descriptor first, and emptied only when it is ours.
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise SandboxError(
            f"cannot write {path} ({exc.strerror}): remove it from the checkout, then re-run",
            Exit.USAGE,
        ) from None
    with os.fdopen(fd, "r+") as handle:
        info = os.fstat(handle.fileno())
        head = handle.read(len(ENV_SANDBOX_HEADER)) if info.st_size else ENV_SANDBOX_HEADER
        if not stat.S_ISREG(info.st_mode) or head != ENV_SANDBOX_HEADER:
            raise SandboxError(
                f"{path} was not written by ktrdr-sandbox: move it away, then re-run", Exit.USAGE
            )
        handle.seek(0)
        handle.truncate()
        handle.write(text)
    return path


def ours(path: Path) -> bool:
    """Whether `path` is a regular file (not a link to one) that this tool wrote."""
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return False
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    with os.fdopen(fd) as handle:
        return handle.read(len(ENV_SANDBOX_HEADER)) == ENV_SANDBOX_HEADER


def remove_env_sandbox(checkout: Path) -> Path | None:
    """Remove the `.env.sandbox` this tool wrote into `checkout`; anything else stays (a link,
    even one to a file of ours, is the checkout's: it may be tracked)."""
    path = checkout / ENV_SANDBOX
    if ours(path):
        path.unlink()
        return path
    return None
