"""Drawing on a terminal: tables, colours and a live gate table, with rich.

The one module that imports rich; only `render.TerminalRenderer` imports it, at the first
thing it draws: plain output, and a one-line answer on a terminal, never load rich (about
30 ms of `inv status`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from sandbox.checks import CheckResult, GateResult, State
from sandbox.ui.render import (
    FAIL,
    PASS,
    STATE_STYLE,
    STATUS_HEADER,
    GateProgress,
    Renderer,
    failed_headline,
    passed_headline,
    shown_seconds,
    status_cells,
    verdict_line,
)

if TYPE_CHECKING:
    from sandbox.status import SlotStatus
    from sandbox.verify import VerifyReport


class RichGateProgress(GateProgress):
    """A live table, redrawn as checks change.

    The table starts with the first update, so whatever prints before the gate (preflight)
    is not drawn under an empty table, and `--no-wait` draws nothing.
    """

    def __init__(self, renderer: RichRenderer, slot: int) -> None:
        super().__init__(renderer, slot)
        self.console = renderer.console
        self.live: Live | None = None
        self.started = time.monotonic()  # only for the "waiting 12s" title
        self.spinners: dict[str, Spinner] = {}

    def __call__(self, checks: list[CheckResult]) -> None:
        self.checks = checks
        if self.live is None:
            self.started = time.monotonic()
            self.live = Live(self, console=self.console, refresh_per_second=8, transient=False)
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
        for column in ("", "check", "what", "detail"):
            table.add_column(column)
        table.add_column("after", justify="right")
        for check in self.checks:
            style = "red" if check.state is State.FAILED else ""
            table.add_row(
                self._icon(check),
                Text(check.name, style="bold"),
                Text(check.label, style="dim"),
                Text(check.detail, style=style),
                shown_seconds(check.elapsed),
            )
        return table

    def _icon(self, check: CheckResult) -> RenderableType:
        if check.state is State.PASSED:
            return Text(PASS, style="green")
        if check.state is State.FAILED:
            return Text(FAIL, style="red")
        if check.state is State.NOT_WAITED:
            return Text("-", style="dim")
        return self.spinners.setdefault(check.name, Spinner("dots", style="cyan"))

    def close(self) -> None:
        if self.live is not None:
            self.live.refresh()
            self.live.stop()
            self.live = None


class RichRenderer(Renderer):
    """Tables, colours and a live gate table, for a terminal."""

    plain = False

    def __init__(self, console: Console) -> None:
        self.console = console

    @classmethod
    def for_stdout(cls) -> RichRenderer:
        return cls(Console())

    def line(self, text: str) -> None:
        """One line of text, never read as markup; through the console, so that it lands
        above a live gate table rather than through it."""
        self.console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)

    def progress(self, slot: int) -> GateProgress:
        return RichGateProgress(self, slot)

    def details(self, text: str) -> None:
        self.console.print(Text(text, style="dim"), soft_wrap=True)

    def step(self, name: str, detail: str) -> None:
        self.console.print(Text.assemble(("• ", "cyan"), (name, "bold"), " ", detail))

    def title(self, text: str) -> None:
        self.console.print(Text(text, style="bold"))

    def gate_passed(self, result: GateResult) -> None:
        headline = passed_headline(result)
        self.console.print(Text.assemble((f"{PASS} ", "green bold"), (headline, "bold")))
        table = Table(box=box.SIMPLE, show_header=True)
        table.add_column("service")
        table.add_column("URL")
        for label, url in result.urls.items():
            table.add_row(label, Text(url, style="cyan"))
        self.console.print(table)

    def gate_failed(self, result: GateResult) -> None:
        headline = failed_headline(result)
        self.console.print(Text.assemble((f"{FAIL} ", "red bold"), (headline, "bold")))
        table = Table(box=box.SIMPLE)
        table.add_column("check")
        table.add_column("detail", style="red")
        table.add_column("logs of")
        for check in result.failed:
            services = ", ".join((check.service, *check.log_services))
            table.add_row(check.name, check.detail, services)
        self.console.print(table)

    def log_tail(self, service: str, text: str) -> None:
        self.console.rule(Text(f"{service}: last log lines", style="bold"), align="left")
        self.console.print(Text(text), soft_wrap=True)

    def status_table(self, rows: Sequence[SlotStatus]) -> None:
        table = Table(box=box.SIMPLE_HEAD)
        for name in STATUS_HEADER:
            table.add_column(name, justify="right" if name in ("slot", "healthy") else "left")
        for row, status in zip(status_cells(rows), rows, strict=True):
            table.add_row(
                row[0],
                row[1],
                Text(row[2], style=STATE_STYLE.get(status.state, "")),
                row[3],
                row[4],
                row[5],
                Text(row[6], style="cyan"),
                *row[7:],
            )
        self.console.print(table)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        table = Table(box=box.SIMPLE_HEAD)
        for name in header:
            table.add_column(name)
        for row in rows:
            table.add_row(*row)
        self.console.print(table)

    def verify(self, reports: Sequence[VerifyReport]) -> None:
        table = Table(box=box.SIMPLE_HEAD)
        table.add_column("slot", justify="right")
        for column in ("check", "", "detail"):
            table.add_column(column)
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
            self.console.print(Text(verdict_line(report), style=style))
