"""What the renderer prints: plain lines when stdout is not a terminal, tables when it is."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from io import StringIO
from typing import Any

from rich.console import Console

from sandbox import ROOT, preflight, slots, status
from sandbox.checks import CheckResult, GateResult, State
from sandbox.runner import run
from sandbox.stack import UpResult
from sandbox.status import SlotStatus
from sandbox.ui import render
from sandbox.ui.render import PlainRenderer, Renderer
from sandbox.ui.richrender import RichRenderer
from sandbox.verify import VerifyCheck, VerifyReport


def plain() -> tuple[Renderer, StringIO]:
    buffer = StringIO()
    return PlainRenderer(buffer), buffer


def terminal() -> tuple[Renderer, StringIO]:
    buffer = StringIO()
    return RichRenderer(Console(file=buffer, force_terminal=True, width=140)), buffer


def waiting(name: str, service: str = "") -> CheckResult:
    return CheckResult(name, name.title(), State.WAITING, "waiting", None, service or name)


CHECKS = [waiting("database", "db"), waiting("backend"), waiting("grafana")]
URLS = {"Backend API": "http://127.0.0.1:8001/api/v1", "Grafana": "http://127.0.0.1:3001"}


def test_plain_gate_progress_prints_one_line_per_outcome() -> None:
    out, buffer = plain()
    passed = replace(CHECKS[1], state=State.PASSED, detail="HTTP 200", elapsed=3.21)
    failed = replace(CHECKS[2], state=State.FAILED, detail="HTTP 503: starting")
    with out.gate_progress(1) as update:
        update(CHECKS)
        update([CHECKS[0], passed, CHECKS[2]])
        update([CHECKS[0], passed, CHECKS[2]])  # nothing new: nothing printed
        update([CHECKS[0], passed, failed])
    assert buffer.getvalue().splitlines() == [
        "gate: slot 1: waiting for database, backend, grafana",
        "gate: backend passed after 3.2s",
        "gate: grafana FAILED: HTTP 503: starting",
    ]


def test_plain_gate_summary_pass_lists_urls() -> None:
    out, buffer = plain()
    checks = [replace(c, state=State.PASSED, elapsed=1.0) for c in CHECKS]
    out.gate_summary(GateResult(1, True, checks, 14.25, URLS))
    assert buffer.getvalue().splitlines() == [
        "gate: slot 1 is ready: all 3 checks passed in 14.2s",
        "  Backend API  http://127.0.0.1:8001/api/v1",
        "  Grafana      http://127.0.0.1:3001",
    ]


def test_plain_gate_summary_failure_shows_checks_and_log_tails() -> None:
    out, buffer = plain()
    checks = [
        replace(CHECKS[0], state=State.FAILED, detail="container exited (Exited (1))"),
        replace(CHECKS[1], state=State.PASSED, elapsed=2.0),
        replace(CHECKS[2], state=State.FAILED, detail="connection refused"),
    ]
    logs = {"db": "db-1 | FATAL: [bold]no space[/bold]\ndb-1 | exiting", "grafana": "gf | ok"}
    out.gate_summary(GateResult(2, False, checks, 180.0, URLS), logs)
    lines = buffer.getvalue().splitlines()
    assert lines == [
        "gate: slot 2 is not ready after 180.0s: 2 of 3 checks failed",
        "  database: container exited (Exited (1))",
        "  grafana: connection refused",
        "--- db: last log lines ---",
        "db-1 | FATAL: [bold]no space[/bold]",  # verbatim: log text is never markup
        "db-1 | exiting",
        "--- grafana: last log lines ---",
        "gf | ok",
    ]


def test_up_result_reports_compose_time_then_gate() -> None:
    out, buffer = plain()
    checks = [replace(c, state=State.PASSED, elapsed=1.0) for c in CHECKS]
    checked = preflight.Preflight(compose=[], steps=[], running=[])
    out.up_result(UpResult(checked, True, GateResult(1, True, checks, 3.0, {}), {}, 4.5))
    assert buffer.getvalue().splitlines() == [
        "compose: `docker compose up -d` took 4.5s",
        "gate: slot 1 is ready: all 3 checks passed in 3.0s",
    ]


def slot_row(slot: int, state: status.State, **kwargs: Any) -> SlotStatus:
    ports = slots.ports(slot)
    urls = slots.service_urls("127.0.0.1", ports.__getitem__)
    services = status.Services(9, 9, 9) if state == "running" else status.Services(6, 0, 0)
    return replace(SlotStatus(slot, state, services, ports, urls, None, ""), **kwargs)


STATUSES = [
    slot_row(
        1,
        "running",
        api_url="http://127.0.0.1:8001/api/v1",
        checkout="/w/main",
        source=status.SlotSource("/code/ktrdr-x", "ktrdr"),
        shared_dir="/s",
        models_dir="/s/slots/slot-1/models",
    ),
    slot_row(
        10,
        "stopped",
        checkout="several",
        layout=slots.Layout("light", "shared"),
        shared_dir="/s",
        models_dir="/s/models",
    ),
]


def test_plain_status_is_an_aligned_table_without_boxes() -> None:
    out, buffer = plain()
    out.status(STATUSES)
    assert buffer.getvalue().splitlines() == [
        "slot  project           state    healthy  workers  observability  API URL         "
        "              source                shared dir      checkout",
        "1     ktrdr-sandbox-1   running  9/9      full     own            "
        "http://127.0.0.1:8001/api/v1  ktrdr: /code/ktrdr-x  /s, own models  /w/main",
        "10    ktrdr-sandbox-10  stopped  0/6      light    shared         -               "
        "              reference (built in)  /s              several",
    ]


def test_status_when_empty() -> None:
    out, buffer = plain()
    out.status([])
    out.status([], only_slot=4)
    assert buffer.getvalue().splitlines() == [
        "no sandbox slots have containers",
        "slot 4 has no containers",
    ]


REPORTS = [
    VerifyReport(
        1,
        [VerifyCheck("health", True, "HTTP 200"), VerifyCheck("ports", False, "host port 3001")],
    ),
    VerifyReport(2, [VerifyCheck("health", True, "HTTP 200")]),
]


def test_plain_verify() -> None:
    out, buffer = plain()
    out.verify(REPORTS)
    assert buffer.getvalue().splitlines() == [
        "verify: slot 1 health: pass: HTTP 200",
        "verify: slot 1 ports: FAIL: host port 3001",
        "slot 1: 1 of 2 checks failed",
        "verify: slot 2 health: pass: HTTP 200",
        "slot 2: all 1 checks passed",
    ]


def test_plain_steps_and_details() -> None:
    out, buffer = plain()
    out.steps([("engine", "Docker 27.1"), ("ports", "11 free")], title="preflight")
    out.details("line one\n[red]line two[/red]")
    assert buffer.getvalue().splitlines() == [
        "preflight",
        "engine: Docker 27.1",
        "ports: 11 free",
        "line one",
        "[red]line two[/red]",
    ]


def test_terminal_output_draws_tables() -> None:
    out, buffer = terminal()
    out.status(STATUSES)
    out.verify(REPORTS)
    checks = [replace(c, state=State.PASSED, elapsed=1.0) for c in CHECKS]
    out.gate_summary(GateResult(1, True, checks, 3.0, URLS))
    text = buffer.getvalue()
    assert "\x1b[" in text  # colours on a terminal
    for expected in ("ktrdr-sandbox-10", "several", "host port 3001", "✓", "✗", "Grafana"):
        assert expected in text


def test_terminal_gate_progress_is_live_and_ends_cleanly() -> None:
    out, buffer = terminal()
    passed = replace(CHECKS[1], state=State.PASSED, detail="HTTP 200", elapsed=3.21)
    with out.gate_progress(3) as update:
        update(CHECKS)
        update([CHECKS[0], passed, CHECKS[2]])
    text = buffer.getvalue()
    assert "slot 3" in text and "3.2s" in text and "HTTP 200" in text
    # Nothing before the first update: preflight output is not drawn under an empty table.
    out2, buffer2 = terminal()
    with out2.gate_progress(3):
        pass
    assert buffer2.getvalue() == ""


def test_plain_preflight_and_images() -> None:
    @dataclass(frozen=True)
    class Step:
        name: str
        detail: str

    @dataclass(frozen=True)
    class Checked:
        steps: list[Step]

    @dataclass(frozen=True)
    class Built:
        what: str
        seconds: float

    out, buffer = plain()
    out.preflight(Checked([Step("engine", "Docker 27.1"), Step("ports", "11 free")]))
    out.images([Built("ktrdr-sandbox/reference-app:latest", 12.34)], offline=True)
    assert buffer.getvalue().splitlines() == [
        "engine: Docker 27.1",
        "ports: 11 free",
        "ktrdr-sandbox/reference-app:latest: 12.3s",
        "images: 1 ready; ./.env now selects local stand-ins (offline)",
    ]


class Tty(StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_or_not_follows_rich_without_importing_it() -> None:
    assert render.is_terminal(Tty(), {}) and not render.is_terminal(StringIO(), {})
    assert render.is_terminal(StringIO(), {"FORCE_COLOR": "1"})
    assert not render.is_terminal(Tty(), {"FORCE_COLOR": ""})
    assert not render.is_terminal(Tty(), {"TTY_COMPATIBLE": "0", "FORCE_COLOR": "1"})
    assert render.is_terminal(StringIO(), {"TTY_COMPATIBLE": "1"})
    for environ in ({}, {"FORCE_COLOR": "1"}, {"TTY_COMPATIBLE": "1"}):
        console = Console(file=Tty(), _environ=environ)  # rich's own answer, for comparison
        assert render.is_terminal(Tty(), environ) == console.is_terminal


# stdout taken for a terminal (rich's TTY_COMPATIBLE=1) in a fresh interpreter: is rich loaded?
ON_A_TERMINAL = """
import sys
from sandbox.ui import render
out = render.for_stdout()
out.status([])
print("rich loaded:", "rich" in sys.modules)
out.table(["slot"], [["1"]])
print("rich loaded:", "rich" in sys.modules)
"""


def test_on_a_terminal_rich_is_loaded_at_the_first_thing_drawn() -> None:
    env = {**os.environ, "TTY_COMPATIBLE": "1"}
    result = run([sys.executable, "-c", ON_A_TERMINAL], env=env, cwd=ROOT)
    assert result.ok, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["no sandbox slots have containers", "rich loaded: False"]
    assert "\x1b[" in result.stdout and lines[-1] == "rich loaded: True"  # a table, in colour


def test_the_shared_dir_cell_shortens_the_home_directory() -> None:
    row = replace(STATUSES[1], shared_dir="/home/ana/.ktrdr/shared", models_dir="")
    assert render.shared_cell(row, home="/home/ana") == "~/.ktrdr/shared"
    assert render.shared_cell(row, home="/home/an") == "/home/ana/.ktrdr/shared"
    assert render.shared_cell(replace(row, shared_dir=""), home="/home/ana") == "-"
