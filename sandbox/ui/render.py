"""Drawing only: turns the dataclasses of gate, status and verify into output.

When stdout is not a terminal (`PlainRenderer`: CI, a pipe, a log file): plain lines, no
boxes, no colours, no redrawing, one line per event, so the output greps and diffs well. On a
terminal (`TerminalRenderer`, drawing with `sandbox.ui.richrender.RichRenderer`): tables, colours
and a live gate table. `for_stdout` chooses one, once.

Nothing here imports rich or the modules whose results it draws (gate, snapshots, verify):
`inv status` with its output in a pipe pays for neither. Nothing here decides
anything; it only shows what it is given.
"""

from __future__ import annotations

import functools
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Protocol

from sandbox.checks import CheckResult, GateResult, State
from sandbox.slots import OBSERVABILITY_PROJECT

if TYPE_CHECKING:
    from sandbox.observability import Status as ObservabilityStatus
    from sandbox.snapshots.store import Row as SnapshotRow
    from sandbox.stack import UpResult
    from sandbox.status import SlotStatus
    from sandbox.status import State as SlotState
    from sandbox.verify import VerifyReport

PASS, FAIL = "✓", "✗"
SEVERAL = "several"  # what a cell says when the slot's containers disagree (status.SEVERAL)
STATE_STYLE: dict[SlotState, str] = {
    "running": "green",
    "partial": "yellow",
    "paused": "cyan",
    "stopped": "red",
    "failed": "red",
    "orphaned": "red",
}
# How a slot's torch choice reads in the table: training needs torch, the rest does not.
TORCH_SHOWN = {"none": "no torch", "debian": "Debian torch, CPU", "locked": "locked torch"}


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
    """One image `inv images` got (sandbox.images.build.Built)."""

    @property
    def what(self) -> str: ...
    @property
    def seconds(self) -> float: ...


def shown_seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}s"


STATUS_HEADER = (
    "slot",
    "project",
    "state",
    "healthy",
    "workers",
    "observability",
    "API URL",
    "source",
    "shared dir",
    "checkout",
)


def shared_cell(row: SlotStatus, home: str | None = None) -> str:
    """The shared directory (`~` for the home directory: the table is wide), and whether the
    slot keeps models of its own (`--models=slot`; `--json` has the path)."""
    if not row.shared_dir:
        return "-"
    home = os.path.expanduser("~") if home is None else home
    shown = row.shared_dir
    if home not in ("", "/") and (shown == home or shown.startswith(home + "/")):
        shown = "~" + shown[len(home) :]
    if row.models_dir and row.models_dir != f"{row.shared_dir}/models":
        return f"{shown}, own models"
    return shown


def source_cell(row: SlotStatus) -> str:
    """The app a slot runs, as `inv up --source` recorded it: "ktrdr: /path (no torch)"."""
    if not row.sources_agree:
        return SEVERAL
    app, source = row.source.app or "reference", row.source.source
    shown = f"{app}: {source}" if source else f"{app} (built in)"
    return f"{shown} ({TORCH_SHOWN.get(row.torch, row.torch)})" if row.torch else shown


def status_cells(rows: Sequence[SlotStatus]) -> list[tuple[str, ...]]:
    """The table's cells of `status.collect`'s rows (`--json` draws the same rows)."""
    return [
        (
            str(r.slot),
            r.project,
            f"{r.state}: {r.reason}" if r.reason else r.state,
            f"{r.services.healthy}/{r.services.total}",
            r.layout.workers if r.layout else SEVERAL,
            r.layout.observability if r.layout else SEVERAL,
            r.api_url or "-",
            source_cell(r),
            shared_cell(r),
            f"orphaned: {r.gone} is gone" if r.orphaned else (r.checkout or "-"),
        )
        for r in rows
    ]


SNAPSHOT_HEADER = ("name", "slot", "app", "size", "age", "migration")


