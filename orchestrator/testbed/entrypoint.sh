#!/bin/sh
# Start sshd with fresh host keys and the key passed in $AUTHORIZED_KEY.
set -e
ssh-keygen -A >/dev/null
mkdir -p /root/.ssh /run/sshd
printf '%s\n' "$AUTHORIZED_KEY" > /root/.ssh/authorized_keys
chmod 700 /root/.ssh && chmod 600 /root/.ssh/authorized_keys
exec /usr/sbin/sshd -D -e
