"""A database the app cannot log in to, told in the database's own words, within seconds.

Compose's `up -d` waits for the backend's healthcheck (20 retries after a 60 s start period),
so a backend that can never log in keeps `up` busy for about two minutes and then says only
"container ... is unhealthy". The words that explain it are already there much earlier:

- The reference backend answers `GET /api/v1/health` with 503 and
  `{"status": "degraded", "database": {"reachable": false, "error": "connection to server at
  \"db\" (...), port 5432 failed: FATAL: password authentication failed for user \"ktrdr\""}}`
  (libpq's message, one line).
- KTRDR's backend says nothing about its database in `/api/v1/health` (`{"status": "ok",
  "version": ..., "orphan_detector": ...}`; ktrdr/api/endpoints/__init__.py): its startup
  reconciliation logs the failure and carries on. So for KTRDR the words come from logs.
- Postgres itself logs every refused login, whatever the app:
  `FATAL:  password authentication failed for user "ktrdr"`, so the db container's log is the
  source that works for both apps.

These functions are pure: the gate (or preflight's wait) feeds them a health response or log
text and fails fast on the first non-None answer.
"""

from __future__ import annotations

import json
import re

# Postgres' own messages for a login it refused, as libpq, asyncpg and the server log word
# them. A database that is still starting ("the database system is starting up", "connection
# refused") is not among them: that one is worth waiting for.
_LOGIN_FAILURES = (
    r'password authentication failed for user "[^"]*"',
    r'role "[^"]*" does not exist',
    r'database "[^"]*" does not exist',
    r'no pg_hba\.conf entry for host "[^"]*", user "[^"]*", database "[^"]*"'
    r"(?:, (?:no encryption|SSL encryption|GSS encryption|SSL off|SSL on))?",
)
_PATTERN = re.compile("|".join(f"(?:{p})" for p in _LOGIN_FAILURES))


def login_failure_in_text(text: str) -> str | None:
    """The first refused-login message in `text` (a log, an error string), else None."""
    match = _PATTERN.search(text)
    return " ".join(match.group(0).split()) if match else None


def _database_error(body: object) -> str:
    """The reference backend's `database.error`, or "" when the body has none."""
    if not isinstance(body, dict):
        return ""
    database = body.get("database")
    if isinstance(database, dict) and isinstance(database.get("error"), str):
        return str(database["error"])
    return ""


def _strings(value: object) -> list[str]:
    """Every string in a decoded JSON value: quotes inside them are no longer escaped."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def login_failure(health_status: int | None, health_body: str) -> str | None:
    """The database's own words when the backend's health response says it cannot log in.

    Only a failing response counts (a 200 is healthy whatever it contains). The structured
    `database.error` of the reference backend is read first; any other body (KTRDR's, an HTML
    error page, a stack trace) is searched as text, JSON strings decoded first. None: nothing
    says the login was refused, so keep waiting.
    """
    if health_status is not None and 200 <= health_status < 300:
        return None
    try:
        parsed = json.loads(health_body)
    except ValueError:
        return login_failure_in_text(health_body)
    return login_failure_in_text(_database_error(parsed)) or login_failure_in_text(
        "\n".join(_strings(parsed))
    )


def login_failure_message(slot: int, words: str) -> str:
    """The one line `up` fails with when the database refuses the backend."""
    return (
        f"slot {slot}'s backend cannot log in to its database ({words}): "
        f"the database was probably created with another password; use that password, or "
        f"`inv up --slot={slot} --fresh` to recreate the database (its data is lost)"
    )
