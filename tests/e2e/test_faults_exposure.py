"""Fault cases of exposure and of stuck or misleading answers, driven through `inv`.

A checkout that would show a container host files (`config -> /etc`, a link deep in a mounted
tree, a `.env.sandbox` link), an empty `--source=`, `inv done` over ignored files and in the
bare-clone layout, the shared observability network under a stopped slot, the status table
against its JSON, `--json` without an engine, and a tunnel whose `inv` was killed with SIGKILL.

Every refusal: exit code, exactly one `error:` line naming the cause and the fix, no
traceback, within 15 s, and nothing started. Slots: KTRDR_E2E_SLOTS (A, B). The module ends
with a line `faults: N/M held`, as tests/e2e/test_faults.py does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sandbox import ROOT, slots
from sandbox.errors import Exit
from sandbox.runner import Result, run
from tests.e2e.conftest import E2E_SLOTS, Sandbox, claim_slots, project_containers
from tests.e2e.test_faults import Outcome, summarize

pytestmark = pytest.mark.docker

A, B = E2E_SLOTS
LIMIT = 15.0  # seconds a refusal may take
INV = str(Path(sys.executable).parent / "inv")
FIXTURE = ROOT / "containers" / "fixtures" / "ktrdr-fixture"
REFERENCE = ROOT / "containers" / "app"
SHARED_NETWORK = slots.OBSERVABILITY_NETWORK
Env = dict[str, str] | None


# --- the suite's own bookkeeping -------------------------------------------------------------


@dataclass
class Suite:
    sandbox: Sandbox
    work: Path  # a directory of the suite's own for checkouts and repositories
    outcomes: list[Outcome] = field(default_factory=list)
    refusals: list[float] = field(default_factory=list)  # the running case's

    def inv(self, *args: str, timeout: float = 600, extra: Env = None) -> Result:
        cmd = [INV, "--search-root", str(ROOT), *args]
        return run(cmd, env={**self.sandbox.env, **(extra or {})}, cwd=ROOT, timeout=timeout)

    def refused(
        self, args: Sequence[str], code: int, words: Sequence[str], extra: Env = None
    ) -> tuple[Result, list[str]]:
        """Run `inv ARGS`; what is wrong with how it refused (empty: as asked)."""
        started = time.monotonic()
        result = self.inv(*args, extra=extra)
        seconds = time.monotonic() - started
        self.refusals.append(seconds)
        text = result.stderr + result.stdout
        errors = [line for line in text.splitlines() if line.startswith("error")]
        problems = []
        if "Traceback" in text:
            problems.append("a traceback was printed")
        if result.returncode != code:
            problems.append(f"exit {result.returncode}, expected {int(code)}")
        if len(errors) != 1:
            problems.append(f"{len(errors)} error lines, expected 1: {errors[:3]}")
        missing = [w for w in words if not any(w in line for line in errors)]
        if missing:
            problems.append(f"error line lacks {missing}")
        if seconds > LIMIT:
            problems.append(f"took {seconds:.1f}s, limit {LIMIT:.0f}s")
        if problems:
            problems.append(f"`inv {' '.join(args)}` said: {text.strip()[-800:]!r}")
        return result, problems


def ok(result: Result) -> Result:
    assert result.ok, f"exit {result.returncode}: {(result.stderr + result.stdout)[-2500:]}"
    return result


def assert_none(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


def nothing_started(slot: int) -> list[str]:
    found = project_containers(slot)
    return [f"slot {slot} has containers after a refusal: {[c.name for c in found]}"] * bool(found)


def git(cwd: Path, *args: str) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(cwd),
        "GIT_CONFIG_NOSYSTEM": "1",
        **{f"GIT_{r}_{k}": v for r in ("AUTHOR", "COMMITTER")
           for k, v in (("NAME", "Faults"), ("EMAIL", "faults@example.invalid"))},
    }  # fmt: skip
    result = run(["git", "-C", str(cwd), *args], env=env, timeout=60)
    assert result.ok, result.tail()
    return result.stdout.strip()


def copy_tree(source: Path, where: Path) -> Path:
    shutil.copytree(source, where, ignore=shutil.ignore_patterns("__pycache__", ".env.sandbox"))
    return where


def binds(slot: int, env: dict[str, str]) -> list[str]:
    """The host paths bound into the slot's containers."""
    ids = [c.id for c in project_containers(slot)]
    fmt = '{{range .Mounts}}{{if eq .Type "bind"}}{{.Source}}{{"\\n"}}{{end}}{{end}}'
    result = ok(run(["docker", "inspect", "--format", fmt, *ids], env=env, timeout=60))
    return sorted({line for line in result.stdout.splitlines() if line})


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def suite(
    sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Suite]:
    claim_slots((A, B), sandbox.env)
    state = Suite(sandbox, tmp_path_factory.mktemp("exposure"))
    try:
        yield state
    finally:
        for slot in (A, B):
            state.inv("down", f"--slot={slot}", "--volumes", timeout=300)
        state.inv("observability", "down", timeout=300)
        summarize(state.outcomes, request.config)


