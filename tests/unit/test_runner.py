"""The one subprocess door: `run` returns results and raises only when asked (`check=`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from sandbox import runner
from sandbox.errors import Exit, SandboxError
from sandbox.runner import Result


def test_run_returns_a_failed_result_without_check() -> None:
    result = runner.run([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert not result.ok and result.returncode == 3


def test_check_raises_with_the_commands_last_lines() -> None:
    script = "import sys; print('\\n'.join(map(str, range(30)))); sys.exit('boom')"
    with pytest.raises(SandboxError) as caught:
        runner.run([sys.executable, "-c", script], check="it failed: fix it")
    assert str(caught.value) == "it failed: fix it"
    assert caught.value.code is Exit.COMMAND
    # stderr first, then stdout; only the last DETAIL_LINES of the two.
    assert caught.value.details.splitlines() == [str(n) for n in range(10, 30)]


def test_check_passes_a_success_through_and_takes_a_code() -> None:
    ok = Result(("true",), 0, "fine\n")
    assert runner.check_result(ok, "never raised") is ok
    with pytest.raises(SandboxError) as caught:
        runner.check_result(Result(("false",), 1), "no engine", Exit.NO_ENGINE)
    assert caught.value.code is Exit.NO_ENGINE


def test_a_missing_program_is_a_result_or_a_checked_error() -> None:
    assert runner.run(["/nonexistent/program"]).returncode == 127
    with pytest.raises(SandboxError, match="missing"):
        runner.run(["/nonexistent/program"], check="missing")


def test_stdin_is_a_file_read_byte_for_byte(tmp_path: Path) -> None:
    """The real `execute` (no fake): a tar stream reaches the command unchanged."""
    data = bytes(range(256)) * 64
    (tmp_path / "stream").write_bytes(data)
    result = runner.run(["wc", "-c"], stdin=tmp_path / "stream", timeout=30)
    assert result.ok and result.stdout.strip() == str(len(data))


def test_a_captured_command_never_reads_this_processs_stdin() -> None:
    # Under `inv mcp` stdin is the protocol's channel: a child must see end-of-file at once.
    reader = [sys.executable, "-c", "import sys; print(repr(sys.stdin.read()))"]
    assert runner.run(reader, env=dict(os.environ), timeout=20).stdout.strip() == "''"
    fed = runner.run(reader, env=dict(os.environ), timeout=20, input_text="given")
    assert fed.stdout.strip() == "'given'"
