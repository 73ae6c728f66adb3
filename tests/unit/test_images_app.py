"""Dependency images for uv-managed apps: tags, build context, commands; the engine is faked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from sandbox import ROOT
from sandbox.errors import Exit, SandboxError
from sandbox.images import app as appimages
from sandbox.runner import Result
from tests.unit.support import engine as support_engine

FIXTURE = ROOT / "containers" / "fixtures" / "ktrdr-fixture"
LOCK = 'version = 1\n\n[[package]]\nname = "app"\nversion = "1"\nsource = { editable = "." }\n'


def make_app(path: Path, lock: str = LOCK, pyproject: str = "[project]\nname = 'app'\n") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "pyproject.toml").write_text(pyproject)
    (path / "uv.lock").write_text(lock)
    return path


def with_path_dependency(path: Path, relative: str) -> Path:
    package = f'name = "lib"\nversion = "1"\nsource = {{ path = "{relative}" }}\n'
    lock = LOCK + "\n[[package]]\n" + package
    return make_app(path, lock)


# --- the checkout and the options -------------------------------------------------------


def test_a_checkout_without_a_lock_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    with pytest.raises(SandboxError) as err:
        appimages.check_source(tmp_path)
    assert err.value.code == Exit.USAGE
    assert "no uv.lock" in err.value.message and "pyproject" not in err.value.message


def test_a_directory_without_either_file_names_both(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match=r"no pyproject\.toml and no uv\.lock"):
        appimages.check_source(tmp_path)


def test_a_missing_source_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="not a directory") as err:
        appimages.check_source(tmp_path / "nowhere")
    assert err.value.code == Exit.USAGE


def test_the_fixture_is_a_uv_checkout() -> None:
    appimages.check_source(FIXTURE)


@pytest.mark.parametrize(
    ("extras", "torch", "wrong"),
    [
        (["ml;rm"], "none", "extra"),
        (["ml"], "cuda", "unknown --torch 'cuda': use one of none, debian, locked"),
    ],
)
def test_bad_options_are_refused(extras: list[str], torch: str, wrong: str) -> None:
    with pytest.raises(SandboxError, match=wrong) as err:
        appimages.check_options(extras, torch)
    assert err.value.code == Exit.USAGE


@pytest.mark.parametrize(
    ("offline", "torch", "base"),
    [
        (False, "none", "python:3.13-slim"),
        (True, "none", "ktrdr-sandbox/python-debian:3.13-trixie"),
        # Debian's torch is built for Debian's Python, online too.
        (False, "debian", "ktrdr-sandbox/python-debian:3.13-trixie"),
    ],
)
def test_python_base(offline: bool, torch: str, base: str) -> None:
    assert appimages.python_base(offline, torch) == base


# --- the tag -----------------------------------------------------------------------------


def test_tag_is_ours_and_twelve_hex_digits(tmp_path: Path) -> None:
    tag = appimages.deps_tag(make_app(tmp_path), [], "python:3.13-slim")
    assert re.fullmatch(r"ktrdr-sandbox/uv-app-deps:[0-9a-f]{12}", tag)


def test_checkouts_sharing_a_lock_share_the_image(tmp_path: Path) -> None:
    one, two = make_app(tmp_path / "one"), make_app(tmp_path / "two")
    (two / "other-source-file.py").write_text("print('different code, same lock')\n")
    assert appimages.deps_tag(one, ["ml"], "b") == appimages.deps_tag(two, ["ml"], "b")


def test_extras_order_and_repeats_do_not_change_the_tag(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    assert appimages.deps_tag(app, ["a", "b"], "x") == appimages.deps_tag(app, ["b", "a", "a"], "x")


def test_every_input_changes_the_tag(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")
    tags = {appimages.deps_tag(app, [], "base")}
    tags.add(appimages.deps_tag(app, ["ml"], "base"))
    tags.add(appimages.deps_tag(app, [], "other-base"))
    tags.add(appimages.deps_tag(app, [], "base", torch="locked"))
    tags.add(appimages.deps_tag(make_app(tmp_path / "lock", lock=LOCK + "\n"), [], "base"))
    tags.add(appimages.deps_tag(make_app(tmp_path / "pp", pyproject="[project]\n"), [], "base"))
    assert len(tags) == 6


def test_a_torch_choice_shows_in_the_tag(tmp_path: Path) -> None:
    tag = appimages.deps_tag(make_app(tmp_path), ["ml"], "base", torch="debian")
    assert tag.endswith("-torch-debian")


def test_a_local_dependency_s_content_changes_the_tag(tmp_path: Path) -> None:
    app = with_path_dependency(tmp_path, "libs/lib")
    (app / "libs" / "lib").mkdir(parents=True)
    (app / "libs" / "lib" / "pyproject.toml").write_text("v1")
    before = appimages.deps_tag(app, [], "base")
    (app / "libs" / "lib" / "pyproject.toml").write_text("v2")
    assert appimages.deps_tag(app, [], "base") != before


# --- local dependencies ------------------------------------------------------------------


def test_the_project_itself_is_not_a_local_dependency() -> None:
    assert appimages.local_sources(FIXTURE) == []


def test_a_dependency_outside_the_checkout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    app = with_path_dependency(tmp_path / "app", "../outside")
    with pytest.raises(SandboxError, match="outside the checkout") as err:
        appimages.local_sources(app)
    assert err.value.code == Exit.USAGE


def test_a_lock_that_is_not_toml_is_one_line(tmp_path: Path) -> None:
    app = make_app(tmp_path, lock="this is [ not toml")
    with pytest.raises(SandboxError, match=r"cannot read .*uv\.lock"):
        appimages.local_sources(app)


# --- certificates ------------------------------------------------------------------------


def test_extra_certs_are_the_host_s_crt_files_and_those_the_variable_names(tmp_path: Path) -> None:
    host = tmp_path / "host"
    (host / "corp").mkdir(parents=True)
    (host / "corp" / "proxy.crt").write_text("PEM")
    (host / "README").write_text("not a certificate")
    mine = tmp_path / "bundle.pem"
    mine.write_text("PEM")
    elsewhere = tmp_path / "more"
    elsewhere.mkdir()
    (elsewhere / "x.pem").write_text("PEM")
    environ = {appimages.EXTRA_CA_VARIABLE: f"{mine}:{elsewhere}"}
    found = appimages.extra_certs(environ, host)
    assert found == [host / "corp" / "proxy.crt", mine, elsewhere / "x.pem"]


def test_a_named_certificate_that_is_missing_is_an_error(tmp_path: Path) -> None:
    environ = {appimages.EXTRA_CA_VARIABLE: str(tmp_path / "gone.crt")}
    with pytest.raises(SandboxError, match=r"KTRDR_EXTRA_CA_CERTS names .*gone\.crt") as err:
        appimages.extra_certs(environ, tmp_path / "no-host-dir")
    assert err.value.code == Exit.USAGE


# --- the context and the commands --------------------------------------------------------


def test_context_holds_only_what_the_build_needs(tmp_path: Path) -> None:
    app = with_path_dependency(tmp_path / "app", "libs/lib")
    (app / "libs" / "lib" / ".git").mkdir(parents=True)
    (app / "libs" / "lib" / "pyproject.toml").write_text("lib")
    (app / "big-source-tree.py").write_text("not copied")
    certs = [tmp_path / "a" / "ca.crt", tmp_path / "b" / "ca.crt", tmp_path / "bundle.pem"]
    for cert in certs:
        cert.parent.mkdir(exist_ok=True)
        cert.write_text(f"PEM {cert}")
    (tmp_path / "tmp").mkdir()
    context = appimages.assemble_context(app, tmp_path / "tmp", certs)
    files = sorted(str(p.relative_to(context)) for p in context.rglob("*") if p.is_file())
    assert files == [
        "Dockerfile",
        "ca-certificates/00-ca.crt",
        "ca-certificates/01-ca.crt",
        "ca-certificates/02-bundle.pem.crt",
        "http-ok.sh",
        "local/libs/lib/pyproject.toml",
        "pyproject.toml",
        "uv.lock",
    ]
    assert (context / "ca-certificates" / "01-ca.crt").read_text() == f"PEM {certs[1]}"
    assert (context / "Dockerfile").read_bytes() == appimages.DOCKERFILE.read_bytes()


def test_build_command() -> None:
    cmd = appimages.build_command("t:1", Path("/tmp/c"), "base:2", ["ml", "ib"], "debian")
    assert cmd == [
        "docker",
        "build",
        "-f",
        "/tmp/c/Dockerfile",
        "--build-arg",
        "BASE_IMAGE=base:2",
        "--build-arg",
        "EXTRAS=ml ib",
        "--build-arg",
        "TORCH=debian",
        "-t",
        "t:1",
        "/tmp/c",
    ]


def test_offline_python_base_is_debootstrapped_trixie_then_debian_python() -> None:
    steps = appimages.python_base_steps(True, {"HOME": "/h"})
    assert [s.what for s in steps] == [appimages.OFFLINE_DEBIAN_BASE, appimages.OFFLINE_PYTHON_BASE]
    assert steps[0].cmd == ["bash", str(ROOT / "scripts" / "build-debian-base.sh")]
    assert steps[0].env == {"HOME": "/h", "KTRDR_DEBIAN_SUITE": "trixie"}
    assert "BASE_IMAGE=ktrdr-sandbox/debian-base:trixie" in steps[1].cmd
    assert steps[1].env["DOCKER_BUILDKIT"] == "0"


def test_online_python_base_starts_from_debian_s_published_trixie() -> None:
    (step,) = appimages.python_base_steps(False, {})
    assert "BASE_IMAGE=debian:trixie-slim" in step.cmd
    assert step.cmd[-3:] == [
        "-t",
        "ktrdr-sandbox/python-debian:3.13-trixie",
        str(ROOT / "containers"),
    ]


# --- ensure_deps_image with a fake engine ------------------------------------------------


class FakeEngine(support_engine.FakeEngine):
    """The scripted engine whose image store holds `images`; every other command is a build
    (recorded with its environment) that adds the image it tags, or fails for `fail`."""

    def __init__(self, images: set[str], fail: str | None = None) -> None:
        super().__init__()
        self.images: set[str] = images
        self.fail = fail  # a tag whose build fails
        self.builds: list[tuple[list[str], dict[str, str]]] = []
        self.contexts: list[Path] = []

    def answer(self, args: tuple[str, ...], options: dict[str, Any]) -> Result:
        if args[:3] == ("docker", "image", "inspect"):
            return super().answer(args, options)
        cmd = list(args)
        self.builds.append((cmd, dict(options["env"])))
        produced = cmd[cmd.index("-t") + 1] if "-t" in cmd else appimages.OFFLINE_DEBIAN_BASE
        if produced == self.fail or (self.fail == "deps" and "uv-app-deps" in produced):
            lines = "\n".join(f"step {n}" for n in range(30)) + "\nerror: no matching wheel"
            return Result(args, 1, lines, "")
        if cmd[-1].endswith("context"):
            self.contexts.append(Path(cmd[-1]))
            assert (Path(cmd[-1]) / "uv.lock").is_file()  # the context exists during the build
        self.images.add(produced)
        return Result(args, 0)


@pytest.fixture
def no_host_certs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(appimages, "HOST_EXTRA_CA_DIR", tmp_path / "no-certs")


def fake(monkeypatch: pytest.MonkeyPatch, images: set[str], fail: str | None = None) -> FakeEngine:
    return FakeEngine(images, fail).install(monkeypatch)


def test_an_existing_tag_is_reused_without_building(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app = make_app(tmp_path)
    tag = appimages.deps_tag(app, [], appimages.ONLINE_PYTHON_BASE)
    engine = fake(monkeypatch, {tag})
    assert appimages.ensure_deps_image(app, {}, offline=False) == appimages.Ensured(
        tag, False, 0.0, "none"
    )
    assert engine.builds == []


def test_online_build_is_one_legacy_docker_build(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_host_certs: None
) -> None:
    app = make_app(tmp_path / "app")
    engine = fake(monkeypatch, set())
    steps: list[str] = []
    tag, built, seconds, _, _ = appimages.ensure_deps_image(
        app, {"PATH": "/bin"}, offline=False, on_step=steps.append, extras=["ml"]
    )
    assert built and seconds >= 0
    ((cmd, env),) = engine.builds
    assert cmd[:2] == ["docker", "build"] and cmd[cmd.index("-t") + 1] == tag
    assert "BASE_IMAGE=python:3.13-slim" in cmd and "EXTRAS=ml" in cmd and "TORCH=none" in cmd
    assert env == {"PATH": "/bin", "DOCKER_BUILDKIT": "0"}
    assert steps == [
        f"{tag} from {app / 'uv.lock'} (extras: ml, torch: none) on python:3.13-slim, "
        "0 extra CA certificate(s)"
    ]
    assert not engine.contexts[0].exists()  # the temporary context is gone afterwards


def test_offline_build_makes_the_missing_bases_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_host_certs: None
) -> None:
    engine = fake(monkeypatch, set())
    tag, built, *_ = appimages.ensure_deps_image(make_app(tmp_path), {}, offline=True)
    produced = [cmd[cmd.index("-t") + 1] if "-t" in cmd else cmd[0] for cmd, _ in engine.builds]
    assert produced == ["bash", appimages.OFFLINE_PYTHON_BASE, tag]
    assert built


def test_offline_build_skips_a_debian_base_that_exists(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_host_certs: None
) -> None:
    engine = fake(monkeypatch, {appimages.OFFLINE_DEBIAN_BASE})
    appimages.ensure_deps_image(make_app(tmp_path), {}, offline=True)
    assert [cmd[0] for cmd, _ in engine.builds] == ["docker", "docker"]


def test_a_failed_build_raises_with_its_last_lines(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_host_certs: None
) -> None:
    fake(monkeypatch, {appimages.OFFLINE_PYTHON_BASE}, fail="deps")
    with pytest.raises(SandboxError, match=r"building ktrdr-sandbox/uv-app-deps:\w+ failed") as err:
        appimages.ensure_deps_image(make_app(tmp_path), {}, offline=True)
    assert err.value.code == Exit.COMMAND
    assert err.value.details.splitlines()[-1] == "error: no matching wheel"
    assert len(err.value.details.splitlines()) == 20


def test_a_failed_base_build_stops_before_the_app(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_host_certs: None
) -> None:
    engine = fake(monkeypatch, {appimages.OFFLINE_DEBIAN_BASE}, fail=appimages.OFFLINE_PYTHON_BASE)
    with pytest.raises(SandboxError, match=r"python-debian:3\.13-trixie failed"):
        appimages.ensure_deps_image(make_app(tmp_path), {}, offline=True)
    assert len(engine.builds) == 1


def test_bad_input_is_refused_before_the_engine_is_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    engine = fake(monkeypatch, set())
    with pytest.raises(SandboxError, match=r"no uv\.lock"):
        appimages.ensure_deps_image(tmp_path, {}, offline=True)
    with pytest.raises(SandboxError, match="unknown --torch"):
        appimages.ensure_deps_image(make_app(tmp_path / "a"), {}, offline=True, torch="rocm")
    assert engine.builds == []


# --- which torch applies, and one build per tag -------------------------------------------

TORCH_LOCK = """version = 1

