"""The simulated remote host's commands and client files, as data: no Docker needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import slots
from sandbox.errors import SandboxError
from sandbox.images import send as imagesend
from sandbox.runner import run
from tests.support import remotehost
from tests.support.remotehost import RemoteHost


def test_published_ports_are_the_slots_ports_from_the_scheme() -> None:
    ports = remotehost.published_ports([1])
    assert ports == sorted(spec.host_port(1) for spec in slots.PORTS)
    assert 8001 in ports and 5433 in ports and 4327 in ports
    assert len(remotehost.published_ports([1, 2, 3])) == 3 * len(slots.PORTS)


def test_run_command_publishes_on_127_0_0_2_only_and_avoids_privileged() -> None:
    cmd = remotehost.run_command("ssh-ed25519 AAAA test", [1])
    assert cmd[:3] == ["docker", "run", "--detach"]
    assert "--privileged" not in cmd
    assert "--cap-drop=SYS_RESOURCE" in cmd
    assert "--security-opt=systempaths=unconfined" in cmd
    assert "--volume=ktrdr-remote-docker:/var/lib/docker" in cmd
    assert "--env=KTRDR_AUTHORIZED_KEY=ssh-ed25519 AAAA test" in cmd
    publishes = [arg for arg in cmd if arg.startswith("--publish=")]
    assert "--publish=127.0.0.2:2375:2375" in publishes
    assert "--publish=127.0.0.2:2222:2222" in publishes
    assert "--publish=127.0.0.2:8001:8001" in publishes
    assert all(arg.startswith("--publish=127.0.0.2:") for arg in publishes)
    assert cmd[-1] == remotehost.IMAGE


def test_a_second_place_runs_beside_the_default_one(tmp_path: Path) -> None:
    place = remotehost.Place("ktrdr-bench-x", "ktrdr-bench-x-docker", "127.0.0.3")
    cmd = remotehost.run_command("key", [], place)
    assert "--name=ktrdr-bench-x" in cmd and "--volume=ktrdr-bench-x-docker:/var/lib/docker" in cmd
    publishes = [arg for arg in cmd if arg.startswith("--publish=")]
    assert publishes == ["--publish=127.0.0.3:2375:2375", "--publish=127.0.0.3:2222:2222"]
    assert RemoteHost(tmp_path, place).tcp_url == "tcp://127.0.0.3:2375"
    assert RemoteHost(tmp_path).tcp_url == "tcp://127.0.0.2:2375"  # the default stays


def test_names_carry_the_helper_prefix() -> None:
    assert remotehost.CONTAINER.startswith("ktrdr-remote-")
    assert remotehost.VOLUME.startswith("ktrdr-remote-")


def test_state_dir_is_private_and_never_dot_ssh(tmp_path: Path) -> None:
    assert remotehost.default_state_dir({"HOME": "/home/me"}) == Path("/home/me/.ktrdr/remote-host")
    assert remotehost.default_state_dir({"KTRDR_REMOTE_DIR": str(tmp_path)}) == tmp_path


def test_ssh_config_points_at_the_private_key_and_known_hosts(tmp_path: Path) -> None:
    host = RemoteHost(tmp_path)
    text = remotehost.ssh_config_text(host)
    assert "Host ktrdr-remote 127.0.0.2\n" in text
    assert "  Port 2222\n" in text
    assert f"  IdentityFile {tmp_path}/id_ed25519\n" in text
    assert f"  UserKnownHostsFile {tmp_path}/known_hosts\n" in text
    assert "IdentitiesOnly yes" in text
    settings = [line for line in text.splitlines() if not line.startswith("#")]
    assert not any("/.ssh" in line for line in settings)


def test_client_env_for_each_transport(tmp_path: Path) -> None:
    host = RemoteHost(tmp_path)
    base = {"PATH": "/usr/bin", "DOCKER_CONTEXT": "other", "HOME": "/h"}
    tcp = host.client_env(base, "tcp")
    assert tcp == {"PATH": "/usr/bin", "HOME": "/h", "DOCKER_HOST": "tcp://127.0.0.2:2375"}
    ssh = host.client_env(base, "ssh")
    assert ssh["DOCKER_HOST"] == "ssh://root@127.0.0.2:2222"
    assert ssh["PATH"] == f"{tmp_path}/bin:/usr/bin"
    with pytest.raises(SandboxError):
        host.client_env(base, "http")


def test_ssh_wrapper_passes_the_private_config(tmp_path: Path) -> None:
    host = RemoteHost(tmp_path)
    fake_ssh = tmp_path / "real-ssh"
    fake_ssh.write_text('#!/bin/sh\necho "$@"\n')
    fake_ssh.chmod(0o755)
    wrapper = tmp_path / "ssh"
    wrapper.write_text(remotehost.ssh_wrapper_text(host, str(fake_ssh)))
    wrapper.chmod(0o755)
    result = run([str(wrapper), "-T", "--", "127.0.0.2", "docker", "system", "dial-stdio"])
    assert result.stdout.strip() == f"-F {host.ssh_config} -T -- 127.0.0.2 docker system dial-stdio"


def test_find_ssh_skips_the_wrapper(tmp_path: Path) -> None:
    host = RemoteHost(tmp_path)
    host.bin_dir.mkdir()
    (host.bin_dir / "ssh").write_text("#!/bin/sh\n")
    (host.bin_dir / "ssh").chmod(0o755)
    real = tmp_path / "usr"
    real.mkdir()
    (real / "ssh").write_text("#!/bin/sh\n")
    (real / "ssh").chmod(0o755)
    path = f"{host.bin_dir}:{real}"
    assert remotehost.find_ssh(host, {"PATH": path}) == str(real / "ssh")
    with pytest.raises(SandboxError):
        remotehost.find_ssh(host, {"PATH": str(host.bin_dir)})


def test_save_load_pipe_counts_the_bytes_it_streams(tmp_path: Path) -> None:
    """The pipe with a docker that 'saves' 1000 bytes and 'loads' them into a file."""
    fake = tmp_path / "docker"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = save ]; then shift; echo "$@" >"$OUT.names"; echo "$DOCKER_CONTEXT" '
        '>"$OUT.saved-from"; head -c 1000 /dev/zero; fi\n'
        'if [ "$1" = load ]; then echo "$DOCKER_HOST" >"$OUT.host"; wc -c >"$OUT"; fi\n'
    )
    fake.chmod(0o755)
    out = tmp_path / "loaded"
    remote = {"PATH": f"{tmp_path}:/usr/bin:/bin", "DOCKER_HOST": "tcp://127.0.0.2:2375"}
    env = imagesend.save_load_env(remote)
    assert "DOCKER_HOST" not in env
    cmd = imagesend.save_load_command(["a:1", "b:2"])
    result = run(cmd, env={**env, "OUT": str(out)})
    assert result.ok, result.stderr
    assert result.stdout.strip() == "1000"
    assert out.read_text().strip() == "1000"
    assert Path(f"{out}.names").read_text().strip() == "a:1 b:2"
    assert Path(f"{out}.host").read_text().strip() == "tcp://127.0.0.2:2375"
    # Saved from this machine's engine, whatever context is current.
    assert Path(f"{out}.saved-from").read_text().strip() == "default"


def test_bad_slots_option_is_a_usage_error() -> None:
    assert remotehost.main(["start", "--slots=1,x"], {"PATH": ""}) == 2
