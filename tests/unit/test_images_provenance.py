"""Database volume provenance: labels, commands, and the verdict preflight acts on."""

from __future__ import annotations

import json

import pytest

from sandbox.errors import Exit
from sandbox.images import provenance
from sandbox.images.provenance import Expected, Kind, VolumeInfo

HERE = "/home/dev/ktrdr-sandbox"


def expected(slot: int = 5, password: str = "localdev", **kw: str) -> Expected:
    fields = {"checkout": HERE, "client_host": "laptop", "source": "", "app": "reference"}
    fields.update(kw)
    return Expected(slot=slot, password=password, **fields)


def volume(labels: dict[str, str], slot: int = 5) -> VolumeInfo:
    return VolumeInfo(f"ktrdr-sandbox-{slot}_db-data", labels)


def test_labels_hold_a_salted_fingerprint_never_the_password() -> None:
    labels = provenance.volume_labels(HERE, "laptop", "", "reference", "s3cret-pw", salt="ab")
    assert "s3cret-pw" not in json.dumps(labels)
    assert labels[provenance.SALT] == "ab"
    assert len(labels[provenance.FINGERPRINT]) == provenance.FINGERPRINT_HEX
    assert labels[provenance.CHECKOUT] == HERE


def test_each_volume_gets_its_own_salt() -> None:
    one = provenance.volume_labels(HERE, "laptop", "", "reference", "localdev")
    two = provenance.volume_labels(HERE, "laptop", "", "reference", "localdev")
    assert one[provenance.SALT] != two[provenance.SALT]
    assert one[provenance.FINGERPRINT] != two[provenance.FINGERPRINT]


def test_create_command_carries_composes_labels_so_compose_adopts_the_volume() -> None:
    cmd = provenance.create_volume_command("ktrdr-sandbox-5", {"io.ktrdr.sandbox.app": "ref"})
    assert cmd == [
        "docker", "volume", "create",
        "--label", "com.docker.compose.project=ktrdr-sandbox-5",
        "--label", "com.docker.compose.volume=db-data",
        "--label", "io.ktrdr.sandbox.app=ref",
        "ktrdr-sandbox-5_db-data",
    ]  # fmt: skip


def test_parse_inspect_reads_labels_and_none_for_no_volume() -> None:
    text = json.dumps([{"Name": "ktrdr-sandbox-5_db-data", "Labels": {"a": "b"}}])
    assert provenance.parse_inspect(text) == VolumeInfo("ktrdr-sandbox-5_db-data", {"a": "b"})
    assert provenance.parse_inspect("[]") is None
    assert provenance.parse_inspect("") is None
    assert provenance.parse_inspect("Error: No such volume") is None
    nolabels = json.dumps([{"Name": "v", "Labels": None}])
    assert provenance.parse_inspect(nolabels) == VolumeInfo("v", {})


def test_no_volume_is_created() -> None:
    assert provenance.compare(None, expected()).kind is Kind.MISSING


def test_own_volume_with_the_same_password_goes_on() -> None:
    verdict = provenance.compare(volume(expected().labels()), expected())
    assert verdict.kind is Kind.OURS and verdict.ok and verdict.message == ""


def test_another_password_refuses_in_one_line_with_both_fixes() -> None:
    verdict = provenance.compare(volume(expected().labels()), expected(password="other"))
    assert verdict.kind is Kind.OTHER_PASSWORD and not verdict.ok
    assert verdict.message == (
        "slot 5's database was created with another password: use that password, or "
        "`inv up --slot=5 --fresh` to recreate the database (its data is lost)"
    )
    assert "\n" not in verdict.message


def test_another_checkout_refuses_and_names_it() -> None:
    mine = volume(expected(checkout="/tmp/feature-x").labels())
    verdict = provenance.compare(mine, expected())
    assert verdict.kind is Kind.OTHER_OWNER and verdict.code is Exit.OTHER_CHECKOUT
    assert verdict.message == (
        "slot 5's database was created by another checkout (/tmp/feature-x on laptop): run "
        "`inv up --slot=5` there, or `inv up --slot=5 --fresh --other-checkouts` to recreate "
        "it here (its data is lost)"
    )


def test_foreign_owner_is_another_checkout_or_host_never_ours_legacy_or_none() -> None:
    assert provenance.foreign_owner(None, HERE, "laptop") is None
    assert provenance.foreign_owner(volume({"a": "b"}), HERE, "laptop") is None
    ours = volume(expected().labels())
    assert provenance.foreign_owner(ours, HERE, "laptop") is None
    assert provenance.foreign_owner(ours, "/srv/other", "laptop") == f"{HERE} on laptop"
    assert provenance.foreign_owner(ours, HERE, "ci") == f"{HERE} on laptop"


def test_the_one_refusal_names_the_owner_the_command_there_and_the_override() -> None:
    refusal = provenance.others_database_error(
        3, "/srv/other", "inv down --slot=3 --volumes", "remove it anyway"
    )
    assert refusal.code is Exit.OTHER_CHECKOUT and "\n" not in str(refusal)
    assert str(refusal) == (
        "slot 3's database was created by another checkout (/srv/other): run `inv down "
        "--slot=3 --volumes` there, or `inv down --slot=3 --volumes --other-checkouts` to "
        "remove it anyway (its data is lost)"
    )


def test_parse_inspect_all_reads_every_volume_by_name() -> None:
    text = json.dumps([{"Name": "a", "Labels": {"x": "1"}}, {"Name": "b", "Labels": None}])
    assert provenance.parse_inspect_all(text) == {
        "a": VolumeInfo("a", {"x": "1"}),
        "b": VolumeInfo("b", {}),
    }
    assert provenance.parse_inspect_all("garbage") == {}


def test_another_client_host_is_another_owner() -> None:
    verdict = provenance.compare(volume(expected(client_host="ci").labels()), expected())
    assert verdict.kind is Kind.OTHER_OWNER


def test_source_compared_only_when_both_name_one() -> None:
    assert provenance.compare(volume(expected().labels()), expected(source="main")).ok
    made = volume(expected(source="main").labels())
    assert provenance.compare(made, expected(source="feature")).kind is Kind.OTHER_OWNER


def test_legacy_volume_is_adopted_with_one_warning_line() -> None:
    legacy = volume({"com.docker.compose.project": "ktrdr-sandbox-5"})
    verdict = provenance.compare(legacy, expected(password="anything"))
    assert verdict.kind is Kind.LEGACY and verdict.ok
    assert "\n" not in verdict.message and "--fresh" in verdict.message


@pytest.mark.parametrize("slot", [0, 5, 10])
def test_fresh_plan_touches_only_that_slot(slot: int) -> None:
    labels = expected(slot=slot).labels(salt="00")
    plan = provenance.fresh_plan(slot, labels)
    project = f"ktrdr-sandbox-{slot}"
    assert plan == [
        ["docker", "compose", "-p", project, "down", "--remove-orphans"],
        ["docker", "volume", "rm", f"{project}_db-data"],
        provenance.create_volume_command(project, labels),
    ]
    flat = " ".join(" ".join(cmd) for cmd in plan)
    others = [s for s in range(11) if s != slot]
    assert not any(f"ktrdr-sandbox-{o}_" in flat or f"ktrdr-sandbox-{o} " in flat for o in others)
    assert "--volumes" not in flat and "prune" not in flat
