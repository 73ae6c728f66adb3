"""Free-slot picking: pure rules on fabricated engines, real flocks across real processes."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from sandbox import ROOT, docker, lock, picker, ports, slots
from sandbox.errors import Exit, SandboxError
from sandbox.lock import lock_path
from sandbox.runner import run
from tests.unit.support.factories import container as fabricate
from tests.unit.support.flocks import held_elsewhere, is_free


def container(
    slot: int | str, service: str = "db", state: docker.ContainerState = "running"
) -> docker.Container:
    return fabricate(slot, service, state=state)


def volume(slot: int) -> picker.Volume:
    return picker.Volume(picker.db_volume_name(slot), slots.project_name(slot), "db-data")


# ----------------------------------------------------------------------------- pure picking


def test_lowest_free_slot() -> None:
    assert picker.pick_free_slot([], []) == 1
    assert picker.pick_free_slot([container(1), container(2, "backend")], []) == 3
    # A slot whose containers are gone still has its database: not free.
    assert picker.pick_free_slot([container(1)], [volume(2)]) == 3
    assert picker.pick_free_slot([], [], locked=frozenset({1})) == 2
    assert picker.pick_free_slot([container(1, state="exited")], []) == 2


def test_slot_zero_only_when_asked() -> None:
    assert picker.pick_free_slot([], []) == 1
    assert picker.pick_free_slot([], [], lowest=0) == 0
    assert picker.pick_free_slot([container(0)], [], lowest=0) == 1
    assert picker.pick_free_slot([container(1)], [], lowest=0) == 0


def test_other_projects_do_not_count() -> None:
    others = [container("myapp"), container("ktrdr-sandbox-01"), container("ktrdr-sandbox-11")]
    stray = picker.Volume("myapp_db-data", "myapp", "db-data")
    assert picker.pick_free_slot(others, [stray]) == 1


def test_no_free_slot_says_who_holds_what() -> None:
    held = [container(s) for s in range(1, 9)] + [container(9, state="exited")]
    with pytest.raises(SandboxError) as caught:
        picker.pick_free_slot(held, [volume(9), volume(10)], locked=frozenset({10}))
    message = str(caught.value)
    assert caught.value.code == Exit.NO_SLOT
    assert "\n" not in message
    assert message.startswith("no free slot in 1-10 (slot 1: 1 containers (1 running); ")
    assert "slot 9: 1 containers (0 running) and volume ktrdr-sandbox-9_db-data" in message
    assert "slot 10: volume ktrdr-sandbox-10_db-data and an `inv` command working on it" in message
    assert message.endswith("`inv down --slot=N --volumes`, then re-run")


def test_lowest_out_of_range() -> None:
    with pytest.raises(SandboxError, match="outside 0-10") as caught:
        picker.pick_free_slot([], [], lowest=11)
    assert caught.value.code == Exit.USAGE


def test_occupancy_lists_checkouts_and_volumes() -> None:
    held = picker.occupancy(
        [container(3), container(3, "backend", "exited"), container("other")],
        [volume(3), volume(5)],
    )
    assert sorted(held) == [3, 5]
    assert held[3] == picker.Occupancy(
        3, 2, 1, ("ktrdr-sandbox-3_db-data",), ("/home/dev/ktrdr-sandbox",)
    )
    assert held[5].describe() == "slot 5: volume ktrdr-sandbox-5_db-data"


# ----------------------------------------------------------------------------- volumes


def test_volume_ls_command() -> None:
    assert picker.volume_ls_command() == [
        "docker",
        "volume",
        "ls",
        "--filter",
        "label=com.docker.compose.project",
        "--format",
        '{"Name":{{json .Name}},"Project":{{json (.Label "com.docker.compose.project")}},'
        '"Volume":{{json (.Label "com.docker.compose.volume")}}}',
    ]


# Captured from Docker 20.10 with the format above (the first line is a volume made by hand
# with Compose's labels; the second is shaped like Compose's own for slot 2).
CAPTURED = (
    '{"Name":"worktrees-capture_db-data","Project":"worktrees-capture","Volume":"db-data"}\n'
    '{"Name":"ktrdr-sandbox-2_db-data","Project":"ktrdr-sandbox-2","Volume":"db-data"}\n'
    "\n"
)


def test_parse_volumes() -> None:
    parsed = picker.parse_volumes(CAPTURED)
    assert parsed == [
        picker.Volume("worktrees-capture_db-data", "worktrees-capture", "db-data"),
        picker.Volume("ktrdr-sandbox-2_db-data", "ktrdr-sandbox-2", "db-data"),
    ]
    assert [v.slot for v in parsed] == [None, 2]
    assert picker.pick_free_slot([container(1)], parsed) == 3


def test_volumes_by_slot() -> None:
    parsed = [*picker.parse_volumes(CAPTURED), volume(3), picker.Volume("x", "", "")]
    assert picker.volumes_by_slot(parsed) == {
        2: ["ktrdr-sandbox-2_db-data"],
        3: ["ktrdr-sandbox-3_db-data"],
    }


def test_db_volume_by_name_alone_counts() -> None:
    renamed = picker.Volume("ktrdr-sandbox-1_db-data", "", "")
    assert picker.pick_free_slot([], [renamed]) == 2


# ----------------------------------------------------------------------------- locks


def test_machine_lock_in_the_lock_dir(tmp_path: Path) -> None:
    env = {"KTRDR_LOCK_DIR": str(tmp_path / "locks")}
    with lock.pick_lock(env, wait=picker.PICK_WAIT):
        assert not is_free(tmp_path / "locks" / "pick.lock")
    assert is_free(tmp_path / "locks" / "pick.lock")


def test_machine_lock_busy_names_the_holder(tmp_path: Path) -> None:
    heard: list[str] = []
    with (
        held_elsewhere(tmp_path / "pick.lock"),
        pytest.raises(SandboxError) as caught,
        lock.pick_lock({}, wait=0.3, lock_dir=tmp_path, on_busy=heard.append),
    ):
        pass
    assert caught.value.code == Exit.LOCKED
    assert "another `inv` command (pid 4242) is picking a slot" in str(caught.value)
    assert heard == ["another `inv` command (pid 4242) is picking a slot; waiting up to 0s"]


def any_port(slot: int) -> bool:
    return True  # the machine's real ports are someone else's business in these tests


def test_claim_skips_a_slot_whose_ports_are_held_elsewhere(tmp_path: Path) -> None:
    asked: list[int] = []

    def ports_free(slot: int) -> bool:
        asked.append(slot)
        return slot not in (1, 2)

    claim = picker.Claim(lock_dir=tmp_path, survey=lambda: ([], []), ports_free=ports_free)
    with picker.claim_free_slot({}, claim) as slot:
        assert slot == 3 and asked == [1, 2, 3]
    none = picker.Claim(lock_dir=tmp_path, survey=lambda: ([], []), ports_free=lambda s: False)
    with pytest.raises(SandboxError) as caught, picker.claim_free_slot({}, none):
        pytest.fail("claimed a slot whose ports are held")
    assert caught.value.code == Exit.NO_SLOT
    assert "slot 1: its ports held by something else" in str(caught.value)


def test_ports_free_probes_the_slot_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        monkeypatch.setattr(slots, "ports", lambda slot: {"KTRDR_API_PORT": port})
        assert not picker.ports_free(7)
    assert picker.ports_free(7)


def test_locked_slots_probe_creates_nothing(tmp_path: Path) -> None:
    with held_elsewhere(lock_path(3, tmp_path)):
        lock_path(5, tmp_path).touch()  # a lock file nobody holds
        assert lock.held_slots(tmp_path) == frozenset({3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slot-3.lock", "slot-5.lock"]
    assert lock.held_slots(tmp_path / "missing") == frozenset()


def test_claim_holds_the_slot_lock_not_the_machine_lock(tmp_path: Path) -> None:
    claim = picker.Claim(
        lock_dir=tmp_path, survey=lambda: ([container(1)], []), ports_free=any_port
    )
    with held_elsewhere(lock_path(2, tmp_path)), picker.claim_free_slot({}, claim) as slot:
        assert slot == 3  # 1 has containers, 2 is locked by another `inv`
        assert not is_free(lock_path(3, tmp_path))
        assert is_free(tmp_path / "pick.lock")
    assert is_free(lock_path(3, tmp_path))


# Several processes claim at once, released together by a "go" file. Each claims a slot,
# "creates its containers" (appends the slot to a shared engine file that the survey reads),
# then prints it. Without the lock they look, think, then write: that must collide.
CHILD = """
import os, sys, time
from pathlib import Path
from sandbox import docker, picker, slots

