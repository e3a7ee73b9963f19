#!/usr/bin/env bash
# Install what the test suite needs on a fresh Debian 12 machine (as root): system tools from
# Debian (podman with runc, debootstrap for the local base images, qemu-user for aarch64 hosts,
# cron for scheduled runs, disk-image tools, qemu with UEFI firmware to boot images), then the
# package with its test extras from PyPI.
# Packages already present are left alone, so a warm machine skips apt entirely.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
need=""
for pkg in podman runc debootstrap qemu-user-static binfmt-support cron openssh-client \
           e2fsprogs fdisk dosfstools mtools qemu-utils slirp4netns qemu-system-x86 ovmf; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"
done
if [ -n "$need" ]; then
  apt-get update -q
  # shellcheck disable=SC2086
  apt-get install -y -q $need
fi
python3 -m pip install -q -e '.[test]'
