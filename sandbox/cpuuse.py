"""How much CPU a container has used, from the kernel's own accounting of its cgroup.

Read from the cgroup filesystem of this machine, so only for containers of an engine on this
machine (Linux; cgroup v1 as Debian's engine 20.10 sets it up, or v2). Elsewhere (Docker
Desktop's VM, a remote engine) the answer is None and callers say less, never something wrong.
Reading a file costs microseconds: no process, nothing on the engine's CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from sandbox.settings import GATE_STARVED_PRESSURE

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_PRESSURE = Path("/proc/pressure/cpu")


def candidates(container_id: str, root: Path = CGROUP_ROOT) -> list[tuple[Path, str]]:
    """Where a container's CPU accounting may be, with its format: cgroup v1 `cpuacct.usage`
    (nanoseconds), or v2 `cpu.stat` (`usage_usec`), under the cgroupfs or the systemd
    driver's names."""
    return [
        (root / "cpuacct" / "docker" / container_id / "cpuacct.usage", "ns"),
        (root / "cpu,cpuacct" / "docker" / container_id / "cpuacct.usage", "ns"),
        (
            root / "cpuacct" / "system.slice" / f"docker-{container_id}.scope" / "cpuacct.usage",
            "ns",
        ),
        (root / "system.slice" / f"docker-{container_id}.scope" / "cpu.stat", "stat"),
        (root / "docker" / container_id / "cpu.stat", "stat"),
    ]


def parse(text: str, kind: str) -> float | None:
    """Seconds of CPU from one accounting file's text."""
    if kind == "ns":
        value = text.strip()
        return int(value) / 1e9 if value.isdigit() else None
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "usage_usec" and words[1].isdigit():
            return int(words[1]) / 1e6
    return None


def cpu_seconds(container_id: str, root: Path = CGROUP_ROOT) -> float | None:
    """CPU-seconds the container's processes have used since it started; None when this
    machine does not account for it (not a local Linux engine, or the container is gone)."""
    for path, kind in candidates(container_id, root):
        try:
            text = path.read_text()
        except OSError:
            continue
        seconds = parse(text, kind)
        if seconds is not None:
            return seconds
    return None


def total(container_ids: Iterable[str], root: Path = CGROUP_ROOT) -> float | None:
    """The CPU-seconds of several containers together; None when any is not accounted."""
    found = [cpu_seconds(c, root) for c in container_ids]
    if any(s is None for s in found):
        return None
    return sum(s for s in found if s is not None)


def pressure(text: str) -> float | None:
    """The `some avg10` figure of /proc/pressure/cpu: the share (%) of the last 10 s in which
    at least one task waited for a core."""
    for line in text.splitlines():
        words = line.split()
        if words and words[0] == "some":
            for word in words[1:]:
                key, _, value = word.partition("=")
                if key == "avg10":
                    try:
                        return float(value)
                    except ValueError:
                        return None
    return None


def starved(
    pressure_file: Path = CPU_PRESSURE,
    loadavg: Callable[[], tuple[float, float, float]] = os.getloadavg,
    cores: int | None = None,
) -> bool:
    """Whether this machine is short of CPU now: tasks waited for a core at least
    GATE_STARVED_PRESSURE % of the last 10 s (the kernel's pressure figure), or, where the
    kernel has none, the 1-minute load average is at least the number of cores."""
    try:
        figure = pressure(pressure_file.read_text())
    except OSError:
        figure = None
    if figure is not None:
        return figure >= GATE_STARVED_PRESSURE
    try:
        return loadavg()[0] >= (cores or os.cpu_count() or 1)
    except OSError:
        return False
