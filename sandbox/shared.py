"""The shared data directory that every slot's backend and workers mount.

Nothing here deletes or overwrites: creating is `mkdir`, copying skips files that exist.
"""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.errors import Exit, SandboxError

SUBDIRS = ("data", "models", "strategies")


def settle_home(environ: MutableMapping[str, str]) -> None:
    """One HOME for every path and every command: the env files' `${HOME}/.ktrdr/shared`
    (read here, and interpolated again by Compose) and `inv init-shared` (`Path.home()`).

    Unset or empty, HOME becomes this user's home from the password database, as
    `Path.home()` already resolves it: otherwise Compose mounts `/.ktrdr/shared` at the
    filesystem root while init-shared fills the real one. (Set to something that is not a
    directory, it is refused by `check_home` where the shared directory is made.)
    """
    home = environ.get("HOME", "")
    if not home:
        try:
            home = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:
            home = ""
        if not home or not Path(home).is_dir():
            raise SandboxError(
                "HOME is unset and this user has no home directory: set HOME to a directory "
                "(the shared data lives in $HOME/.ktrdr/shared)",
                Exit.SHARED_DIR,
            )
        environ["HOME"] = home


def check_home(shared_dir: Path, environ: Mapping[str, str]) -> None:
    """Refuse a shared directory under a HOME that is not a directory: creating it would
    make a home where there is none (`mkdir -p /nonexistent/.ktrdr/shared`)."""
    home = environ.get("HOME", "")
    if home and not Path(home).is_dir() and shared_dir.is_relative_to(home):
        raise SandboxError(
            f"HOME={home} is not a directory: set HOME to your home directory "
            "(the shared data lives in $HOME/.ktrdr/shared)",
            Exit.SHARED_DIR,
        )


def ensure_directory(path: Path) -> None:
    """`mkdir -p path`, or one line saying why it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SandboxError(
            f"cannot create {path} ({exc.strerror}): `mkdir -p {path}` as a user who may, "
            "then re-run",
            Exit.SHARED_DIR,
        ) from exc


def missing(path: Path) -> list[Path]:
    """The sub-directories of `path` that `ensure` would create."""
    return [path / name for name in SUBDIRS if not (path / name).is_dir()]


def ensure(path: Path) -> list[Path]:
    """Make sure `path` has data/, models/ and strategies/; return the directories created.

    `mkdir -p` and nothing else: what exists is never overwritten, moved or deleted. Raises
    SandboxError(SHARED_DIR) when a directory cannot be created or read.
    """
    created: list[Path] = []
    for directory in (path, *(path / name for name in SUBDIRS)):
        if directory.is_dir():
            continue
        if directory.exists() or directory.is_symlink():
            raise SandboxError(
                f"{directory} exists but is not a directory: move it aside, then re-run",
                Exit.SHARED_DIR,
            )
        try:
            directory.mkdir(parents=True)
        except FileExistsError:
            # Created by a concurrent `inv up` of another slot between our check and mkdir.
            if not directory.is_dir():
                raise SandboxError(
                    f"{directory} exists but is not a directory: move it aside, then re-run",
                    Exit.SHARED_DIR,
                ) from None
            continue
        except OSError as exc:
            raise SandboxError(
                f"cannot create the shared directory {directory} ({exc.strerror}): "
                f"create it with `mkdir -p {directory}` as a user who may, then re-run",
                Exit.SHARED_DIR,
            ) from exc
        created.append(directory)
    for name in SUBDIRS:
        directory = path / name
        if not os.access(directory, os.R_OK | os.X_OK):
            raise SandboxError(
                f"cannot read the shared directory {directory}: give this user read access "
                f"(e.g. `chmod u+rx {directory}`), then re-run",
                Exit.SHARED_DIR,
            )
    return created


@dataclass
class CopyReport:
    copied: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # already in the shared directory


def check_source(source: Path) -> Path:
    """`source` when it is a KTRDR checkout with data/, models/ or strategies/."""
    if not source.is_dir():
        raise SandboxError(
            f"--from {source} is not a directory: point it at a KTRDR checkout", Exit.USAGE
        )
    if not any((source / name).is_dir() for name in SUBDIRS):
        raise SandboxError(
            f"{source} has none of {', '.join(SUBDIRS)}: point --from at a KTRDR checkout",
            Exit.USAGE,
        )
    return source


def copy_missing(source: Path, target: Path) -> CopyReport:
    """Copy data/, models/, strategies/ of `source` (a KTRDR checkout) into `target`,
    file by file, leaving every file that already exists in `target` as it is."""
    check_source(source)
    present = [name for name in SUBDIRS if (source / name).is_dir()]
    report = CopyReport()
    for name in present:
        _copy_files(source / name, target / name, report)
    return report


def _copy_files(source: Path, target: Path, report: CopyReport) -> None:
    """Every regular file under `source` into `target` at the same relative path, unless one
    is there already. Links are not followed: a checkout's `x.yaml -> /etc/shadow` must not
    bring a host file into the directory every slot mounts."""
    for file in sorted(source.rglob("*")):
        if file.is_symlink() or not file.is_file():
            continue
        inside = file.relative_to(source).parents
        if any((source / parent).is_symlink() for parent in inside if parent.name):
            continue
        dest = target / file.relative_to(source)
        if dest.exists() or dest.is_symlink():
            report.skipped.append(dest)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, dest)
        report.copied.append(dest)


def seed(checkout: Path, shared_dir: Path, names: tuple[str, ...]) -> CopyReport:
    """For each of `names` (e.g. strategies) that holds no file yet in the shared directory:
    copy the checkout's files in, never overwriting. A shared directory with even one file
    there is the user's own and is left alone."""
    report = CopyReport()
    for name in names:
        if not (checkout / name).is_dir() or (checkout / name).is_symlink():
            continue
        present = shared_dir / name
        if present.is_dir() and any(p.is_file() for p in present.rglob("*")):
            continue
        _copy_files(checkout / name, present, report)
    return report
