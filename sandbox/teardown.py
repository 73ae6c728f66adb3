"""`inv down --all`: every slot of this engine, orphans included, scoped by Compose's labels.

`plan` is pure: from one `docker ps` and one `docker volume ls` it lists each slot that holds
something, and what `down --all` would remove there. `take_down` removes one slot with
`docker compose --project-name ktrdr-sandbox-N down`, which works from the project's labels
alone: it needs neither the compose file nor the checkout that started the slot, so a slot
whose checkout was deleted (an orphan) goes the same way. Only projects named
`ktrdr-sandbox-0` to `-10` are ever named; there is no prune anywhere.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from sandbox import checkouts, compose, docker, lock, picker, runner, slotfiles, slots
from sandbox.ask import confirm
from sandbox.images import provenance
from sandbox.runner import display
from sandbox.settings import ENGINE_QUERY_TIMEOUT, LOCK_WAIT

# Compose looks for a compose file in its working directory and upwards; a project-only `down`
# must not find one (nor a .env), so it runs from the root directory with no COMPOSE_* set.
NEUTRAL_DIR = Path("/")


@dataclass(frozen=True)
class SlotPlan:
    """One slot that `down --all` acts on."""

    slot: int
    containers: int
    running: int
    volumes: tuple[str, ...]
    checkouts: tuple[str, ...]  # ktrdr-sandbox checkouts that started it (Compose's label)
    sources: tuple[str, ...]  # app checkouts it runs (label ktrdr.sandbox.source)
    # Whose database volume it is (`with_owners`): THIS_CHECKOUT, another checkout's path,
    # or UNKNOWN_OWNER; `ours` says whether --volumes removes it without --other-checkouts.
    owner: str = ""
    ours: bool = True

    @property
    def project(self) -> str:
        return slots.project_name(self.slot)

    def orphaned(self) -> bool:
        """A checkout or a source that started it is gone: only a project-wide `down` helps."""
        return any(not Path(p).is_dir() for p in (*self.checkouts, *self.sources))

    def removes_volumes(self, volumes: bool, others: bool = False) -> bool:
        """Whether `down --all` removes this slot's volumes: with --volumes, and when they are
        another checkout's (or of unknown owner) only with --other-checkouts too."""
        return volumes and bool(self.volumes) and (self.ours or others)

    def describe(self, volumes: bool, others: bool = False) -> str:
        """One line: what goes, and what stays, and whose database it is."""
        parts = []
        if self.containers:
            parts.append(f"{self.containers} container(s), {self.running} running")
        if self.volumes:
            verb = "removed" if self.removes_volumes(volumes, others) else "kept"
            if volumes and not self.ours and not others:
                verb += f": not this checkout's, {provenance.OTHERS_FLAG} removes it"
            whose = f" of {self.owner}" if self.owner else ""
            parts.append(f"volume {', '.join(self.volumes)}{whose} ({verb})")
        where = f" from {', '.join(self.checkouts)}" if self.checkouts else ""
        runs = f"; runs {', '.join(self.sources)}" if self.sources else ""
        orphan = " [orphaned]" if self.orphaned() else ""
        return f"slot {self.slot} ({self.project}){orphan}: {'; '.join(parts)}{where}{runs}"

    def acts(self, volumes: bool, others: bool = False) -> bool:
        """Whether `down` has anything to do here (a volume alone stays without --volumes)."""
        return bool(self.containers or self.removes_volumes(volumes, others))


def plan(
    containers: Sequence[docker.Container], volumes: Sequence[picker.Volume]
) -> list[SlotPlan]:
    """Every slot holding a container or a volume, by slot number (pure)."""
    held = picker.occupancy(containers, volumes)
    found = []
    for slot, occupied in held.items():
        sources = dict.fromkeys(c.source for c in containers if c.slot == slot and c.source)
        found.append(
            SlotPlan(
                slot,
                occupied.containers,
                occupied.running,
                occupied.volumes,
                occupied.checkouts,
                tuple(sources),
            )
        )
    return found


THIS_CHECKOUT = "this checkout"
UNKNOWN_OWNER = "unknown owner (made before provenance labels)"


