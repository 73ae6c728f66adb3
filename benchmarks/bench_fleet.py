"""A fleet of real-app slots requested at once, as agents request them: how long until each is
ready, what the starts cost against what the machine can do, and what the ready slots cost
while they idle. A benchmark, not a timed test: it prints figures against targets.

    nox -s bench-fleet                                  # ten fixture slots (1-10) at once
    .venv/bin/python benchmarks/bench_fleet.py --count=3 --slots=0,5,6 --max-starts=1
    .venv/bin/python benchmarks/bench_fleet.py --source=~/src/ktrdr   # the real KTRDR, by hand
    .venv/bin/python benchmarks/bench_fleet.py --source='~/src/ktrdr-{slot}'  # one per slot

Each slot is its own `inv up --slot=N --source=SRC` process, all started together; the
machine-wide admission (sandbox/admission.py) decides how many start at once. Per slot: the
time from the request to `inv up` returning ready, and the CPU-seconds its containers used
until then (cgroup accounting, read when its `up` returns). The machine's limit is the sum of
those CPU-seconds over the cores: no schedule finishes sooner. Target: the total within 1.5x
of it. Then, with every slot ready and settled, the CPU all of them use over a minute of
idling (target: ten slots within 10% of one core together), and the zombie processes left
under their containers.

It refuses slots that have containers, and removes what it started (volumes included) at the
end unless `--keep`. CPU accounting needs a local Linux engine (cgroup v1 or v2).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox import admission, cpuuse, docker  # noqa: E402
from sandbox.runner import Result, run  # noqa: E402

INV = str(Path(sys.executable).parent / "inv")
FIXTURE = ROOT / "containers" / "fixtures" / "ktrdr-fixture"
RATIO_TARGET = 1.5
# Ten idle slots within 10% of one core together: 1% of a core per slot.
IDLE_TARGET_PER_SLOT = 0.01
SETTLE_SECONDS = 30.0  # after the last slot is ready: its first healthchecks and scrapes pass
BASELINE_SECONDS = 5.0  # the machine's load before the fleet, subtracted from its CPU


@dataclass
class Start:
    slot: int
    result: Result
    seconds: float  # from the request to `inv up` returning
    cpu: float | None  # CPU-seconds of the slot's containers when `up` returned


def inv(*args: str, env: dict[str, str] | None = None, timeout: float = 1800) -> Result:
    return run(
        [INV, "--search-root", str(ROOT), *args], env=env or dict(os.environ), timeout=timeout
    )


def slot_containers(slot: int) -> list[docker.Container]:
    return [c for c in docker.sandbox_containers() if c.slot == slot and c.running]


def slot_cpu(slot: int) -> float | None:
    return cpuuse.total(c.id for c in slot_containers(slot))


def refuse_busy(slot_list: Sequence[int]) -> None:
    taken = {c.slot for c in docker.sandbox_containers()}
    busy = sorted(s for s in slot_list if s in taken)
    if busy:
        sys.exit(f"slots {busy} have containers: take them down first or pick others (--slots)")


def start_one(slot: int, source: str, env: dict[str, str], t0: float) -> Start:
    # "{slot}" in --source: one checkout per slot, as branches are (`.../copy-{slot}`).
    result = inv("up", f"--slot={slot}", f"--source={source.replace('{slot}', str(slot))}", env=env)
    seconds = time.monotonic() - t0
    return Start(slot, result, seconds, slot_cpu(slot) if result.ok else None)


def machine_busy() -> float:
    """CPU-seconds this machine has been busy since boot, every core together (/proc/stat:
    user, nice, system, irq, softirq, steal; not idle or iowait)."""
    words = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(w) for w in words]
    busy = sum(ticks[i] for i in (0, 1, 2, 5, 6, 7) if i < len(ticks))
    return busy / os.sysconf("SC_CLK_TCK")


def zombies_under(slot_list: Sequence[int]) -> int:
    """Zombie processes whose parent runs in one of the slots' containers (zombies have left
    their cgroup, so `docker top` does not list them: they are found by parent on the host)."""
    parents: set[int] = set()
    for slot in slot_list:
        for container in slot_containers(slot):
            top = run(["docker", "top", container.id, "-eo", "pid"], env=dict(os.environ))
            parents |= {int(w) for w in top.stdout.split() if w.isdigit()}
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] == "Z" and int(fields[1]) in parents:
            count += 1
    return count


def container_cpu(slot_list: Sequence[int]) -> dict[tuple[int, str], float]:
    """(slot, service) -> CPU-seconds so far, for every accounted running container."""
    found = {}
    for slot in slot_list:
        for c in slot_containers(slot):
            seconds = cpuuse.cpu_seconds(c.id)
            if seconds is not None:
                found[(slot, c.service)] = seconds
    return found


def idle_cpu(slot_list: Sequence[int], seconds: float) -> dict[tuple[int, str], float]:
    """CPU-seconds each slot's containers used over `seconds` of idling."""
    before = container_cpu(slot_list)
    time.sleep(seconds)
    after = container_cpu(slot_list)
    return {key: after[key] - before[key] for key in after if key in before}


