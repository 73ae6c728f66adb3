"""Where a slot's database volume came from, recorded on the volume itself as labels.

A reused volume keeps the password Postgres was initialised with, whatever the env says now;
the backend then fails its healthcheck for minutes without saying why. So the sandbox creates
the volume itself, before `docker compose up`, stamped with the checkout that made it and a
salted fingerprint of the password, and preflight compares those with what this `up` would use.

Why the sandbox creates the volume, and never declares labels in the compose file (measured
with Compose v5.6.1 and engine 20.10, November 2026):

- A volume made with `docker volume create` that carries `com.docker.compose.project=<project>`
  is adopted by `compose up` silently (no warning, no prompt), even when the compose file
  declares other labels for it, because Compose only compares its `config-hash` label, which
  such a volume lacks. `compose down --volumes` removes it like any other.
- A volume without that label is used too, with a warning ("already exists but was not created
  by Docker Compose").
- Declaring `labels:` under `volumes: db-data:` changes the volume's config hash, so every
  volume Compose made earlier no longer matches: `compose up` asks "Recreate (data will be
  lost)? [y/N]". With stdin closed it takes No and carries on; on a terminal one `y` deletes
  the database; with `compose up -y` it is deleted without a question. The compose file's
  volume section therefore stays exactly as it is, and `-y` is never passed.

Docker volume labels cannot be changed after creation, so a volume made before this module
("legacy", no provenance labels) cannot be stamped later: it is adopted as it is with one
warning line. Refusing it would push every existing user to `--fresh` (losing data) for a
fact we cannot know anyway; a wrong password on such a volume is caught within seconds by
`sandbox.diagnose` from the database's own words instead.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from sandbox import slots
from sandbox.docker import PROJECT_LABEL, VOLUME_LABEL
from sandbox.errors import Exit, SandboxError

_PREFIX = "io.ktrdr.sandbox."
SCHEMA = _PREFIX + "provenance"  # "1": the label set below; a later change bumps it
CHECKOUT = _PREFIX + "checkout"
CLIENT_HOST = _PREFIX + "client-host"
SOURCE = _PREFIX + "source"
APP = _PREFIX + "app"
SALT = _PREFIX + "password-salt"
FINGERPRINT = _PREFIX + "password-fingerprint"
SCHEMA_VERSION = "1"
# 16 hex digits (64 bits) tell passwords apart; the salt keeps the same password from giving
# the same label on two volumes, so a label never doubles as a lookup key for a known password.
FINGERPRINT_HEX = 16


def fingerprint(salt: str, password: str) -> str:
    return hashlib.sha256((salt + password).encode()).hexdigest()[:FINGERPRINT_HEX]


def volume_labels(
    owner_checkout: Path | str,
    client_host: str,
    source: str,
    app: str,
    password: str,
    *,
    salt: str | None = None,
) -> dict[str, str]:
    """Our labels for a new database volume; the password only as a salted fingerprint.

    `salt` is for tests; by default a fresh random one per volume.
    """
    salt = secrets.token_hex(8) if salt is None else salt
    return {
        SCHEMA: SCHEMA_VERSION,
        CHECKOUT: str(owner_checkout),
        CLIENT_HOST: client_host,
        SOURCE: source,
        APP: app,
        SALT: salt,
        FINGERPRINT: fingerprint(salt, password),
    }


def create_volume_command(project: str, labels: Mapping[str, str]) -> list[str]:
    """`docker volume create` for the slot's database volume, carrying Compose's project and
    volume labels (so `compose up` adopts it without a word) and ours."""
    every = {PROJECT_LABEL: project, VOLUME_LABEL: slots.DB_VOLUME, **labels}
    cmd = ["docker", "volume", "create"]
    for key, value in every.items():
        cmd += ["--label", f"{key}={value}"]
    return [*cmd, slots.db_volume(project)]


def inspect_command(volume: str) -> list[str]:
    """`docker volume inspect`: a JSON list on stdout, `[]` and exit 1 when there is none."""
    return ["docker", "volume", "inspect", volume]


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    labels: Mapping[str, str]

    @property
    def has_provenance(self) -> bool:
        return SCHEMA in self.labels and FINGERPRINT in self.labels and SALT in self.labels

    @property
    def checkout(self) -> str:
        return self.labels.get(CHECKOUT, "")

    @property
    def client_host(self) -> str:
        return self.labels.get(CLIENT_HOST, "")

    @property
    def source(self) -> str:
        return self.labels.get(SOURCE, "")

    @property
    def app(self) -> str:
        return self.labels.get(APP, "")

    def password_matches(self, password: str) -> bool:
        expected = self.labels.get(FINGERPRINT, "")
        return secrets.compare_digest(fingerprint(self.labels.get(SALT, ""), password), expected)


def parse_inspect(text: str) -> VolumeInfo | None:
    """The first volume in `docker volume inspect` output, or None for none (or not JSON)."""
    try:
        data = json.loads(text) if text.strip() else []
    except ValueError:
        return None
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        return None
    entry = data[0]
    labels = entry.get("Labels") or {}
    if not isinstance(labels, dict):
        labels = {}
    return VolumeInfo(
        name=str(entry.get("Name", "")),
        labels={str(k): str(v) for k, v in labels.items()},
    )


def parse_inspect_all(text: str) -> dict[str, VolumeInfo]:
    """Every volume in `docker volume inspect A B ...` output, by name."""
    try:
        data = json.loads(text) if text.strip() else []
    except ValueError:
        return {}
    found = {}
    for entry in data if isinstance(data, list) else []:
        info = parse_inspect(json.dumps([entry]))
        if info is not None:
            found[info.name] = info
    return found


@dataclass(frozen=True)
class Expected:
    """What this `inv up` would stamp on a new volume; the password stays in memory only."""

    slot: int
    checkout: Path | str
    client_host: str
    source: str
    app: str
    password: str

    def labels(self, *, salt: str | None = None) -> dict[str, str]:
        return volume_labels(
            self.checkout, self.client_host, self.source, self.app, self.password, salt=salt
        )


class Kind(Enum):
    """What preflight does with the slot's database volume; the value is shown in status."""

    MISSING = "no database yet"  # create it with create_volume_command, then compose up
    OURS = "ours"  # made by this checkout with this password: go on
    LEGACY = "made before provenance labels"  # adopt, warn in one line
    OTHER_OWNER = "another checkout's"  # refuse
    OTHER_PASSWORD = "another password"  # refuse


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    message: str = ""  # one line for the user; empty when there is nothing to say
    code: Exit = Exit.OK

    @property
    def ok(self) -> bool:
        """Whether `up` may go on (a legacy volume goes on, with its warning)."""
        return self.kind in (Kind.MISSING, Kind.OURS, Kind.LEGACY)


