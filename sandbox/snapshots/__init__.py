"""Database snapshots of a slot: take, list, delete, restore, clone.

A snapshot is two files in `~/.ktrdr/snapshots` (or `$KTRDR_SNAPSHOT_DIR`), never in a
checkout: `<name>.dump`, a `pg_dump` custom-format archive of the slot's `ktrdr` database, and
`<name>.json`, its manifest (source slot, app kind, migration version, sizes, time, server).

How the bytes move, measured with `benchmarks/bench_snapshots.py` (Docker 20.10, 2 busy cores):
`pg_dump` writes the archive to a file inside the db container and `docker cp` carries it to
the host (and back for a restore). Piping `docker compose exec -T db pg_dump` to the host goes
through the engine's attach stream instead: 300 MB took 17 s that way against 3 s with
`docker cp`, and a whole gzip -1 snapshot 162 s against 86 s. A one-off `pg_dump` container
writing into a bind mount took 42 s against 14 s, and needs the host user's uid and a mount
the engine can see. Every command goes through `runner.run`; no bytes pass through Python.

A restore never touches the slot's database until the new one is complete: `pg_restore` fills
a side database, then ONE server-side transaction ends the app's connections and renames
`ktrdr` to `ktrdr_previous` and the side database to `ktrdr` (PostgreSQL renames databases
transactionally; only CREATE/DROP DATABASE cannot run in a transaction block). Only after that
has committed is the previous database dropped. So at every instant the server has a `ktrdr`,
the old one or the new one, whatever happens to this process (Ctrl-C, kill -9), and the result
holds exactly the snapshot's objects (unlike `pg_restore --clean`, which keeps any table the
snapshot does not have).

What the server did is always asked of the server (`server_databases`), never guessed from a
client's exit status: a psql killed mid-swap may still have committed it. A leftover of an
interrupted restore (`ktrdr_restoring`, `ktrdr_previous`, or `ktrdr` missing beside one of
them, as an older version could leave it) is put right by `recovery` at the start of the next
restore, and by the next `inv up`/`inv status` of the slot, which find a marker file the
restore writes before its first change and removes once the server is settled.

The package is kept light on purpose: `inv status` imports `marker` (one listing of the lock
directory) and must not pay for the rest.
"""
