"""Measure the numbers the issues ask for, on a real engine, and print them.

    nox -s bench                  # or: .venv/bin/python benchmarks/bench_slots.py [SLOT SLOT]

1. Cold start of one slot through `inv up` (fresh database volume): when the backend first
   answers /api/v1/health with 200, when every gate condition first holds as seen by an
   independent watcher polling every 50 ms, and when `inv up` returns. The difference between
   the last two is how long the gate takes to notice readiness.
2. `docker compose up -d` alone on a stopped slot with its volume kept: time to health 200.
3. `inv status` latency with two slots up (and the one Docker call inside it).

It takes two slots (default 9 and 10), refuses if they have containers, and removes what it
started (volumes included) when it ends.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox import compose, docker, slots, status  # noqa: E402
from sandbox.runner import Result, run  # noqa: E402

WATCH_EVERY = 0.05
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def inv(*args: str) -> Result:
    return run([str(Path(sys.executable).parent / "inv"), "--search-root", str(ROOT), *args])


def get(url: str) -> tuple[int | None, bytes]:
    try:
        with NO_PROXY.open(url, timeout=1) as response:
            return response.status, response.read()
    except Exception:  # any failure is "not yet" for a watcher
        return None, b""


def health_ok(slot: int) -> bool:
    status_code, body = get(f"http://127.0.0.1:{slots.ports(slot)['KTRDR_API_PORT']}/api/v1/health")
    return status_code == 200 and json.loads(body).get("database", {}).get("reachable") is True


def all_ready(slot: int) -> bool:
    """Every gate condition, checked from outside the gate."""
    p = slots.ports(slot)
    if not health_ok(slot):
        return False
    code, body = get(f"http://127.0.0.1:{p['KTRDR_API_PORT']}/api/v1/workers")
    if code != 200 or len(json.loads(body)) < len(slots.WORKERS):
        return False
    return all(
        get(url)[0] == 200
        for url in (
            f"http://127.0.0.1:{p['KTRDR_JAEGER_UI_PORT']}/",
            f"http://127.0.0.1:{p['KTRDR_PROMETHEUS_PORT']}/-/ready",
            f"http://127.0.0.1:{p['KTRDR_GRAFANA_PORT']}/api/health",
        )
    )


class Watcher(threading.Thread):
    """Records the first moment each condition holds, relative to `start`."""

    def __init__(self, start: float, conditions: dict[str, Callable[[], bool]]) -> None:
        super().__init__(daemon=True)
        self.start_time = start
        self.conditions = conditions
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and len(self.seen) < len(self.conditions):
            for name, condition in self.conditions.items():
                if name not in self.seen and condition():
                    self.seen[name] = time.monotonic() - self.start_time
            time.sleep(WATCH_EVERY)


def free(slot_list: tuple[int, ...]) -> None:
    busy = {c.slot for c in docker.sandbox_containers() if c.slot is not None} & set(slot_list)
    if busy:
        sys.exit(f"slots {sorted(busy)} have containers: free them or pass other slots")


def cold_up(slot: int) -> dict[str, float]:
    start = time.monotonic()
    watcher = Watcher(start, {"health": lambda: health_ok(slot), "ready": lambda: all_ready(slot)})
    watcher.start()
    result = inv("up", f"--slot={slot}")
    returned = time.monotonic() - start
    watcher.stop.set()
    watcher.join()
    if not result.ok:
        sys.exit(f"inv up --slot={slot} failed:\n{result.tail(40)}")
    return {**watcher.seen, "returned": returned}


def warm_compose_up(slot: int) -> float:
    assert inv("down", f"--slot={slot}").ok
    target = compose.load_target(ROOT, slot)
    env = compose.environment(target, os.environ)
    cmd = compose.command(compose.find_compose(), target, "up", "-d")
    start = time.monotonic()
    watcher = Watcher(start, {"health": lambda: health_ok(slot)})
    watcher.start()
    result = run(cmd, env=env)
    watcher.join(timeout=180)
    if not result.ok or "health" not in watcher.seen:
        sys.exit(f"compose up -d on slot {slot} did not reach health 200:\n{result.tail(20)}")
    return watcher.seen["health"]


def timed(fn: Callable[[], object], times: int) -> list[float]:
    spent = []
    for _ in range(times):
        started = time.monotonic()
        fn()
        spent.append(time.monotonic() - started)
    return spent


def summary(values: list[float]) -> str:
    return (
        f"median {statistics.median(values) * 1000:.0f} ms "
        f"(min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f}, n={len(values)})"
    )


def main() -> None:
    a, b = (int(s) for s in (sys.argv[1:3] if len(sys.argv) > 2 else ("9", "10")))
    free((a, b))
    try:
        inv("down", f"--slot={a}", "--volumes")
        cold = cold_up(a)
        print(f"cold `inv up --slot={a}` (fresh volume), seconds from the command's start:")
        print(f"  backend health 200 (db reachable)  {cold.get('health', float('nan')):6.2f}")
        print(f"  every gate condition true          {cold.get('ready', float('nan')):6.2f}")
        print(f"  `inv up` returned                  {cold['returned']:6.2f}")
        if "ready" in cold:
            print(f"  gate lag after readiness           {cold['returned'] - cold['ready']:6.2f}")
        print(
            f"`docker compose up -d` to health 200, stopped slot {a}, volume kept: "
            f"{warm_compose_up(a):.2f} s"
        )
        assert inv("up", f"--slot={b}").ok, f"inv up --slot={b} failed"
        print("with two slots up:")
        print(f"  `inv status`                       {summary(timed(lambda: inv('status'), 7))}")
        print(
            "  status.collect() (one docker ps)   "
            f"{summary(timed(lambda: status.collect(dict(os.environ)), 7))}"
        )
    finally:
        for slot in (a, b):
            inv("down", f"--slot={slot}", "--volumes")


if __name__ == "__main__":
    main()
