"""Where the engine is, and the commands that run on its host: no Docker needed.

The helper containers' shell and perl scripts are run here for real, on this machine, against
temporary directories and sockets: the same text the engine's host runs.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import engine
from sandbox.engine import Engine, Kind
from sandbox.errors import Exit, SandboxError
from sandbox.runner import Result, run
from sandbox.shared import SUBDIRS
from tests.unit.support.engine import FakeEngine

IMAGE = "ktrdr-sandbox/debian-base:bookworm"


def context_output(host: str, name: str = "remote") -> str:
    """What `docker context inspect` prints (trimmed to the fields read)."""
    return json.dumps(
        [
            {
                "Name": name,
                "Metadata": {},
                "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": False}},
                "TLSMaterial": {},
                "Storage": {"MetadataPath": "<IN MEMORY>", "TLSPath": "<IN MEMORY>"},
            }
        ]
    )


# --- where the engine is --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("docker_host", "kind", "host"),
    [
        ("unix:///var/run/docker.sock", Kind.LOCAL, ""),
        ("unix:///home/me/.docker/run/docker.sock", Kind.LOCAL, ""),
        ("tcp://127.0.0.2:2375", Kind.TCP, "127.0.0.2"),
        ("tcp://build-box.lan:2376", Kind.TCP, "build-box.lan"),
        ("tcp://[fd00::5]:2375", Kind.TCP, "fd00::5"),
        ("ssh://root@127.0.0.2:2222", Kind.SSH, "127.0.0.2"),
        ("ssh://me@big-machine", Kind.SSH, "big-machine"),
        ("ssh://ktrdr-remote", Kind.SSH, "ktrdr-remote"),
    ],
)
def test_docker_host_forms(docker_host: str, kind: Kind, host: str) -> None:
    found = engine.resolve({"DOCKER_HOST": docker_host}, None)
    assert (found.kind, found.host, found.endpoint) == (kind, host, docker_host)
    assert found.local is (kind is Kind.LOCAL)
    assert found.source == "DOCKER_HOST"


@pytest.mark.parametrize(
    "docker_host", ["http://x:1", "tcp://", "tcp://host:notaport", "ssh://", "/var/run/x.sock"]
)
def test_bad_docker_host_is_one_clear_error(docker_host: str) -> None:
    with pytest.raises(SandboxError) as caught:
        engine.resolve({"DOCKER_HOST": docker_host}, None)
    assert caught.value.code is Exit.NO_ENGINE
    assert "DOCKER_HOST=" in caught.value.message
    assert "tcp://HOST:PORT" in caught.value.message


def test_docker_host_wins_over_the_context() -> None:
    found = engine.resolve(
        {"DOCKER_HOST": "tcp://127.0.0.2:2375"}, context_output("ssh://me@elsewhere")
    )
    assert found.host == "127.0.0.2"


def test_context_names_the_engine_when_docker_host_is_unset() -> None:
    found = engine.resolve({}, context_output("ssh://me@big-machine:2222", name="big"))
    assert (found.kind, found.host, found.source) == (Kind.SSH, "big-machine", "context big")


def test_default_context_is_local() -> None:
    found = engine.resolve({}, context_output("unix:///var/run/docker.sock", name="default"))
    assert found.local
    assert found.source == "context default"


def test_no_docker_host_and_no_context_is_the_local_socket() -> None:
    found = engine.resolve({"DOCKER_HOST": "  "}, None)
    assert found.local
    assert found.endpoint == engine.DEFAULT_SOCKET


@pytest.mark.parametrize("output", ["", "not json", "[]", "[{}]", '[{"Endpoints": {}}]', "{}"])
def test_unreadable_context_output_is_one_clear_error(output: str) -> None:
    with pytest.raises(SandboxError) as caught:
        engine.from_context(output)
    assert caught.value.code is Exit.NO_ENGINE
    assert "docker context" in caught.value.message


# --- where the client connects ------------------------------------------------------------


@pytest.mark.parametrize(
    ("bind", "connect"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("0.0.0.0", "127.0.0.1"),
        ("", "127.0.0.1"),
        ("::", "::1"),
        ("[::1]", "::1"),
        ("192.168.1.5", "192.168.1.5"),
    ],
)
def test_local_engine_connects_where_it_binds(bind: str, connect: str) -> None:
    local = engine.resolve({}, None)
    assert local.connect_host(bind) == connect
    assert local.unreachable_bind(bind) is None


@pytest.mark.parametrize("bind", ["0.0.0.0", "127.0.0.1", "10.0.0.7"])
def test_remote_engine_connects_to_its_host_whatever_the_bind(bind: str) -> None:
    for url in ("tcp://127.0.0.2:2375", "ssh://root@127.0.0.2:2222"):
        assert engine.resolve({"DOCKER_HOST": url}, None).connect_host(bind) == "127.0.0.2"


def test_connect_override_wins_for_local_and_remote() -> None:
    for url in ("unix:///var/run/docker.sock", "ssh://ktrdr-remote"):
        found = engine.resolve({"DOCKER_HOST": url, engine.CONNECT_HOST_VARIABLE: " [::1] "}, None)
        assert found.connect_host("0.0.0.0") == "::1"


def test_override_applies_to_a_context_too() -> None:
    found = engine.resolve(
        {engine.CONNECT_HOST_VARIABLE: "tunnel.local"}, context_output("ssh://me@box")
    )
    assert found.connect_host("127.0.0.1") == "tunnel.local"
    assert found.unreachable_bind("127.0.0.1") is None


def test_loopback_bind_on_a_remote_host_is_unreachable_and_says_what_to_do() -> None:
    remote = engine.resolve({"DOCKER_HOST": "tcp://127.0.0.2:2375"}, None)
    why = remote.unreachable_bind("127.0.0.1")
    assert why is not None
    assert "KTRDR_BIND_ADDR=0.0.0.0" in why
    assert "KTRDR_CONNECT_HOST" in why
    assert remote.unreachable_bind("0.0.0.0") is None


def test_describe_says_which_host() -> None:
    assert "this machine" in engine.resolve({}, None).describe()
    remote = engine.resolve({}, context_output("tcp://box:2375", name="box"))
    assert remote.describe() == "box (tcp://box:2375, from context box)"


def test_detect_does_not_ask_docker_when_docker_host_is_set() -> None:
    # PATH is empty: a `docker context inspect` call would fail and change nothing, so the
    # answer must come from DOCKER_HOST alone.
    found = engine.detect({"DOCKER_HOST": "ssh://me@box", "PATH": ""})
    assert found == Engine(Kind.SSH, "ssh://me@box", "box", "DOCKER_HOST")


def test_the_current_context_comes_from_the_cli_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "docker"
    config.mkdir()
    env = {"DOCKER_CONFIG": str(config), "PATH": ""}
    assert engine.context_name(env) == "default"  # no config.json
    (config / "config.json").write_text('{"auths": {}}')
    assert engine.context_name(env) == "default"
    # The default context is the local socket: answered without docker (PATH is empty).
    assert engine.detect(env) == engine.LOCAL
    (config / "config.json").write_text('{"currentContext": "big-box"}')
    assert engine.context_name(env) == "big-box"
    assert engine.context_name({**env, "DOCKER_CONTEXT": "other"}) == "other"
    (config / "config.json").write_text("not json")
    assert engine.context_name(env) == "default"
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text('{"currentContext": "from-home"}')
    assert engine.context_name({"HOME": str(home)}) == "from-home"
    # Another context is docker's to resolve.
    docker = FakeEngine().install(monkeypatch)
    docker.on(answer=Result((), 0, context_output("ssh://me@big-box", name="big-box")))
    (config / "config.json").write_text('{"currentContext": "big-box"}')
    found = engine.detect(env)
    assert (found.host, found.source) == ("big-box", "context big-box")
    assert docker.commands == [("docker", "context", "inspect")]


def test_detect_with_an_unreadable_named_context_is_one_clear_error() -> None:
    with pytest.raises(SandboxError) as caught:
        engine.detect({"DOCKER_CONTEXT": "nope", "PATH": ""})
    assert "DOCKER_CONTEXT='nope'" in caught.value.message


# --- the shared directory on the engine's host ---------------------------------------------


def test_check_command_mounts_without_creating() -> None:
    cmd = engine.shared_dir_check_command("/home/me/.ktrdr/shared", IMAGE)
    assert cmd[:4] == ["docker", "run", "--rm", "--pull=never"]
    # --mount, not -v: a missing source is an error, never a new empty directory.
    assert "--mount=type=bind,source=/home/me/.ktrdr/shared,target=/probe,readonly" in cmd
    assert "--volume" not in cmd
    assert cmd[cmd.index(IMAGE) :][:3] == [IMAGE, "sh", "-c"]
    assert cmd[-4:] == ["/probe", "data", "models", "strategies"]


def test_check_command_quotes_a_path_with_commas() -> None:
    cmd = engine.shared_dir_check_command("/data/a,b", IMAGE)
    assert '--mount=type=bind,"source=/data/a,b",target=/probe,readonly' in cmd


def sh(script: str, directory: Path, env: dict[str, str] | None = None) -> Result:
    """Run a helper script here, with `directory` in place of the container's /probe."""
    return run(
        ["sh", "-c", script, str(directory), *SUBDIRS],
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_check_script_reports_each_subdirectory(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "strategies").mkdir()
    state = engine.parse_shared_check(sh(engine.CHECK_SCRIPT, tmp_path), str(tmp_path))
    assert state == engine.SharedDir(True, ("models",))
    assert not state.ready


def test_check_script_on_a_file_says_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    state = engine.parse_shared_check(sh(engine.CHECK_SCRIPT, tmp_path / "file"), "f")
    assert state.not_a_directory and not state.ready


def test_missing_source_reads_as_missing_directory() -> None:
    refused = Result(
        ("docker",),
        125,
        "",
        'docker: Error response from daemon: invalid mount config for type "bind": '
        "bind source path does not exist: /home/me/.ktrdr/shared\n",
    )
    state = engine.parse_shared_check(refused, "/home/me/.ktrdr/shared")
    assert state == engine.SharedDir(False, SUBDIRS)


def test_other_probe_failure_is_a_shared_dir_error() -> None:
    failed = Result(("docker",), 125, "", "Unable to find image 'x' locally\n")
    with pytest.raises(SandboxError) as caught:
        engine.parse_shared_check(failed, "/s")
    assert caught.value.code is Exit.SHARED_DIR
    assert "on the engine's host" in caught.value.message


def test_create_command_and_script_make_only_what_is_missing(tmp_path: Path) -> None:
    cmd = engine.shared_dir_create_command("/srv/shared", IMAGE)
    assert cmd[cmd.index("--volume") :][:2] == ["--volume", "/srv/shared:/probe"]
    assert "--env" not in cmd
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "keep.pt").write_text("weights")
    result = sh(engine.CREATE_SCRIPT, tmp_path)
    assert result.ok, result.stderr
    assert engine.parse_created(result.stdout) == ("data", "strategies")
    assert (tmp_path / "models" / "keep.pt").read_text() == "weights"
    assert engine.parse_created(sh(engine.CREATE_SCRIPT, tmp_path).stdout) == ()


