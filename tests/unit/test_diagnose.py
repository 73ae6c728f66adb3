"""Telling a refused database login from a database that is merely starting."""

from __future__ import annotations

import json

from sandbox import diagnose

# What the reference backend answered on slot 7 with KTRDR_DB_PASSWORD=other (measured).
REFERENCE_503 = json.dumps(
    {
        "status": "degraded",
        "service": "ktrdr-reference-backend",
        "database": {
            "reachable": False,
            "host": "db",
            "error": 'connection to server at "db" (192.168.48.4), port 5432 failed: FATAL: '
            'password authentication failed for user "ktrdr"',
        },
    }
)
# Lines of the db container's log on the same occasion (Postgres' own words).
POSTGRES_LOG = (
    '2026-11-27 18:31:02.846 UTC [666] FATAL:  password authentication failed for user "ktrdr"\n'
    '2026-11-27 18:31:02.846 UTC [666] DETAIL:  Connection matched pg_hba.conf line 101: "host '
    'all all all scram-sha-256"\n'
)


def test_reference_backend_wrong_password() -> None:
    words = diagnose.login_failure(503, REFERENCE_503)
    assert words == 'password authentication failed for user "ktrdr"'


def test_a_starting_database_is_not_a_login_failure() -> None:
    starting = json.dumps({"status": "degraded", "database": {"error": "connection refused"}})
    assert diagnose.login_failure(503, starting) is None
    assert diagnose.login_failure(None, "") is None


def test_a_healthy_answer_is_never_a_failure() -> None:
    assert diagnose.login_failure(200, REFERENCE_503) is None


def test_other_bodies_are_searched_as_text() -> None:
    ktrdr_like = json.dumps({"detail": 'asyncpg: password authentication failed for user "k"'})
    assert diagnose.login_failure(500, ktrdr_like) == 'password authentication failed for user "k"'
    html = '<pre>FATAL:  database "ktrdr" does not exist</pre>'
    assert diagnose.login_failure(502, html) == 'database "ktrdr" does not exist'


def test_postgres_log_lines() -> None:
    assert diagnose.login_failure_in_text(POSTGRES_LOG) == (
        'password authentication failed for user "ktrdr"'
    )
    pg_hba = (
        'FATAL:  no pg_hba.conf entry for host "172.18.0.3", user "ktrdr", database "ktrdr", '
        "no encryption"
    )
    assert diagnose.login_failure_in_text(pg_hba) == pg_hba.removeprefix("FATAL:  ")
    assert (
        diagnose.login_failure_in_text('FATAL:  role "x" does not exist')
        == 'role "x" does not exist'
    )
    assert diagnose.login_failure_in_text("database system is starting up") is None


def test_message_is_one_line_with_the_fix() -> None:
    line = diagnose.login_failure_message(7, 'password authentication failed for user "ktrdr"')
    assert "\n" not in line
    assert line.startswith("slot 7's backend cannot log in to its database (password")
    assert "`inv up --slot=7 --fresh`" in line
