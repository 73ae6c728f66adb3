#!/bin/bash
# Entry point of the simulated remote host: make the container able to run an engine, then run
# dockerd (unix socket and tcp://0.0.0.0:2375) and sshd (2222, key-only) side by side.
#
# Environment: KTRDR_AUTHORIZED_KEY (required: the one public key sshd accepts).
set -euo pipefail

say() { echo "remote-host: $*" >&2; }
die() { say "$*"; exit 1; }

[ -n "${KTRDR_AUTHORIZED_KEY:-}" ] || die "KTRDR_AUTHORIZED_KEY is empty: pass the client's public key"

# --privileged is refused on machines whose VM lacks CAP_SYS_RESOURCE, so the container runs
# with explicit capabilities instead, and /sys comes read-only: the inner engine and runc
# need to write cgroups, so remount it read-write.
mount -o remount,rw /sys || die "cannot remount /sys read-write (run with --cap-add SYS_ADMIN and --security-opt systempaths=unconfined)"

# Fresh cgroup v1 hierarchies, mounted at their roots, one per line of /proc/self/cgroup
# (e.g. "4:cpu,cpuacct:/docker/ID"). Docker's own read-only mounts go first: runc reads
# mountinfo and takes the first mount of each hierarchy, and theirs are rooted at this
# container's cgroup, which would send the inner containers' cgroups outside the mount.
# The cgroup v2 line ("0::/..." on a hybrid host) gets nothing: the host mounts no v2 either.
mount_cgroups_v1() {
  umount -R /sys/fs/cgroup
  mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
  local id controllers path dir
  while IFS=: read -r id controllers path; do
    : "$id" "$path"
    [ -n "$controllers" ] || continue
    dir="${controllers#name=}"
    mkdir -p "/sys/fs/cgroup/$dir"
    mount -t cgroup -o "$controllers" cgroup "/sys/fs/cgroup/$dir"
  done </proc/self/cgroup
}
if [ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ]; then
  # A cgroup v2 host: the engine needs the unified hierarchy read-write, nothing more.
  mount -o remount,rw /sys/fs/cgroup || die "cannot remount /sys/fs/cgroup read-write"
else
  mount_cgroups_v1 || die "cannot mount cgroup v1 hierarchies"
fi

# The engine first: it is the slow one to come up.
# The API without TLS is the point of a simulation on loopback; --tls=false says so explicitly.
dockerd --host=unix:///var/run/docker.sock --host=tcp://0.0.0.0:2375 --tls=false \
  --storage-driver=overlay2 &
dockerd_pid=$!

# sshd: one ed25519 host key made at start (RSA keys take seconds on a busy machine), the
# client's key as the only way in.
[ -f /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
printf '%s\n' "$KTRDR_AUTHORIZED_KEY" >/root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys
/usr/sbin/sshd -t || die "sshd config invalid"
/usr/sbin/sshd -D -e &
sshd_pid=$!

stop() { kill -TERM "$dockerd_pid" "$sshd_pid" 2>/dev/null || true; wait "$dockerd_pid" || true; }
trap 'stop; exit 0' TERM INT
# Either daemon ending ends the host, so a broken engine shows as a stopped container.
wait -n "$dockerd_pid" "$sshd_pid" || true
say "dockerd or sshd exited; stopping"
stop
exit 1
