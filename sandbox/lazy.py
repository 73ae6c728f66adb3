"""Modules imported at their first use, for `tasks.py`.

`inv` imports tasks.py before it runs any task; importing every `sandbox` module there (and
rich with the renderer) was about 250 ms of `inv status`'s 530 ms. A `Module`
stands in for a module until something is asked of it, so each task loads only what it
touches. It looks the attribute up at each use, so a test that patches the real module is
seen.
"""

from __future__ import annotations

import importlib
from typing import Any


class Module:
    """Module `name`, imported when one of its attributes is first asked for."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name}>"
