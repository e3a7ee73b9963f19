#!/bin/sh
# Start sshd with one ed25519 host key (the testbed's, when one is mounted) and the key passed
# in $AUTHORIZED_KEY. Only ed25519: making RSA and ECDSA keys too takes tens of seconds on an
# emulated aarch64 host, and clients pin the ed25519 key anyway.
set -e
key=/etc/ssh/ssh_host_ed25519_key
[ -f "$key" ] || ssh-keygen -q -t ed25519 -N '' -f "$key"
mkdir -p /root/.ssh /run/sshd
printf '%s\n' "$AUTHORIZED_KEY" > /root/.ssh/authorized_keys
chmod 700 /root/.ssh && chmod 600 /root/.ssh/authorized_keys
# -p: sshd listens on the fleet's deploy port whatever its configuration says (kept across
# the re-exec a SIGHUP causes), as a real host does once the base role configured it
exec /usr/sbin/sshd -D -e -h "$key" -p "${SSH_PORT:-22}"
