"""The reloader: snapshots, change detection and a real restart of a child process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import reloader


def test_changed_names_added_removed_and_modified_files() -> None:
    before = {"a.py": 1.0, "b.py": 1.0, "c.py": 1.0}
    after = {"a.py": 1.0, "b.py": 2.0, "d.py": 1.0}
    assert reloader.changed(before, after) == ["b.py", "c.py", "d.py"]
    assert reloader.changed(after, after) == []


def test_snapshot_sees_only_python_files(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "notes.txt").write_text("no\n")
    assert list(reloader.snapshot([tmp_path])) == [str(tmp_path / "pkg" / "m.py")]


@pytest.mark.parametrize("argv", [[], ["dir"], ["--", "cmd"], ["dir", "--"]])
def test_parse_refuses_incomplete_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit, match="usage"):
        reloader.parse(argv)


def test_an_edit_restarts_the_command(tmp_path: Path) -> None:
    watched = tmp_path / "src"
    watched.mkdir()
    module = watched / "app.py"
    module.write_text("VERSION = 1\n")
    starts = tmp_path / "starts.log"
    child = f"import sys; open({str(starts)!r}, 'a').write('start\\n'); import time; time.sleep(60)"
    proc = subprocess.Popen(
        [sys.executable, "-m", "reloader", str(watched), "--", sys.executable, "-c", child],
        env={**os.environ, "PYTHONPATH": str(Path(reloader.__file__).parent)},
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: starts.exists() and starts.read_text().count("start") == 1)
        time.sleep(0.1)  # a different mtime, whatever the file system's resolution
        module.write_text("VERSION = 2\n")
        os.utime(module, (time.time() + 5, time.time() + 5))
        _wait_for(lambda: starts.read_text().count("start") == 2)
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) is not None


def _wait_for(condition: object, seconds: float = 10.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")