def test_create_accepts_a_directory_another_up_made_meanwhile(tmp_path: Path) -> None:
    """Two slots' `inv up` create the same shared directory at once: the loser's mkdir fails
    with "File exists" and that is fine. A mkdir shim plays the winner."""
    shims, shared = tmp_path / "bin", tmp_path / "shared"
    shims.mkdir()
    shared.mkdir()
    shim = shims / "mkdir"
    shim.write_text('#!/bin/sh\n/bin/mkdir "$@"\necho "mkdir: File exists" >&2\nexit 1\n')
    shim.chmod(0o755)
    result = sh(engine.CREATE_SCRIPT, shared, {"PATH": f"{shims}:/usr/bin:/bin"})
    assert result.ok, result.stderr
    assert engine.parse_created(result.stdout) == ()  # this run made none of them
    assert all((shared / name).is_dir() for name in SUBDIRS)


def test_create_hands_new_directories_to_the_owner(tmp_path: Path) -> None:
    cmd = engine.shared_dir_create_command("/srv/shared", IMAGE, owner="1000:1000")
    assert cmd[cmd.index("--env") + 1] == "OWNER=1000:1000"
    owner = f"{tmp_path.stat().st_uid}:{tmp_path.stat().st_gid}"  # chown to ourselves works
    result = sh(engine.CREATE_SCRIPT, tmp_path, {"OWNER": owner})
    assert result.ok, result.stderr
    assert len(engine.parse_created(result.stdout)) == 3


