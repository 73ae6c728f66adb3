"""A --source checkout copied to a remote engine's host (sandbox/codesync.py).

The engine is faked, but the volume is a real directory here and the helper container's
scripts run for real against it (sh, GNU tar, find): what a copy leaves in the volume is
checked file by file, inodes included.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sandbox import apps, codesync, compose, envfiles, runner
from sandbox.errors import Exit, SandboxError
from sandbox.runner import Result

IMAGE = "helper:1"


@dataclass
class FakeEngine:
    """`docker volume inspect/create/rm` and the helper `docker run`s, on a local directory."""

    root: Path
    volumes: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> labels
    runs: list[list[str]] = field(default_factory=list)

    def directory(self, name: str) -> Path:
        return self.root / name

    def execute(self, cmd: Sequence[str], **options: Any) -> Result:
        args = [str(a) for a in cmd]
        if args[:3] == ["docker", "volume", "inspect"]:
            name = args[-1]
            if name not in self.volumes:
                return Result(tuple(args), 1, "", f"Error: No such volume: {name}")
            copy_id = self.volumes[name].get(codesync.COPY_LABEL, "<no value>")
            return Result(tuple(args), 0, f"{self.directory(name)}|{copy_id}\n")
        if args[:3] == ["docker", "volume", "create"]:
            labels = dict(v.split("=", 1) for v in args[4:-1:2])
            self.volumes[args[-1]] = labels
            self.directory(args[-1]).mkdir(parents=True)
            return Result(tuple(args), 0, args[-1])
        if args[:3] == ["docker", "volume", "rm"]:
            if self.volumes.pop(args[-1], None) is None:
                return Result(tuple(args), 1, "", f"Error: No such volume: {args[-1]}")
            return Result(tuple(args), 0)
        if args[:2] == ["docker", "run"]:
            return self.helper(args, options.get("stdin"))
        raise AssertionError(f"unexpected command {args}")

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
    fake = FakeEngine(tmp_path / "engine-host")
    monkeypatch.setattr(runner, "execute", fake.execute)
    return fake


@pytest.fixture
def target(tmp_path: Path) -> compose.Target:
    root = tmp_path / "sandbox"
    envfiles.write_all(root)
    return compose.load_target(root, 2)


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


def test_plans_send_what_changed_and_remove_what_went() -> None:
    before = {"a.py": (1, 10), "b.py": (2, 20), "gone.py": (3, 30)}
    now = {"a.py": (1, 10), "b.py": (2, 21), "new.py": (4, 40)}
    assert codesync.plan(before, now) == codesync.Plan(("b.py", "new.py"), ("gone.py",), False)
    assert codesync.plan(now, now).empty
    full = codesync.full_plan(["a.py", "stray.py"], now)
    assert full == codesync.Plan(("a.py", "b.py", "new.py"), ("stray.py",), True)


def test_the_first_copy_creates_a_labelled_volume_and_fills_it(
    engine: FakeEngine, target: compose.Target, tmp_path: Path
) -> None:
    source = ktrdr_checkout(tmp_path / "co")
    synced = codesync.send(target, {}, source, IMAGE)
    labels = engine.volumes["ktrdr-sandbox-2_source"]
    assert labels["com.docker.compose.project"] == "ktrdr-sandbox-2"
    assert labels["com.docker.compose.volume"] == "source"
    assert len(labels[codesync.COPY_LABEL]) == 16
    volume = engine.directory("ktrdr-sandbox-2_source")
    assert files_in(volume) == {
        "alembic.ini": "[alembic]\n",
        "alembic/env.py": "env\n",
        "ktrdr/__init__.py": "",
        "ktrdr/api/main.py": "app = 1\n",
    }
    assert (synced.sent, synced.removed, synced.full) == (4, 0, True)
    assert synced.volume.mountpoint == str(volume)
    # A new volume is known to be empty: no helper lists it first.
    assert len(engine.runs) == 1
    assert synced.describe("127.0.0.2").startswith("copied 4 files (")
    assert synced.describe("127.0.0.2").endswith(
        ": ktrdr-sandbox-2_source on 127.0.0.2, " + (f"{synced.seconds:.1f} s")
    )


def test_later_copies_send_changes_in_place(
    engine: FakeEngine, target: compose.Target, tmp_path: Path
) -> None:
    checkout = tmp_path / "co"
    source = ktrdr_checkout(checkout)
    codesync.send(target, {}, source, IMAGE)
    volume = engine.directory("ktrdr-sandbox-2_source")
    ini, package = (volume / "alembic.ini").stat().st_ino, (volume / "ktrdr").stat().st_ino
    # An editor that saves by rename: a new inode here, the same one there.
    (checkout / "alembic.ini.new").write_text("[alembic]\nedited\n")
    (checkout / "alembic.ini.new").replace(checkout / "alembic.ini")
    (checkout / "alembic" / "env.py").unlink()
    synced = codesync.send(target, {}, source, IMAGE)
    assert (synced.sent, synced.removed, synced.full) == (1, 1, False)
    assert (volume / "alembic.ini").read_text() == "[alembic]\nedited\n"
    assert (volume / "alembic.ini").stat().st_ino == ini  # a bound file keeps its inode
    assert (volume / "ktrdr").stat().st_ino == package
    assert not (volume / "alembic" / "env.py").exists()
    assert synced.describe("h").startswith("sent 1 file (")
    assert ", removed 1 file: " in synced.describe("h")
    unchanged = codesync.send(target, {}, source, IMAGE)
    assert (unchanged.sent, unchanged.removed) == (0, 0)
    assert unchanged.describe("h") == "ktrdr-sandbox-2_source on h already matches the checkout"
    assert len(engine.runs) == 2  # nothing to do: no helper at all


def test_without_a_record_everything_is_sent_and_strays_removed(
    engine: FakeEngine, target: compose.Target, tmp_path: Path
) -> None:
    source = ktrdr_checkout(tmp_path / "co")
    codesync.send(target, {}, source, IMAGE)
    volume = engine.directory("ktrdr-sandbox-2_source")
    (volume / "ktrdr" / "stray.py").write_text("from another checkout\n")
    package = (volume / "ktrdr").stat().st_ino
    codesync.state_path(target.root, target.slot).unlink()
    synced = codesync.send(target, {}, source, IMAGE)
    assert (synced.sent, synced.removed, synced.full) == (4, 1, True)
    assert not (volume / "ktrdr" / "stray.py").exists()
    assert (volume / "ktrdr").stat().st_ino == package  # directories are never removed
    assert "sh" in engine.runs[1] and codesync.LIST_SCRIPT in engine.runs[1]


def test_the_record_belongs_to_one_volume_and_one_checkout(
    engine: FakeEngine, target: compose.Target, tmp_path: Path
) -> None:
    source = ktrdr_checkout(tmp_path / "co")
    codesync.send(target, {}, source, IMAGE)
    assert source.path is not None
    record = json.loads(codesync.state_path(target.root, target.slot).read_text())
    assert record["source"] == str(source.path)
    assert record["files"]["alembic.ini"][0] == len("[alembic]\n")
    volume = codesync.ensure_volume(target, {})
    assert codesync.read_state(target.root, target.slot, volume, source.path) is not None
    assert codesync.read_state(target.root, target.slot, volume, tmp_path / "other") is None
    renewed = codesync.Volume(volume.name, volume.mountpoint, "another-id")
    assert codesync.read_state(target.root, target.slot, renewed, source.path) is None
    foreign = codesync.Volume(volume.name, volume.mountpoint, "")
    assert codesync.read_state(target.root, target.slot, foreign, source.path) is None
    codesync.state_path(target.root, target.slot).write_text("{not json")
    assert codesync.read_state(target.root, target.slot, volume, source.path) is None


def test_the_tar_is_owned_by_root_and_skips_files_gone_meanwhile(tmp_path: Path) -> None:
    (tmp_path / "co").mkdir()
    (tmp_path / "co" / "a.py").write_text("a\n")
    archive = tmp_path / "out.tar"
    assert codesync.write_tar(tmp_path / "co", ("a.py", "vanished.py"), archive) > 0
    with tarfile.open(archive) as opened:
        (member,) = opened.getmembers()
    assert (member.name, member.uid, member.uname) == ("a.py", 0, "")


def test_a_failed_copy_is_one_error_and_keeps_the_old_record(
    engine: FakeEngine, target: compose.Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = tmp_path / "co"
    source = ktrdr_checkout(checkout)
    codesync.send(target, {}, source, IMAGE)
    record = codesync.state_path(target.root, target.slot).read_text()
    (checkout / "ktrdr" / "api" / "main.py").write_text("app = 2\n")
    monkeypatch.setattr(codesync, "EXTRACT_SCRIPT", "echo 'tar: no space left' >&2; exit 2")
    with pytest.raises(SandboxError) as caught:
        codesync.send(target, {}, source, IMAGE)
    assert caught.value.message.startswith(f"copying {checkout} into ktrdr-sandbox-2_source")
    assert "no space left" in caught.value.details
    assert codesync.state_path(target.root, target.slot).read_text() == record


def test_the_helper_runs_without_network_or_pulls() -> None:
    todo = codesync.Plan(("a.py",), ("-odd name.py",), False)
    cmd = codesync.extract_command("v_source", IMAGE, todo)
    assert cmd[:4] == ["docker", "run", "--rm", "--pull=never"]
    assert "-i" in cmd and "--network=none" in cmd
    assert cmd[cmd.index("--volume") + 1] == "v_source:/dest"
    assert cmd[-2:] == ["sync", "-odd name.py"]  # $0, then the removals as arguments


def test_removing_the_volume_after_down(engine: FakeEngine, target: compose.Target) -> None:
    assert codesync.remove_volume(target, {}) is False
    codesync.ensure_volume(target, {})
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
    document = apps.override(apps.Source(apps.KTRDR, gone), "img", {})
    apps.write_override(target.root, target.slot, document)
    with pytest.raises(SandboxError) as caught:
        codesync.slot_source(target)
    assert caught.value.message == (
        f"slot 2's checkout {gone} is gone: `inv down --slot=2`, or restore the checkout"
    )
    source = ktrdr_checkout(tmp_path / "co")
    apps.write_override(target.root, target.slot, apps.override(source, "img", {}))
    assert codesync.slot_source(target) == source


def test_watch_sends_only_when_something_changed(
    engine: FakeEngine, target: compose.Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KTRDR_LOCK_DIR", str(tmp_path / "locks"))
    checkout = tmp_path / "co"
    source = ktrdr_checkout(checkout)
    heard: list[codesync.Synced] = []
    inspected: list[int] = []

    def rounds() -> Iterator[None]:
        yield  # the first round: everything
        inspected.append(len(engine.runs))
        yield  # nothing changed: no helper runs
        inspected.append(len(engine.runs))
        (checkout / "ktrdr" / "api" / "main.py").write_text("app = 3\n")
        yield
        checkout.rename(tmp_path / "moved")
        yield

    with pytest.raises(SandboxError) as caught:
        codesync.watch(target, {}, source, IMAGE, heard.append, rounds())
    assert [(s.sent, s.removed, s.full) for s in heard] == [(4, 0, True), (1, 0, False)]
    assert inspected == [1, 1]
    assert caught.value.code is Exit.USAGE
    assert caught.value.message == f"slot 2's checkout {checkout} is gone: stopped watching"


def test_override_binds_the_copy_and_declares_its_volume(tmp_path: Path) -> None:
    source = ktrdr_checkout(tmp_path / "co")
    copy = "/var/lib/docker/volumes/ktrdr-sandbox-2_source/_data"
    document = apps.override(source, "img", {}, copied_to=copy)
    binds = document["services"]["backend"]["volumes"]
    assert f"{copy}/ktrdr:/app/ktrdr:ro" in binds
    assert f"{copy}/alembic.ini:/app/alembic.ini:ro" in binds
    assert "source:/opt/ktrdr-sandbox/source:ro" in binds
    assert not any(str(source.path) in b for b in binds)
    assert document["volumes"] == {"source": {}}
    local = apps.override(source, "img", {})
    assert "volumes" not in local
    assert f"{source.path}/ktrdr:/app/ktrdr:ro" in local["services"]["backend"]["volumes"]
