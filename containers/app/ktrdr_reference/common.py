"""What the backend, the worker and the probe share besides `httpkit`: env reading, the
validation of worker fields, the HTTP client and the exit for a bad configuration.

Serving HTTP, signals and logging come from `httpkit` (containers/shared/httpkit.py), which
the stand-ins use too; the image copies it to /app, next to this package.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from httpkit import one_line

WORKER_TYPES = ("backtesting", "training")
WORKER_ID_MAX = 128
URL_MAX = 2048


class ConfigError(Exception):
    """The environment is missing a variable or holds a bad value. Exit status 2."""


def fail_config(component: str, exc: ConfigError) -> int:
    """Report a bad environment as one line on stderr; the caller exits with what it returns."""
    print(f"{component}: configuration error: {exc}", file=sys.stderr, flush=True)
    return 2


# --- environment -----------------------------------------------------------------------------


def env_text(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    """A variable's value, stripped; `default` when unset or empty; ConfigError if neither."""
    value = env.get(name, "").strip()
    if value:
        return value
    if default is None:
        raise ConfigError(f"{name} is not set: the container needs it in its environment")
    return default


def env_int(
    env: Mapping[str, str],
    name: str,
    default: int | None = None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """A whole number from the environment, within [minimum, maximum] when given."""
    text = env_text(env, name, None if default is None else str(default))
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {text!r}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        low = "-inf" if minimum is None else str(minimum)
        high = "inf" if maximum is None else str(maximum)
        raise ConfigError(f"{name}={value} is outside {low}..{high}")
    return value


def env_optional_int(env: Mapping[str, str], name: str, *, minimum: int = 0) -> int | None:
    """A whole number, or None when the variable is unset or empty."""
    if not env.get(name, "").strip():
        return None
    return env_int(env, name, minimum=minimum)


# --- validation shared by the backend (HTTP 400) and the worker (exit 2) ---------------------


def check_worker_id(value: object) -> str:
    """A worker id: a non-empty string of letters, digits, '.', '_' or '-'."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("worker_id must be a non-empty string")
    if len(value) > WORKER_ID_MAX:
        raise ValueError(f"worker_id is longer than {WORKER_ID_MAX} characters")
    if not all(ch.isascii() and (ch.isalnum() or ch in "._-") for ch in value):
        raise ValueError(f"worker_id {value!r} may hold only letters, digits, '.', '_' and '-'")
    return value


def check_worker_type(value: object) -> str:
    if not isinstance(value, str) or value not in WORKER_TYPES:
        raise ValueError(f"worker_type must be one of {', '.join(WORKER_TYPES)}, not {value!r}")
    return value


def check_http_url(value: object, name: str) -> str:
    """An absolute http(s) URL with a host; trailing slashes removed."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    if len(value) > URL_MAX:
        raise ValueError(f"{name} is longer than {URL_MAX} characters")
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http:// or https:// URL with a host, not {value!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port outside 0-65535
    except ValueError:
        raise ValueError(f"{name} has an invalid port: {value!r}") from None
    return value.strip().rstrip("/")


# --- HTTP client -----------------------------------------------------------------------------

# No proxies: everything these programs call is on the Compose network or loopback, and an
# HTTP_PROXY that the engine injects into containers would otherwise swallow those calls.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes


def http_request(
    url: str,
    *,
    method: str = "GET",
    payload: object | None = None,
    timeout: float,
    user_agent: str = "ktrdr-reference",
) -> HttpReply:
    """One HTTP exchange. Any status comes back as a reply; no answer at all raises OSError
    (or http.client.HTTPException for a garbled one): see `describe_error`."""
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    headers = {"Accept": "application/json", "User-Agent": user_agent}
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout) as reply:
            return HttpReply(reply.status, _lower(reply.headers.items()), reply.read())
    except urllib.error.HTTPError as err:
        with err:
            return HttpReply(err.code, _lower(err.headers.items()), err.read())


def _lower(items: Any) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in items}


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a failed HTTP exchange ('connection refused', 'timed out')."""
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return one_line(exc.reason)
    return one_line(exc) or type(exc).__name__
