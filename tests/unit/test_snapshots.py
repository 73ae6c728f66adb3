"""Snapshots without Docker: names, manifests, listing, migration order, and the snapshot /
restore / clone orchestration against a fake db container (the commands it receives are
asserted, and a `docker cp` that fills the disk halfway leaves no file behind)."""

from __future__ import annotations

import json
import os
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sandbox import compose
from sandbox.errors import Exit, SandboxError
from sandbox.runner import Result
from sandbox.snapshots import database as snapshot_db
from sandbox.snapshots import marker as restoremark
from sandbox.snapshots import operations as snapshots
from sandbox.snapshots import store as snapshot_store
from sandbox.snapshots import versions as snapshot_versions
from sandbox.snapshots.store import Manifest
from sandbox.snapshots.versions import Drift
from tests.unit.support import engine as support_engine

NOW = datetime(2026, 11, 27, 18, 0, 0, tzinfo=UTC)
COMPOSE = ["docker", "compose"]


def manifest(name: str = "base", **changes: Any) -> Manifest:
    fields: dict[str, Any] = {
        "name": name,
        "source_slot": 3,
        "app": "reference",
        "migration": None,
        "size": 2048,
        "created": NOW.isoformat(),
        "database": "ktrdr",
        "pg_version": "15.18",
        "database_size": 8_000_000,
    }
    fields.update(changes)
    return Manifest(**fields)


def store(directory: Path, m: Manifest, dump: bytes = b"PGDMP") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    snapshot_store.dump_path(directory, m.name).write_bytes(dump)
    snapshot_store.manifest_path(directory, m.name).write_text(m.to_json())


# --- names, manifest, listing ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["base", "slot1-20261127-180000", "before.migration_2", "A"])
def test_good_names_pass(name: str) -> None:
    assert snapshot_store.check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", ".hidden", "../etc", "a/b", "with space", "x.dump", "x.json", "-dash", "é", "a" * 81],
)
def test_bad_names_are_one_usage_line(name: str) -> None:
    with pytest.raises(SandboxError) as caught:
        snapshot_store.check_name(name)
    assert caught.value.code is Exit.USAGE
    assert "\n" not in str(caught.value)


def test_default_name_is_the_slot_and_utc_time() -> None:
    assert snapshot_store.default_name(3, NOW) == "slot3-20261127-180000"
    assert snapshot_store.check_name(snapshot_store.default_name(10, NOW))


def test_snapshot_dir_from_variable_else_home() -> None:
    assert snapshot_store.snapshot_dir({"KTRDR_SNAPSHOT_DIR": "/srv/snaps", "HOME": "/h"}) == Path(
        "/srv/snaps"
    )
    assert snapshot_store.snapshot_dir({"HOME": "/h"}) == Path("/h/.ktrdr/snapshots")


def test_manifest_round_trips_through_json(tmp_path: Path) -> None:
    m = manifest(migration="6bfcfd0a377f")
    data = json.loads(m.to_json())
    assert data["source_slot"] == 3 and data["migration"] == "6bfcfd0a377f"
    assert Manifest.from_json(m.to_json(), tmp_path / "x.json") == m


def test_broken_manifest_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SandboxError) as caught:
        Manifest.from_json('{"name": "x"}', tmp_path / "x.json")
    assert "x.json" in str(caught.value) and "\n" not in str(caught.value)


def test_list_shows_complete_snapshots_newest_first(tmp_path: Path) -> None:
    env = {"KTRDR_SNAPSHOT_DIR": str(tmp_path)}
    store(tmp_path, manifest("old", created=(NOW - timedelta(days=2)).isoformat()))
    store(tmp_path, manifest("new", created=(NOW - timedelta(minutes=5)).isoformat(), app="ktrdr"))
    (tmp_path / "orphan.json").write_text(manifest("orphan").to_json())  # no dump
    (tmp_path / ".half.dump.partial").write_bytes(b"PG")
    rows = snapshot_store.list_snapshots(env, now=NOW)
    assert [(r.name, r.app, r.age) for r in rows] == [
        ("new", "ktrdr", timedelta(minutes=5)),
        ("old", "reference", timedelta(days=2)),
    ]
    assert snapshot_store.list_snapshots({"KTRDR_SNAPSHOT_DIR": str(tmp_path / "none")}) == []


def test_delete_removes_both_files_and_refuses_unknown(tmp_path: Path) -> None:
    env = {"KTRDR_SNAPSHOT_DIR": str(tmp_path)}
    store(tmp_path, manifest("gone"))
    assert snapshot_store.delete(env, "gone") == "snapshot gone (slot 3, reference)"
    assert [p.name for p in tmp_path.iterdir()] == [".store.lock"]
    with pytest.raises(SandboxError, match=r"no snapshot named 'gone'.*inv snapshots") as caught:
        snapshot_store.delete(env, "gone")
    assert caught.value.code is Exit.USAGE