def test_create_refuses_a_path_docker_cannot_mount() -> None:
    with pytest.raises(SandboxError) as caught:
        engine.shared_dir_create_command("/srv/a:b", IMAGE)
    assert caught.value.code is Exit.SHARED_DIR


# --- ports on the engine's host -------------------------------------------------------------


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_port_probe_command_runs_on_the_host_network() -> None:
    cmd = engine.port_probe_command([8001, 5432], "[::]", IMAGE)
    assert cmd[:6] == ["docker", "run", "--rm", "--pull=never", "--network=host", IMAGE]
    assert cmd[6:8] == ["perl", "-e"]
    assert cmd[-3:] == ["::", "8001", "5432"]


def test_port_script_tells_taken_from_free(held_port: int) -> None:
    free = free_port()
    result = run(
        ["perl", "-e", engine.PORT_SCRIPT, "127.0.0.1", str(held_port), str(free)],
        env={"PATH": "/usr/bin:/bin"},
    )
    probes = engine.parse_port_probe(result)
    assert [(p.port, p.free) for p in probes] == [(held_port, False), (free, True)]
    assert "in use" in probes[0].reason


def test_port_script_says_when_the_address_is_not_on_the_host() -> None:
    result = run(
        ["perl", "-e", engine.PORT_SCRIPT, "192.0.2.1", "8001"], env={"PATH": "/usr/bin:/bin"}
    )
    (probe,) = engine.parse_port_probe(result)
    assert not probe.free
    assert "assign" in probe.reason