def with_owners(
    entries: Sequence[SlotPlan],
    infos: Mapping[str, provenance.VolumeInfo],
    checkout: str,
    client_host: str,
) -> list[SlotPlan]:
    """Each slot's plan with whose database volume it holds, from the volumes' provenance
    labels (`infos` by volume name; pure). Only a volume this checkout provably created is
    ours: one of another checkout, and one older than the labels, are not."""
    found = []
    for entry in entries:
        labelled = [infos[v] for v in entry.volumes if v in infos and infos[v].has_provenance]
        if not entry.volumes:
            found.append(entry)
            continue
        if not labelled:
            found.append(replace(entry, owner=UNKNOWN_OWNER, ours=False))
            continue
        others = [o for i in labelled if (o := provenance.foreign_owner(i, checkout, client_host))]
        if others:
            found.append(replace(entry, owner=others[0], ours=False))
        else:
            found.append(replace(entry, owner=THIS_CHECKOUT, ours=True))
    # Listed by owner: this checkout's first, then each other one's together.
    return sorted(found, key=lambda e: (not e.ours, e.owner if not e.ours else "", e.slot))


def survey(environ: Mapping[str, str], root: Path) -> list[SlotPlan]:
    """`plan` of what the engine holds now (one `docker ps`, one `docker volume ls`), with
    the owner of each database volume (one `docker volume inspect` of them all)."""
    volumes = picker.sandbox_volumes(environ)
    entries = plan(docker.sandbox_containers(environ), volumes)
    names = [v.name for v in volumes]
    infos: dict[str, provenance.VolumeInfo] = {}
    if names:
        result = runner.run(
            ["docker", "volume", "inspect", *names], env=dict(environ), timeout=ENGINE_QUERY_TIMEOUT
        )
        infos = provenance.parse_inspect_all(result.stdout)
    return with_owners(entries, infos, str(root.resolve()), socket.gethostname())


def down_command(compose_cmd: Sequence[str], slot: int, volumes: bool) -> list[str]:
    """A project-only `down` (`stack.down_command` names the checkout's files, which a slot
    found on the engine may not have): Compose finds the containers, network and volumes by
    label."""
    return [*compose_cmd, "--project-name", slots.project_name(slot), *compose.down_args(volumes)]


def neutral_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without COMPOSE_* (a COMPOSE_FILE or COMPOSE_PROJECT_NAME
    exported in the shell would point Compose at another project)."""
    return {k: v for k, v in environ.items() if not k.startswith("COMPOSE_")}


def take_down(
    entry: SlotPlan,
    compose_cmd: Sequence[str],
    environ: Mapping[str, str],
    *,
    volumes: bool,
    root: Path,
    on_busy: Callable[[str], None] | None = None,
) -> list[Path]:
    """Remove one slot's containers and network (and volumes with `volumes`) under its slot
    lock; with `volumes` also the `.env.sandbox` files this tool wrote into its sources and
    this checkout's state of the slot, as `inv down --volumes` does. Returns the files removed."""
    cmd = down_command(compose_cmd, entry.slot, volumes)
    with lock.slot_lock(entry.slot, wait=LOCK_WAIT, on_busy=on_busy):
        runner.run(
            cmd,
            env=neutral_env(environ),
            cwd=NEUTRAL_DIR,
            check=f"`{display(cmd)}` failed for slot {entry.slot}; the rest were not touched",
        )
    if not volumes:
        return []
    sources = set(entry.sources) | ({slotfiles.recorded_source(root, entry.slot)} - {""})
    removed = [p for s in sources if (p := checkouts.remove_env_sandbox(Path(s))) is not None]
    return removed + slotfiles.remove_state(root, entry.slot)


def confirm_or_refuse(
    entries: Sequence[SlotPlan],
    yes: bool,
    interactive: bool | None = None,
    ask: Callable[[str], str] = input,
) -> bool:
    """Whether to go on, by the one rule (sandbox/ask.py): `--yes`, else a "y" typed on a
    terminal; with neither, SandboxError(USAGE) in one line (a script must say --yes)."""
    if not entries:
        return True
    return confirm(
        f"take down these {len(entries)} slot(s)?",
        yes,
        f"`inv down --all` would take down {len(entries)} slot(s) and there is no terminal "
        "to ask: re-run with --yes",
        interactive=interactive,
        ask=ask,
    )
