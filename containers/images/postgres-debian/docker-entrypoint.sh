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
#
# Preset cluster: the image is built with `docker-entrypoint.sh preset-cluster USER DB AUTH`,
# which leaves a password-less cluster and a marker ($PRESET_MARKER) in $PGDATA; Docker copies
# both into a new named volume. On that volume's first start the entrypoint sets
# POSTGRES_PASSWORD in single-user mode (no socket, so no client can connect before it holds)
# and removes the marker: a volume already started keeps its password, as with upstream images.
# If POSTGRES_USER, POSTGRES_DB or POSTGRES_HOST_AUTH_METHOD differ from the preset, or init
# scripts are mounted, the untouched preset cluster is wiped and initdb runs as usual.
set -Eeuo pipefail

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA
INITDB_DIR=/docker-entrypoint-initdb.d
MAJOR=15
PRESET_MARKER=.ktrdr-sandbox-preset

log() { printf '%s postgres-entrypoint: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%S)" "$*"; }
die() { log "error: $*" >&2; exit 1; }

# `docker run IMAGE -c work_mem=64MB` means `postgres -c work_mem=64MB`.
if [ "${1:-}" = "" ] || [ "${1:0:1}" = "-" ]; then
    set -- postgres "$@"
fi
if [ "$1" != postgres ] && [ "$1" != preset-cluster ]; then
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

wanted_user() { printf '%s' "${POSTGRES_USER:-postgres}"; }
wanted_db() { printf '%s' "${POSTGRES_DB:-$(wanted_user)}"; }
wanted_auth() { printf '%s' "${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"; }

require_password() {
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$(wanted_auth)" != trust ]; then
        die "POSTGRES_PASSWORD is not set: set it, or POSTGRES_HOST_AUTH_METHOD=trust" \
            "for a throwaway database that anyone on the network may use"
    fi
}

init_cluster() {
    require_password
    make_cluster "$(wanted_user)" "$(wanted_db)" "$(wanted_auth)" "${POSTGRES_PASSWORD:-}"
}

# make_cluster USER DB AUTH PASSWORD: initdb into the empty $PGDATA, create DB, run init
# scripts. An empty PASSWORD leaves the superuser without one (the preset, or trust).
make_cluster() {
    local user="$1" db="$2" auth="$3" password="$4"

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

# At image build: a cluster with no password, and the marker that says so.
preset_cluster() {
    local user="$1" db="$2" auth="$3"
    if [ -e "$PGDATA/PG_VERSION" ]; then
        die "preset-cluster: $PGDATA already holds a cluster"
    fi
    make_cluster "$user" "$db" "$auth" ""
    printf 'user=%s\ndb=%s\nauth=%s\n' "$user" "$db" "$auth" >"$PGDATA/$PRESET_MARKER"
    log "preset cluster ready; POSTGRES_PASSWORD is applied on a volume's first start"
}

# The volume's first start from a preset cluster: make it this container's cluster.
adopt_preset() {
    local preset
    preset="$(cat "$PGDATA/$PRESET_MARKER")"
    local wanted
    wanted="$(printf 'user=%s\ndb=%s\nauth=%s' "$(wanted_user)" "$(wanted_db)" "$(wanted_auth)")"
    local scripts=("$INITDB_DIR"/*)
    if [ "$preset" != "$wanted" ] || [ -e "${scripts[0]}" ]; then
        log "preset cluster ($(echo "$preset" | tr '\n' ' ')) does not fit this container" \
            "(or init scripts are mounted): replacing it"
        find "$PGDATA" -mindepth 1 -delete
        init_cluster
        return
    fi
    require_password
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        log "first start of a preset cluster: setting the password of $(wanted_user)"
        # Single-user mode listens on nothing; -j ends a statement at ";" + newline. The
        # password goes through stdin (never argv) as a literal with its quotes doubled.
        local literal="${POSTGRES_PASSWORD//\'/\'\'}"
        local out
        if ! out="$(printf 'ALTER ROLE "%s" WITH PASSWORD '"'"'%s'"'"';\n' \
                "$(wanted_user)" "$literal" \
                | postgres --single -j -D "$PGDATA" -c listen_addresses='' postgres 2>&1)" \
            || grep -qE '(ERROR|FATAL|PANIC):' <<<"$out"; then
            printf '%s\n' "$out" | grep -vF "$literal" >&2 || true
            die "could not set the password of $(wanted_user) on the preset cluster"
        fi
    fi
    rm -f "$PGDATA/$PRESET_MARKER"
}

if [ "$1" = preset-cluster ]; then
    shift
    preset_cluster "$@"
    exit 0
fi

if [ -s "$PGDATA/PG_VERSION" ] && [ -e "$PGDATA/$PRESET_MARKER" ]; then
    adopt_preset
elif [ -s "$PGDATA/PG_VERSION" ]; then
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
