#!/usr/bin/env bash
# Entrypoint of ktrdr-sandbox/postgres-debian: Debian's PostgreSQL 15, started the way the
# official postgres image starts, so Compose files written for that image work unchanged.
#
#   POSTGRES_PASSWORD           superuser password; required unless
#                               POSTGRES_HOST_AUTH_METHOD=trust
#   POSTGRES_USER               superuser name (default postgres)
#   POSTGRES_DB                 database created on first start (default: POSTGRES_USER)
#   POSTGRES_HOST_AUTH_METHOD   auth for TCP connections (default scram-sha-256)
#   PGDATA                      the cluster (default /var/lib/postgresql/data)
#
# Empty $PGDATA: initdb, create the database, run /docker-entrypoint-initdb.d/*.sql and *.sh,
# all on a server that listens on the unix socket only, so that `pg_isready -h 127.0.0.1`
# passes only once the final server is up. Existing $PGDATA: just start.
# The server runs as user postgres and is exec'd, so Compose's stop signal reaches it.
set -Eeuo pipefail

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA
INITDB_DIR=/docker-entrypoint-initdb.d
MAJOR=15

log() { printf '%s postgres-entrypoint: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%S)" "$*"; }
die() { log "error: $*" >&2; exit 1; }

# `docker run IMAGE -c work_mem=64MB` means `postgres -c work_mem=64MB`.
if [ "${1:-}" = "" ] || [ "${1:0:1}" = "-" ]; then
    set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
    exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    # A volume written by another image may carry another uid for postgres: take it over.
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    chown postgres:postgres /var/run/postgresql
    chmod 700 "$PGDATA"
    chmod 2775 /var/run/postgresql
    export HOME=/var/lib/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

init_cluster() {
    local user="${POSTGRES_USER:-postgres}"
    local db="${POSTGRES_DB:-$user}"
    local auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
    local password="${POSTGRES_PASSWORD:-}"

    if [ -z "$password" ] && [ "$auth" != trust ]; then
        die "POSTGRES_PASSWORD is not set: set it, or POSTGRES_HOST_AUTH_METHOD=trust" \
            "for a throwaway database that anyone on the network may use"
    fi

    log "empty $PGDATA: initdb (superuser $user, database $db, host auth $auth)"
    local args=(--username="$user" --auth-local=trust --auth-host="$auth"
                --encoding=UTF8 --locale=C.UTF-8)
    if [ -n "$password" ]; then
        # Process substitution: the password never lands in a file or in `ps`.
        initdb "${args[@]}" --pwfile=<(printf '%s\n' "$password") >/dev/null
    else
        initdb "${args[@]}" >/dev/null
    fi

    {
        echo
        echo "# Added by ktrdr-sandbox's entrypoint: serve the container network."
        echo "listen_addresses = '*'"
    } >>"$PGDATA/postgresql.conf"
    {
        echo
        echo "# Added by ktrdr-sandbox's entrypoint: TCP from anywhere, with a password."
        echo "host all all all $auth"
    } >>"$PGDATA/pg_hba.conf"

    log "starting a temporary server on the unix socket only"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w -t 60 -l "$PGDATA/init.log" start \
        >/dev/null || { cat "$PGDATA/init.log" >&2; die "the temporary server did not start"; }

    local psql=(psql -X -v ON_ERROR_STOP=1 --username="$user" --no-password)
    if [ "$db" != postgres ]; then
        log "creating database $db"
        "${psql[@]}" --dbname=postgres --set=db="$db" --quiet <<<'CREATE DATABASE :"db";'
    fi

    local f
    for f in "$INITDB_DIR"/*; do
        if [ ! -e "$f" ]; then
            continue
        fi
        case "$f" in
            *.sql) log "running $f"; "${psql[@]}" --dbname="$db" -f "$f" ;;
            *.sh) log "running $f"; PGUSER="$user" PGDATABASE="$db" bash "$f" ;;
            *) log "ignoring $f (only *.sql and *.sh run)" ;;
        esac
    done

    pg_ctl -D "$PGDATA" -m fast -w -t 60 stop >/dev/null
    rm -f "$PGDATA/init.log"
    log "initialisation done"
}

if [ -s "$PGDATA/PG_VERSION" ]; then
    found="$(cat "$PGDATA/PG_VERSION")"
    if [ "$found" != "$MAJOR" ]; then
        die "$PGDATA holds PostgreSQL $found data and this image runs PostgreSQL $MAJOR;" \
            "remove the volume to start afresh, or use an image of PostgreSQL $found"
    fi
    log "existing cluster in $PGDATA: starting it"
else
    init_cluster
fi

log "starting $(postgres --version)"
exec "$@"