def _snapshot_cells(rows: Sequence[SnapshotRow]) -> list[tuple[str, ...]]:
    # loaded already: rows come from it
    from sandbox.snapshots.store import human_age, human_size

    return [
        (
            r.name,
            str(r.source_slot),
            r.app,
            human_size(r.size),
            human_age(r.age),
            r.migration or "-",
        )
        for r in rows
    ]


def verdict_line(report: VerifyReport) -> str:
    failed = sum(not c.passed for c in report.checks)
    if not failed:
        return f"slot {report.slot}: all {len(report.checks)} checks passed"
    return f"slot {report.slot}: {failed} of {len(report.checks)} checks failed"


def passed_headline(result: GateResult) -> str:
    return (
        f"slot {result.slot} is ready: all {len(result.checks)} checks passed "
        f"in {result.elapsed:.1f}s"
    )


def failed_headline(result: GateResult) -> str:
    return (
        f"slot {result.slot} is not ready after {result.elapsed:.1f}s: "
        f"{len(result.failed)} of {len(result.checks)} checks failed"
    )


class GateProgress(ABC):
    """The `on_update` callback of `gate.run_gate`, drawing what it is handed."""

    def __init__(self, renderer: Renderer, slot: int) -> None:
        self.renderer = renderer
        self.slot = slot
        self.checks: list[CheckResult] = []

    @abstractmethod
    def __call__(self, checks: list[CheckResult]) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """The gate is over (or never ran)."""


class PlainGateProgress(GateProgress):
    """One line when the gate starts, then one per decided check."""

    def __init__(self, renderer: Renderer, slot: int) -> None:
        super().__init__(renderer, slot)
        self.shown: set[str] = set()  # checks whose outcome was printed

    def __call__(self, checks: list[CheckResult]) -> None:
        if not self.checks:
            names = ", ".join(c.name for c in checks)
            self.renderer.line(f"gate: slot {self.slot}: waiting for {names}")
        self.checks = checks
        for check in checks:
            if check.state is State.WAITING or check.name in self.shown:
                continue
            self.shown.add(check.name)
            self.renderer.line(self._outcome(check))

    def close(self) -> None:
        """Every outcome was printed as it came: nothing to finish."""

    @staticmethod
    def _outcome(check: CheckResult) -> str:
        if check.state is State.PASSED:
            return f"gate: {check.name} passed after {shown_seconds(check.elapsed)}"
        if check.state is State.NOT_WAITED:
            return f"gate: {check.name} not decided: {check.detail}"
        return f"gate: {check.name} FAILED: {check.detail}"


def is_terminal(stream: IO[str], environ: Mapping[str, str]) -> bool:
    """Whether `stream` gets tables and colours: rich's own rule (`Console.is_terminal`:
    TTY_COMPATIBLE, then FORCE_COLOR, then isatty), asked without importing rich."""
    compatible = environ.get("TTY_COMPATIBLE", "")
    if compatible in ("0", "1"):
        return compatible == "1"
    if "FORCE_COLOR" in environ:
        return environ["FORCE_COLOR"] != ""
    try:
        return stream.isatty()
    except ValueError:  # a closed stream is no terminal
        return False


def for_stdout() -> Renderer:
    """Tables and colours on a terminal, plain lines anywhere else; rich only on a terminal."""
    return TerminalRenderer() if is_terminal(sys.stdout, os.environ) else PlainRenderer()


