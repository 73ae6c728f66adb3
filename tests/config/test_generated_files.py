"""Files generated from the scheme stay equal to it: env/slot-*.env and the docs' port table."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import ROOT, docs, envfiles, slots


@pytest.mark.parametrize("slot", list(slots.SLOTS))
def test_committed_env_files_equal_the_generator(slot: int) -> None:
    path = envfiles.env_path(ROOT, slot)
    assert path.read_text() == envfiles.render(slot), "run `inv env --write`"


def test_no_stray_env_files() -> None:
    names = sorted(p.name for p in (ROOT / "env").glob("*.env"))
    assert names == sorted(f"slot-{s}.env" for s in slots.SLOTS)


def test_committed_files_are_valid() -> None:
    assert envfiles.check_all(ROOT) == []


def test_docs_port_table_matches_the_scheme() -> None:
    text = (ROOT / docs.MANUAL).read_text()
    assert docs.current_table(text) == docs.port_table(), "run `inv env --write`"


@pytest.mark.parametrize("doc", [docs.MANUAL, docs.README])
def test_docs_observability_ports_match_the_scheme(doc: Path) -> None:
    text = (ROOT / doc).read_text()
    found = docs.current_table(text, docs.OBS_BEGIN, docs.OBS_END)
    assert found == docs.observability_table(), "run `inv env --write`"
