"""The per-slot lock: exclusive per slot across processes, free between slots, always released."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from sandbox import ROOT
from sandbox.errors import Exit, SandboxError
from sandbox.lock import busy_message, default_lock_dir, lock_path, slot_lock
from sandbox.runner import Result, run
from tests.unit.support.flocks import held_elsewhere, is_free

# Another process tries the lock once and prints the outcome: "ok" or "<code> <message>".
CHILD = """
import sys
from pathlib import Path
from sandbox.errors import SandboxError
from sandbox.lock import slot_lock
try:
    with slot_lock(int(sys.argv[1]), wait=float(sys.argv[2])):
        print("ok")
except SandboxError as exc:
    print(int(exc.code), exc)
"""


def other_process(slot: int, lock_dir: Path, wait: float = 0.0) -> str:
    env = {**os.environ, "KTRDR_LOCK_DIR": str(lock_dir), "PYTHONPATH": str(ROOT)}
    result: Result = run([sys.executable, "-c", CHILD, str(slot), str(wait)], env=env, timeout=60)
    assert result.ok, result.tail()
    return result.stdout.strip()


def test_lock_dir_from_environment(tmp_path: Path) -> None:
    assert default_lock_dir({"KTRDR_LOCK_DIR": str(tmp_path)}) == tmp_path
    assert default_lock_dir({}) == Path.home() / ".ktrdr" / "locks"
    assert default_lock_dir({"KTRDR_LOCK_DIR": ""}) == Path.home() / ".ktrdr" / "locks"
    assert lock_path(3, tmp_path) == tmp_path / "slot-3.lock"


def test_lock_dir_env_var_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRDR_LOCK_DIR", str(tmp_path / "locks"))
    with slot_lock(4):
        assert not is_free(tmp_path / "locks" / "slot-4.lock")


def test_busy_message() -> None:
    assert busy_message(3, 4242) == (
        "slot 3 is busy: another `inv` command (pid 4242) is working on it; wait for it or retry"
    )
    assert busy_message(3, None) == (
        "slot 3 is busy: another `inv` command is working on it; wait for it or retry"
    )


def test_held_lock_names_its_holder_and_is_released(tmp_path: Path) -> None:
    path = tmp_path / "slot-2.lock"
    with slot_lock(2, lock_dir=tmp_path):
        assert path.read_text() == f"{os.getpid()}\n"
        assert not is_free(path)
    assert is_free(path)
    assert path.read_text() == ""  # no pid left behind to name the wrong process


def test_released_on_exception(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), slot_lock(1, lock_dir=tmp_path):
        raise RuntimeError("compose up failed")
    assert is_free(tmp_path / "slot-1.lock")


def test_another_process_is_refused_then_admitted(tmp_path: Path) -> None:
    with slot_lock(1, lock_dir=tmp_path):
        refused = other_process(1, tmp_path)
        assert refused == f"{int(Exit.LOCKED)} {busy_message(1, os.getpid())}"
        assert other_process(2, tmp_path) == "ok"  # another slot is not held up
    assert other_process(1, tmp_path) == "ok"


def test_refused_here_while_another_process_holds_it(tmp_path: Path) -> None:
    with (
        held_elsewhere(tmp_path / "slot-5.lock"),
        pytest.raises(SandboxError) as err,
        slot_lock(5, lock_dir=tmp_path),
    ):
        pytest.fail("acquired a lock held elsewhere")
    assert err.value.code is Exit.LOCKED
    assert err.value.message == busy_message(5, 4242)
    assert (tmp_path / "slot-5.lock").read_text() == "4242\n"  # the holder's pid untouched


def test_waits_for_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "slot-6.lock"
    acquired = threading.Event()

    def hold_briefly() -> None:
        with held_elsewhere(path):
            acquired.set()
            time.sleep(0.4)

    holder = threading.Thread(target=hold_briefly)
    holder.start()
    assert acquired.wait(5)
    started = time.monotonic()
    with pytest.raises(SandboxError), slot_lock(6, wait=0.15, lock_dir=tmp_path):
        pass
    assert 0.1 <= time.monotonic() - started < 0.35
    with slot_lock(6, wait=10, lock_dir=tmp_path):
        assert time.monotonic() - started >= 0.3
    holder.join()


def test_reentrant_in_one_process(tmp_path: Path) -> None:
    with slot_lock(7, lock_dir=tmp_path):
        with slot_lock(7, lock_dir=tmp_path):
            pass
        assert not is_free(tmp_path / "slot-7.lock")  # the inner exit did not release it
        assert other_process(7, tmp_path).startswith(f"{int(Exit.LOCKED)} slot 7 is busy")
    assert is_free(tmp_path / "slot-7.lock")


def test_unusable_lock_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SandboxError) as err, slot_lock(1, lock_dir=tmp_path / "file"):
        pass
    assert err.value.code is Exit.LOCKED
    assert "set KTRDR_LOCK_DIR to a writable directory" in err.value.message


def test_a_waiting_command_is_told_once(tmp_path: Path) -> None:
    heard: list[str] = []
    with (
        held_elsewhere(lock_path(4, tmp_path)),
        pytest.raises(SandboxError),
        slot_lock(4, lock_dir=tmp_path, wait=0.3, on_busy=heard.append),
    ):
        pass
    assert heard == ["slot 4 is busy: another `inv` command (pid 4242); waiting up to 0s for it"]
