"""One slot per branch through `inv new` and `inv done`, on a real engine and real git.

The app repository is a temporary clone of a bare "origin" in a temp dir, seeded with the
KTRDR-shaped fixture app (containers/fixtures/ktrdr-fixture). `feat/one` is a new branch from
origin/main; `feat/two` exists only on origin, with another version string, so each slot's
health tells which checkout it runs. The fixture is KTRDR-shaped, so each
branch gets a full clone (`AppKind.checkout`), not a git worktree.

`inv down --all` acts on every slot, so it runs only where the machine is the suite's (CI, or
KTRDR_E2E_DOWN_ALL=1); elsewhere the unit tests cover it with a fake engine. `--slot=auto` may
briefly take a free slot outside the suite's own, and gives it back at once.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox import docker, picker
from sandbox.errors import Exit
from sandbox.runner import Result, run
from tests.e2e.conftest import (
    CLEAN_LEFTOVERS,
    E2E_SLOTS,
    Sandbox,
    claim_slots,
    project_containers,
)
from tests.e2e.test_sources import FIXTURE, assert_ok, error_lines, health

pytestmark = pytest.mark.docker

A, B = E2E_SLOTS
OWNS_MACHINE = CLEAN_LEFTOVERS or os.environ.get("KTRDR_E2E_DOWN_ALL", "") == "1"
IDENTITY = {
    "GIT_AUTHOR_NAME": "E2E",
    "GIT_AUTHOR_EMAIL": "e2e@example.invalid",
    "GIT_COMMITTER_NAME": "E2E",
    "GIT_COMMITTER_EMAIL": "e2e@example.invalid",
}


@dataclass(frozen=True)
class Repo:
    origin: Path
    main: Path  # the app's main checkout
    env: dict[str, str]  # for git here: the suite's HOME, a fixed identity

    def git(self, cwd: Path, *args: str) -> str:
        result = run(["git", "-C", str(cwd), *args], env=self.env, timeout=120)
        assert result.ok, result.tail()
        return result.stdout.strip()

    def worktree(self, branch: str) -> Path:
        return self.main.parent / f"{self.main.name}-{branch.replace('/', '-')}"


@pytest.fixture(scope="module")
def repo(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Repo:
    where = tmp_path_factory.mktemp("repos")
    made = Repo(where / "origin.git", where / "src" / "app", {**sandbox.env, **IDENTITY})
    made.git(where, "init", "-q", "--bare", "-b", "main", str(made.origin))
    made.git(where, "clone", "-q", str(made.origin), str(made.main))
    made.git(made.main, "checkout", "-q", "-b", "main")
    shutil.copytree(
        FIXTURE, made.main, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    made.git(made.main, "add", "-A")
    made.git(made.main, "commit", "-q", "-m", "the fixture app")
    made.git(made.main, "push", "-q", "origin", "main")
    # feat/two lives only on origin, with its own version.
    made.git(made.main, "checkout", "-q", "-b", "feat/two")
    (made.main / "ktrdr" / "version.py").write_text('VERSION = "two"\n')
    made.git(made.main, "commit", "-q", "-am", "version two")
    made.git(made.main, "push", "-q", "origin", "feat/two")
    made.git(made.main, "checkout", "-q", "main")
    made.git(made.main, "branch", "-q", "-D", "feat/two")
    return made


@pytest.fixture(scope="module")
def started(sandbox: Sandbox, repo: Repo) -> Iterator[dict[int, Result]]:
    claim_slots((A, B), sandbox.env)
    results: dict[int, Result] = {}
    try:
        results[A] = sandbox.inv("new", "feat/one", f"--repo={repo.main}", f"--slot={A}")
        results[B] = sandbox.inv("new", "feat/two", f"--repo={repo.main}", f"--slot={B}")
        yield results
    finally:
        for slot, branch in ((A, "feat/one"), (B, "feat/two")):
            if repo.worktree(branch).exists():
                sandbox.inv("done", f"--branch={branch}", f"--repo={repo.main}", "--force")
            if project_containers(slot):
                sandbox.inv("down", f"--slot={slot}", "--volumes")


def status_json(sandbox: Sandbox) -> dict[int, dict[str, object]]:
    result = sandbox.inv("status", "--json")
    assert_ok(result)
    doc = json.loads(result.stdout)
    assert doc["schema"] == "ktrdr-sandbox/status" and doc["version"] == 1
    return {entry["slot"]: entry for entry in doc["slots"]}


def slot_volumes(slot: int, env: dict[str, str]) -> list[str]:
    return [v.name for v in picker.sandbox_volumes(env) if v.slot == slot]


def test_new_twice_gives_two_slots_running_their_own_worktrees(
    started: dict[int, Result], repo: Repo, sandbox: Sandbox
) -> None:
    for slot in (A, B):
        assert_ok(started[slot])
        # The slot is named before anything starts.
        assert started[slot].stdout.splitlines()[0] == f"slot {slot}: free"
    assert health(A)["version"] == "fixture-1"
    assert health(B)["version"] == "two"
    shown = status_json(sandbox)
    for slot, branch in ((A, "feat/one"), (B, "feat/two")):
        assert shown[slot]["source"] == str(repo.worktree(branch))
        assert shown[slot]["branch"] == branch
        assert shown[slot]["state"] == "running"
        assert shown[slot]["app"] == "ktrdr"
    # The KTRDR kind gets full clones: its orchestrator wants `.git` to be a directory.
    one, two = repo.worktree("feat/one"), repo.worktree("feat/two")
    assert (one / ".git").is_dir() and (two / ".git").is_dir()
    # feat/two tracks origin's branch; feat/one was made from origin/main and tracks nothing.
    assert repo.git(one, "rev-parse", "feat/one") == repo.git(repo.main, "rev-parse", "main")
    assert repo.git(two, "rev-parse", "--abbrev-ref", "@{upstream}") == "origin/feat/two"
    assert repo.git(one, "remote", "get-url", "origin") == str(repo.origin)


def test_new_refuses_bad_input_and_creates_nothing(
    started: dict[int, Result], repo: Repo, sandbox: Sandbox
) -> None:
    before = sorted(p.name for p in repo.main.parent.iterdir())
    cases = [
        (("new", "bad..name", f"--repo={repo.main}"), Exit.USAGE, "not a valid git branch name"),
        (("new", "feat/x", f"--repo={repo.main.parent}"), Exit.USAGE, "is not a git repository"),
        (("new", "feat/two", f"--repo={repo.main}"), Exit.USAGE, "already checked out"),
        (("new", "feat/x", f"--repo={repo.main}", f"--slot={A}"), Exit.NO_SLOT, "not free"),
        (("done", "--branch=feat/none", f"--repo={repo.main}"), Exit.USAGE, "has no worktree"),
    ]
    for args, code, words in cases:
        result = sandbox.inv(*args)
        assert result.returncode == code, (args, result.stderr)
        [line] = error_lines(result)
        assert words in line, line
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in repo.main.parent.iterdir()) == before
    assert "feat/x" not in repo.git(repo.main, "branch", "--list")


def test_done_refuses_untracked_files_and_unpushed_commits(
    started: dict[int, Result], repo: Repo, sandbox: Sandbox
) -> None:
    one = repo.worktree("feat/one")
    (one / "notes.txt").write_text("mine\n")
    refused = sandbox.inv("done", "--branch=feat/one")
    assert refused.returncode == Exit.UNSAVED_WORK, refused.stderr
    assert "  notes.txt" in refused.stdout and "1 untracked file" in refused.stderr
    (one / "notes.txt").unlink()
    repo.git(one, "commit", "-q", "--allow-empty", "-m", "work nobody else has")
    refused = sandbox.inv("done", f"--slot={A}")
    assert refused.returncode == Exit.UNSAVED_WORK, refused.stderr
    assert "work nobody else has" in refused.stdout and "1 commit on no remote" in refused.stderr
    # Nothing was touched: the slot still answers, the worktree is still there.
    assert health(A)["version"] == "fixture-1"
    assert one.is_dir() and (one / ".env.sandbox").is_file()


def test_done_with_force_leaves_the_sibling_running(
    started: dict[int, Result], repo: Repo, sandbox: Sandbox
) -> None:
    two_before = sorted(p.name for p in repo.worktree("feat/two").iterdir())
    result = sandbox.inv("done", "--branch=feat/one", "--force")
    assert_ok(result)
    assert "work nobody else has" in result.stdout  # what --force went on despite
    assert not repo.worktree("feat/one").exists()
    assert project_containers(A) == [] and slot_volumes(A, sandbox.env) == []
    # The branch stays in the repository, with the clone's commit brought back.
    assert repo.git(repo.main, "log", "-1", "--format=%s", "feat/one") == "work nobody else has"
    # The sibling: still running its own code, its worktree as it was.
    assert health(B)["version"] == "two"
    assert sorted(p.name for p in repo.worktree("feat/two").iterdir()) == two_before
    shown = status_json(sandbox)
    assert B in shown and A not in shown


def test_shell_and_exec_run_in_the_slot(started: dict[int, Result], sandbox: Sandbox) -> None:
    result = sandbox.inv("exec", f"--slot={B}", "--", "sh", "-c", "echo 'two  words'; exit 3")
    assert result.returncode == 3
    assert "two  words" in result.stdout  # quoting survived invoke's remainder
    result = sandbox.inv("exec", f"--slot={B}", "--service=db", "--", "pg_isready", "-U", "ktrdr")
    assert_ok(result)
    shell = sandbox.inv("shell", f"--slot={B}", input_text="echo shell=$0\n")
    assert_ok(shell)
    assert "shell=bash" in shell.stdout or "shell=sh" in shell.stdout


def test_new_picks_a_free_slot_and_names_it_first(
    started: dict[int, Result], repo: Repo, sandbox: Sandbox
) -> None:
    """May take a slot outside KTRDR_E2E_SLOTS, one the engine holds nothing of, and gives it
    back at once (--no-wait: no gate). Others may start slots meanwhile: the pick is checked
    against what was free before."""
    env = sandbox.env
    held = picker.occupancy(docker.sandbox_containers(env), picker.sandbox_volumes(env))
    lowest = next(s for s in range(1, 11) if s not in held)
    result = sandbox.inv("new", "feat/auto", f"--repo={repo.main}", "--no-wait")
    try:
        assert_ok(result)
        first = result.stdout.splitlines()[0]
        assert first.endswith(": the lowest free slot"), first
        picked = int(first.split()[1].rstrip(":"))
        assert picked >= lowest and picked not in held
    finally:
        sandbox.inv("done", "--branch=feat/auto", f"--repo={repo.main}", "--force")
    assert not repo.worktree("feat/auto").exists()
    assert project_containers(picked) == []


@pytest.mark.skipif(not OWNS_MACHINE, reason="acts on every slot: CI or KTRDR_E2E_DOWN_ALL=1")
def test_down_all_removes_every_slot_and_nothing_else(
    started: dict[int, Result], sandbox: Sandbox
) -> None:
    bystander = "ktrdr-sandbox-e2e-bystander"  # no Compose label: not a slot's
    assert run(["docker", "volume", "create", bystander], env=sandbox.env, timeout=60).ok
    try:
        refused = sandbox.inv("down", "--all", "--volumes")  # no terminal, no --yes
        assert refused.returncode == Exit.USAGE and "--yes" in refused.stderr
        assert project_containers(B)
        result = sandbox.inv("down", "--all", "--volumes", "--yes")
        assert_ok(result)
        assert docker.sandbox_containers(sandbox.env) == []
        assert picker.sandbox_volumes(sandbox.env) == []
        listed = run(["docker", "volume", "ls", "-q"], env=sandbox.env, timeout=60)
        assert bystander in listed.stdout.split()
    finally:
        run(["docker", "volume", "rm", bystander], env=sandbox.env, timeout=60)
