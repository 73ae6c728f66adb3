"""A --source checkout copied to a remote engine's host (sandbox/remote/codesync.py).

The engine is faked, but the volume is a real directory here and the helper container's
scripts run for real against it (sh, GNU tar, find): what a copy leaves in the volume is
checked file by file, inodes included.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox import apps, compose, slotfiles
from sandbox.errors import Exit, SandboxError
from sandbox.remote import codesync
from sandbox.runner import Result
from tests.unit.support import engine as support_engine
from tests.unit.support.flocks import held_elsewhere

IMAGE = "helper:1"


class FakeEngine(support_engine.FakeEngine):
    """The scripted engine (strict) whose volumes are local directories, and whose helper
    `docker run`s run their scripts for real on them."""

    def __init__(self, root: Path) -> None:
        super().__init__(strict=True)
        self.root = root
        self.runs: list[list[str]] = []

    def directory(self, name: str) -> Path:
        return self.root / name

    def mountpoint(self, name: str) -> str:
        return str(self.directory(name))

    def answer(self, args: tuple[str, ...], options: dict[str, Any]) -> Result:
        if args[:2] == ("docker", "run"):
            return self.helper(list(args), options.get("stdin"))
        made = super().answer(args, options)
        if args[:3] == ("docker", "volume", "create"):
            self.directory(args[-1]).mkdir(parents=True)
        return made

    def helper(self, args: list[str], stdin: Path | None) -> Result:
        """Run the helper's script for real, /dest being the volume's directory here."""
        self.runs.append(args)
        mount = args[args.index("--volume") + 1]
        volume = mount.split(":", 1)[0]
        script_at = args.index("-c") + 1
        script = args[script_at].replace("/dest", str(self.directory(volume)))
        with stdin.open("rb") if stdin else open("/dev/null", "rb") as feed:
            proc = subprocess.run(
                ["sh", "-c", script, *args[script_at + 1 :]],
                stdin=feed,
                capture_output=True,
                check=False,
            )
        stdout = proc.stdout.decode("utf-8", "surrogateescape")
        return Result(tuple(args), proc.returncode, stdout, proc.stderr.decode())


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeEngine:
    return FakeEngine(tmp_path / "engine-host").install(monkeypatch)


@pytest.fixture
def target_slot() -> int:
    return 2


def ktrdr_checkout(where: Path) -> apps.Source:
    for name, text in {
        "ktrdr/__init__.py": "",
        "ktrdr/api/main.py": "app = 1\n",
        "ktrdr/__pycache__/main.cpython-313.pyc": "cache",
        "ktrdr/api/old.pyc": "cache",
        "alembic/env.py": "env\n",
        "alembic.ini": "[alembic]\n",
        "pyproject.toml": "[project]\n",
        "uv.lock": "",
        "README.md": "not mounted\n",
    }.items():
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_text(text)
    return apps.detect(where)


def files_in(directory: Path) -> dict[str, str]:
    return {
        p.relative_to(directory).as_posix(): p.read_text()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_the_listing_is_what_the_kind_mounts_without_caches(tmp_path: Path) -> None:
    source = ktrdr_checkout(tmp_path / "co")
    assert sorted(codesync.listing(source)) == [
        "alembic.ini",
        "alembic/env.py",
        "ktrdr/__init__.py",
        "ktrdr/api/main.py",
    ]
    assert codesync.listing(apps.BUILT_IN) == {}


def test_plans_send_what_differs_and_remove_what_went_first() -> None:
    held = codesync.Contents(
        {"a.py": (1, 10), "b.py": (2, 20), "gone.py": (3, 30)}, frozenset({"pkg", "conf"})
    )
    now = {"a.py": (1, 10), "b.py": (2, 21), "new.py": (4, 40), "conf": (5, 50)}
    # conf was a directory there and is a file here: it goes before the file arrives.
    assert codesync.plan(held, now) == codesync.Plan(
        ("b.py", "conf", "new.py"), ("conf", "gone.py")
    )
    same = codesync.Contents(dict(now), frozenset())
    assert codesync.plan(same, now).empty


def test_the_volume_listing_is_parsed_to_the_nanosecond() -> None:
    output = "d 4096 1800000000.5000000000 ktrdr\0f 8 1800000000.1234567890 ktrdr/a b.py\0"
    output += "l 7 1800000001.0000000010 ktrdr/link\0"
    held = codesync.parse_contents(output)
    assert held.directories == {"ktrdr"}
    assert held.files == {
        "ktrdr/a b.py": (8, 1_800_000_000_123_456_789),
        "ktrdr/link": (7, 1_800_000_001_000_000_001),
    }


def test_the_first_copy_creates_a_labelled_volume_and_fills_it(
    engine: FakeEngine, target: compose.Target, tmp_path: Path
) -> None:
    source = ktrdr_checkout(tmp_path / "co")
    synced = codesync.send(target, {}, source, IMAGE, create=True)
    labels = engine.volumes["ktrdr-sandbox-2_source"]
    assert labels["com.docker.compose.project"] == "ktrdr-sandbox-2"
    assert labels["com.docker.compose.volume"] == "source"
    volume = engine.directory("ktrdr-sandbox-2_source")
    assert files_in(volume) == {
        "alembic.ini": "[alembic]\n",
        "alembic/env.py": "env\n",
        "ktrdr/__init__.py": "",
        "ktrdr/api/main.py": "app = 1\n",
    }
    assert (synced.sent, synced.removed) == (4, 0)
    assert synced.volume.mountpoint == str(volume)
    # Modification times arrive to the nanosecond: the next listing finds nothing to send.
    assert synced.held.files == codesync.listing(source)
    assert codesync.contents(synced.volume, IMAGE, {}).files == codesync.listing(source)
    described = synced.describe("127.0.0.2")
    assert described.startswith("sent 4 files (")
    assert described.endswith(f": ktrdr-sandbox-2_source on 127.0.0.2, {synced.seconds:.1f} s")


def test_sync_never_creates_the_volume(
    engine: FakeEngine, target: compose.Target, tmp_path: Path
) -> None:
    source = ktrdr_checkout(tmp_path / "co")
    with pytest.raises(SandboxError) as caught:
        codesync.send(target, {}, source, IMAGE)
    assert caught.value.code is Exit.USAGE
    assert caught.value.message == (
        "slot 2 has no copy of its checkout on the engine's host: "
        f"`inv up --slot=2 --source={source.path}` makes it"
    )
    assert engine.volumes == {}


def test_later_copies_send_changes_in_place(
    engine: FakeEngine, target: compose.Target, tmp_path: Path
) -> None:
    checkout = tmp_path / "co"
    source = ktrdr_checkout(checkout)
    codesync.send(target, {}, source, IMAGE, create=True)
    volume = engine.directory("ktrdr-sandbox-2_source")
    ini, package = (volume / "alembic.ini").stat().st_ino, (volume / "ktrdr").stat().st_ino
    # An editor that saves by rename: a new inode here, the same one there.
    (checkout / "alembic.ini.new").write_text("[alembic]\nedited\n")
    (checkout / "alembic.ini.new").replace(checkout / "alembic.ini")
    (checkout / "alembic" / "env.py").unlink()
    synced = codesync.send(target, {}, source, IMAGE)
    assert (synced.sent, synced.removed) == (1, 1)
    assert (volume / "alembic.ini").read_text() == "[alembic]\nedited\n"
    assert (volume / "alembic.ini").stat().st_ino == ini  # a bound file keeps its inode
    assert (volume / "ktrdr").stat().st_ino == package
    assert not (volume / "alembic" / "env.py").exists()
    assert synced.describe("h").startswith("sent 1 file (")
    assert ", removed 1 file: " in synced.describe("h")
    unchanged = codesync.send(target, {}, source, IMAGE)
    assert (unchanged.sent, unchanged.removed) == (0, 0)
    assert unchanged.describe("h") == "ktrdr-sandbox-2_source on h already matches the checkout"


def test_the_volume_itself_decides_what_is_sent(
    engine: FakeEngine, target: compose.Target, tmp_path: Path
) -> None:
    """Another checkout's copy (or anything else) in the volume is seen as it is: its stray
    files go, the files that differ are sent, whatever this machine sent before."""
    source = ktrdr_checkout(tmp_path / "co")
    codesync.send(target, {}, source, IMAGE, create=True)
    other = ktrdr_checkout(tmp_path / "other")
    assert other.path is not None
    (other.path / "ktrdr" / "api" / "main.py").write_text("app = 'other'\n")
    (other.path / "alembic" / "stray.py").write_text("a migration of the other branch\n")
    codesync.send(target, {}, other, IMAGE)
    volume = engine.directory("ktrdr-sandbox-2_source")
    package = (volume / "ktrdr").stat().st_ino
    synced = codesync.send(target, {}, source, IMAGE)
    assert files_in(volume)["ktrdr/api/main.py"] == "app = 1\n"
    assert not (volume / "alembic" / "stray.py").exists()
    assert synced.removed == 1
    assert (volume / "ktrdr").stat().st_ino == package  # directories are kept


def test_a_path_may_change_from_file_to_directory_and_back(
    engine: FakeEngine, target: compose.Target, tmp_path: Path
) -> None:
    checkout = tmp_path / "co"
    source = ktrdr_checkout(checkout)
    (checkout / "ktrdr" / "conf").write_text("a file first\n")
    codesync.send(target, {}, source, IMAGE, create=True)
    (checkout / "ktrdr" / "conf").unlink()
    (checkout / "ktrdr" / "conf").mkdir()
    (checkout / "ktrdr" / "conf" / "a.py").write_text("then a package\n")
    codesync.send(target, {}, source, IMAGE)
    volume = engine.directory("ktrdr-sandbox-2_source")
    assert (volume / "ktrdr" / "conf" / "a.py").read_text() == "then a package\n"
    (checkout / "ktrdr" / "conf" / "a.py").unlink()
    (checkout / "ktrdr" / "conf").rmdir()
    (checkout / "ktrdr" / "conf").write_text("a file again\n")
    codesync.send(target, {}, source, IMAGE)
    assert (volume / "ktrdr" / "conf").read_text() == "a file again\n"


def test_a_missing_mount_is_an_error_not_an_empty_copy(
    engine: FakeEngine, target: compose.Target, tmp_path: Path
) -> None:
    checkout = tmp_path / "co"
    source = ktrdr_checkout(checkout)
    codesync.send(target, {}, source, IMAGE, create=True)
    (checkout / "ktrdr").rename(checkout / "ktrdr.bak")
    with pytest.raises(SandboxError) as caught:
        codesync.send(target, {}, source, IMAGE)
    assert caught.value.message == (
        f"{checkout} has no ktrdr any more: nothing was sent (put it back, or `inv down` the slot)"
    )
    assert "ktrdr/api/main.py" in files_in(engine.directory("ktrdr-sandbox-2_source"))
    (checkout / "alembic").rename(checkout / "alembic.bak")  # optional: its files go
    (checkout / "ktrdr.bak").rename(checkout / "ktrdr")
    assert codesync.send(target, {}, source, IMAGE).removed == 1


def test_links_are_copied_as_links(tmp_path: Path) -> None:
    source = ktrdr_checkout(tmp_path / "co")
    assert source.path is not None
    (source.path / "ktrdr" / "real").mkdir()
    (source.path / "ktrdr" / "real" / "m.py").write_text("x\n")
    (source.path / "ktrdr" / "alias").symlink_to("real")
    found = codesync.listing(source)
    assert "ktrdr/alias" in found and "ktrdr/real/m.py" in found
    assert not any(p.startswith("ktrdr/alias/") for p in found)


@pytest.mark.parametrize("link", ["config", "ktrdr/secrets"])
def test_a_link_leaving_the_checkout_is_never_sent(
    engine: FakeEngine, target: compose.Target, tmp_path: Path, link: str
) -> None:
    source = ktrdr_checkout(tmp_path / "co")
    assert source.path is not None
    (source.path / link).symlink_to("/etc")  # made after `up` checked the checkout
    with pytest.raises(SandboxError, match=f"{link} is a link to /etc") as caught:
        codesync.send(target, {}, source, IMAGE, create=True)
    assert caught.value.code is Exit.USAGE
    assert not any("tar" in " ".join(run) for run in engine.runs)  # nothing was sent


def test_the_tar_carries_exact_times_and_skips_files_gone_meanwhile(tmp_path: Path) -> None:
    (tmp_path / "co").mkdir()
    (tmp_path / "co" / "a.py").write_text("a\n")
    os.utime(tmp_path / "co" / "a.py", ns=(0, 1_800_000_000_123_456_789))
    archive = tmp_path / "out.tar"
    written, size = codesync.write_tar(tmp_path / "co", ("a.py", "vanished.py"), archive)
    assert written == ["a.py"] and size > 0
    with tarfile.open(archive) as opened:
        (member,) = opened.getmembers()
    assert (member.name, member.uid, member.uname) == ("a.py", 0, "")
    assert member.pax_headers["mtime"] == "1800000000.123456789"


def test_a_failed_copy_is_one_error(
    engine: FakeEngine, target: compose.Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = tmp_path / "co"
    source = ktrdr_checkout(checkout)
    codesync.send(target, {}, source, IMAGE, create=True)
    (checkout / "ktrdr" / "api" / "main.py").write_text("app = 2\n")
    monkeypatch.setattr(codesync, "EXTRACT_SCRIPT", "echo 'tar: no space left' >&2; exit 2")
    with pytest.raises(SandboxError) as caught:
        codesync.send(target, {}, source, IMAGE)
    assert caught.value.message.startswith(f"copying {checkout} into ktrdr-sandbox-2_source")
    assert "no space left" in caught.value.details
    monkeypatch.undo()
    engine.install(monkeypatch)
    assert codesync.send(target, {}, source, IMAGE).sent == 1  # the next copy sends it


def test_the_helper_runs_without_network_or_pulls() -> None:
    todo = codesync.Plan(("a.py",), ("-odd name.py",))
    cmd = codesync.extract_command("v_source", IMAGE, todo)
    assert cmd[:4] == ["docker", "run", "--rm", "--pull=never"]
    assert "-i" in cmd and "--network=none" in cmd
    assert cmd[cmd.index("--volume") + 1] == "v_source:/dest"
    assert cmd[-3:] == ["sync", "-odd name.py", "--"]  # $0, the removals, then the tar


def test_removing_the_volume_after_down(engine: FakeEngine, target: compose.Target) -> None:
    assert codesync.remove_volume(target, {}) is False
    codesync.create_volume(target, {})
    assert codesync.remove_volume(target, {}) is True
    assert engine.volumes == {}


def test_sync_needs_a_recorded_checkout_that_still_exists(
    target: compose.Target, tmp_path: Path
) -> None:
    with pytest.raises(SandboxError) as caught:
        codesync.slot_source(target)
    assert caught.value.code is Exit.USAGE
    assert caught.value.message.startswith("slot 2 runs no --source checkout: nothing to sync")
    gone = tmp_path / "gone"
    document = slotfiles.override(apps.Source(apps.KTRDR, gone), "img", {})
    slotfiles.write_override(target.root, target.slot, document)
    with pytest.raises(SandboxError) as caught:
        codesync.slot_source(target)
    assert caught.value.message == (
        f"slot 2's checkout {gone} is gone: `inv down --slot=2`, or restore the checkout"
    )
    source = ktrdr_checkout(tmp_path / "co")
    slotfiles.write_override(target.root, target.slot, slotfiles.override(source, "img", {}))
    assert codesync.slot_source(target) == source


def test_watch_lists_the_volume_once_and_sends_only_changes(
    engine: FakeEngine, target: compose.Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KTRDR_LOCK_DIR", str(tmp_path / "locks"))
    checkout = tmp_path / "co"
    source = ktrdr_checkout(checkout)
    codesync.send(target, {}, source, IMAGE, create=True)
    engine.runs.clear()
    heard: list[codesync.Synced] = []
    busy: list[str] = []
    helpers: list[int] = []

    def rounds() -> Iterator[None]:
        yield  # the first round: the volume is listed, nothing to send
        helpers.append(len(engine.runs))
        yield  # nothing changed: no helper at all
        helpers.append(len(engine.runs))
        (checkout / "ktrdr" / "api" / "main.py").write_text("app = 3\n")
        with held_elsewhere(tmp_path / "locks" / "slot-2.lock"):
            yield  # an `inv up` holds the slot: this round waits for the next
        helpers.append(len(engine.runs))
        yield  # sent, against what the first listing found: one helper, the copy
        helpers.append(len(engine.runs))
        checkout.rename(tmp_path / "moved")
        yield

    with pytest.raises(SandboxError) as caught:
        codesync.watch(target, {}, source, IMAGE, heard.append, rounds(), busy.append)
    assert [(s.sent, s.removed) for s in heard] == [(1, 0)]
    assert helpers == [1, 1, 1, 3]  # listed again after the other command: it may have copied
    assert len(busy) == 1 and busy[0].startswith("slot 2 is busy (")
    assert caught.value.code is Exit.USAGE
    assert caught.value.message == f"slot 2's checkout {checkout} is gone: stopped watching"


def test_override_binds_the_copy_and_declares_its_volume(tmp_path: Path) -> None:
    source = ktrdr_checkout(tmp_path / "co")
    copy = "/var/lib/docker/volumes/ktrdr-sandbox-2_source/_data"
    document = slotfiles.override(source, "img", {}, copied_to=copy)
    binds = document["services"]["backend"]["volumes"]
    assert f"{copy}/ktrdr:/app/ktrdr:ro" in binds
    assert f"{copy}/alembic.ini:/app/alembic.ini:ro" in binds
    assert "source:/opt/ktrdr-sandbox/source:ro" in binds
    assert not any(str(source.path) in b for b in binds)
    assert document["volumes"] == {"source": {}}
    local = slotfiles.override(source, "img", {})
    assert "volumes" not in local
    assert f"{source.path}/ktrdr:/app/ktrdr:ro" in local["services"]["backend"]["volumes"]
