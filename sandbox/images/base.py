"""The local Debian base that offline images start FROM: scripts/build-debian-base.sh
debootstraps a suite and `docker import`s it as ktrdr-sandbox/debian-base:<suite>. Each suite
is chosen where it is used (the slot images' in build, the uv apps' Python base's in app)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

SCRIPT = "scripts/build-debian-base.sh"
SUITE_VARIABLE = "KTRDR_DEBIAN_SUITE"  # the script's one required input


def image(suite: str) -> str:
    """The tag the script gives the base of `suite`."""
    return f"ktrdr-sandbox/debian-base:{suite}"


def command(root: Path) -> list[str]:
    return ["bash", str(root / SCRIPT)]


def environment(suite: str, environ: Mapping[str, str]) -> dict[str, str]:
    return {**environ, SUITE_VARIABLE: suite}