@pytest.mark.parametrize(
    ("size", "text"), [(0, "0 B"), (1023, "1023 B"), (2048, "2.0 KB"), (146_837_336, "140.0 MB")]
)
def test_human_size(size: int, text: str) -> None:
    assert snapshot_store.human_size(size) == text


@pytest.mark.parametrize(
    ("age", "text"),
    [
        (timedelta(seconds=5), "5s ago"),
        (timedelta(minutes=3), "3m ago"),
        (timedelta(days=2), "2d ago"),
    ],
)
def test_human_age(age: timedelta, text: str) -> None:
    assert snapshot_store.human_age(age) == text


# --- migration versions ----------------------------------------------------------------------

CHAIN = ["aaa", "bbb", "ccc"]


@pytest.mark.parametrize(
    ("snap", "slot", "chain", "drift"),
    [
        ("bbb", "bbb", CHAIN, Drift.SAME),
        (None, None, None, Drift.SAME),
        ("aaa", "ccc", CHAIN, Drift.SLOT_NEWER),
        ("ccc", "aaa", CHAIN, Drift.SLOT_OLDER),
        (None, "aaa", CHAIN, Drift.SLOT_NEWER),
        ("aaa", None, CHAIN, Drift.SLOT_OLDER),
        ("aaa", "ccc", None, Drift.DIFFERENT),
        ("aaa", "zzz", CHAIN, Drift.DIFFERENT),
    ],
)
def test_compare_migrations(
    snap: str | None, slot: str | None, chain: list[str] | None, drift: Drift
) -> None:
    assert snapshot_versions.compare_migrations(snap, slot, chain).drift is drift


def test_version_warning_says_newer_or_older() -> None:
    newer = snapshot_versions.compare_migrations("aaa", "ccc", CHAIN).describe(3, "snapshot base")
    assert "slot 3's database has a newer schema than snapshot base (ccc vs aaa)" in newer
    older = snapshot_versions.compare_migrations("ccc", None, CHAIN).describe(3, "snapshot base")
    assert "has an older schema than snapshot base (no migrations vs ccc)" in older
    assert snapshot_versions.compare_migrations("x", "x").describe(3, "s") == ""


def test_alembic_chain_orders_revisions_oldest_first(tmp_path: Path) -> None:
    (tmp_path / "2_second.py").write_text('revision = "bbb"\ndown_revision = "aaa"\n')
    (tmp_path / "1_first.py").write_text(
        'revision: str = "aaa"\ndown_revision: str | None = None\n'
    )
    (tmp_path / "3_third.py").write_text('"""doc"""\nrevision = "ccc"\ndown_revision = "bbb"\n')
    assert snapshot_versions.alembic_chain(tmp_path) == ["aaa", "bbb", "ccc"]