class Renderer(ABC):
    """What both kinds of output share; `for_stdout` picks the kind once."""

    plain: bool

    # -- generic ------------------------------------------------------------------------

    @abstractmethod
    def line(self, text: str) -> None:
        """One line of text, as it is (never read as markup)."""

    @abstractmethod
    def details(self, text: str) -> None:
        """A command's own output (e.g. the last lines of a failed build), shown verbatim."""

    @abstractmethod
    def step(self, name: str, detail: str) -> None: ...

    @abstractmethod
    def title(self, text: str) -> None: ...

    def steps(self, items: Sequence[tuple[str, str]], title: str | None = None) -> None:
        """A list of named steps, e.g. what preflight checked."""
        if title:
            self.title(title)
        for name, detail in items:
            self.step(name, detail)

    def preflight(self, checked: PreflightLike) -> None:
        """What preflight checked, one step a line (`stack.Hooks.preflight`)."""
        self.steps([(step.name, step.detail) for step in checked.steps])

    def compose_up(self, cmd: Sequence[str]) -> None:
        """`on_compose` of `stack.up`: `docker compose up -d` is about to run."""
        self.step("compose", "docker compose up -d (creates and starts the containers)")

    def images(self, built: Sequence[BuiltLike], offline: bool) -> None:
        """What `inv images` did, and which mode ./.env now records."""
        self.steps([(b.what, f"{b.seconds:.1f}s") for b in built])
        mode = "local stand-ins (offline)" if offline else "upstream images"
        self.line(f"images: {len(built)} ready; ./.env now selects {mode}")

    # -- gate ---------------------------------------------------------------------------

    @abstractmethod
    def progress(self, slot: int) -> GateProgress:
        """The `on_update` of slot `slot`'s gate, in this kind of output."""

    @contextmanager
    def gate_progress(self, slot: int) -> Iterator[GateProgress]:
        """`with out.gate_progress(slot) as on_update: run_gate(..., on_update=on_update)`."""
        progress = self.progress(slot)
        try:
            yield progress
        finally:
            progress.close()

    def gate_summary(self, result: GateResult, logs: Mapping[str, str] | None = None) -> None:
        """After the gate: the URLs when it passed; failing checks and log tails when not."""
        if result.passed:
            self.gate_passed(result)
            return
        self.gate_failed(result)
        for service, text in (logs or {}).items():
            self.log_tail(service, text)

    @abstractmethod
    def gate_passed(self, result: GateResult) -> None: ...

    @abstractmethod
    def gate_failed(self, result: GateResult) -> None: ...

    @abstractmethod
    def log_tail(self, service: str, text: str) -> None: ...

    def up_result(self, result: UpResult) -> None:
        if result.started:
            self.step("compose", f"`docker compose up -d` took {result.compose_seconds:.1f}s")
        else:
            self.step("compose", "every service was running already; only the gate ran")
        if result.gate is not None:
            self.gate_summary(result.gate, result.logs)

    # -- status and verify --------------------------------------------------------------

    def status(self, rows: Sequence[SlotStatus], only_slot: int | None = None) -> None:
        if not rows:
            self.line(
                "no sandbox slots have containers"
                if only_slot is None
                else f"slot {only_slot} has no containers"
            )
            return
        self.status_table(rows)

    @abstractmethod
    def status_table(self, rows: Sequence[SlotStatus]) -> None: ...

    def snapshots(self, rows: Sequence[SnapshotRow]) -> None:
        if not rows:
            self.line("no snapshots yet: `inv snapshot --slot=N` takes one")
            return
        good = [r for r in rows if not r.problem]
        if good:
            self.table(SNAPSHOT_HEADER, _snapshot_cells(good))
        for row in rows:
            if row.problem:
                self.line(
                    f"{row.name}: unreadable manifest ({row.problem}); "
                    f"`inv snapshot --delete {row.name}` removes it"
                )

    @abstractmethod
    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """A plain table: a header and rows of text cells."""

    def observability(self, status: ObservabilityStatus) -> None:
        """`inv observability status`: plain lines on a terminal too (a handful of facts)."""
        state = "up" if status.up else "not up"
        self.line(f"shared observability ({OBSERVABILITY_PROJECT}): {state}")
        for service, seen in status.services.items():
            self.line(f"  {service}: {seen}")
        for label, url in status.urls.items():
            self.line(f"  {label}: {url}")
        users = ", ".join(map(str, status.slots)) or "none"
        self.line(f"  slots on shared observability: {users}")
        if status.up:
            up = sum(t.health == "up" for t in status.targets)
            self.line(f"  scrape targets: {up} of {len(status.targets)} up")
            for t in status.targets:
                why = f" ({t.error})" if t.error else ""
                self.line(f"    slot {t.slot} {t.service}: {t.health}{why}")
        if status.spans is not None:
            self.line(f"  spans received (Jaeger stand-in's own count): {status.spans}")

    @abstractmethod
    def verify(self, reports: Sequence[VerifyReport]) -> None: ...


