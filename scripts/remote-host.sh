#!/usr/bin/env bash
# Start, stop or show the simulated remote Docker host (tests of remote engines; see
# tests/support/remotehost.py): its API on tcp://127.0.0.2:2375, sshd on 127.0.0.2:2222.
#
# Usage: scripts/remote-host.sh start [--slots=1,2,3] [--image=IMG ...] [--no-load]
#        scripts/remote-host.sh stop [--keep-volume]
#        scripts/remote-host.sh status
# Environment: KTRDR_REMOTE_DIR (client key, ssh_config, ssh wrapper; default
# ~/.ktrdr/remote-host).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$root/.venv/bin/python"
[ -x "$python" ] || python=python3
cd "$root"
exec "$python" -m tests.support.remotehost "$@"
