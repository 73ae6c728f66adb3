"""Measure the start-up and `inv status` figures on a real engine, side by side in one run,
and print each on one line with its ratio and target.

    nox -s bench                  # or: .venv/bin/python benchmarks/bench_slots.py [SLOT SLOT]
    .venv/bin/python benchmarks/bench_slots.py --ten     # also: slots 1-10 at once

Baseline: a bare PostgreSQL cold start - the slot's own database image (KTRDR_DB_IMAGE),
forced to run initdb on an empty anonymous volume, until it accepts a login as pg_isready sees
it - median of RUNS. Then, on the first slot: a fresh cold `inv up` (no volume), a warm restart
(`inv down`, then `inv up` with the volume kept), and the gate lag (when `inv up` returns
against when an independent watcher polling every 50 ms first sees every gate condition hold).
With both slots up: `inv status` against `python -c "import invoke"` plus one `docker ps`.

`--ten` brings slots 1-10 up at once (each must pass its gate and `inv verify`), reports memory
per slot and the machine's peak, and compares the wall time with one fresh slot. It refuses if
any of those slots has containers; it is off by default because it takes the whole machine.

It refuses slots that have containers, and removes what it started (volumes included) at the end.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import statistics
import struct
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox import compose, docker, engine, net, slots  # noqa: E402
from sandbox.runner import Result, run  # noqa: E402

WATCH_EVERY = 0.05
RUNS = 3  # per cold/warm figure: medians, the machine is shared and noisy
STATUS_RUNS = 11
TEN = tuple(range(1, 11))
PG_USER = PG_DB = "ktrdr"
DEFAULT_DB_IMAGE = "timescale/timescaledb:latest-pg16"
FLOOR_PROJECT = "ktrdrbench-engine-floor"  # not ktrdr-sandbox-N: never taken for a slot
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
INV = str(Path(sys.executable).parent / "inv")


def inv(*args: str) -> Result:
    return run([INV, "--search-root", str(ROOT), *args], env=dict(os.environ))


def get(url: str) -> tuple[int | None, bytes]:
    try:
        with NO_PROXY.open(url, timeout=1) as response:
            return response.status, response.read()
    except Exception:  # any failure is "not yet" for a watcher
        return None, b""


# --------------------------------------------------------------------------- readiness probes


@functools.cache
def slot_host(slot: int) -> str:
    """Where the slot's ports are reached (URL form): loopback locally, the engine's host for
    a remote engine (DOCKER_HOST or a context), as the tasks reach them."""
    return net.host(compose.load_target(ROOT, slot), os.environ, engine.detect(os.environ))


def pg_accepts(port: int, host: str = "127.0.0.1") -> bool:
    """What pg_isready checks, over loopback TCP: the server answers a startup packet with an
    authentication request ('R'), not with an error such as "the database system is starting
    up" ('E') and not with silence."""
    params = f"user\0{PG_USER}\0database\0{PG_DB}\0\0".encode()
    packet = struct.pack("!ii", 8 + len(params), 196608) + params  # protocol 3.0
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=1) as conn:
            conn.sendall(packet)
            return conn.recv(1)[:1] == b"R"
    except OSError:
        return False


def health_ok(slot: int) -> bool:
    code, body = get(
        f"http://{slot_host(slot)}:{slots.ports(slot)['KTRDR_API_PORT']}/api/v1/health"
    )
    return code == 200 and json.loads(body).get("database", {}).get("reachable") is True