[[package]]
name = "app"
version = "1"
source = { editable = "." }
dependencies = [{ name = "httpx" }]

[package.optional-dependencies]
ml = [{ name = "trainer" }]
plain = [{ name = "tomli-w" }]

[[package]]
name = "trainer"
version = "1"
dependencies = [{ name = "torch", marker = "sys_platform == 'linux'" }]

[[package]]
name = "torch"
version = "2"

[[package]]
name = "httpx"
version = "1"

[[package]]
name = "tomli-w"
version = "1"
"""


def test_the_lock_closure_follows_the_extras_and_their_dependencies(tmp_path: Path) -> None:
    app = make_app(tmp_path, TORCH_LOCK)
    assert appimages.locked_closure(app, ()) == {"httpx"}
    assert appimages.locked_closure(app, ("ml",)) == {"httpx", "trainer", "torch"}
    assert appimages.locked_closure(app, ("plain", "nope")) == {"httpx", "tomli-w"}


@pytest.mark.parametrize(
    ("extras", "torch", "applies"),
    [
        (("ml",), "debian", "debian"),  # torch comes in through the extra, transitively
        (("ml",), "locked", "locked"),
        (("plain",), "debian", "none"),  # nothing installed needs torch: no choice made
        ((), "locked", "none"),
        (("ml",), "none", "none"),
    ],
)
def test_the_torch_choice_applies_only_when_the_image_installs_torch(
    tmp_path: Path, extras: tuple[str, ...], torch: str, applies: str
) -> None:
    app = make_app(tmp_path, TORCH_LOCK)
    assert appimages.effective_torch(app, extras, torch) == applies


def test_the_fixture_extra_needs_no_torch_and_ktrdr_kind_installs_it() -> None:
    from sandbox import apps

    assert apps.KTRDR.extras == ("ml",)
    closure = appimages.locked_closure(FIXTURE, apps.KTRDR.extras)
    assert "tomli-w" in closure and "torch" not in closure
    assert appimages.effective_torch(FIXTURE, ("ml",), appimages.DEFAULT_TORCH) == "none"


def test_a_second_command_waits_for_the_build_of_the_same_tag_and_reuses_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import threading

    app = make_app(tmp_path / "app")
    environ = {"KTRDR_LOCK_DIR": str(tmp_path / "locks")}
    engine = fake(monkeypatch, set())
    tag = appimages.deps_tag(app.resolve(), [], appimages.ONLINE_PYTHON_BASE)
    waits: list[str] = []
    with appimages.build_lock(tag, environ, None):
        # The holder "builds": the image exists once it lets go.
        waiter = threading.Thread(
            target=lambda: waits.append(
                repr(appimages.ensure_deps_image(app, environ, False, on_wait=waits.append))
            )
        )
        waiter.start()
        for _ in range(100):
            if waits:
                break
            threading.Event().wait(0.05)
        engine.images.add(tag)
    waiter.join(10)
    assert waits[0].startswith("another `inv` command (pid ") and f"is building {tag}" in waits[0]
    assert "built=False" in waits[1] and "waited=0.0" not in waits[1]
    assert engine.builds == []
