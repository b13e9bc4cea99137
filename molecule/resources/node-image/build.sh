#!/usr/bin/env bash
# Build the local node image: Debian bookworm with systemd as PID 1, made with debootstrap + docker import
# (no image registry is reachable here). The tag is a hash of this recipe, so the image is rebuilt only when
# the recipe changes; `autobot-node:local` always points at the newest build.
#   usage: build.sh            -> prints the image tag
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=autobot-node
recipe_hash=$(cat "$here/build.sh" "$here/packages.txt" | sha256sum | cut -c1-12)
tag="$repo:$recipe_hash"

if docker image inspect "$tag" >/dev/null 2>&1; then
  docker tag "$tag" "$repo:local"
  echo "node image: $tag is up to date" >&2
  echo "$tag"
  exit 0
fi

command -v debootstrap >/dev/null 2>&1 || {
  echo "node image: installing debootstrap" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

# The mirror this machine is configured with: read, never hard-coded.
sources=/etc/apt/sources.list.d/debian.sources
mirror=$(awk '/^URIs:/ {print $2; exit}' "$sources" 2>/dev/null || true)
[ -n "$mirror" ] || { echo "node image: no mirror found in $sources" >&2; exit 1; }

packages=$(grep -v -e '^#' -e '^$' "$here/packages.txt" | paste -sd, -)
rootfs=$(mktemp -d /var/tmp/autobot-node.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

echo "node image: debootstrap bookworm into $rootfs (about a minute)" >&2
debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
  tail -n 30 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"

# Containers reach the same mirror through the host.
install -m 0644 "$sources" "$rootfs/etc/apt/sources.list.d/debian.sources"
rm -f "$rootfs/etc/apt/sources.list"
# Services are off until a role turns them on, and units that cannot work in a container are masked.
chroot "$rootfs" systemctl disable redis-server nginx >/dev/null 2>&1 || true
for unit in systemd-remount-fs.service getty@tty1.service console-getty.service systemd-udevd.service \
            systemd-udev-trigger.service systemd-modules-load.service sys-kernel-config.mount \
            sys-kernel-debug.mount sys-kernel-tracing.mount systemd-firstboot.service; do
  ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
: >"$rootfs/etc/machine-id"

# Like a VM image: a login user with sudo (production's operators and Ansible log in as `autobot`), reached by SSH
# with keys only. Its authorized key is installed per cluster when the containers are created, never baked in.
chroot "$rootfs" useradd --create-home --shell /bin/bash --user-group --groups sudo autobot
echo 'autobot ALL=(ALL:ALL) NOPASSWD: ALL' >"$rootfs/etc/sudoers.d/90-autobot-login"
chmod 0440 "$rootfs/etc/sudoers.d/90-autobot-login"
install -d -m 0755 "$rootfs/etc/ssh/sshd_config.d"
printf '%s\n' 'PasswordAuthentication no' 'KbdInteractiveAuthentication no' 'PermitRootLogin no' \
  >"$rootfs/etc/ssh/sshd_config.d/50-autobot.conf"
# Host keys are made on each container's first boot (as cloud images do), so no two machines share one.
rm -f "$rootfs"/etc/ssh/ssh_host_*
install -d -m 0755 "$rootfs/etc/systemd/system/ssh.service.d"
printf '%s\n' '[Service]' 'ExecStartPre=' 'ExecStartPre=/usr/bin/ssh-keygen -A' 'ExecStartPre=/usr/sbin/sshd -t' \
  >"$rootfs/etc/systemd/system/ssh.service.d/10-host-keys.conf"
chroot "$rootfs" systemctl enable ssh >/dev/null 2>&1
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/* "$rootfs"/var/cache/apt/*.bin
# Empty package lists that look old, so the first apt task of a role refreshes them (cache_valid_time).
touch -d @0 "$rootfs/var/lib/apt/lists"

echo "node image: importing as $tag" >&2
tar -C "$rootfs" -c . | docker import \
  --change 'CMD ["/lib/systemd/systemd"]' \
  --change 'ENV container=docker' \
  - "$tag" >/dev/null
docker tag "$tag" "$repo:local"
echo "$tag"
