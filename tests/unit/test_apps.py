"""App kinds: detection from a checkout's layout, and the Compose override each produces."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sandbox import ROOT, STATE_DIR, apps, checkouts, docker, slotfiles, slots
from sandbox.errors import Exit, SandboxError


def make_ktrdr(path: Path, skip: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for marker in apps.KTRDR.markers:
        if marker == skip:
            continue
        (path / marker).parent.mkdir(parents=True, exist_ok=True)
        (path / marker).write_text("")
    return path


def test_detects_a_ktrdr_checkout(tmp_path: Path) -> None:
    source = apps.detect(make_ktrdr(tmp_path))
    assert source.kind is apps.KTRDR
    assert source.path == tmp_path.resolve()


def test_detects_a_reference_source(tmp_path: Path) -> None:
    (tmp_path / "ktrdr_reference").mkdir()
    (tmp_path / "ktrdr_reference" / "__init__.py").write_text("")
    assert apps.detect(tmp_path).kind is apps.REFERENCE


def test_a_ktrdr_checkout_without_its_lock_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match=r"looks like a KTRDR checkout but has no uv\.lock"):
        apps.detect(make_ktrdr(tmp_path, skip="uv.lock"))


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
def test_not_a_checkout_is_one_usage_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x"
    if kind == "file":
        path.write_text("")
    elif kind == "empty":
        path.mkdir()
    with pytest.raises(SandboxError) as caught:
        apps.detect(path)
    assert caught.value.code is Exit.USAGE
    assert "\n" not in str(caught.value)


def test_builtin_override_labels_every_service_and_points_traces_at_its_own_jaeger() -> None:
    document = slotfiles.override(apps.BUILT_IN, None, {})
    assert set(document) == {"services"}
    assert set(document["services"]) == set(slots.SERVICES)
    labels = {
        docker.APP_LABEL: "reference",
        docker.SOURCE_LABEL: "",
        docker.WORKERS_LABEL: "full",
        docker.OBSERVABILITY_LABEL: "own",
        docker.CLIENT_LABEL: docker.client_name(),
    }
    traces = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://jaeger:4318/v1/traces"}
    for name, service in document["services"].items():
        if name in (w.service for w in slots.WORKERS):
            worker_labels = {**labels, docker.RELOAD_LABEL: "backend"}
            assert service == {"labels": worker_labels, "environment": traces}
        elif name == "backend":
            assert service == {"labels": labels, "environment": traces}
        else:
            assert service == {"labels": labels}


def test_ktrdr_override_mounts_read_only_and_sets_commands(tmp_path: Path) -> None:
    checkout = make_ktrdr(tmp_path)
    (checkout / "config").mkdir()
    source = apps.detect(checkout)
    document = slotfiles.override(source, "deps:abc", {"KTRDR_AUTH_JWT_SECRET": "s3cret"})
    backend = document["services"]["backend"]
    assert backend["image"] == "deps:abc"
    assert backend["command"][:2] == ["uvicorn", "ktrdr.api.main:app"]
    assert f"{checkout}/ktrdr:/app/ktrdr:ro" in backend["volumes"]
    assert f"{checkout}/config:/app/config:ro" in backend["volumes"]
    # An optional directory the checkout lacks is not mounted (Docker would create it).
    assert not any("/app/alembic:" in v for v in backend["volumes"])
    assert all(v.endswith(":ro") for v in backend["volumes"])
    assert backend["environment"]["KTRDR_AUTH_JWT_SECRET"] == "s3cret"
    assert backend["environment"]["DB_HOST"] == "db"
    worker = document["services"]["training-worker-2"]
    assert "ktrdr.training.training_worker:app" in worker["command"]
    assert "${KTRDR_WORKER_PORT_4}" in worker["command"]
    assert worker["environment"]["WORKER_TYPE"] == "training"
    assert worker["environment"]["KTRDR_WORKER_PUBLIC_BASE_URL"] == (
        "http://training-worker-2:${KTRDR_WORKER_PORT_4}"
    )
    assert worker["healthcheck"]["test"] == ["CMD", "http-ok", "${KTRDR_WORKER_PORT_4}", "/health"]
    labels = document["services"]["db"]["labels"]
    assert labels == {
        docker.APP_LABEL: "ktrdr",
        docker.SOURCE_LABEL: str(checkout),
        docker.TORCH_LABEL: "debian",  # the default; `up` records the one that applies
        docker.CLIENT_LABEL: docker.client_name(),
        docker.WORKERS_LABEL: "full",
        docker.OBSERVABILITY_LABEL: "own",
    }
    assert worker["labels"] == {**labels, docker.RELOAD_LABEL: "backend"}
    # Only the backend reloads unless asked: a reloader idles at a cost.
    assert "--reload" in backend["command"]
    assert "--reload" not in worker["command"]
    # KTRDR speaks OTLP/gRPC to the compose file's own jaeger: nothing to add on `own`.
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" not in backend["environment"]


@pytest.mark.parametrize("kind", ["ktrdr", "reference"])
def test_reload_workers_puts_every_worker_under_a_reloader(tmp_path: Path, kind: str) -> None:
    if kind == "ktrdr":
        source = apps.detect(make_ktrdr(tmp_path))
        reloading = ["--reload", "--reload-dir", "/app/ktrdr"]
    else:
        (tmp_path / "ktrdr_reference").mkdir()
        (tmp_path / "ktrdr_reference" / "__init__.py").touch()
        source = apps.detect(tmp_path)
        reloading = ["reloader", "/app/ktrdr_reference", "--"]
    plain = slotfiles.override(source, "img", {})
    reloaded = slotfiles.override(source, "img", {}, reload=apps.RELOAD_WORKERS)
    for worker in slots.WORKERS:
        before = plain["services"][worker.service]["command"]
        after = reloaded["services"][worker.service]["command"]
        assert not any(part in before for part in reloading), before
        assert all(part in after for part in reloading), after
        assert reloaded["services"][worker.service]["labels"][docker.RELOAD_LABEL] == "workers"
    assert plain["services"]["backend"] == {
        **reloaded["services"]["backend"],
        "labels": plain["services"]["backend"]["labels"],
    }


def test_reload_choices() -> None:
    assert apps.parse_reload(None) == apps.RELOAD_BACKEND
    assert apps.parse_reload("workers") == apps.RELOAD_WORKERS
    wanted = "unknown --reload 'all': use one of backend, workers"
    with pytest.raises(SandboxError, match=wanted) as err:
        apps.parse_reload("all")
    assert err.value.code is Exit.USAGE


def test_a_secret_is_made_once_per_slot(tmp_path: Path) -> None:
    first = slotfiles.secret(tmp_path, 3, "KTRDR_AUTH_JWT_SECRET")
    assert len(first) >= 32
    assert slotfiles.secret(tmp_path, 3, "KTRDR_AUTH_JWT_SECRET") == first
    assert slotfiles.secret(tmp_path, 4, "KTRDR_AUTH_JWT_SECRET") != first
    path = tmp_path / STATE_DIR / "slot-3.KTRDR_AUTH_JWT_SECRET"
    assert path.stat().st_mode & 0o077 == 0


def test_env_sandbox_is_written_and_removed_only_when_ours(tmp_path: Path) -> None:
    source = apps.detect(make_ktrdr(tmp_path))
    ports = {name: str(port) for name, port in slots.ports(2).items()}
    text = slotfiles.env_sandbox_text(2, ports, {"Backend API": "http://127.0.0.1:8002"})
    written = checkouts.write_env_sandbox(source, text)
    assert written == tmp_path / ".env.sandbox"
    assert "KTRDR_API_PORT=8002" in written.read_text()
    assert checkouts.remove_env_sandbox(tmp_path) == written
    assert not written.exists()
    # A file the user wrote is neither replaced nor removed.
    written.write_text("KTRDR_API_PORT=9999\n")
    with pytest.raises(SandboxError, match="not written by ktrdr-sandbox"):
        checkouts.write_env_sandbox(source, text)
    assert checkouts.remove_env_sandbox(tmp_path) is None
    assert written.read_text() == "KTRDR_API_PORT=9999\n"


def test_the_source_is_read_back_from_the_override(tmp_path: Path) -> None:
    checkout = make_ktrdr(tmp_path / "checkout")
    source = apps.detect(checkout)
    assert slotfiles.recorded_source(tmp_path, 5) == ""
    slotfiles.write_override(tmp_path, 5, slotfiles.override(source, "img", {}))
    assert slotfiles.recorded_source(tmp_path, 5) == str(checkout.resolve())
    assert [p.name for p in slotfiles.remove_state(tmp_path, 5)] == ["slot-5.compose.json"]
    assert slotfiles.recorded_source(tmp_path, 5) == ""


def test_the_fixture_has_every_module_and_file_the_ktrdr_kind_names() -> None:
    """The fixture runs through the KTRDR kind unchanged: every module its commands start,
    every file they read and every mount must exist in it, as they do in a KTRDR checkout."""
    fixture = ROOT / "containers" / "fixtures" / "ktrdr-fixture"
    assert apps.detect(fixture).kind is apps.KTRDR
    commands = [apps.KTRDR.backend, *apps.KTRDR.workers.values()]
    for module in [c[1] for c in commands]:
        assert (fixture / (module.split(":")[0].replace(".", "/") + ".py")).is_file(), module
    for mount in apps.KTRDR.mounts:
        assert (fixture / mount.source).exists(), mount.source
    log_config = apps.KTRDR.backend[apps.KTRDR.backend.index("--log-config") + 1]
    assert (fixture / log_config.removeprefix("/app/")).is_file()


def test_env_sandbox_names_what_ktrdrs_own_tools_read(tmp_path: Path) -> None:
    checkout = make_ktrdr(tmp_path / "feature-x")
    source = replace(apps.detect(checkout), models="slot")
    ports = {name: str(port) for name, port in slots.ports(3).items()}
    place = slotfiles.Place(3, Path("/data/shared"))
    text = slotfiles.env_sandbox_text(3, ports, {"Backend API": "http://h:8003"}, source, place)
    values = dict(line.split("=", 1) for line in text.splitlines()[1:])
    assert values["COMPOSE_PROJECT_NAME"] == "ktrdr-sandbox-3"  # `ktrdr sandbox status`
    assert values["SLOT_NUMBER"] == "3"
    assert values["INSTANCE_ID"] == "feature-x"
    assert values["KTRDR_API_PORT"] == "8003"  # KTRDR's CLI
    assert values["KTRDR_SHARED_DIR"] == "/data/shared"
    assert values["KTRDR_DATA_DIR"] == "/data/shared/data"
    assert values["KTRDR_STRATEGIES_DIR"] == "/data/shared/strategies"
    assert values["KTRDR_MODELS_DIR"] == "/data/shared/slots/slot-3/models"
    assert not any(v.startswith(("'", '"')) for v in values.values())  # read without unquoting


def test_own_models_rebind_the_models_path_of_every_app_service(tmp_path: Path) -> None:
    checkout = make_ktrdr(tmp_path / "checkout")
    place = slotfiles.Place(4, tmp_path / "shared")
    own = replace(apps.detect(checkout), models="slot")
    document = slotfiles.override(own, "img", {}, place=place)
    where = tmp_path / "shared" / "slots" / "slot-4" / "models"
    services = document["services"]
    assert f"{where}:/app/models" in services["training-worker-1"]["volumes"]
    assert f"{where}:/app/models" in services["backend"]["volumes"]
    # Backtest workers only read models, as the compose file mounts the shared ones.
    assert f"{where}:/app/models:ro" in services["backtest-worker-2"]["volumes"]
    assert "volumes" not in services["db"]
    assert services["db"]["labels"][docker.MODELS_LABEL] == str(where)
    assert services["db"]["labels"][docker.SHARED_LABEL] == str(tmp_path / "shared")
    # Shared models: the compose file's bind stays; only the labels say where.
    shared = slotfiles.override(apps.detect(checkout), "img", {}, place=place)
    assert not any("/app/models" in v for v in shared["services"]["backend"]["volumes"])
    labels = shared["services"]["backend"]["labels"]
    assert labels[docker.MODELS_LABEL] == str(tmp_path / "shared" / "models")
    # The built-in app gets its own models too.
    builtin = slotfiles.override(replace(apps.BUILT_IN, models="slot"), None, {}, place=place)
    assert builtin["services"]["backend"]["volumes"] == [f"{where}:/app/models"]


def test_a_bad_models_choice_is_one_usage_line() -> None:
    wanted = "unknown --models 'branch': use one of shared, slot"
    with pytest.raises(SandboxError, match=wanted) as err:
        apps.check_models("branch")
    assert err.value.code == Exit.USAGE


def test_the_default_torch_is_for_ktrdr_checkouts_only(tmp_path: Path) -> None:
    assert apps.detect(make_ktrdr(tmp_path / "k")).torch == "debian"
    assert apps.detect(make_ktrdr(tmp_path / "k"), "none").torch == "none"
    reference = tmp_path / "ref" / "ktrdr_reference"
    reference.mkdir(parents=True)
    (reference / "__init__.py").write_text("")
    assert apps.detect(tmp_path / "ref").torch == "none"
    with pytest.raises(SandboxError, match="--torch is for KTRDR checkouts"):
        apps.detect(tmp_path / "ref", "debian")


# ----------------------------------------------------------------------------- exposure


def one_line_usage(caught: pytest.ExceptionInfo[SandboxError]) -> str:
    assert caught.value.code is Exit.USAGE
    assert "\n" not in str(caught.value)
    return str(caught.value)


@pytest.mark.parametrize("mount", ["config", "alembic", "alembic.ini"])
def test_a_mount_root_linked_outside_the_checkout_is_refused(tmp_path: Path, mount: str) -> None:
    checkout = make_ktrdr(tmp_path / "co")
    (checkout / mount).unlink(missing_ok=True)
    (checkout / mount).symlink_to("/etc" if mount != "alembic.ini" else "/etc/passwd")
    with pytest.raises(SandboxError) as caught:
        apps.detect(checkout)
    message = one_line_usage(caught)
    assert f"{mount} is a link to /etc" in message and "outside the checkout" in message


def test_a_link_deep_in_a_mounted_tree_leading_outside_is_refused(tmp_path: Path) -> None:
    checkout = make_ktrdr(tmp_path / "co")
    (checkout / "ktrdr" / "deep" / "er").mkdir(parents=True)
    (checkout / "ktrdr" / "deep" / "er" / "shadow").symlink_to("../" * 20 + "etc/shadow")
    with pytest.raises(SandboxError, match="ktrdr/deep/er/shadow is a link to /etc/shadow"):
        apps.detect(checkout)
    (checkout / "ktrdr" / "deep" / "er" / "shadow").unlink()
    (checkout / "ktrdr" / "gone").symlink_to(tmp_path / "nowhere")  # dangling, still outside
    with pytest.raises(SandboxError, match="ktrdr/gone is a link to"):
        apps.detect(checkout)


def test_links_inside_the_checkout_are_fine(tmp_path: Path) -> None:
    checkout = make_ktrdr(tmp_path / "co")
    (checkout / "settings").mkdir()
    (checkout / "settings" / "a.yaml").write_text("a: 1\n")
    (checkout / "config").symlink_to("settings")  # a mount root linked within the checkout
    (checkout / "ktrdr" / "alias.py").symlink_to("__init__.py")
    (checkout / "ktrdr" / "up").symlink_to("..")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x").symlink_to("/etc")  # not mounted: not looked at
    source = apps.detect(checkout)
    assert list(checkouts.outside_links(checkout, apps.KTRDR.mounts)) == []
    volumes = slotfiles.override(source, "img", {})["services"]["backend"]["volumes"]
    assert f"{source.path}/config:/app/config:ro" in volumes


def test_a_checkout_reached_through_a_link_is_judged_by_its_real_path(tmp_path: Path) -> None:
    checkout = make_ktrdr(tmp_path / "real")
    (tmp_path / "via").symlink_to(checkout)
    (checkout / "config").symlink_to(checkout / "ktrdr")  # absolute, but inside
    assert apps.detect(tmp_path / "via").path == checkout.resolve()


def test_the_override_builder_refuses_a_link_that_appeared_after_the_check(
    tmp_path: Path,
) -> None:
    checkout = make_ktrdr(tmp_path / "co")
    source = apps.detect(checkout)
    (checkout / "config").symlink_to("/etc")
    with pytest.raises(SandboxError, match="config is a link to /etc"):
        slotfiles.override(source, "img", {})


def test_env_sandbox_that_is_a_link_is_refused_and_never_followed(tmp_path: Path) -> None:
    checkout = make_ktrdr(tmp_path / "co")
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    (checkout / ".env.sandbox").symlink_to(victim)
    with pytest.raises(SandboxError) as caught:
        apps.detect(checkout)
    message = one_line_usage(caught)
    assert "is a symbolic link" in message and "will not follow" in message
    source = apps.Source(apps.KTRDR, checkout.resolve())
    with pytest.raises(SandboxError, match="symbolic link"):
        checkouts.write_env_sandbox(source, f"{checkouts.ENV_SANDBOX_HEADER}\n")
    assert victim.read_text() == "keep me\n"
    # A link to a file that looks like ours is still not ours: `down` leaves the link.
    victim.write_text(f"{checkouts.ENV_SANDBOX_HEADER} for slot 3\n")
    assert not checkouts.ours(checkout / ".env.sandbox")
    assert checkouts.remove_env_sandbox(checkout) is None
    assert (checkout / ".env.sandbox").is_symlink() and victim.exists()


def test_env_sandbox_dangling_link_is_refused(tmp_path: Path) -> None:
    checkout = make_ktrdr(tmp_path / "co")
    (checkout / ".env.sandbox").symlink_to(tmp_path / "would-be-created")
    with pytest.raises(SandboxError, match="symbolic link"):
        apps.detect(checkout)
    assert not (tmp_path / "would-be-created").exists()


def test_env_sandbox_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    checkout = make_ktrdr(tmp_path / "co")
    (checkout / ".env.sandbox").mkdir()
    with pytest.raises(SandboxError, match="not written by ktrdr-sandbox"):
        apps.detect(checkout)


def test_a_link_made_between_check_and_write_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = make_ktrdr(tmp_path / "co")
    source = apps.detect(checkout)
    monkeypatch.setattr(checkouts, "check_env_sandbox", lambda source: None)  # lose the race
    (checkout / ".env.sandbox").symlink_to(tmp_path / "target")
    with pytest.raises(SandboxError, match="cannot write"):
        checkouts.write_env_sandbox(source, "x")
    assert not (tmp_path / "target").exists()


@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_source_flag_is_refused(value: str) -> None:
    with pytest.raises(SandboxError) as caught:
        apps.from_flag(value)
    assert "--source is empty" in one_line_usage(caught)


def test_no_source_flag_is_the_built_in_app(tmp_path: Path) -> None:
    assert apps.from_flag(None) is apps.BUILT_IN
    assert apps.from_flag(str(make_ktrdr(tmp_path))).kind is apps.KTRDR