@pytest.fixture(autouse=True)
def outcome(suite: Suite, request: pytest.FixtureRequest) -> Iterator[None]:
    failed_before = request.session.testsfailed
    started = time.monotonic()
    suite.refusals = []
    yield
    held = request.session.testsfailed == failed_before
    suite.outcomes.append(
        Outcome(request.node.name, held, time.monotonic() - started, list(suite.refusals))
    )


# --- a checkout that would expose the host ----------------------------------------------------


def test_a_mount_root_linked_to_etc_is_refused_before_anything_starts(suite: Suite) -> None:
    checkout = copy_tree(FIXTURE, suite.work / "ktrdr-config-etc")
    shutil.rmtree(checkout / "config")
    (checkout / "config").symlink_to("/etc")
    _, problems = suite.refused(
        ["up", f"--slot={B}", f"--source={checkout}"],
        Exit.USAGE,
        ["config is a link to /etc", "outside the checkout", "remove or replace the link"],
    )
    assert_none(problems + nothing_started(B))


def test_a_link_deep_in_a_mounted_tree_is_refused(suite: Suite) -> None:
    checkout = copy_tree(REFERENCE, suite.work / "reference-deep-link")
    (checkout / "ktrdr_reference" / "static").mkdir(exist_ok=True)
    (checkout / "ktrdr_reference" / "static" / "shadow").symlink_to("../" * 12 + "etc/shadow")
    _, problems = suite.refused(
        ["up", f"--slot={B}", f"--source={checkout}", "--workers=none"],
        Exit.USAGE,
        ["ktrdr_reference/static/shadow is a link to /etc/shadow", "remove or replace"],
    )
    assert_none(problems + nothing_started(B))


def test_an_env_sandbox_link_is_refused_and_never_followed(suite: Suite) -> None:
    checkout = copy_tree(FIXTURE, suite.work / "ktrdr-env-link")
    victim = suite.work / "victim-bashrc"
    victim.write_text("export KEEP=me\n")
    (checkout / ".env.sandbox").symlink_to(victim)
    _, problems = suite.refused(
        ["up", f"--slot={B}", f"--source={checkout}"],
        Exit.USAGE,
        [".env.sandbox is a symbolic link", "will not follow", "remove it from the checkout"],
    )
    if victim.read_text() != "export KEEP=me\n":
        problems.append("the link's target was written")
    assert_none(problems + nothing_started(B))


def test_an_empty_source_is_refused_not_taken_for_none(suite: Suite) -> None:
    _, problems = suite.refused(
        ["up", f"--slot={B}", "--source="], Exit.USAGE, ["--source is empty", "unset variable"]
    )
    assert_none(problems + nothing_started(B))