def admission_report(env: dict[str, str], since: float) -> str:
    """The most starts in their heavy phase at once, from the record's lines of this run (the
    record also holds every earlier start on this machine)."""
    lines = admission.read_record(admission.Line.of(env).record_path)
    ours = [line for line in lines if float(str(line.get("at", 0))) >= since]
    phases = admission.intervals(ours)
    return f"at most {admission.most_at_once(phases)} slots in their heavy phase at once"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10, help="how many slots (default 10)")
    parser.add_argument("--slots", help="which slots, comma-separated (default 1..COUNT)")
    parser.add_argument(
        "--source",
        default=str(FIXTURE),
        help="the app checkout (default: the fixture); `{slot}` in it is the slot's number, "
        "for one checkout per slot",
    )
    parser.add_argument("--max-starts", type=int, help="KTRDR_MAX_STARTS (default: the machine's)")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="idle window (default 60)")
    parser.add_argument("--keep", action="store_true", help="leave the slots running")
    args = parser.parse_args(argv)
    slot_list = (
        [int(s) for s in args.slots.split(",")] if args.slots else list(range(1, args.count + 1))
    )
    cores = os.cpu_count() or 1
    env = dict(os.environ)
    if args.max_starts:
        env[admission.MAX_STARTS_VARIABLE] = str(args.max_starts)
    refuse_busy(slot_list)
    print(
        f"{len(slot_list)} slots {slot_list} of {args.source}, requested at once; {cores} cores; "
        f"at most {admission.limit(env)} starts at once"
    )
    try:
        busy0 = machine_busy()
        time.sleep(BASELINE_SECONDS)
        busy1 = machine_busy()
        background = (busy1 - busy0) / BASELINE_SECONDS
        t0, since = time.monotonic(), time.time()
        with futures.ThreadPoolExecutor(len(slot_list)) as pool:
            jobs = [pool.submit(start_one, s, args.source, env, t0) for s in slot_list]
            starts = [job.result() for job in jobs]
        total = max(s.seconds for s in starts)
        fleet_cpu = machine_busy() - busy1 - background * total
        print(f"\n{'slot':>4}  {'ready after':>11}  {'CPU-s to ready':>14}  result")
        for s in sorted(starts, key=lambda s: s.seconds):
            cpu = f"{s.cpu:.1f}" if s.cpu is not None else "n/a"
            verdict = "ready" if s.result.ok else f"FAILED (exit {s.result.returncode})"
            print(f"{s.slot:>4}  {s.seconds:>10.1f}s  {cpu:>14}  {verdict}")
        ready = [s for s in starts if s.result.ok]
        at_once = admission_report(env, since)
        print(f"\nall ready: {len(ready)}/{len(starts)}; total {total:.1f} s; {at_once}")
        cpus = [s.cpu for s in ready if s.cpu is not None]
        if cpus and len(cpus) == len(starts):
            limit = sum(cpus) / cores
            print(
                f"CPU-seconds per slot start, its containers (cgroup): mean "
                f"{sum(cpus) / len(cpus):.1f} (min {min(cpus):.1f}, max {max(cpus):.1f}); "
                f"limit {limit:.1f} s, total / limit = {total / limit:.2f}"
            )
        if background > 0.25 * cores:
            print(
                f"warning: the machine was {background:.2f} cores busy before the fleet started: "
                "the whole-machine figures below include other work; run it on a quiet machine"
            )
        per_slot = max(fleet_cpu, 0.0) / len(starts)
        limit = per_slot * len(starts) / cores
        ratio = total / limit if limit > 0 else float("nan")
        mark = "ok" if ratio <= RATIO_TARGET else "OVER"
        print(
            f"CPU-seconds per slot start, whole machine (engine, Compose and inv included; "
            f"the {background:.2f} cores busy before subtracted): {per_slot:.1f}"
        )
        print(
            f"machine's limit ({len(starts)} x {per_slot:.1f} CPU-s / {cores} cores): "
            f"{limit:.1f} s; total / limit = {ratio:.2f} (target <= {RATIO_TARGET}) {mark}"
        )
        for s in starts:
            if not s.result.ok:
                print(f"\nslot {s.slot} said:\n{s.result.tail(15)}")
        if not ready:
            return 1
        time.sleep(SETTLE_SECONDS)
        idle = idle_cpu([s.slot for s in ready], args.idle_seconds)
        together = sum(idle.values()) / args.idle_seconds
        idle_slots = sorted({slot for slot, _ in idle})
        target = IDLE_TARGET_PER_SLOT * len(idle_slots)
        mark = "ok" if together <= target else "OVER"
        print(
            f"\nidle, {len(idle_slots)} ready slots over {args.idle_seconds:.0f} s: "
            f"{100 * together:.1f}% of one core together (target <= {100 * target:.0f}%) {mark}"
        )
        per_minute = 60 / args.idle_seconds
        for slot in idle_slots:
            used = sum(v for (s, _), v in idle.items() if s == slot)
            print(f"  slot {slot}: {per_minute * used:.2f} CPU-s a minute")
        print("  by service, CPU-s a minute per slot (mean):")
        for service in sorted({name for _, name in idle}):
            values = [v for (_, name), v in idle.items() if name == service]
            print(f"    {service:<18} {per_minute * sum(values) / len(values):.3f}")
        print(f"zombie processes under the slots' containers: {zombies_under(idle_slots)}")
        return 0 if len(ready) == len(starts) else 1
    finally:
        if not args.keep:
            for slot in slot_list:
                inv("down", f"--slot={slot}", "--volumes", timeout=600)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
