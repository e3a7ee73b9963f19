#!/bin/sh
# Start sshd with fresh host keys and the key passed in $AUTHORIZED_KEY.
set -e
ssh-keygen -A >/dev/null
mkdir -p /root/.ssh /run/sshd
printf '%s\n' "$AUTHORIZED_KEY" > /root/.ssh/authorized_keys
chmod 700 /root/.ssh && chmod 600 /root/.ssh/authorized_keys
# -p: sshd listens on the fleet's deploy port whatever its configuration says (kept across
# the re-exec a SIGHUP causes), as a real host does once the base role configured it
exec /usr/sbin/sshd -D -e -p "${SSH_PORT:-22}"