class PlainRenderer(Renderer):
    """Plain lines: no boxes, no colours, no redrawing."""

    plain = True

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream

    @property
    def stream(self) -> IO[str]:
        """The stream given, else sys.stdout as it is at each write (as rich's Console does),
        so that a redirection made after the renderer is followed."""
        return sys.stdout if self._stream is None else self._stream

    def line(self, text: str) -> None:
        self.stream.write(text + "\n")

    def progress(self, slot: int) -> GateProgress:
        return PlainGateProgress(self, slot)

    def details(self, text: str) -> None:
        for line in text.splitlines():
            self.line(line)

    def step(self, name: str, detail: str) -> None:
        self.line(f"{name}: {detail}")

    def title(self, text: str) -> None:
        self.line(text)

    def gate_passed(self, result: GateResult) -> None:
        self.line(f"gate: {passed_headline(result)}")
        width = max((len(label) for label in result.urls), default=0)
        for label, url in result.urls.items():
            self.line(f"  {label.ljust(width)}  {url}")

    def gate_failed(self, result: GateResult) -> None:
        self.line(f"gate: {failed_headline(result)}")
        for check in result.failed:
            self.line(f"  {check.name}: {check.detail}")

    def log_tail(self, service: str, text: str) -> None:
        self.line(f"--- {service}: last log lines ---")
        for line in text.splitlines():
            self.line(line)

    def status_table(self, rows: Sequence[SlotStatus]) -> None:
        self.table(STATUS_HEADER, status_cells(rows))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        table = [header, *rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            self.line("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())

    def verify(self, reports: Sequence[VerifyReport]) -> None:
        for report in reports:
            for check in report.checks:
                verdict = "pass" if check.passed else "FAIL"
                self.line(f"verify: slot {report.slot} {check.name}: {verdict}: {check.detail}")
            self.line(verdict_line(report))


class TerminalRenderer(Renderer):
    """Stdout on a terminal: rich's renderer (`sandbox.ui.richrender`), imported at the first
    thing drawn with it. Until then a line is only a line, so an answer of one line (`inv
    status` with no slots, `inv env`, `inv down`) does not load rich (about 30 ms)."""

    plain = False

    @functools.cached_property
    def rich(self) -> Renderer:
        from sandbox.ui.richrender import RichRenderer

        return RichRenderer.for_stdout()

    def line(self, text: str) -> None:
        if "rich" in self.__dict__:  # through rich once it draws: a live table stays whole
            self.rich.line(text)
        else:
            sys.stdout.write(text + "\n")

    def details(self, text: str) -> None:
        self.rich.details(text)

    def step(self, name: str, detail: str) -> None:
        self.rich.step(name, detail)

    def title(self, text: str) -> None:
        self.rich.title(text)

    def progress(self, slot: int) -> GateProgress:
        return self.rich.progress(slot)

    def gate_passed(self, result: GateResult) -> None:
        self.rich.gate_passed(result)

    def gate_failed(self, result: GateResult) -> None:
        self.rich.gate_failed(result)

    def log_tail(self, service: str, text: str) -> None:
        self.rich.log_tail(service, text)

    def status_table(self, rows: Sequence[SlotStatus]) -> None:
        self.rich.status_table(rows)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.rich.table(header, rows)

    def verify(self, reports: Sequence[VerifyReport]) -> None:
        self.rich.verify(reports)