def test_alembic_chain_with_a_branch_is_unordered(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text('revision = "aaa"\ndown_revision = None\n')
    (tmp_path / "b.py").write_text('revision = "bbb"\ndown_revision = "aaa"\n')
    (tmp_path / "c.py").write_text('revision = "ccc"\ndown_revision = "aaa"\n')
    assert snapshot_versions.alembic_chain(tmp_path) == []


# --- orchestration against a fake db container ------------------------------------------------


class FakeEngine(support_engine.FakeEngine):
    """The scripted engine as a running slot's db container: the server's databases are a set
    that CREATE, DROP and RENAME change (a swap's transaction all at once), so a test sees what
    the server would hold after each step. It has no database volume (so none is checked)."""

    def __init__(self, tables: int = 0, migration: str | None = None) -> None:
        super().__init__()
        self.compose_version = "2.29.0"
        self.running = {3: "c3", 4: "c4"}
        self.tables = tables
        self.migration = migration
        self.databases = {"ktrdr"}
        self.container_files: set[str] = set()
        self.disk_full_after: int | None = None  # docker cp to the host writes this much
        self.fail_on: str | None = None  # a command naming this fails
        self.busy_swaps = 0  # swaps refused because an app connection raced the rename
        self.commit_then_fail = False  # the swap commits, then psql reports a failure
        self.interrupt_on: str | None = None  # Ctrl-C while a command naming this runs
        self.down_after_interrupt = False  # every command fails after that Ctrl-C

    def answer(self, command: tuple[str, ...], options: dict[str, Any]) -> Result:
        args = list(command)
        assert options.get("env") is not None, "every command gets an explicit environment"
        if self.down_after_interrupt and self.interrupt_on is None:
            return Result(tuple(args), 1, "", "Cannot connect to the Docker daemon")
        # A program by name, or text in an SQL statement (paths hold the test's name).
        if self.interrupt_on is not None and self.names(args, self.interrupt_on):
            self.interrupt_on = None
            raise KeyboardInterrupt
        if self.fail_on is not None and self.names(args, self.fail_on):
            return Result(tuple(args), 1, "", "ERROR: it went wrong")
        if args[:2] == ["docker", "cp"]:
            return self.copy(args[-2], args[-1])
        if args[:2] == ["docker", "ps"] or args[:3] in (
            ["docker", "compose", "version"],
            ["docker", "volume", "inspect"],
        ):
            return super().answer(command, options)
        project = args[args.index("--project-name") + 1]
        slot = int(project.rsplit("-", 1)[1])
        tail = args[args.index("-f") + 2 :]
        if tail[0] == "ps":
            return Result(tuple(args), 0, self.running.get(slot, "") + "\n")
        assert tail[:3] == ["exec", "-T", "db"]
        return self.exec(args, tail[3:])

    @staticmethod
    def names(args: list[str], text: str) -> bool:
        return any(arg == text or (" " in arg and text in arg) for arg in args)

    def exec(self, args: list[str], inner: list[str]) -> Result:
        if inner[0] == "psql":
            statements = [inner[i + 1] for i, arg in enumerate(inner) if arg == "-c"]
            out = ""
            for statement in statements:
                result = self.statement(statement)
                if isinstance(result, Result):
                    return Result(tuple(args), result.returncode, "", result.stderr)
                out = result
            return Result(tuple(args), 0, out + "\n")
        if inner[0] == "pg_dump":
            self.container_files.add(inner[-1])
        if inner[0] == "rm":
            self.container_files.discard(inner[-1])
        if inner[0] == "find":
            found = sorted(f for f in self.container_files if f.startswith("/tmp/ktrdr-"))
            self.container_files -= set(found)
            return Result(tuple(args), 0, "".join("4005\n" for _ in found))
        return Result(tuple(args), 0)

    def statement(self, sql: str) -> str | Result:
        """The server's answer to one -c string, or a failed Result."""
        if sql.startswith("BEGIN"):  # the swap's transaction
            if self.busy_swaps:
                self.busy_swaps -= 1
                return Result((), 1, "", 'ERROR: database "ktrdr" is being accessed by other users')
            self.databases -= {"ktrdr", "ktrdr_restoring"}
            self.databases |= {"ktrdr", "ktrdr_previous"}
            if self.commit_then_fail:
                return Result((), 2, "", "psql: connection to server lost")
            return "0"
        renamed = re.fullmatch(r'ALTER DATABASE "(\w+)" RENAME TO "(\w+)"', sql)
        if renamed:
            self.databases = (self.databases - {renamed[1]}) | {renamed[2]}
            return ""
        dropped = re.fullmatch(r'DROP DATABASE (?:IF EXISTS )?"(\w+)" WITH \(FORCE\)', sql)
        if dropped:
            self.databases.discard(dropped[1])
            return ""
        created = re.match(r'CREATE DATABASE "(\w+)"', sql)
        if created:
            self.databases.add(created[1])
            return ""
        if "FROM pg_database" in sql:
            return "\n".join(sorted(self.databases))
        return self.query(sql)

    def query(self, sql: str) -> str:
        if "to_regclass" in sql:
            return "t" if self.migration else "f"
        if "alembic_version" in sql:
            return self.migration or ""
        if "pg_stat_user_tables" in sql:
            return f"{self.tables}|{self.tables * 10}"
        if sql.startswith("SHOW server_version"):
            return "15.18"
        if "pg_database_size" in sql:
            return "8000000"
        return ""

    def copy(self, source: str, destination: str) -> Result:
        if ":" in source:  # container -> host
            data = b"PGDMP" + b"x" * 4000
            if self.disk_full_after is not None:
                Path(destination).write_bytes(data[: self.disk_full_after])
                return Result(
                    ("docker", "cp"), 1, "", f"write {destination}: no space left on device"
                )
            Path(destination).write_bytes(data)
        else:
            self.container_files.add(destination.split(":", 1)[1])
        return Result(("docker", "cp"), 0)

    def naming(self, program: str) -> list[list[str]]:
        """The commands that run `program`."""
        return [list(c) for c in self.commands if program in c]

    def statements(self) -> list[str]:
        return [
            c[i + 1] for c in self.commands if "psql" in c for i, a in enumerate(c) if a == "-c"
        ]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "HOME": str(tmp_path / "home"),
        "KTRDR_SNAPSHOT_DIR": str(tmp_path / "snaps"),
        "KTRDR_LOCK_DIR": str(tmp_path / "locks"),
        "PATH": "/usr/bin",
    }


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    return FakeEngine().install(monkeypatch)