engine, ready, go, mode = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]

def survey():
    taken = engine.read_text().split() if engine.exists() else []
    containers = [
        docker.Container(s, s, slots.project_name(int(s)), "db", "running", "Up", "/x")
        for s in taken
    ]
    return containers, []

def create(slot):
    fd = os.open(engine, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{slot}\\n".encode())
    os.close(fd)

ready.touch()
while not go.exists():
    time.sleep(0.005)
if mode == "locked":
    claim = picker.Claim(survey=survey, ports_free=lambda slot: True)
    with picker.claim_free_slot(os.environ, claim) as slot:
        time.sleep(0.2)  # `docker compose up -d` creating the containers
        create(slot)
else:
    containers, volumes = survey()
    time.sleep(0.2)
    slot = picker.pick_free_slot(containers, volumes)
    create(slot)
print(slot)
"""


def race(tmp_path: Path, mode: str, count: int = 4) -> list[int]:
    env = {**os.environ, "KTRDR_LOCK_DIR": str(tmp_path / "locks"), "PYTHONPATH": str(ROOT)}
    engine, go = tmp_path / "engine", tmp_path / "go"
    readies = [tmp_path / f"ready-{n}" for n in range(count)]
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    # run() waits for its command, so each child is started by a shell in the background;
    # the shell waits for all of them and prints their outputs in order.
    starts = " ".join(
        f"{sys.executable} {script} {engine} {ready} {go} {mode} > {tmp_path}/out-{n} &"
        for n, ready in enumerate(readies)
    )
    trigger = (
        f"while [ $(ls {tmp_path} | grep -c '^ready-') -lt {count} ]; do sleep 0.01; done; "
        f"touch {go}"
    )
    result = run(
        ["sh", "-c", f"{starts} {trigger}; wait; cat {tmp_path}/out-*"], env=env, timeout=60
    )
    assert result.ok, result.tail()
    return [int(line) for line in result.stdout.split()]


def test_concurrent_claims_never_share_a_slot(tmp_path: Path) -> None:
    picked = race(tmp_path, "locked")
    assert sorted(picked) == [1, 2, 3, 4]


def test_the_race_is_real_without_the_lock(tmp_path: Path) -> None:
    """The control: the same children without the protocol do pick one slot twice, so the
    test above could fail."""
    picked = race(tmp_path, "unlocked")
    assert len(picked) == 4
    assert len(set(picked)) < len(picked)


# ----------------------------------------------------------------------------- a named slot


def test_a_named_slot_is_claimed_only_when_free(tmp_path: Path) -> None:
    def survey() -> tuple[list[docker.Container], list[picker.Volume]]:
        return [container(1)], [volume(2)]

    claim = picker.Claim(lock_dir=tmp_path, survey=survey)
    with picker.claim_named_slot({}, 3, claim) as slot:
        assert slot == 3 and lock.held_slots(tmp_path) == frozenset({3})
    assert lock.held_slots(tmp_path) == frozenset()
    for held, words in ((1, "slot 1: 1 containers (1 running)"), (2, "volume ktrdr-sandbox-2")):
        with pytest.raises(SandboxError) as caught, picker.claim_named_slot({}, held, claim):
            pytest.fail("claimed a slot that is not free")
        assert caught.value.code == Exit.NO_SLOT
        assert words in str(caught.value) and "--slot=auto" in str(caught.value)


def test_claim_slot_auto_or_named(tmp_path: Path) -> None:
    claim = picker.Claim(
        lock_dir=tmp_path, survey=lambda: ([container(1)], []), ports_free=any_port
    )
    with picker.claim_slot({}, None, claim) as slot:
        assert slot == 2
    with picker.claim_slot({}, 7, claim) as slot:
        assert slot == 7


@pytest.mark.parametrize(
    "value,expected", [(None, None), ("auto", None), (" AUTO ", None), ("0", 0), ("10", 10)]
)
def test_parse_choice(value: str | None, expected: int | None) -> None:
    assert picker.parse_choice(value) == expected


@pytest.mark.parametrize("value,words", [("x", "auto or a whole number"), ("11", "outside 0-10")])
def test_parse_choice_refuses(value: str, words: str) -> None:
    with pytest.raises(SandboxError, match=words) as caught:
        picker.parse_choice(value)
    assert caught.value.code == Exit.USAGE


def test_a_remote_engines_ports_are_not_probed_on_this_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_local_probe(host: str, port: int) -> bool:
        raise AssertionError("probed this machine for a remote engine's port")

    monkeypatch.setattr(ports, "can_bind", no_local_probe)
    remote = picker.default_ports_free({"DOCKER_HOST": "tcp://127.0.0.2:2375"}, "0.0.0.0")
    assert remote(1)
    local = picker.default_ports_free({"DOCKER_HOST": "unix:///var/run/docker.sock"}, "")
    with pytest.raises(AssertionError):
        local(1)