def test_a_link_inside_the_checkout_works_and_nothing_else_is_bound(suite: Suite) -> None:
    """The legitimate case: the mounted package is a link within the checkout. The slot
    starts, its binds are the checkout's real package and the shared directory only; `down`
    leaves a `.env.sandbox` link (a tracked one, say) and its target alone; and once the
    source moves, the table's orphaned line names the source, as the JSON does."""
    env = suite.sandbox.env
    checkout = copy_tree(REFERENCE, suite.work / "reference-linked")
    (checkout / "src").mkdir()
    (checkout / "ktrdr_reference").rename(checkout / "src" / "ktrdr_reference")
    (checkout / "ktrdr_reference").symlink_to("src/ktrdr_reference")
    ok(suite.inv("up", f"--slot={B}", f"--source={checkout}", "--workers=none", timeout=400))
    problems = []
    # Docker lists a bind as given and resolves it on the host: judge where it leads.
    real = str((checkout / "src" / "ktrdr_reference").resolve())
    inside = (str(checkout.resolve()) + "/", str(suite.sandbox.shared.resolve()) + "/")
    leads = [os.path.realpath(source) for source in binds(B, env)]
    problems += [f"slot {B} binds {p}, outside the checkout and the shared dir"
                 for p in leads if not p.startswith(inside)]  # fmt: skip
    if real not in leads:
        problems.append(f"slot {B} does not bind the linked package {real}: {leads}")
    # Nothing of the host's /etc is readable as the app's code.
    shown = suite.inv(
        "exec", f"--slot={B}", "--service=backend", "--", "ls", "/app/ktrdr_reference"
    )
    if "shadow" in shown.stdout or "passwd" in shown.stdout:
        problems.append(f"the container sees host files: {shown.stdout[:300]!r}")
    # The source moves: both views say orphaned, and the table names the source.
    moved = checkout.with_name("reference-linked-moved")
    checkout.rename(moved)
    try:
        table = ok(suite.inv("status", f"--slot={B}")).stdout
        doc = json.loads(ok(suite.inv("status", "--json", f"--slot={B}")).stdout)
        [entry] = doc["slots"]
        if entry["state"] != "orphaned" or not entry["orphaned"]:
            problems.append(f"JSON does not say orphaned: {entry['state']}")
        if f"orphaned: {checkout} is gone" not in table or " orphaned" not in table:
            problems.append(f"the table does not name the moved source: {table!r}")
    finally:
        moved.rename(checkout)
    victim = suite.work / "ours-looking"
    victim.write_text("# Written by ktrdr-sandbox for slot 4\n")
    (checkout / ".env.sandbox").symlink_to(victim)
    ok(suite.inv("down", f"--slot={B}", "--volumes", timeout=300))
    if not (checkout / ".env.sandbox").is_symlink() or not victim.is_file():
        problems.append("`inv down` removed the .env.sandbox link or its target")
    assert_none(problems)


# --- inv done: ignored work and the bare-clone layout ----------------------------------------


def app_repository(where: Path) -> Path:
    origin = where / "origin.git"
    seed = where / "seed"
    git(where, "init", "-q", "--bare", "-b", "main", str(origin))
    git(where, "init", "-q", "-b", "main", str(seed))
    (seed / ".gitignore").write_text("models/\n*.secret\n__pycache__/\n.venv/\n")
    (seed / "README").write_text("app\n")
    git(seed, "add", ".")
    git(seed, "commit", "-q", "-m", "start")
    git(seed, "remote", "add", "origin", str(origin))
    git(seed, "push", "-q", "origin", "main")
    return origin


