#!/usr/bin/env bash
# Make sure a Docker engine answers. Docker Desktop users: start Docker Desktop, this only checks.
# On a Debian/Ubuntu machine as root with no engine (CI, fresh servers): install Debian's
# docker.io when dockerd is missing, then start dockerd in the background.
set -euo pipefail

log="${KTRDR_DOCKERD_LOG:-/var/log/ktrdr-sandbox-dockerd.log}"

engine_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_up; then
  echo "docker engine: $(docker version --format '{{.Server.Version}}')"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "no Docker engine answers: start Docker (Docker Desktop, or 'sudo dockerd') and re-run" >&2
  exit 1
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "installing Debian's docker.io (dockerd, containerd, runc)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if ! command -v docker >/dev/null 2>&1; then
  echo "docker CLI missing after installing docker.io" >&2
  exit 1
fi
# A dockerd that was killed (a session or machine that stopped) leaves its pid file behind,
# and a new dockerd refuses to start while it exists. If the pid in it is still a dockerd,
# give it a moment: it may be starting up, or still dying.
pidfile=/var/run/docker.pid
is_dockerd() { [ -n "$1" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = dockerd ]; }
if [ -f "$pidfile" ]; then
  old_pid="$(cat "$pidfile" 2>/dev/null || true)"
  for _ in $(seq 1 15); do
    is_dockerd "$old_pid" || break
    if engine_up; then
      echo "docker engine: $(docker version --format '{{.Server.Version}}')"
      exit 0
    fi
    sleep 1
  done
  if is_dockerd "$old_pid"; then
    echo "dockerd (pid $old_pid) runs but does not answer: stop it, then re-run" >&2
    exit 1
  fi
  echo "removing stale $pidfile (pid ${old_pid:-?} is not a running dockerd)"
  rm -f "$pidfile"
fi
echo "starting dockerd (log: $log)"
nohup dockerd >"$log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 1 60); do
  if engine_up; then
    echo "docker engine: $(docker version --format '{{.Server.Version}}')"
    exit 0
  fi
  if ! kill -0 "$dockerd_pid" 2>/dev/null; then
    break  # it exited: waiting longer will not help
  fi
  sleep 1
done
tail -n 20 "$log" >&2
echo "dockerd did not start (see the lines above); its log is $log" >&2
exit 1
