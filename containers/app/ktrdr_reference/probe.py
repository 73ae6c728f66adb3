"""Healthcheck client: `python3 -m ktrdr_reference.probe URL`.

Exits 0 when GET URL answers 2xx within TIMEOUT_SECONDS, else prints one line and exits 1
(2 for a usage error). Compose healthchecks call it, because the app image has no wget/curl.
"""

from __future__ import annotations

import http.client
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from ktrdr_reference.common import describe_error, http_request

TIMEOUT_SECONDS = 2.0


class _Deadline(Exception):
    pass


def _expire(signum: int, frame: FrameType | None) -> None:
    raise _Deadline


def probe(url: str, timeout: float = TIMEOUT_SECONDS) -> str | None:
    """None when `url` answers 2xx within `timeout` seconds in total, else the reason."""
    # The socket timeout bounds each read, not the exchange: an alarm bounds the whole of it.
    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        reply = http_request(url, timeout=timeout, user_agent="ktrdr-reference-probe")
    except _Deadline:
        return f"no answer within {timeout:g}s"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return describe_error(exc)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if 200 <= reply.status < 300:
        return None
    return f"HTTP {reply.status}"


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python3 -m ktrdr_reference.probe URL", file=sys.stderr)
        return 2
    url = argv[0]
    reason = probe(url)
    if reason is None:
        return 0
    print(f"probe: {url}: {reason}", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