def all_ready(slot: int) -> bool:
    """Every gate condition, checked from outside the gate."""
    p = slots.ports(slot)
    if not (pg_accepts(p["KTRDR_DB_PORT"], slot_host(slot)) and health_ok(slot)):
        return False
    code, body = get(f"http://{slot_host(slot)}:{p['KTRDR_API_PORT']}/api/v1/workers")
    if code != 200 or len(json.loads(body)) < len(slots.WORKERS):
        return False
    return all(
        get(url)[0] == 200
        for url in (
            f"http://{slot_host(slot)}:{p['KTRDR_JAEGER_UI_PORT']}/",
            f"http://{slot_host(slot)}:{p['KTRDR_PROMETHEUS_PORT']}/-/ready",
            f"http://{slot_host(slot)}:{p['KTRDR_GRAFANA_PORT']}/api/health",
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


# --------------------------------------------------------------------------- measurements


def free(slot_list: Sequence[int]) -> None:
    busy = {c.slot for c in docker.sandbox_containers() if c.slot is not None} & set(slot_list)
    if busy:
        sys.exit(f"slots {sorted(busy)} have containers: free them or pass other slots")


def bare_postgres(image: str, port: int) -> float:
    """Seconds from `docker run` to accepting a login, initdb forced: the data directory is a
    new anonymous volume with nocopy, so even an image holding a cluster starts empty."""
    name = f"ktrdr-sandbox-bench-pg-{port}"
    cmd = [
        "docker", "run", "-d", "--rm", "--name", name,
        "--mount", "type=volume,dst=/var/lib/postgresql/data,volume-nocopy",
        "-e", f"POSTGRES_USER={PG_USER}", "-e", f"POSTGRES_DB={PG_DB}",
        "-e", "POSTGRES_PASSWORD=bench",
        "-p", f"127.0.0.1:{port}:5432", image,
    ]  # fmt: skip
    start = time.monotonic()
    try:
        result = run(cmd, env=dict(os.environ))
        if not result.ok:
            sys.exit(f"bare postgres did not start:\n{result.tail(10)}")
        while not pg_accepts(port):
            if time.monotonic() - start > 120:
                sys.exit(f"bare postgres ({image}) not ready in 120 s")
            time.sleep(WATCH_EVERY)
        return time.monotonic() - start
    finally:
        run(["docker", "rm", "-f", "-v", name], env=dict(os.environ))


def idle_stack_yaml(slot: int, image: str) -> str:
    """A stack shaped like a slot - 9 containers, init, the slot's 11 published ports - whose
    containers only sleep: what the engine alone needs to create and start a slot."""
    p = slots.ports(slot)
    published = {
        "db": ["KTRDR_DB_PORT"],
        "backend": ["KTRDR_API_PORT"],
        "jaeger": [
            "KTRDR_JAEGER_UI_PORT", "KTRDR_JAEGER_OTLP_GRPC_PORT", "KTRDR_JAEGER_OTLP_HTTP_PORT"
        ],
        "prometheus": ["KTRDR_PROMETHEUS_PORT"],
        "grafana": ["KTRDR_GRAFANA_PORT"],
        **{w.service: [w.port_variable] for w in slots.WORKERS},
    }  # fmt: skip
    rows = [f"name: {FLOOR_PROJECT}", "services:"]
    for service, variables in published.items():
        rows += [f"  {service}:", f"    image: {image}", '    command: ["sleep", "infinity"]']
        rows += ["    init: true", "    stop_grace_period: 1s", "    ports:"]
        rows += [f'      - "127.0.0.1:{p[v]}:{p[v]}"' for v in variables]
    return "\n".join(rows) + "\n"


def engine_floor(slot: int, image: str) -> float:
    """Seconds for `docker compose up -d` of the idle stack (its `down` not counted)."""
    compose_cmd = [*compose.find_compose(), "-f", "-"]
    text = idle_stack_yaml(slot, image)
    env = dict(os.environ)
    start = time.monotonic()
    try:
        result = run([*compose_cmd, "up", "-d"], env=env, input_text=text)
        spent = time.monotonic() - start
        if not result.ok:
            sys.exit(f"idle stack did not start:\n{result.tail(10)}")
        return spent
    finally:
        run([*compose_cmd, "down", "-t", "1"], env=env, input_text=text)


def timed_up(slot: int) -> dict[str, float]:
    """`inv up`, with the watcher's first sighting of full readiness."""
    start = time.monotonic()
    watcher = Watcher(start, {"ready": lambda: all_ready(slot)})
    watcher.start()
    result = inv("up", f"--slot={slot}")
    returned = time.monotonic() - start
    watcher.stop.set()
    watcher.join()
    if not result.ok:
        sys.exit(f"inv up --slot={slot} failed:\n{result.tail(40)}")
    return {**watcher.seen, "returned": returned}


def cold_up(slot: int) -> dict[str, float]:
    inv("down", f"--slot={slot}", "--volumes")
    return timed_up(slot)


def warm_up(slot: int) -> dict[str, float]:
    if not inv("down", f"--slot={slot}").ok:
        sys.exit(f"inv down --slot={slot} failed")
    return timed_up(slot)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    return f"(min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"


def line(name: str, value: float, unit: str, ratio: float | None, target: str) -> None:
    ratio_text = "" if ratio is None else f"{ratio:5.2f}x"
    verdict = ""
    if ratio is not None and target.startswith("<="):
        verdict = "MET" if ratio <= float(target[2:].rstrip("x")) else "MISSED"
    print(f"{name:<48} {value:8.2f} {unit:<3} {ratio_text:>7}  target {target:<8} {verdict}")


def status_figures() -> tuple[list[float], list[float]]:
    """Interleaved samples of `inv status` and of its floor, so load hits both alike.

    Both sides read bytecode: invoke's was compiled when it was installed, and tasks.py and
    sandbox/ are compiled first, as Python caches them after any first run. Without that, a
    PYTHONDONTWRITEBYTECODE in the environment would make every `inv` compile them anew
    (about 60 ms here) while `import invoke` compiles nothing."""
    env = dict(os.environ)
    compile_all = [sys.executable, "-m", "compileall", "-q", "tasks.py", "sandbox"]
    run(compile_all, env=env, cwd=ROOT, check="compiling tasks.py and sandbox/ failed")
    status, floor = [], []
    for _ in range(STATUS_RUNS):
        started = time.monotonic()
        inv("status")
        status.append(time.monotonic() - started)
        started = time.monotonic()
        run([sys.executable, "-c", "import invoke"], env=env)
        run(docker.ps_command(), env=env)
        floor.append(time.monotonic() - started)
    return status, floor


# --------------------------------------------------------------------------- ten slots


def memory_used_mib() -> float:
    info = {}
    for row in Path("/proc/meminfo").read_text().splitlines():
        key, value = row.split(":", 1)
        info[key] = int(value.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


def slot_memory_mib() -> dict[int, float]:
    """Memory per slot as `docker stats` reports it (the containers' cgroups)."""
    result = run(
        ["docker", "stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}"],
        env=dict(os.environ),
    )
    units = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}
    per_slot: dict[int, float] = {}
    for row in result.stdout.splitlines():
        name, _, usage = row.partition("\t")
        if not name.startswith("ktrdr-sandbox-"):
            continue
        slot_text = name.removeprefix("ktrdr-sandbox-").split("-", 1)[0]
        if not slot_text.isdigit():
            continue
        amount = usage.split("/")[0].strip()
        unit = next((u for u in ("GiB", "MiB", "KiB", "B") if amount.endswith(u)), "B")
        mib = float(amount.removesuffix(unit)) * units[unit]
        per_slot[int(slot_text)] = per_slot.get(int(slot_text), 0.0) + mib
    return per_slot


def ten_slots(one_slot: float) -> None:
    free(TEN)
    before = memory_used_mib()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], memory_used_mib())
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        start = time.monotonic()
        with futures.ThreadPoolExecutor(max_workers=len(TEN)) as pool:
            ups = dict(zip(TEN, pool.map(lambda s: inv("up", f"--slot={s}"), TEN), strict=True))
        wall = time.monotonic() - start
        verified = {s: inv("verify", f"--slot={s}").ok for s in TEN}
        memory = slot_memory_mib()
        done.set()
        sampler.join()
        failed = [s for s in TEN if not ups[s].ok]
        unverified = [s for s in TEN if not verified[s]]
        line("ten slots at once, wall time", wall, "s", wall / one_slot, "<=5x")
        print(
            f"  gates passed {len(TEN) - len(failed)}/10 (failed: {failed or 'none'}); "
            f"inv verify passed {len(TEN) - len(unverified)}/10 (failed: {unverified or 'none'})"
        )
        per = [memory.get(s, 0.0) for s in TEN]
        print(
            f"  memory per slot (docker stats): median {median(per):.0f} MiB "
            f"(min {min(per):.0f}, max {max(per):.0f}); machine peak {peak[0]:.0f} MiB used, "
            f"{peak[0] - before:.0f} MiB above the {before:.0f} MiB before the run"
        )
        for s in failed:
            print(f"  slot {s} gate output:\n{ups[s].tail(30)}")
    finally:
        done.set()
        with futures.ThreadPoolExecutor(max_workers=len(TEN)) as pool:
            list(pool.map(lambda s: inv("down", f"--slot={s}", "--volumes"), TEN))


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slots", nargs="*", type=int, default=[9, 10], help="two slots")
    parser.add_argument("--ten", action="store_true", help="also bring slots 1-10 up at once")
    args = parser.parse_args(argv)
    if len(args.slots) != 2:
        parser.error("give two slots, e.g. 5 6")
    a, b = args.slots
    free((a, b))
    if args.ten:
        free(TEN)  # before anything runs, not after minutes of measuring
    image = compose.image_settings(ROOT).get("KTRDR_DB_IMAGE", DEFAULT_DB_IMAGE)
    db_port = slots.ports(a)["KTRDR_DB_PORT"]
    idle_image = compose.image_settings(ROOT).get("KTRDR_APP_IMAGE", image)
    try:
        base, cold, floor_up = [], [], []
        for _ in range(RUNS):  # interleaved, so that load changes hit every figure alike
            inv("down", f"--slot={a}", "--volumes")  # its ports are the other two's
            base.append(bare_postgres(image, db_port))
            floor_up.append(engine_floor(a, idle_image))
            cold.append(cold_up(a))
        baseline = median(base)
        warm = [warm_up(a) for _ in range(RUNS)]
        if not inv("up", f"--slot={b}").ok:
            sys.exit(f"inv up --slot={b} failed")
        status, floor = status_figures()
    finally:
        for slot in (a, b):
            inv("down", f"--slot={slot}", "--volumes")

    cold_s = median([c["returned"] for c in cold])
    warm_s = median([w["returned"] for w in warm])
    lags = [c["returned"] / c["ready"] for c in cold + warm if "ready" in c]
    print(f"machine: {os.cpu_count()} cores; db image {image}; slots {a}, {b}")
    line("bare PostgreSQL cold start (initdb), baseline", baseline, "s", None, "-")
    print(f"  {spread(base)}")
    floor_s = median(floor_up)
    line("engine floor: `compose up -d`, 9 idle containers", floor_s, "s", floor_s / baseline, "-")
    print(f"  {spread(floor_up)}; same 11 published ports, `sleep infinity`, image {idle_image}")
    line("fresh slot, cold `inv up`", cold_s, "s", cold_s / baseline, "<=1.0x")
    seen = [c["ready"] for c in cold if "ready" in c]
    seen_text = f"{median(seen):.2f} s (median of {len(seen)})" if seen else "never"
    print(f"  {spread([c['returned'] for c in cold])}; watcher saw all ready at {seen_text}")
    line("warm restart, `inv up` after `inv down`", warm_s, "s", warm_s / baseline, "<=0.6x")
    print(f"  {spread([w['returned'] for w in warm])}")
    if lags:
        lag = median(lags)
        line("gate lag, `inv up` return / all ready (median)", lag, "x", lag, "<=1.05x")
    status_s, floor_s = median(status), median(floor)
    line("`inv status` (median)", status_s * 1000, "ms", status_s / floor_s, "<=1.2x")
    print(f"  floor: `python -c 'import invoke'` + one `docker ps`, median {floor_s * 1000:.0f} ms")
    if args.ten:
        ten_slots(cold_s)


if __name__ == "__main__":
    main(sys.argv[1:])
