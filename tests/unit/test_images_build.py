"""`inv images`: the base first, then the images built FROM it side by side, on a fake engine."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import runner
from sandbox.errors import SandboxError
from sandbox.images import build as images
from sandbox.runner import Result
from sandbox.settings import BUILD_WORKERS


class FakeBuilds:
    """`runner.execute` for `inv images`: records what ran, when, and how many at once. The
    first `together` docker builds wait for each other, so they only pass when they run side
    by side; `fail` names the step whose command exits 1."""

    def __init__(self, together: int, fail: str = "") -> None:
        self.events: list[str] = []
        self.lock = threading.Lock()
        self.active = self.peak = self.builds = 0
        self.barrier = threading.Barrier(together, timeout=5)
        self.together = together
        self.fail = fail

    def __call__(self, cmd: runner.Command, **options: object) -> Result:
        args = tuple(str(part) for part in cmd)
        if args[:2] == ("docker", "buildx"):
            return Result(args, 1, "", "docker: 'buildx' is not a docker command")
        what = args[args.index("-t") + 1] if "-t" in args else images.OFFLINE_BASE
        with self.lock:
            self.events.append(f"start {what}")
            self.active += 1
            self.peak = max(self.peak, self.active)
            index, self.builds = self.builds, self.builds + (what != images.OFFLINE_BASE)
        if what != images.OFFLINE_BASE and index < self.together:
            self.barrier.wait()
        with self.lock:
            self.active -= 1
            self.events.append(f"end {what}")
        return Result(args, 1 if what == self.fail else 0)


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBuilds]:
    fake = FakeBuilds(together=BUILD_WORKERS)
    monkeypatch.setattr(runner, "execute", fake)
    yield fake


def test_the_base_first_then_its_images_side_by_side(tmp_path: Path, engine: FakeBuilds) -> None:
    announced: list[str] = []
    built = images.build(tmp_path, True, {}, on_step=lambda step: announced.append(step.what))
    order = [step.what for step in images.plan(tmp_path, True, {}, buildkit=False)]
    assert [b.what for b in built] == order == announced  # started and reported in plan order
    assert engine.events[:2] == [f"start {images.OFFLINE_BASE}", f"end {images.OFFLINE_BASE}"]
    assert engine.peak == BUILD_WORKERS  # side by side, never more at once
    assert (tmp_path / ".env").read_text() == images.render_env(True, tmp_path)


def test_every_offline_image_builds_on_the_base_alone(tmp_path: Path) -> None:
    base, *rest = images.plan(tmp_path, True, {}, buildkit=False)
    assert base.what == images.OFFLINE_BASE and base.after == ()
    assert {step.after for step in rest} == {(images.OFFLINE_BASE,)}
    online = images.plan(tmp_path, False, {}, buildkit=False)
    assert {step.after for step in online} == {()}  # pulls and the app's build on debian-slim


def test_a_failed_base_builds_nothing_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeBuilds(together=1, fail=images.OFFLINE_BASE)
    monkeypatch.setattr(runner, "execute", fake)
    with pytest.raises(SandboxError, match=f"building {images.OFFLINE_BASE} failed"):
        images.build(tmp_path, True, {})
    assert fake.events == [f"start {images.OFFLINE_BASE}", f"end {images.OFFLINE_BASE}"]
    assert not (tmp_path / ".env").exists()


def step(what: str, *after: str) -> images.Step:
    return images.Step(what, [what], {}, after)


def test_after_a_failure_nothing_new_starts_and_the_running_ones_end() -> None:
    started: list[str] = []
    second_running, first_failed = threading.Event(), threading.Event()

    def run_step(one: images.Step) -> images.Built:
        started.append(one.what)
        if one.what == "a":
            second_running.wait(5)
            first_failed.set()
            raise SandboxError("building a failed")
        if one.what == "b":
            second_running.set()
            first_failed.wait(5)  # still running when a fails: it may finish
        return images.Built(one.what, 0.0, one.what)

    with pytest.raises(SandboxError, match="building a failed"):
        images.run_steps([step("a"), step("b"), step("c"), step("d", "a")], run_step, 2)
    assert sorted(started) == ["a", "b"]


def test_a_step_after_one_the_plan_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="does not have: \\['base'\\]"):
        images.run_steps([step("app", "base")], lambda one: images.Built("", 0.0, ""), 2)
