"""Drawing only: turns the dataclasses of gate, status and verify into rich output.

On a terminal: tables, colours and a live gate table. When stdout is not a terminal (CI, a
pipe, a log file): plain lines, no boxes, no colours, no redrawing, one line per event, so the
output greps and diffs well. Nothing here decides anything; it only shows what it is given.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Protocol

from rich import box
from rich.console import Console, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from sandbox.gate import CheckResult, GateResult, State
from sandbox.status import SlotStatus
from sandbox.verify import VerifyReport

PASS, FAIL = "✓", "✗"
STATE_STYLE = {"running": "green", "partial": "yellow", "stopped": "red"}


class UpResultLike(Protocol):
    """What `inv up` hands back (sandbox.stack.UpResult), as far as drawing needs it."""

    @property
    def gate(self) -> GateResult: ...
    @property
    def logs(self) -> Mapping[str, str]: ...
    @property
    def started(self) -> bool: ...
    @property
    def compose_seconds(self) -> float: ...


class NamedStep(Protocol):
    """A preflight step (sandbox.preflight.Step)."""

    @property
    def name(self) -> str: ...
    @property
    def detail(self) -> str: ...


class PreflightLike(Protocol):
    """A passed preflight (sandbox.preflight.Preflight), as far as drawing needs it."""

    @property
    def steps(self) -> Sequence[NamedStep]: ...


class BuiltLike(Protocol):
    """One image `inv images` got (sandbox.images.Built)."""

    @property
    def what(self) -> str: ...
    @property
    def seconds(self) -> float: ...


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}s"


class GateProgress:
    """The `on_update` callback of `gate.run_gate`, drawing what it is handed.

    The live table starts with the first update, so whatever prints before the gate (preflight)
    is not drawn under an empty table, and `--no-wait` draws nothing.
    """

    def __init__(self, renderer: Renderer, slot: int) -> None:
        self.renderer = renderer
        self.slot = slot
        self.checks: list[CheckResult] = []
        self.live: Live | None = None
        self.shown: set[str] = set()  # plain mode: checks whose outcome was printed
        self.started = time.monotonic()  # only for the "waiting 12s" title
        self.spinners: dict[str, Spinner] = {}

    def __call__(self, checks: list[CheckResult]) -> None:
        first = not self.checks
        self.checks = checks
        if self.renderer.plain:
            if first:
                names = ", ".join(c.name for c in checks)
                self.renderer.line(f"gate: slot {self.slot}: waiting for {names}")
            for check in checks:
                if check.state is State.WAITING or check.name in self.shown:
                    continue
                self.shown.add(check.name)
                if check.state is State.PASSED:
                    self.renderer.line(f"gate: {check.name} passed after {_seconds(check.elapsed)}")
                elif check.state is State.NOT_WAITED:
                    self.renderer.line(f"gate: {check.name} not decided: {check.detail}")
                else:
                    self.renderer.line(f"gate: {check.name} FAILED: {check.detail}")
            return
        if self.live is None:
            self.started = time.monotonic()
            self.live = Live(
                self, console=self.renderer.console, refresh_per_second=8, transient=False
            )
            self.live.start()
        else:
            self.live.refresh()

    def __rich__(self) -> RenderableType:
        done = all(c.state is not State.WAITING for c in self.checks)
        waited = time.monotonic() - self.started
        title = (
            f"slot {self.slot}: startability gate"
            if done
            else f"slot {self.slot}: waiting for the stack ({waited:.0f}s)"
        )
        table = Table(title=title, box=box.SIMPLE, title_justify="left")
        table.add_column("")
        table.add_column("check")
        table.add_column("what")
        table.add_column("detail")
        table.add_column("after", justify="right")
        for check in self.checks:
            icon: RenderableType
            if check.state is State.PASSED:
                icon = Text(PASS, style="green")
            elif check.state is State.FAILED:
                icon = Text(FAIL, style="red")
            elif check.state is State.NOT_WAITED:
                icon = Text("-", style="dim")
            else:
                icon = self.spinners.setdefault(check.name, Spinner("dots", style="cyan"))
            style = "red" if check.state is State.FAILED else ""
            table.add_row(
                icon,
                Text(check.name, style="bold"),
                Text(check.label, style="dim"),
                Text(check.detail, style=style),
                _seconds(check.elapsed),
            )
        return table

    def close(self) -> None:
        if self.live is not None:
            self.live.refresh()
            self.live.stop()
            self.live = None


class Renderer:
    def __init__(self, console: Console) -> None:
        self.console = console

    @classmethod
    def for_stdout(cls) -> Renderer:
        return cls(Console())

    @property
    def plain(self) -> bool:
        return not self.console.is_terminal

    # -- generic ------------------------------------------------------------------------

    def line(self, text: str) -> None:
        """One line of text, never read as markup."""
        self.console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)

    def details(self, text: str) -> None:
        """A command's own output (e.g. the last lines of a failed build), shown verbatim."""
        if self.plain:
            for line in text.splitlines():
                self.line(line)
        else:
            self.console.print(Text(text, style="dim"), soft_wrap=True)

    def step(self, name: str, detail: str) -> None:
        if self.plain:
            self.line(f"{name}: {detail}")
        else:
            self.console.print(Text.assemble(("• ", "cyan"), (name, "bold"), " ", detail))

    def steps(self, items: Sequence[tuple[str, str]], title: str | None = None) -> None:
        """A list of named steps, e.g. what preflight checked."""
        if title and self.plain:
            self.line(title)
        elif title:
            self.console.print(Text(title, style="bold"))
        for name, detail in items:
            self.step(name, detail)

    def preflight(self, checked: PreflightLike) -> None:
        """What preflight checked, one step a line (`on_preflight` of `stack.up`)."""
        self.steps([(step.name, step.detail) for step in checked.steps])

    def images(self, built: Sequence[BuiltLike], offline: bool) -> None:
        """What `inv images` did, and which mode ./.env now records."""
        self.steps([(b.what, f"{b.seconds:.1f}s") for b in built])
        mode = "local stand-ins (offline)" if offline else "upstream images"
        self.line(f"images: {len(built)} ready; ./.env now selects {mode}")

    # -- gate ---------------------------------------------------------------------------

    @contextmanager
    def gate_progress(self, slot: int) -> Iterator[GateProgress]:
        """`with out.gate_progress(slot) as on_update: run_gate(..., on_update=on_update)`."""
        progress = GateProgress(self, slot)
        try:
            yield progress
        finally:
            progress.close()

    def gate_summary(self, result: GateResult, logs: Mapping[str, str] | None = None) -> None:
        """After the gate: the URLs when it passed; failing checks and log tails when not."""
        if result.passed:
            headline = (
                f"slot {result.slot} is ready: all {len(result.checks)} checks passed "
                f"in {result.elapsed:.1f}s"
            )
            if self.plain:
                self.line(f"gate: {headline}")
                width = max((len(label) for label in result.urls), default=0)
                for label, url in result.urls.items():
                    self.line(f"  {label.ljust(width)}  {url}")
                return
            self.console.print(Text.assemble((f"{PASS} ", "green bold"), (headline, "bold")))
            table = Table(box=box.SIMPLE, show_header=True)
            table.add_column("service")
            table.add_column("URL")
            for label, url in result.urls.items():
                table.add_row(label, Text(url, style="cyan"))
            self.console.print(table)
            return

        failed = result.failed
        headline = (
            f"slot {result.slot} is not ready after {result.elapsed:.1f}s: "
            f"{len(failed)} of {len(result.checks)} checks failed"
        )
        if self.plain:
            self.line(f"gate: {headline}")
            for check in failed:
                self.line(f"  {check.name}: {check.detail}")
        else:
            self.console.print(Text.assemble((f"{FAIL} ", "red bold"), (headline, "bold")))
            table = Table(box=box.SIMPLE)
            table.add_column("check")
            table.add_column("detail", style="red")
            table.add_column("logs of")
            for check in failed:
                services = ", ".join((check.service, *check.log_services))
                table.add_row(check.name, check.detail, services)
            self.console.print(table)
        self.log_tails(logs or {})

    def log_tails(self, logs: Mapping[str, str]) -> None:
        for service, text in logs.items():
            if self.plain:
                self.line(f"--- {service}: last log lines ---")
                for line in text.splitlines():
                    self.line(line)
            else:
                self.console.rule(Text(f"{service}: last log lines", style="bold"), align="left")
                self.console.print(Text(text), soft_wrap=True)

    def up_result(self, result: UpResultLike) -> None:
        if result.started:
            self.step("compose", f"`docker compose up -d` took {result.compose_seconds:.1f}s")
        else:
            self.step("compose", "every service was running already; only the gate ran")
        self.gate_summary(result.gate, result.logs)

    # -- status -------------------------------------------------------------------------

    def status(self, rows: Sequence[SlotStatus], only_slot: int | None = None) -> None:
        if not rows:
            self.line(
                "no sandbox slots have containers"
                if only_slot is None
                else f"slot {only_slot} has no containers"
            )
            return
        header = ("slot", "project", "state", "healthy", "API URL", "checkout")
        cells = [
            (
                str(r.slot),
                r.project,
                r.state,
                f"{r.healthy}/{r.total}",
                r.api_url or "-",
                r.checkout or "-",
            )
            for r in rows
        ]
        if self.plain:
            widths = [max(len(row[i]) for row in (header, *cells)) for i in range(len(header))]
            for row in (header, *cells):
                self.line("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            return
        table = Table(box=box.SIMPLE_HEAD)
        for name in header:
            table.add_column(name, justify="right" if name in ("slot", "healthy") else "left")
        for row, status in zip(cells, rows, strict=True):
            table.add_row(
                row[0],
                row[1],
                Text(row[2], style=STATE_STYLE.get(status.state, "")),
                row[3],
                Text(row[4], style="cyan"),
                row[5],
            )
        self.console.print(table)

    # -- verify -------------------------------------------------------------------------

    def verify(self, reports: Sequence[VerifyReport]) -> None:
        if self.plain:
            for report in reports:
                for check in report.checks:
                    verdict = "pass" if check.passed else "FAIL"
                    self.line(f"verify: slot {report.slot} {check.name}: {verdict}: {check.detail}")
                self.line(self._verdict(report))
            return
        table = Table(box=box.SIMPLE_HEAD)
        table.add_column("slot", justify="right")
        table.add_column("check")
        table.add_column("")
        table.add_column("detail")
        for report in reports:
            for check in report.checks:
                table.add_row(
                    str(report.slot),
                    check.name,
                    Text(PASS, style="green") if check.passed else Text(FAIL, style="red"),
                    Text(check.detail, style="" if check.passed else "red"),
                )
            table.add_section()
        self.console.print(table)
        for report in reports:
            style = "green" if report.passed else "red bold"
            self.console.print(Text(self._verdict(report), style=style))

    @staticmethod
    def _verdict(report: VerifyReport) -> str:
        failed = sum(not c.passed for c in report.checks)
        if not failed:
            return f"slot {report.slot}: all {len(report.checks)} checks passed"
        return f"slot {report.slot}: {failed} of {len(report.checks)} checks failed"
