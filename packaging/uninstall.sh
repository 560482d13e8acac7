#!/bin/bash
# Undo install.sh. The config and the state directory stay, unless PURGE=1.
set -euo pipefail
PREFIX=${PREFIX:-/opt/edge-runtime}
CONFDIR=${CONFDIR:-/etc/edge-runtime}
UNITDIR=${UNITDIR:-/etc/systemd/system}

if [ "$(id -u)" != 0 ]; then
  echo "uninstall-service: run as root" >&2
  exit 1
fi
if [ -d /run/systemd/system ]; then
  systemctl disable --now edge-runtime.service 2>/dev/null || true
fi
rm -rf "$UNITDIR/edge-runtime.service" "$UNITDIR/edge-runtime.service.d" "$PREFIX"
if [ "${PURGE:-0}" = 1 ]; then
  rm -rf "$CONFDIR" /var/lib/edge-runtime /var/lib/private/edge-runtime
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
if [ "${PURGE:-0}" = 1 ]; then
  echo "edge-runtime: uninstalled; config and state purged"
else
  echo "edge-runtime: uninstalled; $CONFDIR and the state directory are kept (PURGE=1 removes them)"
fi
