#!/bin/sh
# Start sshd with one ed25519 host key (the testbed's, when one is mounted) and the key passed
# in $AUTHORIZED_KEY. Only ed25519: making RSA and ECDSA keys too takes tens of seconds on an
# emulated aarch64 host, and clients pin the ed25519 key anyway.
set -e
key=/etc/ssh/ssh_host_ed25519_key
[ -f "$key" ] || ssh-keygen -q -t ed25519 -N '' -f "$key"
mkdir -p /root/.ssh /run/sshd
# a start is a boot: what asked for the reboot is gone, as /run is empty after a real one
rm -f /run/reboot-required /run/reboot-required.pkgs
printf '%s\n' "$AUTHORIZED_KEY" > /root/.ssh/authorized_keys
chmod 700 /root/.ssh && chmod 600 /root/.ssh/authorized_keys
# sshd listens where its configuration says, as a real host's does: a new container is a host
# provisioned to listen on its deploy port, in the file the base role writes, and an apply that
# moves the port moves it here too (and a container started again keeps what the apply wrote)
conf=/etc/ssh/sshd_config.d/10-orchestrate.conf
[ -e "$conf" ] || printf 'Port %s\n' "${SSH_PORT:-22}" > "$conf"
exec /usr/sbin/sshd -D -e -h "$key"