# The one flag that lets a command change or remove a database another checkout created:
# `up --fresh`, `down --volumes` (and `down --all --volumes`), `restore`, `clone`.
OTHERS_FLAG = "--other-checkouts"


def fresh_hint(slot: int) -> str:
    return f"`inv up --slot={slot} --fresh` to recreate the database (its data is lost)"


def _owner(checkout: str, host: str) -> str:
    return f"{checkout} on {host}" if host else checkout


def foreign_owner(info: VolumeInfo | None, checkout: str, client_host: str) -> str | None:
    """Who owns the slot's database when that is not this checkout (`checkout` on
    `client_host`): its checkout, with its host when it has one; None for our own, for none,
    and for a volume that predates the labels (as `compare` adopts it)."""
    if info is None or not info.has_provenance:
        return None
    if info.checkout != checkout or (info.client_host and info.client_host != client_host):
        return _owner(info.checkout, info.client_host)
    return None


def others_database_error(
    slot: int, owner: str, command: str, action: str, extra: str = ""
) -> SandboxError:
    """The one refusal of every command that would change or remove a database another
    checkout created: who owns it, `command` to run there instead, and the same command
    with the override (`extra` flags before it) to `action` here."""
    flags = f"{extra} {OTHERS_FLAG}".strip()
    return SandboxError(
        f"slot {slot}'s database was created by another checkout ({owner}): run `{command}` "
        f"there, or `{command} {flags}` to {action} (its data is lost)",
        Exit.OTHER_CHECKOUT,
    )


def compare(info: VolumeInfo | None, expected: Expected) -> Verdict:
    """Whether the slot's existing database volume (None: there is none) fits this `up`.

    Owner first: another checkout's database is refused even with the same password, since
    its schema and rows belong to that checkout's branch. A source is compared only when both
    sides name one (volumes made before slots took a source name none).
    """
    slot = expected.slot
    if info is None:
        return Verdict(Kind.MISSING)
    if not info.has_provenance:
        return Verdict(
            Kind.LEGACY,
            f"slot {slot}'s database predates provenance labels: using it as it is "
            f"(if the backend cannot log in, {fresh_hint(slot)})",
        )
    owner = foreign_owner(info, str(expected.checkout), expected.client_host)
    if owner is not None:
        refusal = others_database_error(
            slot, owner, f"inv up --slot={slot}", "recreate it here", extra="--fresh"
        )
        return Verdict(Kind.OTHER_OWNER, str(refusal), refusal.code)
    if info.source and expected.source and info.source != expected.source:
        return Verdict(
            Kind.OTHER_OWNER,
            f"slot {slot}'s database was created from source {info.source!r}, not "
            f"{expected.source!r}: start it with that source, or {fresh_hint(slot)}",
            Exit.OTHER_CHECKOUT,
        )
    if not info.password_matches(expected.password):
        return Verdict(
            Kind.OTHER_PASSWORD,
            f"slot {slot}'s database was created with another password: use that password, "
            f"or {fresh_hint(slot)}",
            Exit.BAD_ENV,
        )
    return Verdict(Kind.OURS)


def fresh_plan(
    slot: int, labels: Mapping[str, str], compose_cmd: Sequence[str] = ("docker", "compose")
) -> list[list[str]]:
    """The exact commands that recreate slot `slot`'s database volume and nothing else.

    Every name comes from `slot` alone: the project's containers are removed (a volume in use,
    even by a stopped container, cannot be removed), its volumes are not (`down` without
    `--volumes`), then exactly one volume is removed by its full name and made anew with
    `labels`. `-p` without `-f` works from any directory: Compose finds the project's
    containers by their labels. Run them in order, stopping at the first failure.
    """
    project = slots.project_name(slot)
    return [
        [*compose_cmd, "-p", project, "down", "--remove-orphans"],
        ["docker", "volume", "rm", slots.db_volume(project)],
        create_volume_command(project, labels),
    ]