def never(question: str) -> bool:
    raise AssertionError(f"asked {question!r} but should not have")


def test_snapshot_writes_dump_and_manifest(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    engine.migration = "bbb"
    m = snapshots.snapshot(compose.load_target(root, 3), COMPOSE, env, name="base", now=NOW)
    directory = Path(env["KTRDR_SNAPSHOT_DIR"])
    assert sorted(p.name for p in directory.iterdir()) == [".store.lock", "base.dump", "base.json"]
    assert m == snapshot_store.load(env, "base")
    assert (m.source_slot, m.migration, m.size, m.pg_version) == (3, "bbb", 4005, "15.18")
    (dump,) = engine.naming("pg_dump")
    assert dump[dump.index("pg_dump") :][:8] == [
        "pg_dump",
        "-U",
        "ktrdr",
        "-d",
        "ktrdr",
        "-Fc",
        "-Z",
        "0",
    ]
    assert engine.container_files == set(), "the container's copy is removed"


def test_snapshot_refuses_a_name_in_use(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    store(Path(env["KTRDR_SNAPSHOT_DIR"]), manifest("base"))
    with pytest.raises(SandboxError, match="named 'base' exists already") as caught:
        snapshots.snapshot(compose.load_target(root, 3), COMPOSE, env, name="base")
    assert caught.value.code is Exit.USAGE
    assert engine.naming("pg_dump") == []


def test_snapshot_of_a_stopped_slot_is_one_line(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    engine.running.pop(3)
    with pytest.raises(SandboxError) as caught:
        snapshots.snapshot(compose.load_target(root, 3), COMPOSE, env)
    assert str(caught.value) == "slot 3 is not running: `inv up --slot=3` first"
    assert not Path(env["KTRDR_SNAPSHOT_DIR"]).exists(), "nothing created for a refused snapshot"


def test_disk_full_during_copy_leaves_no_file(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    engine.disk_full_after = 1000  # the copy wrote 1000 bytes, then the disk was full
    with pytest.raises(SandboxError, match=r"the disk is full.*partial file was removed"):
        snapshots.snapshot(compose.load_target(root, 3), COMPOSE, env, name="big")
    assert [p.name for p in Path(env["KTRDR_SNAPSHOT_DIR"]).iterdir()] == [".store.lock"]
    assert engine.container_files == set()


def test_restore_refuses_another_app_kind(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    store(Path(env["KTRDR_SNAPSHOT_DIR"]), manifest("real", app="ktrdr"))
    with pytest.raises(SandboxError, match="of the 'ktrdr' app and slot 3 runs 'reference'"):
        snapshots.restore(
            compose.load_target(root, 3), COMPOSE, env, "real", yes=True, confirm=never
        )
    assert engine.commands == []


def test_restore_asks_before_replacing_tables_and_stops_on_no(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    store(Path(env["KTRDR_SNAPSHOT_DIR"]), manifest("base", migration="aaa"))
    engine.tables, engine.migration = 2, "ccc"
    asked: list[str] = []

    def say_no(question: str) -> bool:
        asked.append(question)
        return False

    target = compose.load_target(root, 3)
    with pytest.raises(SandboxError, match="nothing done: slot 3's database is unchanged"):
        snapshots.restore(target, COMPOSE, env, "base", yes=False, confirm=say_no, migrations=CHAIN)
    assert asked and "2 table(s)" in asked[0] and "newer schema" in asked[0]
    assert engine.naming("pg_restore") == [] and engine.databases == {"ktrdr"}


def restore(root: Path, env: dict[str, str], **options: Any) -> snapshots.Restored:
    store(Path(env["KTRDR_SNAPSHOT_DIR"]), manifest("base"))
    target = compose.load_target(root, 3)
    return snapshots.restore(target, COMPOSE, env, "base", yes=True, confirm=never, **options)


def test_restore_with_yes_swaps_a_side_database_in_one_transaction(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    engine.tables = 1
    done = restore(root, env)
    assert (done.slot, done.replaced_tables, done.note()) == (3, 1, "")
    (restore_cmd,) = engine.naming("pg_restore")
    assert restore_cmd[restore_cmd.index("-d") + 1] == "ktrdr_restoring"
    statements = engine.statements()
    assert 'DROP DATABASE "ktrdr" WITH (FORCE)' not in statements, "ktrdr is never dropped"
    swap = statements.index(snapshot_db.swap_sql(True))
    assert statements[swap + 3] == 'DROP DATABASE IF EXISTS "ktrdr_previous" WITH (FORCE)'
    assert engine.databases == {"ktrdr"}
    assert engine.container_files == set()
    assert not restoremark.path(env, 3).exists(), "the marker goes once settled"


def test_the_swap_is_one_transaction_that_renames_twice() -> None:
    assert snapshot_db.swap_sql(True) == (
        "BEGIN; SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = 'ktrdr' AND pid <> pg_backend_pid(); "
        'ALTER DATABASE "ktrdr" RENAME TO "ktrdr_previous"; '
        'ALTER DATABASE "ktrdr_restoring" RENAME TO "ktrdr"; COMMIT'
    )
    assert snapshot_db.swap_sql(False) == 'ALTER DATABASE "ktrdr_restoring" RENAME TO "ktrdr"'


@pytest.mark.parametrize(
    ("found", "statements", "words", "finished"),
    [
        ({"ktrdr"}, [], "", False),
        (
            {"ktrdr", "ktrdr_restoring"},
            ['DROP DATABASE IF EXISTS "ktrdr_restoring" WITH (FORCE)'],
            "rolled back",
            False,
        ),
        (
            {"ktrdr", "ktrdr_previous"},
            ['DROP DATABASE IF EXISTS "ktrdr_previous" WITH (FORCE)'],
            "finished",
            True,
        ),
        (
            {"ktrdr_previous", "ktrdr_restoring"},
            [
                'ALTER DATABASE "ktrdr_previous" RENAME TO "ktrdr"',
                'DROP DATABASE IF EXISTS "ktrdr_restoring" WITH (FORCE)',
            ],
            "rolled back (ktrdr_previous is ktrdr again)",
            False,
        ),
        (
            {"ktrdr_restoring"},
            ['ALTER DATABASE "ktrdr_restoring" RENAME TO "ktrdr"'],
            "finished",
            True,
        ),
    ],
)
def test_recovery_leaves_exactly_one_ktrdr(
    found: set[str], statements: list[str], words: str, finished: bool
) -> None:
    plan = snapshot_db.recovery(frozenset(found), 3)
    assert list(plan.statements) == statements
    assert words in plan.said and (plan.said == "") == (words == "")
    assert plan.finished is finished and not plan.missing


def test_recovery_with_nothing_to_recover_from_says_how_to_get_one() -> None:
    plan = snapshot_db.recovery(frozenset(), 3)
    assert plan.missing and plan.statements == ()
    assert "inv restore --slot=3 NAME" in plan.said and "inv up --slot=3 --fresh" in plan.said


def test_a_swap_psql_reports_failed_but_the_server_committed_is_a_restore(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    engine.commit_then_fail = True
    restore(root, env)
    assert engine.databases == {"ktrdr"}
    assert "ktrdr_previous" not in engine.databases


def test_a_swap_raced_by_an_app_connection_is_tried_again(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    engine.busy_swaps = 2
    restore(root, env)
    assert engine.statements().count(snapshot_db.swap_sql(True)) == 3
    assert engine.databases == {"ktrdr"}


def test_a_failed_swap_rolls_back_and_says_the_database_is_unchanged(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    engine.fail_on = "RENAME TO"
    with pytest.raises(SandboxError, match="its database is unchanged"):
        restore(root, env)
    assert engine.databases == {"ktrdr"}
    assert not restoremark.path(env, 3).exists()


@pytest.mark.parametrize(
    ("during", "said"),
    [
        ("cp", "rolled back (its database is as it was)"),
        ("pg_restore", "rolled back (its database is as it was)"),
        ("CREATE DATABASE", "rolled back (its database is as it was)"),
    ],
)
def test_ctrl_c_before_the_swap_rolls_back_in_one_line(
    root: Path, env: dict[str, str], engine: FakeEngine, during: str, said: str
) -> None:
    engine.interrupt_on = during
    with pytest.raises(SandboxError) as caught:
        restore(root, env)
    assert caught.value.code is Exit.INTERRUPTED
    assert str(caught.value) == f"interrupted: slot 3's restore was {said}"
    assert engine.databases == {"ktrdr"}
    assert engine.container_files == set()
    assert not restoremark.path(env, 3).exists()


def test_ctrl_c_after_the_swap_committed_finishes_it(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    engine.interrupt_on = 'DROP DATABASE IF EXISTS "ktrdr_previous"'
    with pytest.raises(SandboxError) as caught:
        restore(root, env)
    assert caught.value.code is Exit.INTERRUPTED
    assert str(caught.value) == (
        "interrupted: slot 3's restore was finished (the restored database is in place)"
    )
    assert engine.databases == {"ktrdr"}
    assert not restoremark.path(env, 3).exists()


def test_an_interrupted_settle_leaves_the_marker_and_the_next_command_finishes(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    engine.interrupt_on = 'DROP DATABASE IF EXISTS "ktrdr_previous"'
    engine.down_after_interrupt = True  # and the engine is gone for the settle after it
    with pytest.raises(SandboxError, match="may be half done") as caught:
        restore(root, env)
    assert caught.value.code is Exit.INTERRUPTED
    assert engine.databases == {"ktrdr", "ktrdr_previous"}
    assert restoremark.path(env, 3).exists(), "the marker stays for the next command"
    engine.down_after_interrupt = False
    said: list[str] = []
    snapshot_db.recover_interrupted(compose.load_target(root, 3), env, said.append)
    assert engine.databases == {"ktrdr"}
    assert said == [
        "slot 3: an interrupted restore was finished (the restored database was in place; "
        "dropped ktrdr_previous, the one it replaced)"
    ]
    assert not restoremark.path(env, 3).exists()


def test_an_engine_lost_mid_restore_leaves_the_marker_and_the_next_status_heals(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    engine.interrupt_on, engine.down_after_interrupt = "pg_restore", True
    with pytest.raises(SandboxError, match="may be half done"):
        restore(root, env)
    assert engine.databases == {"ktrdr", "ktrdr_restoring"}
    engine.down_after_interrupt = False
    said: list[str] = []
    snapshot_db.recover_interrupted(compose.load_target(root, 3), env, said.append)
    assert engine.databases == {"ktrdr"}
    assert said[0].startswith("removed 1 dump file(s)"), "pg_restore's file was left behind"
    assert said[1].startswith("slot 3: an interrupted restore was rolled back")
    assert engine.container_files == set()
    assert restoremark.interrupted_slots(env) == []


def test_no_marker_means_no_engine_call(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    snapshot_db.recover_interrupted(compose.load_target(root, 3), env, never_said)
    assert engine.commands == []


def never_said(text: str) -> None:
    raise AssertionError(f"said {text!r}")


def test_restore_puts_a_leftover_right_first_and_says_so(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    engine.databases = {"ktrdr_previous", "ktrdr_restoring"}  # as an older version left it
    engine.container_files = {"/tmp/ktrdr-restore-0123456789ab.dump"}
    said: list[str] = []
    restore(root, env, on_step=said.append)
    assert said[0].startswith("removed 1 dump file(s)")
    assert (
        said[1] == "slot 3: an interrupted restore was rolled back (ktrdr_previous is ktrdr again)"
    )
    assert engine.databases == {"ktrdr"}


def test_restore_into_a_slot_without_ktrdr_creates_it(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    engine.databases = set()
    engine.tables = 5  # would be asked about, were there a database
    done = restore(root, env)
    assert done.replaced_tables == 0
    assert snapshot_db.swap_sql(False) in engine.statements()
    assert engine.databases == {"ktrdr"}


def test_clone_removes_its_temporary_archive(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    done = snapshots.clone(
        compose.load_target(root, 3), compose.load_target(root, 4), COMPOSE, env,
        yes=False, confirm=never,
    )  # fmt: skip
    assert (done.slot, done.source, done.size) == (4, "slot 3", 4005)
    assert [p.name for p in Path(env["KTRDR_SNAPSHOT_DIR"]).iterdir()] == [".store.lock"]
    (dump,) = engine.naming("pg_dump")
    assert "--project-name" in dump and dump[dump.index("--project-name") + 1] == "ktrdr-sandbox-3"
    (restore_cmd,) = engine.naming("pg_restore")
    assert restore_cmd[restore_cmd.index("--project-name") + 1] == "ktrdr-sandbox-4"


def test_clone_onto_itself_is_refused(root: Path, env: dict[str, str], engine: FakeEngine) -> None:
    target = compose.load_target(root, 3)
    with pytest.raises(SandboxError, match="both slot 3") as caught:
        snapshots.clone(target, target, COMPOSE, env, yes=True, confirm=never)
    assert caught.value.code is Exit.USAGE


def test_failed_pg_restore_drops_the_side_database_only(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    store(Path(env["KTRDR_SNAPSHOT_DIR"]), manifest("base"))
    engine.fail_on = "pg_restore"
    with pytest.raises(
        SandboxError, match="pg_restore into slot 3 failed; its database is unchanged"
    ):
        snapshots.restore(
            compose.load_target(root, 3), COMPOSE, env, "base", yes=True, confirm=never
        )
    statements = engine.statements()
    assert not any("RENAME" in statement for statement in statements)
    assert 'DROP DATABASE IF EXISTS "ktrdr_restoring" WITH (FORCE)' in statements
    assert engine.databases == {"ktrdr"}
    assert engine.container_files == set()


# --- the store: one name one snapshot, private files, partial files, hostile input ----------


def test_a_relative_snapshot_dir_is_refused_in_one_line() -> None:
    with pytest.raises(SandboxError) as caught:
        snapshot_store.snapshot_dir({"KTRDR_SNAPSHOT_DIR": "snaps", "HOME": "/h"})
    assert caught.value.code is Exit.BAD_ENV
    assert "relative path" in str(caught.value) and "absolute" in str(caught.value)
    assert snapshot_store.snapshot_dir({"KTRDR_SNAPSHOT_DIR": "~/s", "HOME": "/h"}).is_absolute()


def test_a_snapshot_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    env = {"KTRDR_SNAPSHOT_DIR": str(tmp_path / "file")}
    for call in (snapshot_store.list_snapshots, lambda e: snapshot_store.load(e, "x")):
        with pytest.raises(SandboxError, match="is not a directory: move what is there aside"):
            call(env)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"created": "yesterday"}, "'created' is 'yesterday'"),
        ({"source_slot": "three"}, "invalid literal"),
        ({"created": 7}, "'created' is 7"),
    ],
)
def test_a_corrupt_manifest_is_listed_as_unreadable_and_hides_nothing(
    tmp_path: Path, change: dict[str, Any], why: str
) -> None:
    env = {"KTRDR_SNAPSHOT_DIR": str(tmp_path)}
    store(tmp_path, manifest("good", created=(NOW - timedelta(hours=1)).isoformat()))
    bad = {**json.loads(manifest("bad").to_json()), **change}
    store(tmp_path, manifest("bad"))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    (tmp_path / "junk.dump").write_bytes(b"PG")
    (tmp_path / "junk.json").write_bytes(b"\xff\xfe not json")
    rows = snapshot_store.list_snapshots(env, now=NOW)
    assert [r.name for r in rows] == ["good", "bad", "junk"]
    assert rows[0].problem == "" and rows[0].age == timedelta(hours=1)
    assert why in rows[1].problem and rows[2].problem
    assert snapshot_store.delete(env, "bad") == "snapshot bad (its manifest was unreadable)"
    assert not (tmp_path / "bad.json").exists() and not (tmp_path / "bad.dump").exists()


def test_a_manifest_without_a_zone_is_read_as_utc(tmp_path: Path) -> None:
    env = {"KTRDR_SNAPSHOT_DIR": str(tmp_path)}
    store(tmp_path, manifest("naive", created="2026-11-27T17:00:00"))
    (row,) = snapshot_store.list_snapshots(env, now=NOW)
    assert row.age == timedelta(hours=1) and row.problem == ""


def test_snapshots_and_their_directory_are_private(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    directory = Path(env["KTRDR_SNAPSHOT_DIR"])
    snapshots.snapshot(compose.load_target(root, 3), COMPOSE, env, name="base", now=NOW)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("base.dump", "base.json"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name


def test_an_older_world_readable_store_is_made_private_and_said(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    directory = Path(env["KTRDR_SNAPSHOT_DIR"])
    store(directory, manifest("old"))
    directory.chmod(0o755)
    (directory / "old.dump").chmod(0o644)
    said: list[str] = []
    (directory / "package.json").write_text("{}")  # not a snapshot: left as it is
    (directory / "package.json").chmod(0o644)
    snapshots.snapshot(compose.load_target(root, 3), COMPOSE, env, name="new", on_step=said.append)
    # A directory the user named (KTRDR_SNAPSHOT_DIR) may be shared on purpose: said, kept.
    assert f"the snapshot directory {directory} is open to other users (mode 755); " in " ".join(
        said
    )
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    assert f"made 2 snapshot file(s) in {directory} private (0600)" in said
    assert stat.S_IMODE((directory / "old.dump").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "package.json").stat().st_mode) == 0o644
    # The default store is ours: closed.
    assert snapshot_store.private_store(directory, default=True) == [
        f"made the snapshot directory {directory} private (0700)"
    ]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_a_half_loaded_side_database_never_becomes_the_slots() -> None:
    side = {snapshot_db.SIDE_DATABASE, "postgres"}
    kept = snapshot_db.recovery(side, 3, loaded=False)
    assert kept.missing and not kept.finished
    assert kept.statements == (
        f'DROP DATABASE IF EXISTS "{snapshot_db.SIDE_DATABASE}" WITH (FORCE)',
    )
    whole = snapshot_db.recovery(side, 3, loaded=True)
    assert whole.finished and "RENAME" in whole.statements[0]


def test_the_marker_says_how_far_the_restore_got(tmp_path: Path) -> None:
    from sandbox.snapshots import marker as restoremark

    environ = {"KTRDR_LOCK_DIR": str(tmp_path)}
    assert restoremark.loaded(environ, 3)  # no marker: an older version's leftovers
    restoremark.mark(environ, 3)
    assert not restoremark.loaded(environ, 3)
    restoremark.mark(environ, 3, restoremark.LOADED)
    assert restoremark.loaded(environ, 3)
    restoremark.path(environ, 3).write_text("4242\n")  # an older version's marker
    assert restoremark.loaded(environ, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slot-3.restoring"]


def test_a_name_taken_while_dumping_refuses_the_second_and_keeps_the_first(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    """The race: both passed the early check; the first to take the name under the store
    lock wins, the second is refused and its dump never replaces the first's."""
    directory = Path(env["KTRDR_SNAPSHOT_DIR"])
    first = manifest("x", source_slot=4)
    real_copy = engine.copy

    def other_slot_finishes_first(source: str, destination: str) -> Result:
        result = real_copy(source, destination)
        store(directory, first, dump=b"PGDMP slot 4")  # slot 4's snapshot took the name
        return result

    engine.copy = other_slot_finishes_first  # type: ignore[method-assign]
    with pytest.raises(SandboxError, match="named 'x' exists already") as caught:
        snapshots.snapshot(compose.load_target(root, 3), COMPOSE, env, name="x")
    assert caught.value.code is Exit.USAGE and "\n" not in str(caught.value)
    assert snapshot_store.load(env, "x") == first
    assert (directory / "x.dump").read_bytes() == b"PGDMP slot 4"
    assert sorted(p.name for p in directory.iterdir()) == [".store.lock", "x.dump", "x.json"]


def test_partial_files_are_private_to_their_writer(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    directory = Path(env["KTRDR_SNAPSHOT_DIR"])
    seen: list[Path] = []
    real_copy = engine.copy

    def look(source: str, destination: str) -> Result:
        seen.append(Path(destination))
        return real_copy(source, destination)

    engine.copy = look  # type: ignore[method-assign]
    snapshots.snapshot(compose.load_target(root, 3), COMPOSE, env, name="a")
    snapshots.snapshot(compose.load_target(root, 3), COMPOSE, env, name="b")
    first, second = (p.parent for p in seen)
    assert first != second and first.name.startswith(".a.") and first.name.endswith(".partial")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert not first.exists() and not second.exists()


def test_a_killed_writers_partial_is_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    directory = tmp_path / "snaps"
    directory.mkdir()
    with snapshot_store.private_work(directory, "live") as live:
        (live / "dump").write_bytes(b"x" * 2048)
        dead = directory / ".dead.0123456789ab.partial"
        dead.mkdir()
        (dead / ".writer.lock").touch()
        (dead / "dump").write_bytes(b"x" * 4096)
        legacy = directory / ".old.dump.partial"
        legacy.write_bytes(b"x" * 100)
        fresh_legacy = directory / ".new.dump.partial"
        fresh_legacy.write_bytes(b"x")
        os.utime(legacy, (0, 0))
        said = snapshot_store.sweep_partials(directory)
        assert said == (
            f"removed 2 partial file(s) (4.1 KB) an interrupted snapshot or clone left in "
            f"{directory}"
        )
        assert live.exists() and not dead.exists() and not legacy.exists()
        assert fresh_legacy.exists(), "an older version may be writing it now"
    assert snapshot_store.sweep_partials(directory) == ""


def test_clone_writes_its_archive_in_a_private_partial_directory(
    root: Path, env: dict[str, str], engine: FakeEngine
) -> None:
    snapshots.clone(
        compose.load_target(root, 3), compose.load_target(root, 4), COMPOSE, env,
        yes=True, confirm=never,
    )  # fmt: skip
    copies = [list(c) for c in engine.ran("docker", "cp")]
    host = Path(copies[0][-1])
    assert host.parent.name.startswith(".clone-3-to-4.") and host.parent.name.endswith(".partial")
    assert [p.name for p in Path(env["KTRDR_SNAPSHOT_DIR"]).iterdir()] == [".store.lock"]
