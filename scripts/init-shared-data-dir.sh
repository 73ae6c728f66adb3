#!/usr/bin/env bash
# Create the directory every sandbox slot (1-10) mounts as /app/data, /app/models and
# /app/strategies. Idempotent: it only creates what is missing and never overwrites or deletes.
#
# Usage: scripts/init-shared-data-dir.sh [DIR]   (default: $KTRDR_SHARED_DIR or ~/.ktrdr/shared)
set -euo pipefail

if [ "$#" -gt 1 ]; then
  echo "usage: $0 [DIR]" >&2
  exit 2
fi
shared="${1:-${KTRDR_SHARED_DIR:-$HOME/.ktrdr/shared}}"

created=0
for dir in "$shared" "$shared/data" "$shared/models" "$shared/strategies"; do
  if [ -d "$dir" ]; then
    continue
  fi
  if [ -e "$dir" ]; then
    echo "$dir exists but is not a directory: move it away and re-run" >&2
    exit 1
  fi
  mkdir -p "$dir"
  echo "created $dir"
  created=$((created + 1))
done
if [ "$created" -eq 0 ]; then
  echo "$shared is ready (data/, models/, strategies/ already exist; nothing changed)"
fi

cat <<TXT

Every slot's backend and workers see:
  $shared/data        -> /app/data        symbol data, e.g. AAPL_1d.csv
  $shared/models      -> /app/models      trained models (backtest workers: read-only)
  $shared/strategies  -> /app/strategies  strategy YAML files (backtest workers: read-only)

To populate it from an existing KTRDR checkout without overwriting anything:
  inv init-shared --from=/path/to/ktrdr
or copy by hand, keeping what is there:
  cp -rn /path/to/ktrdr/data/. "$shared/data/"
TXT
