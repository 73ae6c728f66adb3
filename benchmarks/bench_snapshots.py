"""Measure snapshot, restore and clone speed, and the ways of moving the bytes we compared.

    .venv/bin/python benchmarks/bench_snapshots.py SLOT_A SLOT_B [MB] [ROUNDS] [used]

Both slots must be up (`inv up --slot=N`) and their databases are overwritten: use scratch
slots. Slot A gets a table of about MB megabytes (default 300) of generated rows unless it
has one already. Every method runs ROUNDS times (default 1), interleaved, so a machine whose
load changes during the run affects them alike; the report prints the median seconds, MB/s
of the source database's size (pg_database_size) and each method's ratio to the one
`sandbox.snapshots` uses; `used` as the last argument runs only those. Snapshots it writes go
to a temporary directory, removed at the end.
"""

from __future__ import annotations

import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox import compose  # noqa: E402
from sandbox.runner import run  # noqa: E402
from sandbox.snapshots import database as snapshot_db  # noqa: E402
from sandbox.snapshots import operations as snapshots  # noqa: E402
from sandbox.snapshots import store as snapshot_store  # noqa: E402

ROW_BYTES = 210  # one generated row on disk, heap and index, measured on PostgreSQL 15


def bash(script: str) -> None:
    result = run(["bash", "-euo", "pipefail", "-c", script], timeout=3600)
    if not result.ok:
        raise SystemExit(f"benchmark step failed: {script}\n{result.tail(10)}")


def fill(db: snapshot_db.SlotDatabase, megabytes: int) -> None:
    if db.sql("SELECT to_regclass('bench_payload') IS NOT NULL") == "t":
        return
    rows = megabytes * 1024 * 1024 // ROW_BYTES
    print(f"filling slot {db.target.slot} with {rows} rows (~{megabytes} MB)...", flush=True)
    db.sql(
        "CREATE TABLE bench_payload (id bigint PRIMARY KEY, ts timestamptz NOT NULL,"
        " price double precision NOT NULL, payload text NOT NULL)",
        # Hex digests: text that compresses about like real rows, not like repeat('x').
        "INSERT INTO bench_payload SELECT g, now() - g * interval '1 minute', random() * 1000,"
        " md5(g::text) || md5((g + 1)::text) || md5((g * 3)::text) || md5((g * 7)::text)"
        f" FROM generate_series(1, {rows}) g",
    )


def main(argv: list[str]) -> None:
    slot_a, slot_b = int(argv[0]), int(argv[1])
    megabytes = int(argv[2]) if len(argv) > 2 else 300
    rounds = int(argv[3]) if len(argv) > 3 else 1
    store = Path(tempfile.mkdtemp(prefix="ktrdr-bench-snapshots-"))
    environ = {**os.environ, snapshot_store.SNAPSHOT_DIR_VARIABLE: str(store)}
    compose_cmd = compose.find_compose(environ)
    target_a, target_b = compose.load_target(ROOT, slot_a), compose.load_target(ROOT, slot_b)
    a = snapshot_db.open_database(target_a, compose_cmd, environ)
    b = snapshot_db.open_database(target_b, compose_cmd, environ)
    fill(a, megabytes)
    size = int(a.sql("SELECT pg_database_size(current_database())"))
    print(f"source database: {snapshot_store.human_size(size)}; {rounds} round(s)", flush=True)
    dump = store / "exec.dump"
    ca, cb = a.container, b.container
    side = "bench_side"
    recreate_side = (
        f"docker exec {cb} psql -U ktrdr -d postgres -qc 'DROP DATABASE IF EXISTS {side}' "
        f"-c 'CREATE DATABASE {side} TEMPLATE template0'"
    )
    counter = iter(range(10**6))
    kept: list[str] = []  # the archive `restore (used)` loads: the default's latest

    def module_snapshot(level: str) -> Callable[[], None]:
        def go() -> None:
            name = f"b{next(counter)}"
            snapshots.snapshot(target_a, compose_cmd, environ, name=name, compression=level)
            if level == snapshots.SNAPSHOT_COMPRESSION:
                kept[:] = [name]
            else:
                snapshot_store.delete(environ, name)

        return go

    def module_restore() -> None:
        snapshots.restore(target_b, compose_cmd, environ, kept[0], yes=True, confirm=lambda q: True)

    def module_clone() -> None:
        snapshots.clone(target_a, target_b, compose_cmd, environ, yes=True, confirm=lambda q: True)

    q = shlex.quote
    methods: dict[str, Callable[[], None]] = {
        "snapshot: pg_dump -Z0 in container + docker cp (used)": module_snapshot("0"),
        "snapshot: same, -Z1": module_snapshot("1"),
        "snapshot: same, -Z6 (pg_dump's default)": module_snapshot("6"),
        "snapshot: docker exec pg_dump -Z0 > host file (attach stream)": lambda: bash(
            f"docker exec {ca} pg_dump -U ktrdr -d ktrdr -Fc -Z0 > {q(str(dump))}"
        ),
        "restore: docker cp + pg_restore -j2 into side db + swap (used)": module_restore,
        "restore: host file | docker exec -i pg_restore (attach stream)": lambda: bash(
            f"{recreate_side}; docker exec -i {cb} pg_restore -U ktrdr -d {side} --no-owner"
            f" < {q(str(dump))}"
        ),
        "restore: pg_restore --clean --if-exists into the live db": lambda: bash(
            f"docker cp -q {q(str(dump))} {cb}:/tmp/bench.dump; docker exec {cb} pg_restore "
            "-U ktrdr -d ktrdr --clean --if-exists --no-owner -j2 /tmp/bench.dump; "
            f"docker exec {cb} rm /tmp/bench.dump"
        ),
        "clone: dump -Z0, docker cp out, docker cp in, restore (used)": module_clone,
        "clone: docker exec pg_dump -Z0 | docker exec -i pg_restore (attach)": lambda: bash(
            f"{recreate_side}; docker exec {ca} pg_dump -U ktrdr -d ktrdr -Fc -Z0 | "
            f"docker exec -i {cb} pg_restore -U ktrdr -d {side} --no-owner"
        ),
    }
    if len(argv) > 4 and argv[4] == "used":
        methods = {name: method for name, method in methods.items() if "(used)" in name}
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    try:
        for _ in range(rounds):
            for name, method in methods.items():
                started = time.monotonic()
                method()
                seconds[name].append(time.monotonic() - started)
                print(f"  {seconds[name][-1]:7.1f}s  {name}", flush=True)
    finally:
        bash(f"rm -rf {q(str(store))}")
        run(["docker", "exec", cb, "psql", "-U", "ktrdr", "-d", "postgres", "-qc",
             f"DROP DATABASE IF EXISTS {side}"])  # fmt: skip
    report(seconds, size)


def report(seconds: dict[str, list[float]], size: int) -> None:
    print(
        f"\n{'median s':>9} {'MB/s':>7} {'ratio':>6}  method (MB/s of a {size / 2**20:.0f} MB db)"
    )
    used = {}
    for name, values in seconds.items():
        kind = name.split(":")[0]
        if "(used)" in name:
            used[kind] = statistics.median(values)
    for name, values in seconds.items():
        median = statistics.median(values)
        ratio = median / used[name.split(":")[0]]
        print(f"{median:9.1f} {size / 2**20 / median:7.1f} {ratio:6.2f}  {name}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
