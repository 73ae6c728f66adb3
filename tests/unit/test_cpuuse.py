"""A container's CPU from the kernel's cgroup accounting, on a fake cgroup tree."""

from __future__ import annotations

from pathlib import Path

from sandbox import cpuuse

ID = "ca373c8abd4e" + "0" * 52


def test_cgroup_v1_as_debians_engine_sets_it_up(tmp_path: Path) -> None:
    usage = tmp_path / "cpuacct" / "docker" / ID / "cpuacct.usage"
    usage.parent.mkdir(parents=True)
    usage.write_text("4250000000\n")
    assert cpuuse.cpu_seconds(ID, tmp_path) == 4.25


def test_cgroup_v2_under_the_systemd_driver(tmp_path: Path) -> None:
    stat = tmp_path / "system.slice" / f"docker-{ID}.scope" / "cpu.stat"
    stat.parent.mkdir(parents=True)
    stat.write_text("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    assert cpuuse.cpu_seconds(ID, tmp_path) == 1.5


def test_not_accounted_here_is_none(tmp_path: Path) -> None:
    assert cpuuse.cpu_seconds(ID, tmp_path) is None
    assert cpuuse.total([ID], tmp_path) is None
    assert cpuuse.total([], tmp_path) == 0.0
    assert cpuuse.parse("garbage", "ns") is None
    assert cpuuse.parse("user_usec 3\n", "stat") is None


def test_the_machine_is_starved_from_the_kernels_cpu_pressure_else_the_load(
    tmp_path: Path,
) -> None:
    figures = tmp_path / "cpu"
    figures.write_text(
        "some avg10=72.50 avg60=40.00 avg300=10.00 total=123\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    busy_load = lambda: (9.0, 9.0, 9.0)  # noqa: E731
    idle_load = lambda: (0.1, 0.1, 0.1)  # noqa: E731
    assert cpuuse.starved(figures, idle_load, cores=2)  # the pressure speaks, not the load
    figures.write_text("some avg10=3.10 avg60=1.00 avg300=0.50 total=123\n")
    assert not cpuuse.starved(figures, busy_load, cores=2)
    absent = tmp_path / "absent"
    assert cpuuse.starved(absent, lambda: (2.0, 0.0, 0.0), cores=2)
    assert not cpuuse.starved(absent, lambda: (1.9, 9.0, 9.0), cores=2)
    assert cpuuse.pressure("garbage") is None
