"""Input hardening: numbers are ASCII digits of bounded length everywhere.

Each case is an input a user (or a typo, or a copy from a web page) can produce: a slot of
5000 digits, `8008²` or full-width digits in an env file, Unicode digits in a timeout. The
library must answer with a `SandboxError` (one line, what is wrong and what to do); the CLI
with one `error:` line, a non-zero exit and no traceback. CLI cases run with an engine address
that does not exist, so nothing here can reach Docker even if a check is missing, and must not
start any command at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import ROOT, compose, envfiles, slots
from sandbox.errors import Exit, SandboxError
from tests.unit.support.cli import Inv

HUGE = "9" * 5000  # past Python's 4300-digit int() limit: int(HUGE) raises ValueError
# Characters for which str.isdigit() is True but that are not ASCII digits.
NOT_ASCII = {
    "superscript": "8008\u00b2",  # 8008²: isdigit() True, int() raises
    "full-width": "\uff18\uff10\uff10\uff18",  # full-width 8008: int() accepts it, Compose does not
    "arabic-indic": "\u0668\u0660\u0660\u0668",  # Arabic-Indic 8008: int() accepts it
}
MAX_LINE = 300  # an error line that echoes 5000 digits back is not "one clear line"


def one_line(exc: SandboxError) -> str:
    text = str(exc)
    assert "\n" not in text, text
    assert len(text) <= MAX_LINE, f"{len(text)} characters: {text[:120]}..."
    return text


# --- slots.parse_slot --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [HUGE, "-" + HUGE, "0" * 5000 + "1", *NOT_ASCII.values(), "\uff15", "1 2", "+1", "1.0"],
    ids=["huge", "huge-negative", "padded", *NOT_ASCII, "full-width-5", "space", "plus", "float"],
)
def test_parse_slot_refuses_in_one_line(value: str) -> None:
    with pytest.raises(SandboxError) as caught:
        slots.parse_slot(value)
    assert caught.value.code is Exit.USAGE
    one_line(caught.value)


def test_parse_slot_still_takes_plain_digits() -> None:
    assert slots.parse_slot(" 7 ") == 7


# --- env files ----------------------------------------------------------------------------


def slot_values(slot: int = 7, **changes: str) -> dict[str, str]:
    values = {k: v for k, v in envfiles.read(envfiles.env_path(ROOT, slot)).items()}
    values.update(changes)
    return values


@pytest.mark.parametrize("value", [*NOT_ASCII.values(), HUGE], ids=[*NOT_ASCII, "huge"])
def test_check_reports_a_port_that_is_not_ascii_digits(value: str) -> None:
    problems = envfiles.check(slot_values(KTRDR_API_PORT=value), "env/slot-7.env", 7)
    assert [p.variable for p in problems] == ["KTRDR_API_PORT"]
    assert len(str(problems[0])) <= MAX_LINE


@pytest.mark.parametrize("value", [*NOT_ASCII.values(), HUGE], ids=[*NOT_ASCII, "huge"])
def test_check_reports_a_slot_number_that_is_not_ascii_digits(value: str) -> None:
    problems = envfiles.check(slot_values(SLOT_NUMBER=value), "env/slot-7.env", 7)
    assert "SLOT_NUMBER" in [p.variable for p in problems]


@pytest.mark.parametrize("value", [*NOT_ASCII.values(), HUGE], ids=[*NOT_ASCII, "huge"])
def test_collisions_skip_ports_that_are_not_ascii_digits(value: str) -> None:
    files = [("a", 1, {"KTRDR_API_PORT": value}), ("b", 2, {"KTRDR_API_PORT": "8008"})]
    # Reported by check(); here they must neither raise nor count as port 8008.
    assert envfiles.check_collisions(files) == []


def write_root(tmp_path: Path, slot: int, **changes: str) -> Path:
    (tmp_path / "env").mkdir()
    lines = [f"{k}={v}" for k, v in slot_values(slot, **changes).items()]
    envfiles.env_path(tmp_path, slot).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("value", [*NOT_ASCII.values(), HUGE], ids=[*NOT_ASCII, "huge"])
def test_loading_a_slot_with_a_bad_port_refuses(tmp_path: Path, value: str) -> None:
    root = write_root(tmp_path, 7, KTRDR_DB_PORT=value)
    with pytest.raises(SandboxError) as caught:
        compose.load_target(root, 7)
    assert caught.value.code is Exit.BAD_ENV
    assert "KTRDR_DB_PORT" in one_line(caught.value)


# --- the CLI ------------------------------------------------------------------------------


CLI_CASES = {
    "up-slot-huge": (["up", f"--slot={HUGE}"], "slot"),
    "down-slot-huge": (["down", f"--slot={HUGE}"], "slot"),
    "status-slot-huge": (["status", f"--slot={HUGE}"], "slot"),
    "env-slot-huge": (["env", f"--slot={HUGE}"], "slot"),
    "verify-slot-huge": (["verify", f"--slot={HUGE}"], "slot"),
    "up-slot-full-width": (["up", "--slot=\uff17"], "slot"),
    "timeout-full-width": (["up", "--slot=7", f"--timeout={NOT_ASCII['full-width']}"], "timeout"),
    "timeout-arabic-indic": (
        ["up", "--slot=7", f"--timeout={NOT_ASCII['arabic-indic']}"],
        "timeout",
    ),
    "timeout-underscore": (["up", "--slot=7", "--timeout=1_0"], "timeout"),
    "timeout-huge": (["up", "--slot=7", f"--timeout={HUGE}"], "timeout"),
    "tail-huge": (["logs", "--slot=7", f"--tail={HUGE}"], "tail"),
    "tail-full-width": (["logs", "--slot=7", f"--tail={NOT_ASCII['full-width']}"], "tail"),
}


@pytest.mark.parametrize("args,word", list(CLI_CASES.values()), ids=list(CLI_CASES))
def test_cli_refuses_in_one_line(inv: Inv, args: list[str], word: str) -> None:
    """Through the `inv` program in this process (the `inv` fixture: no engine, HOME and
    locks in tmp); test_cli checks once that a real process exits the same way."""
    result = inv(*args)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]
    assert result.code == Exit.USAGE, (result.code, result.stderr[-500:])
    assert result.commands == [], "input is checked before anything is run"
    lines = result.lines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and word in lines[0], lines[0][:200]
    assert len(lines[0]) <= MAX_LINE