def test_done_refuses_to_delete_ignored_work_but_not_caches(suite: Suite) -> None:
    where = suite.work / "done-ignored"
    where.mkdir()
    origin = app_repository(where)
    repo = where / "src" / "app"
    git(where, "clone", "-q", str(origin), str(repo))
    tree = where / "src" / "app-feature"
    git(repo, "worktree", "add", "-q", "-b", "feature", str(tree), "origin/main")
    (tree / "models").mkdir()
    (tree / "models" / "net.pt").write_bytes(os.urandom(1 << 20))
    (tree / "prod.secret").write_text("token\n")
    (tree / "__pycache__").mkdir()
    (tree / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    args = ["done", "--branch=feature", f"--repo={repo}"]
    result, problems = suite.refused(
        args, Exit.UNSAVED_WORK, ["2 ignored files (not caches)", "--force"]
    )
    if "models/" not in result.stdout or "prod.secret" not in result.stdout:
        problems.append(f"the refusal does not list the ignored work: {result.stdout!r}")
    if not (tree / "models" / "net.pt").is_file() or not (tree / "prod.secret").is_file():
        problems.append("a refused `inv done` deleted ignored work")
    # Caches alone are no reason to refuse.
    shutil.rmtree(tree / "models")
    (tree / "prod.secret").unlink()
    done = suite.inv(*args)
    if not done.ok or tree.exists():
        problems.append(f"`inv done` over caches alone failed: {done.stderr[-500:]!r}")
    # --force says what it overrides.
    git(repo, "worktree", "add", "-q", str(tree), "feature")
    (tree / "prod.secret").write_text("token\n")
    forced = ok(suite.inv(*args, "--force"))
    if "--force overrides: 1 ignored file (not a cache)" not in forced.stdout:
        problems.append(f"--force does not say what it overrides: {forced.stdout!r}")
    assert_none(problems)


def test_done_in_the_bare_clone_layout_counts_only_the_branchs_commits(suite: Suite) -> None:
    where = suite.work / "done-bare"
    where.mkdir()
    origin = app_repository(where)
    bare = where / "src" / "app.git"
    git(where, "clone", "-q", "--bare", str(origin), str(bare))
    assert git(bare, "for-each-ref", "refs/remotes/") == ""  # no remote-tracking refs
    tree = where / "src" / "app-topic"
    git(bare, "worktree", "add", "-q", "-b", "topic", str(tree), "main")
    problems = []
    done = suite.inv("done", "--branch=topic", f"--repo={bare}")
    if not done.ok or tree.exists():
        problems.append(f"`inv done` refused over origin's own commits: {done.stderr[-500:]!r}")
    git(bare, "worktree", "add", "-q", "-b", "work", str(tree), "main")
    (tree / "mine.py").write_text("x = 1\n")
    git(tree, "add", "mine.py")
    git(tree, "commit", "-q", "-m", "mine")
    result, refused = suite.refused(
        ["done", "--branch=work", f"--repo={bare}"], Exit.UNSAVED_WORK, ["1 commit on no remote"]
    )
    if "mine" not in result.stdout:
        problems.append(f"the refusal does not list the commit: {result.stdout!r}")
    assert_none(problems + refused)


# --- shared observability under a stopped slot -----------------------------------------------


def test_a_stopped_shared_slot_keeps_the_shared_stack_and_heals(suite: Suite) -> None:
    env = suite.sandbox.env
    ok(suite.inv("observability", "up", timeout=400))
    up = ["up", f"--slot={A}", "--observability=shared", "--workers=none"]
    ok(suite.inv(*up, timeout=400))
    ids = [c.id for c in project_containers(A)]
    ok(run(["docker", "stop", *ids], env=env, timeout=120))
    _, problems = suite.refused(
        ["observability", "down"],
        Exit.OTHER_LAYOUT,
        [f"slot {A} (stopped)", "shared observability stack", f"`inv down --slot={A}`"],
    )
    # The network goes anyway (a `docker network prune`, or an older version's down): the
    # shared stack is removed by hand, made anew, and the slot's `up` must heal.
    down = ["docker", "compose", "-p", slots.OBSERVABILITY_PROJECT, "down", "--volumes"]
    ok(run(down, env=env, cwd=suite.work, timeout=300))
    ok(run(["docker", "network", "rm", SHARED_NETWORK], env=env, timeout=60))
    ok(suite.inv("observability", "up", timeout=400))
    healed = suite.inv(*up, timeout=400)
    if not healed.ok or "not found" in healed.stderr:
        problems.append(f"`inv up` did not heal: {(healed.stderr + healed.stdout)[-1500:]!r}")
    elif "healed" not in healed.stdout:
        problems.append(f"`inv up` did not say it healed: {healed.stdout[-800:]!r}")
    ok(suite.inv("down", f"--slot={A}", "--volumes", timeout=300))
    ok(suite.inv("observability", "down", timeout=300))
    assert_none(problems)


# --- one state for the table and the JSON ----------------------------------------------------


def test_a_crashed_worker_is_failed_in_the_table_and_the_json(suite: Suite) -> None:
    env = suite.sandbox.env
    ok(suite.inv("up", f"--slot={A}", "--workers=light", timeout=400))
    worker = next(c for c in project_containers(A) if c.service == "training-worker-1")
    # SIGSEGV to every process under the container's init (which ignores it itself): the
    # worker dies as by a crash, and the container exits 139.
    crash = ["docker", "exec", worker.id, "sh", "-c", "kill -SEGV -1"]
    run(crash, env=env, timeout=60)
    for _ in range(100):
        if not any(c.running for c in project_containers(A) if c.id == worker.id):
            break
        time.sleep(0.1)
    table = ok(suite.inv("status", f"--slot={A}")).stdout
    [entry] = json.loads(ok(suite.inv("status", "--json", f"--slot={A}")).stdout)["slots"]
    problems = []
    [row] = [line for line in table.splitlines() if line.startswith(f"{A} ")]
    cells = row.split()
    if entry["state"] != "failed" or cells[2] != "failed":
        problems.append(f"table says {cells[2]!r}, JSON says {entry['state']!r}: {row!r}")
    counts = f"{entry['services']['healthy']}/{entry['services']['total']}"
    if counts not in cells:
        problems.append(f"the table's counts are not the JSON's {counts}: {row!r}")
    ok(suite.inv("down", f"--slot={A}", "--volumes", timeout=300))
    assert_none(problems)


def test_json_without_an_engine_is_a_document_with_an_error(suite: Suite) -> None:
    problems = []
    for args in (["status", "--json"], ["verify", "--json", f"--slot={A}"]):
        result, refused = suite.refused(
            args, Exit.NO_ENGINE, ["Docker engine is not reachable"],
            extra={"DOCKER_HOST": f"unix://{suite.work}/no-engine.sock"},
        )  # fmt: skip
        problems += refused
        try:
            doc = json.loads(result.stdout)
        except ValueError:
            problems.append(f"`inv {' '.join(args)}` printed no JSON: {result.stdout[:300]!r}")
            continue
        if doc.get("error", {}).get("code") != Exit.NO_ENGINE or doc.get("slots") != []:
            problems.append(f"no error member: {doc}")
    assert_none(problems)


# --- a tunnel whose inv was killed ----------------------------------------------------------

# An `ssh -N -L ...` stand-in: its command line reads as ssh's, and it holds the forwards'
# ports on 127.0.0.1 as ssh does.
FAKE_SSH = """
import socket, sys, time
held = []
for i, arg in enumerate(sys.argv):
    if arg == "-L":
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", int(sys.argv[i + 1].split(":")[1])))
        s.listen()
        held.append(s)
time.sleep(3600)
"""


def fake_ssh_path(where: Path) -> str:
    where.mkdir(parents=True, exist_ok=True)
    (where / "fake_ssh.py").write_text(FAKE_SSH)
    script = where / "bin" / "ssh"
    script.parent.mkdir(parents=True, exist_ok=True)
    python = os.path.realpath(sys.executable)
    script.write_text(
        "#!/bin/bash\n"
        f'PYTHONHOME={sys.base_prefix} exec -a ssh {python} {where / "fake_ssh.py"} "$@"\n'
    )
    script.chmod(0o755)
    return f"{script.parent}:{os.environ['PATH']}"


def ssh_pids(slot: int) -> list[int]:
    """Processes whose command line is an `ssh -N` forwarding the slot's API port."""
    wanted = f"127.0.0.1:{slots.ports(slot)['KTRDR_API_PORT']}:"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args[:1] == [b"ssh"] and any(a.decode().startswith(wanted) for a in args):
            found.append(int(entry.name))
    return found


def wait_for(check: object, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(check) and check():
            return True
        time.sleep(0.1)
    return False


def test_a_killed_tunnel_is_cleaned_by_the_next_and_a_taken_port_is_named(suite: Suite) -> None:
    env = {
        **suite.sandbox.env,
        "PATH": fake_ssh_path(suite.work / "tunnel"),
        "DOCKER_HOST": "ssh://me@127.0.0.1",
    }
    cmd = [INV, "--search-root", str(ROOT), "tunnel", f"--slot={B}"]
    first = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    problems = []
    second: subprocess.Popen[str] | None = None
    try:
        assert wait_for(lambda: len(ssh_pids(B)) == 1), "the first tunnel's ssh never started"
        [orphan] = ssh_pids(B)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        if ssh_pids(B) != [orphan]:
            problems.append("the ssh did not outlive its killed `inv tunnel` (nothing to test)")
        record = Path(env["KTRDR_LOCK_DIR"]) / f"tunnel-slot-{B}.json"
        aside = record.with_name("aside.json")
        record.rename(aside)  # as if no record: the port must be named with its holder
        _, refused = suite.refused(
            ["tunnel", f"--slot={B}"], Exit.PORT_TAKEN, [f"(pid {orphan})", "is taken"],
            extra={"PATH": env["PATH"], "DOCKER_HOST": env["DOCKER_HOST"]},
        )  # fmt: skip
        problems += refused
        aside.rename(record)
        second = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert second.stdout is not None
        said = second.stdout.readline()
        if f"stopped the ssh (pid {orphan}) a killed `inv tunnel` of slot {B}" not in said:
            problems.append(f"the next `inv tunnel` did not say it cleaned up: {said!r}")
        if not wait_for(lambda: orphan not in ssh_pids(B)):
            problems.append(f"the left-over ssh {orphan} still runs")
        if not wait_for(lambda: len(ssh_pids(B)) == 1):
            problems.append("the next tunnel's ssh did not start")
        second.send_signal(signal.SIGINT)  # Ctrl-C closes the tunnel, its ssh with it
        rest, _ = second.communicate(timeout=15)
        if "tunnel closed" not in rest or not wait_for(lambda: not ssh_pids(B)):
            problems.append(f"Ctrl-C left an ssh or said nothing: {rest!r} {ssh_pids(B)}")
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        for pid in ssh_pids(B):
            os.kill(pid, signal.SIGKILL)
    assert_none(problems)
