"""The machine-wide admission: the limit, the line's order, dead entries, Ctrl-C, the record."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import admission, upsteps
from sandbox.admission import Entry, Interval, Line, place
from sandbox.errors import Exit, SandboxError
from tests.unit.support.clock import FakeClock
from tests.unit.support.flocks import held_elsewhere

GIB = 1 << 30


@contextlib.contextmanager
def entry_elsewhere(lock_dir: Path, ticket: int, slot: int, pid: int = 4242) -> Iterator[int]:
    """A start of another process in line: its entry file, locked by an open file of its own.
    Closing it is that process dying (the kernel drops the lock)."""
    path = lock_dir / admission.SUBDIR / admission.entry_name(ticket)
    with held_elsewhere(path, f"{slot} {pid}") as fd:
        counter = lock_dir / admission.SUBDIR / "next-ticket"
        counter.write_text(f"{max(ticket, int(counter.read_text()) if counter.exists() else 0)}")
        yield fd


# ----------------------------------------------------------------------------- the limit


@pytest.mark.parametrize(
    ("cpus", "memory", "expected"),
    [
        (2, 24 * GIB, 2),  # the reference machine: one start per core
        (16, 24 * GIB, 12),  # memory holds 12 starts of 2 GiB
        (8, 3 * GIB, 1),  # little memory: one at a time
        (None, None, 1),
        (4, None, 4),
    ],
)
def test_machine_limit_from_cores_and_memory(
    cpus: int | None, memory: int | None, expected: int
) -> None:
    assert admission.machine_limit(cpus, memory) == expected


def test_the_setting_overrides_the_machine() -> None:
    assert admission.limit({"KTRDR_MAX_STARTS": "3"}) == 3
    assert admission.limit({"KTRDR_MAX_STARTS": " "}) == admission.machine_limit(
        os.cpu_count(), admission.total_memory()
    )
    for bad in ("0", "two", "-1", "1.5"):
        with pytest.raises(SandboxError, match="KTRDR_MAX_STARTS=") as err:
            admission.limit({"KTRDR_MAX_STARTS": bad})
        assert err.value.code is Exit.USAGE


# ----------------------------------------------------------------------------- the order


def test_the_k_lowest_tickets_run_the_rest_wait_in_order() -> None:
    live = [Entry(7, 3, 1), Entry(2, 1, 1), Entry(9, 4, 1), Entry(5, 2, 1)]
    assert place(2, live, 2) == admission.Place(True, 0, (2,), 2)
    assert place(5, live, 2) == admission.Place(True, 0, (1,), 2)
    assert place(7, live, 2) == admission.Place(False, 0, (1, 2), 2)
    assert place(9, live, 2) == admission.Place(False, 1, (1, 2), 2)
    # The first one ends: the next in line is admitted, the last one moves up.
    rest = [e for e in live if e.ticket != 2]
    assert place(7, rest, 2).admitted
    assert place(9, rest, 2) == admission.Place(False, 0, (2, 3), 2)


def test_the_waiting_line_says_its_place() -> None:
    where = admission.Place(False, 1, (3, 5), 2)
    assert where.describe(7) == (
        "slot 7 waits for its turn to start: number 2 in line (starting now: slot 3, 5; at "
        "most 2 at once, KTRDR_MAX_STARTS sets it)"
    )


def test_an_entry_parses_from_its_file() -> None:
    assert admission.parse_entry("q-000000000012.lock", "3 4242\n") == Entry(12, 3, 4242)
    assert admission.parse_entry("q-x.lock", "3 4242") is None
    assert admission.parse_entry("q-000000000012.lock", "") is None
    assert admission.parse_entry(".new-1-2", "3 4242") is None


# ----------------------------------------------------------------------------- the line


def test_entries_live_while_held_and_the_dead_are_swept(lock_dir: Path) -> None:
    line = Line(lock_dir / admission.SUBDIR)
    with entry_elsewhere(lock_dir, 1, slot=3):
        ticket, fd = line.join(5)
        assert ticket == 2
        assert line.live() == [Entry(1, 3, 4242), Entry(2, 5, os.getpid())]
    # The other process died: its file is swept by the next look.
    assert line.live() == [Entry(2, 5, os.getpid())]
    assert not (line.root / admission.entry_name(1)).exists()
    line.leave(ticket, fd)
    assert line.live() == []
    assert sorted(p.name for p in line.root.glob("q-*")) == []


@pytest.mark.parametrize("counter", ["", "2\n", "garbage"])
def test_a_lost_counter_never_jumps_the_starts_in_line(lock_dir: Path, counter: str) -> None:
    """The counter emptied (a kill or a full disk as it was written) or behind: the next
    ticket is still above every entry in line, and the counter is replaced whole."""
    line = Line(lock_dir / admission.SUBDIR)
    with entry_elsewhere(lock_dir, 7, slot=3):
        (line.root / "next-ticket").write_text(counter)
        ticket, fd = line.join(5)
        try:
            assert ticket == 8
            assert not place(ticket, line.live(), 1).admitted
            assert (line.root / "next-ticket").read_text() == "8\n"
            assert sorted(p.name for p in line.root.glob(".next-ticket*")) == []
        finally:
            line.leave(ticket, fd)


def test_a_start_waits_until_one_ahead_ends_and_says_so(
    lock_dir: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KTRDR_MAX_STARTS", "1")
    said: list[str] = []
    with contextlib.ExitStack() as others:
        others.enter_context(entry_elsewhere(lock_dir, 1, slot=3))
        # The start ahead ends (or dies) during the third look: the kernel drops its lock.
        clock.then(3, others.close)
        with admission.turn(8, os.environ, on_wait=said.append, sleep=clock.sleep) as turn:
            assert turn.admitted and turn.queued
            assert Line.of(os.environ).live() == [Entry(2, 8, os.getpid())]
    assert said == [
        "slot 8 waits for its turn to start: number 1 in line (starting now: slot 3; at most "
        "1 at once, KTRDR_MAX_STARTS sets it)"
    ]
    assert len(clock.slept) == 3
    events = [
        (r["event"], r["slot"]) for r in admission.read_record(Line.of(os.environ).record_path)
    ]
    assert events == [("queued", 8), ("admitted", 8), ("ended", 8)]
    assert list((lock_dir / admission.SUBDIR).glob("q-*")) == []


def test_ctrl_c_in_line_leaves_nothing_behind(
    lock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KTRDR_MAX_STARTS", "1")

    def interrupted(_: float) -> None:
        raise KeyboardInterrupt

    with entry_elsewhere(lock_dir, 1, slot=3):
        with pytest.raises(KeyboardInterrupt), admission.turn(8, os.environ, sleep=interrupted):
            pytest.fail("admitted past a start that holds the only turn")
        line = Line.of(os.environ)
        assert line.live() == [Entry(1, 3, 4242)]
    events = [(r["event"], r["slot"]) for r in admission.read_record(line.record_path)]
    assert events == [("queued", 8), ("left", 8)]


def test_ctrl_c_in_line_is_one_line_from_up(
    lock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KTRDR_MAX_STARTS", "1")

    def interrupted(_: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("time.sleep", interrupted)
    with (
        entry_elsewhere(lock_dir, 1, slot=3),
        contextlib.ExitStack() as heavy,
        pytest.raises(SandboxError, match="nothing of it was started") as err,
    ):
        upsteps.wait_turn(8, os.environ, None, heavy)
    assert err.value.code is Exit.INTERRUPTED
    assert not (lock_dir / admission.SUBDIR / admission.entry_name(2)).exists()


def test_the_record_is_trimmed_when_large(lock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission, "RECORD_MAX_BYTES", 2000)
    monkeypatch.setattr(admission, "RECORD_KEEP_LINES", 5)
    line = Line.of(os.environ)
    for n in range(40):
        line.record("queued", n, 1)
    line.trim()
    assert [r["slot"] for r in admission.read_record(line.record_path)] == [35, 36, 37, 38, 39]


# ----------------------------------------------------------------------------- the record


def test_heavy_phases_and_the_most_at_once_from_the_record() -> None:
    lines = [
        {"event": "queued", "slot": 1, "pid": 10, "at": 0.0},
        {"event": "admitted", "slot": 1, "pid": 10, "at": 0.0},
        {"event": "admitted", "slot": 2, "pid": 11, "at": 1.0},
        {"event": "ended", "slot": 1, "pid": 10, "at": 5.0},
        {"event": "admitted", "slot": 3, "pid": 12, "at": 5.0},  # as slot 1 ended
        {"event": "ended", "slot": 2, "pid": 11, "at": 6.0},
        {"event": "left", "slot": 4, "pid": 13, "at": 6.5},
        {"event": "admitted", "slot": 5, "pid": 14, "at": 7.0},  # never ended: killed
        {"event": "ended", "slot": "6", "at": 7.5},  # not a line of ours
    ]
    phases = admission.intervals(lines, alive=lambda pid: True)
    assert phases == [
        Interval(1, 10, 0.0, 5.0),
        Interval(2, 11, 1.0, 6.0),
        Interval(3, 12, 5.0, None),
        Interval(5, 14, 7.0, None),
    ]
    # At 5.0 one ended as the next began: never more than two.
    assert admission.most_at_once(phases, now=8.0) == 2
    assert admission.most_at_once([*phases, Interval(9, 99, 4.0, 4.5)], now=8.0) == 3
    assert admission.most_at_once([]) == 0


def test_a_phase_never_ended_is_closed_when_its_process_is_gone_or_started_again() -> None:
    lines = [
        {"event": "admitted", "slot": 1, "pid": 10, "at": 0.0},  # killed in its heavy phase
        {"event": "admitted", "slot": 2, "pid": 11, "at": 1.0},  # live, still starting
        {"event": "admitted", "slot": 3, "pid": 12, "at": 2.0},  # its `ended` was lost
        {"event": "admitted", "slot": 4, "pid": 13, "at": 3.0},  # past the dead one
        {"event": "ended", "slot": 4, "pid": 13, "at": 4.0},
        {"event": "queued", "slot": 3, "pid": 12, "at": 6.0},  # the same process again
        {"event": "admitted", "slot": 3, "pid": 12, "at": 6.5},
        {"event": "ended", "slot": 3, "pid": 12, "at": 7.0},
        {"event": "admitted", "slot": 5, "pid": 14, "at": 9.0},  # killed, nobody after it
    ]
    phases = admission.intervals(lines, alive=lambda pid: pid in (11, 12))
    assert phases == [
        Interval(1, 10, 0.0, 1.0),
        Interval(2, 11, 1.0, None),
        Interval(3, 12, 2.0, 6.0),
        Interval(4, 13, 3.0, 4.0),
        Interval(3, 12, 6.5, 7.0),
        Interval(5, 14, 9.0, 9.0),
    ]
    assert admission.most_at_once(phases, now=1000.0) == 3


def test_a_line_is_recorded_under_the_mutex(lock_dir: Path) -> None:
    """`trim` replaces the record under the mutex: `record` waits for it, so no line is
    appended to a file about to be replaced."""
    import threading

    line = Line(lock_dir / admission.SUBDIR)
    line.record("queued", 1, 1)
    writer = threading.Thread(target=line.record, args=("queued", 2, 1))
    with held_elsewhere(line.root / ".mutex"):
        writer.start()
        writer.join(0.3)
        assert writer.is_alive()
        assert [r["slot"] for r in admission.read_record(line.record_path)] == [1]
    writer.join(5)
    assert [r["slot"] for r in admission.read_record(line.record_path)] == [1, 2]
