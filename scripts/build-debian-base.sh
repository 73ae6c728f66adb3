#!/usr/bin/env bash
# Build the Debian base image that every offline image starts FROM, with no registry:
# debootstrap a minimal root filesystem and `docker import` it.
#
# The image is named ktrdr-sandbox/debian-base:<suite>, never debian:<suite>: it is ours,
# not the Debian project's published image.
#
# Usage: KTRDR_DEBIAN_SUITE=bookworm scripts/build-debian-base.sh [--force]
# (`inv images --offline` runs it so; sandbox/images/base.py names the script and the tag.)
# Environment: KTRDR_DEBIAN_SUITE (required: the Debian suite, e.g. bookworm),
# KTRDR_DEBIAN_MIRROR (default: the first Debian mirror this host's apt uses, else
# debootstrap's own default).
set -euo pipefail

suite="${KTRDR_DEBIAN_SUITE:?set KTRDR_DEBIAN_SUITE (the DEBIAN_SUITE of sandbox/images/build.py or app.py), e.g. bookworm}"
image="ktrdr-sandbox/debian-base:${suite}"
force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

if [ "$force" -eq 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image already exists (use --force to rebuild)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "debootstrap needs root: run this script as root (sudo $0)" >&2
  exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  echo "debootstrap is not installed: apt-get install -y debootstrap" >&2
  exit 1
fi

# The host's own apt mirror is the one known to be reachable (a proxy or a local mirror on
# closed networks), so prefer it over debootstrap's built-in default.
host_mirror() {
  local f
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    [ -r "$f" ] || continue
    awk '
      /^URIs:/ && $2 !~ /security/ { print $2; exit }
      /^deb / && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }
    ' "$f"
  done | head -n 1
}
mirror="${KTRDR_DEBIAN_MIRROR:-$(host_mirror)}"

rootfs="$(mktemp -d /tmp/ktrdr-debian-base.XXXXXX)"
cleanup() { rm -rf --one-file-system "$rootfs"; }
trap cleanup EXIT

echo "debootstrap --variant=minbase $suite ${mirror:-(default mirror)} -> $image"
# shellcheck disable=SC2086  # $mirror is empty or one URL
debootstrap --variant=minbase "$suite" "$rootfs" $mirror >"$rootfs.log" 2>&1 || {
  tail -n 20 "$rootfs.log" >&2
  echo "debootstrap failed; full log: $rootfs.log" >&2
  exit 1
}
rm -f "$rootfs.log"

# Keep the image small and apt quiet inside builds.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
  >"$rootfs/etc/apt/apt.conf.d/90ktrdr-sandbox"

tar -C "$rootfs" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --message "ktrdr-sandbox Debian $suite base, built locally with debootstrap" \
  - "$image" >/dev/null
echo "built $image ($(docker image inspect -f '{{.Size}}' "$image") bytes)"
