"""Seeding the shared directory from a checkout: only into an empty one, never overwriting,
never following links out of the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox import shared


def checkout_with_strategies(path: Path) -> Path:
    (path / "strategies" / "sub").mkdir(parents=True)
    (path / "strategies" / "a.yaml").write_text("name: a\n")
    (path / "strategies" / "sub" / "b.yaml").write_text("name: b\n")
    return path


def test_an_empty_shared_strategies_dir_gets_the_checkouts(tmp_path: Path) -> None:
    checkout = checkout_with_strategies(tmp_path / "checkout")
    target = tmp_path / "shared"
    (target / "strategies").mkdir(parents=True)
    report = shared.seed(checkout, target, ("strategies",))
    assert sorted(p.relative_to(target) for p in report.copied) == [
        Path("strategies/a.yaml"),
        Path("strategies/sub/b.yaml"),
    ]
    assert (target / "strategies" / "a.yaml").read_text() == "name: a\n"


def test_a_shared_dir_with_one_strategy_is_the_users_and_left_alone(tmp_path: Path) -> None:
    checkout = checkout_with_strategies(tmp_path / "checkout")
    target = tmp_path / "shared"
    (target / "strategies").mkdir(parents=True)
    (target / "strategies" / "mine.yaml").write_text("mine\n")
    assert shared.seed(checkout, target, ("strategies",)).copied == []
    assert sorted(os.listdir(target / "strategies")) == ["mine.yaml"]


def test_links_are_never_followed_out_of_the_checkout(tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("root:x\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "c.yaml").write_text("outside\n")
    checkout = checkout_with_strategies(tmp_path / "checkout")
    (checkout / "strategies" / "shadow.yaml").symlink_to(secret)
    (checkout / "strategies" / "linked").symlink_to(outside)
    target = tmp_path / "shared"
    report = shared.seed(checkout, target, ("strategies",))
    copied = {p.name for p in report.copied}
    assert copied == {"a.yaml", "b.yaml"}
    assert not (target / "strategies" / "shadow.yaml").exists()
    assert not (target / "strategies" / "linked").exists()


def test_a_checkout_without_the_directory_seeds_nothing(tmp_path: Path) -> None:
    (tmp_path / "checkout").mkdir()
    assert shared.seed(tmp_path / "checkout", tmp_path / "shared", ("strategies",)).copied == []
    assert not (tmp_path / "shared").exists()


def test_the_link_check_looks_inside_the_checkout_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = checkout_with_strategies(tmp_path / "checkout")
    # A link named like a directory of the checkout, in the directory `inv` runs from.
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "sub").symlink_to(tmp_path)
    monkeypatch.chdir(elsewhere)
    report = shared.seed(checkout, tmp_path / "shared", ("strategies",))
    assert {p.name for p in report.copied} == {"a.yaml", "b.yaml"}
