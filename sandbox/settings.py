"""Tunables of the host side, each named once: how long things may take and how often to look.

Facts that belong to one module stay there (ports in `slots`, the shared sub-directories in
`shared`, the Debian suite in `images`); what is here is a judgement about time that several
modules share or that a newcomer would want to find in one place.
"""

from __future__ import annotations

# --- the startability gate (`inv up`) -------------------------------------------------------

# Long enough for a first start on a slow laptop (db init, image layers), short enough to end.
# KTRDR_GATE_TIMEOUT (env file or shell) and `inv up --timeout` override it.
GATE_TIMEOUT = 180.0
# How often each check is probed; a service that is up answers in milliseconds.
GATE_POLL = 0.25
# Short: a probe that hangs delays nothing else (checks run concurrently), but it does delay its
# own next attempt, and a service that is up answers these endpoints in milliseconds.
GATE_HTTP_TIMEOUT = 1.5
# `docker compose exec` pays the Compose CLI's start-up (~0.3-1 s) before pg_isready even runs.
GATE_EXEC_TIMEOUT = 10.0
# One `docker ps` for the whole engine costs ~50-100 ms; every 2 s is prompt enough to stop
# waiting for a container that exited, and cheap.
CONTAINER_POLL = 2.0
# The crash reader: a running app container that is not healthy yet has its log read (one
# `docker logs` each) first this long after the gate started, then at gaps doubling up to the
# cap. A quiet start passes before the first look; a process that died under a reloader is
# found within the cap. (Reading all five app containers at every container poll made the
# gate's lag behind a ready slot 1.21x instead of 1.09x.)
CRASH_LOG_FIRST = 4.0
CRASH_LOG_CAP = 16.0
# An app's migration step (KTRDR: `alembic upgrade head`) imports the whole app first.
MIGRATION_TIMEOUT = 180.0
# The gate under load: past its timeout it goes on only while this machine is short of CPU
# (GATE_STARVED_PRESSURE % of the last 10 s with a task waiting for a core, from
# /proc/pressure/cpu; where that is absent, a 1-minute load average of at least the cores)
# AND the services that have not answered yet keep using CPU (at least GATE_PROGRESS_CPU
# seconds together over the last GATE_PROGRESS_WINDOW): a start starved of CPU is slow, not
# stuck, while a service in a retry loop or a polling reloader on an idle machine also uses
# CPU and is stuck. Never past GATE_HARD_CAP_FACTOR times the timeout (the start holds its
# admission turn all that time). Ten KTRDR slots thrashing on two cores still gave each
# process 3-4 CPU-seconds in 5 minutes (~0.25 a window); an idle backend uses ~0.06.
GATE_PROGRESS_WINDOW = 20.0
GATE_PROGRESS_CPU = 0.25
GATE_STARVED_PRESSURE = 50.0
GATE_HARD_CAP_FACTOR = 2.0
# How many log lines of each failing service `inv up` shows after a failed gate.
FAILING_LOG_LINES = 20

# --- `inv verify` ---------------------------------------------------------------------------

# Longer than the gate's: verify asks once, of a stack that should be up, and a slow answer is
# still an answer.
VERIFY_HTTP_TIMEOUT = 3.0
# Several `compose exec` run at once (one per service), each paying the CLI's start-up.
VERIFY_EXEC_TIMEOUT = 20.0

# --- the Docker CLI -------------------------------------------------------------------------

# A question the CLI answers locally or from the engine at once (version, image inspect).
CLI_TIMEOUT = 20.0
# `docker version` (or `inv status`'s one `docker ps`) of an engine that is up answers in well
# under a second (a remote one over ssh in one or two); one that accepts connections and never
# answers (a wedged daemon) must be told apart from a slow one within the 15 s any refusal may
# take (the fault suite holds every one to it), with time left to say so.
ENGINE_ANSWER_TIMEOUT = 8.0
# One call about every container on the engine (`docker ps`, `docker inspect`, `compose logs`).
ENGINE_QUERY_TIMEOUT = 30.0
# Pulling the small Debian base to learn whether a registry answers at all.
REGISTRY_PROBE_TIMEOUT = 120.0

# --- `inv images` ---------------------------------------------------------------------------

# Image builds at once once the base is there: apt downloads and dpkg unpacks overlap well on
# 2 cores; more than 3 only queue on the CPU and make each build's output arrive later.
BUILD_WORKERS = 3

# --- slot locks -----------------------------------------------------------------------------

# How long a second `inv up`/`down` of the same slot waits for the first before refusing.
LOCK_WAIT = 300.0
