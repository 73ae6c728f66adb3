"""Migration versions: a snapshot's alembic revision against a slot's, read from the
checkout's `alembic/versions/` without importing it."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

# --- migration versions --------------------------------------------------------------------


class Drift(Enum):
    """How the slot's migration version stands against the snapshot's; values are the text."""

    SAME = "the same migration version"
    SLOT_NEWER = "newer"
    SLOT_OLDER = "older"
    DIFFERENT = "different"  # neither found in the chain: cannot tell which is newer


@dataclass(frozen=True)
class VersionCheck:
    drift: Drift
    snapshot: str | None
    slot: str | None

    def describe(self, slot: int, source: str) -> str:
        """One sentence for the question and the result ("snapshot NAME" or "slot N" as
        `source`); empty when the versions agree."""
        if self.drift is Drift.SAME:
            return ""
        theirs = self.snapshot or "no migrations"
        ours = self.slot or "no migrations"
        order = {
            Drift.DIFFERENT: "a different migration version than",
            Drift.SLOT_NEWER: "a newer schema than",
            Drift.SLOT_OLDER: "an older schema than",
        }[self.drift]
        return (
            f"slot {slot}'s database has {order} {source} ({ours} vs {theirs}); afterwards "
            f"it is at {theirs}, which the app running in slot {slot} may not expect"
        )


def compare_migrations(
    snapshot: str | None, slot: str | None, chain: Sequence[str] | None = None
) -> VersionCheck:
    """Compare two alembic versions. `chain` lists revisions oldest first (see
    `alembic_chain`); without it, or when one is missing from it, only "different" is
    known. No version at all counts as older than any revision."""
    if snapshot == slot:
        return VersionCheck(Drift.SAME, snapshot, slot)
    position: dict[str | None, int] = {None: -1}
    position.update((revision, index) for index, revision in enumerate(chain or ()))
    if chain and snapshot in position and slot in position:
        newer = position[slot] > position[snapshot]
        return VersionCheck(Drift.SLOT_NEWER if newer else Drift.SLOT_OLDER, snapshot, slot)
    return VersionCheck(Drift.DIFFERENT, snapshot, slot)


def _assigned_string(tree: ast.Module, variable: str) -> str | None:
    """The string a module assigns to `variable` at top level (`x = "..."` or
    `x: str = "..."`); None when it assigns None, something else, or nothing."""
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == variable for t in targets):
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                return value.value
            return None
    return None


def alembic_chain(versions_dir: Path) -> list[str]:
    """The revisions of an alembic `versions/` directory, oldest first, read without
    importing them. A branched history (a merge revision) gives [] (order unknown)."""
    parent_of: dict[str, str | None] = {}
    for path in sorted(versions_dir.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        revision = _assigned_string(tree, "revision")
        if revision:
            parent_of[revision] = _assigned_string(tree, "down_revision")
    children: dict[str | None, list[str]] = {}
    for revision, parent in parent_of.items():
        children.setdefault(parent, []).append(revision)
    chain: list[str] = []
    current: str | None = None
    while len(children.get(current, [])) == 1:
        current = children[current][0]
        chain.append(current)
    return chain if len(chain) == len(parent_of) else []
