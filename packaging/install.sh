#!/bin/bash
# Install edge-runtime as a systemd service (run as root from a checkout; `make install-service`).
#   PREFIX   where the package, models and filters go        (default /opt/edge-runtime)
#   CONFDIR  where the config goes; an existing one is kept  (default /etc/edge-runtime)
#   UNITDIR  where the unit goes                              (default /etc/systemd/system)
#   PYTHON   the interpreter for the venv                     (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/opt/edge-runtime}
CONFDIR=${CONFDIR:-/etc/edge-runtime}
UNITDIR=${UNITDIR:-/etc/systemd/system}
PYTHON=${PYTHON:-python3}
STATE=/var/lib/edge-runtime

if [ "$(id -u)" != 0 ]; then
  echo "install-service: run as root (it writes $PREFIX, $CONFDIR and $UNITDIR)" >&2
  exit 1
fi

echo "edge-runtime: the package into $PREFIX/venv"
"$PYTHON" -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install --quiet --upgrade pip
"$PREFIX/venv/bin/pip" install --quiet .

echo "edge-runtime: models, filters and examples into $PREFIX/share"
mkdir -p "$PREFIX/share"
rm -rf "$PREFIX/share/models" "$PREFIX/share/filters" "$PREFIX/share/examples"
cp -r models "$PREFIX/share/models"
mkdir -p "$PREFIX/share/filters"
cp filters/*.wasm "$PREFIX/share/filters/"
cp -r filters/examples "$PREFIX/share/filters/examples"
cp -r examples "$PREFIX/share/examples"
cp README.md "$PREFIX/"
# The service runs as a dynamic user: everything it reads must be world-readable.
chmod -R a+rX "$PREFIX"

mkdir -p "$CONFDIR"
if [ -e "$CONFDIR/edge-runtime.toml" ]; then
  echo "edge-runtime: keeping $CONFDIR/edge-runtime.toml"
else
  echo "edge-runtime: $CONFDIR/edge-runtime.toml"
  sed -e "s#^path = \"models/#path = \"$PREFIX/share/models/#" \
      -e "s#module = \"filters/#module = \"$PREFIX/share/filters/#" \
      -e "s#^state_dir = .*#state_dir = \"$STATE\"#" \
      edge-runtime.toml > "$CONFDIR/edge-runtime.toml"
  chmod 0644 "$CONFDIR/edge-runtime.toml"
fi
"$PREFIX/venv/bin/edge-runtime" check-config "$CONFDIR/edge-runtime.toml" > /dev/null

mkdir -p "$UNITDIR"
echo "edge-runtime: $UNITDIR/edge-runtime.service"
sed -e "s#/opt/edge-runtime#$PREFIX#g" -e "s#/etc/edge-runtime#$CONFDIR#g" \
    packaging/edge-runtime.service > "$UNITDIR/edge-runtime.service"
# The memory bound of this box's device profile, as a drop-in (none: the unit's default).
memory_mb=$("$PREFIX/venv/bin/edge-runtime" check-config "$CONFDIR/edge-runtime.toml" \
  | "$PREFIX/venv/bin/python" -c 'import json, sys
lines = [l for l in sys.stdin if not l.startswith("#")]
print(json.loads("".join(lines))["limits"]["memory_max_mb"])')
mkdir -p "$UNITDIR/edge-runtime.service.d"
if [ "$memory_mb" -gt 0 ]; then
  printf '[Service]\nMemoryMax=%sM\n' "$memory_mb" > "$UNITDIR/edge-runtime.service.d/memory.conf"
else
  rm -f "$UNITDIR/edge-runtime.service.d/memory.conf"
fi

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  echo "edge-runtime: installed. Start it with: systemctl enable --now edge-runtime"
else
  echo "edge-runtime: installed, but systemd is not running here: run 'systemctl daemon-reload' on the box"
fi