def test_failed_port_probe_is_an_error() -> None:
    with pytest.raises(SandboxError):
        engine.parse_port_probe(Result(("docker",), 125, "", "No such image\n"))


# --- streaming a client directory to the engine's host --------------------------------------


def test_stream_copy_pipes_tar_into_a_helper_container() -> None:
    cmd = engine.stream_copy_command("/home/me/ktrdr/data", "/srv/shared/data", IMAGE)
    assert cmd[:4] == ["bash", "-o", "pipefail", "-c"]
    assert cmd[-5:] == ["stream", "/home/me/ktrdr/data", "/srv/shared/data", IMAGE, "."]
    script = cmd[4]
    assert '"$1"' in script and '"$2:/probe"' in script and '"$3"' in script
    assert '"${@:4}"' in script  # what to send: given names, or "." for everything
    assert "--skip-old-files" in script
    assert "/home/me" not in script  # paths travel as arguments, never as script text


def test_stream_copy_works_end_to_end_with_a_docker_that_extracts_here(tmp_path: Path) -> None:
    """The pipe itself, with `docker run ... tar -x -C /probe` replaced by a local tar -x into
    the directory the -v option names: what arrives is what was sent, old files kept."""
    source, dest, bin_dir = tmp_path / "src", tmp_path / "dst", tmp_path / "bin"
    for path in (source / "data", dest / "data", bin_dir):
        path.mkdir(parents=True)
    (source / "data" / "EURUSD.csv").write_text("new")
    (source / "data" / "GBPUSD.csv").write_text("gbp")
    (dest / "data" / "EURUSD.csv").write_text("kept")
    fake = bin_dir / "docker"
    fake.write_text(
        "#!/bin/sh\n"
        'while [ "$1" != "--volume" ]; do shift; done\n'
        'dir="${2%:/probe}"\n'
        'exec tar -x -C "$dir" --skip-old-files\n'
    )
    fake.chmod(0o755)
    cmd = engine.stream_copy_command(str(source), str(dest), IMAGE)
    result = run(cmd, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert result.ok, result.stderr
    assert (dest / "data" / "GBPUSD.csv").read_text() == "gbp"
    assert (dest / "data" / "EURUSD.csv").read_text() == "kept"
    # Only the names given travel: the checkout's other files stay on the client.
    (source / "src.py").write_text("code")
    (source / "models").mkdir()
    (source / "models" / "m.pt").write_text("model")
    cmd = engine.stream_copy_command(str(source), str(dest), IMAGE, ["models"])
    assert run(cmd, env={"PATH": f"{bin_dir}:/usr/bin:/bin"}).ok
    assert (dest / "models" / "m.pt").read_text() == "model"
    assert not (dest / "src.py").exists()


def test_stream_copy_of_a_missing_source_fails(tmp_path: Path) -> None:
    # The receiving side succeeds (it reads everything); pipefail reports tar's failure.
    (tmp_path / "docker").write_text("#!/bin/sh\ncat >/dev/null\n")
    (tmp_path / "docker").chmod(0o755)
    cmd = engine.stream_copy_command("/nonexistent/ktrdr-src", "/srv/x", IMAGE)
    result = run(cmd, env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert not result.ok
    assert "ktrdr-src" in result.stderr
