"""A clock that moves only when the code under test sleeps: waits cost no real time and every
deadline is hit exactly, whatever the machine's load."""

from __future__ import annotations

from collections.abc import Callable


class FakeClock:
    """Pass the clock where code takes `clock=` (it is callable, like `time.monotonic`) and its
    `sleep` where code takes `sleep=`. `then(n, action)` runs `action` during the n-th sleep:
    how a test makes the world change while the code waits (a lock released, a service up)."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now  # not zero by default: elapsed must be measured from the caller's start
        self.slept: list[float] = []
        self._actions: dict[int, Callable[[], object]] = {}

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, f"slept {seconds}"
        self.now += seconds
        self.slept.append(seconds)
        action = self._actions.pop(len(self.slept), None)
        if action is not None:
            action()

    def then(self, nth_sleep: int, action: Callable[[], object]) -> None:
        self._actions[nth_sleep] = action
