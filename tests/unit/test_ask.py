"""The one "ask, or --yes" rule, and each destructive step that goes through it."""

from __future__ import annotations

import pytest

from sandbox import ask
from sandbox.cli import lifecycle
from sandbox.cli import snapshots as snapshot_tasks
from sandbox.errors import Exit, SandboxError


def never(prompt: str) -> str:
    raise AssertionError(f"asked {prompt!r}")


def test_yes_goes_ahead_without_asking_terminal_or_not() -> None:
    assert ask.confirm("wipe?", True, "refused", interactive=False, ask=never)
    assert ask.confirm("wipe?", True, "refused", interactive=True, ask=never)


def test_without_a_terminal_or_yes_it_refuses_in_one_line_naming_yes() -> None:
    with pytest.raises(SandboxError) as caught:
        ask.confirm("wipe?", False, "would wipe: re-run with --yes", interactive=False, ask=never)
    assert caught.value.code == Exit.USAGE
    assert str(caught.value) == "would wipe: re-run with --yes"


@pytest.mark.parametrize(
    "answer,agreed", [("y\n", True), (" YES ", True), ("", False), ("no", False), ("yy", False)]
)
def test_a_terminal_is_asked_and_only_y_or_yes_agrees(answer: str, agreed: bool) -> None:
    asked: list[str] = []

    def read(prompt: str) -> str:
        asked.append(prompt)
        return answer

    assert ask.confirm("wipe?", False, "refused", interactive=True, ask=read) is agreed
    assert asked == ["wipe? [y/N] "]


def test_the_process_stdin_decides_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    with pytest.raises(SandboxError):
        ask.confirm("wipe?", False, "refused", ask=never)


def test_fresh_and_restore_refuse_scripts_without_yes(monkeypatch: pytest.MonkeyPatch) -> None:
    """`up --fresh`, `restore` and `clone` (and `down --all`, in test_teardown) ask alike."""
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    with pytest.raises(SandboxError, match="add --yes") as fresh:
        lifecycle._confirm_fresh(False, 4)
    assert fresh.value.code == Exit.USAGE and "slot 4's database" in str(fresh.value)
    assert lifecycle._confirm_fresh(True, 4)
    replace = snapshot_tasks._confirm(False, 3)
    with pytest.raises(SandboxError, match="nothing done: slot 3's") as restore:
        replace("slot 3's database has 2 table(s): replace it?")
    assert restore.value.code == Exit.USAGE and "--yes" in str(restore.value)
    assert snapshot_tasks._confirm(True, 3)("replace it?")
