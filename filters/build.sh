#!/usr/bin/env bash
# Builds the filters that ship with edge-runtime from source: filters/build.sh [OUT_DIR]
#
#   AssemblyScript (@solo-io/proxy-runtime 0.1.8, assemblyscript 0.14, from package-lock.json):
#     router.wasm, device-auth.wasm, rate-limit.wasm
#   C (clang --target=wasm32, no libc, filters/c/proxy_wasm.h):
#     size-guard.wasm, redact.wasm
#
# OUT_DIR defaults to filters/ (where the committed modules live). Needs node + npm, clang and
# wasm-ld (lld). When one is missing and we run as root with apt-get, it is installed; otherwise
# the script stops and says what to install. `npm ci` runs only when node_modules does not already
# match the lock file, so a second build works offline. Environment: CLANG, WASM_LD to pick tools.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${1:-$HERE}"
AS_DIR="$HERE/assemblyscript"
C_DIR="$HERE/c"
AS_FILTERS=(router device-auth rate-limit)
C_FILTERS=(size-guard:size_guard.c redact:redact.c)

say() { printf 'filters/build.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

APT_UPDATED=0
apt_install() {
  # apt_install PACKAGE... : install Debian packages, or explain why we cannot.
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    return 1
  fi
  if [ "$APT_UPDATED" -eq 0 ]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 1
    APT_UPDATED=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

find_tool() {
  # find_tool NAME... : print the first of these commands on PATH.
  local name
  for name in "$@"; do
    if command -v "$name" >/dev/null 2>&1; then
      command -v "$name"
      return 0
    fi
  done
  return 1
}

CLANG_NAMES=(clang clang-19 clang-18 clang-17 clang-16 clang-15 clang-14)
WASM_LD_NAMES=(wasm-ld wasm-ld-19 wasm-ld-18 wasm-ld-17 wasm-ld-16 wasm-ld-15 wasm-ld-14)

locate_c_tools() {
  CLANG_BIN="${CLANG:-$(find_tool "${CLANG_NAMES[@]}" || true)}"
  WASM_LD_BIN="${WASM_LD:-$(find_tool "${WASM_LD_NAMES[@]}" || true)}"
}

# ---- toolchains -------------------------------------------------------------------------------

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm ||
    die "node and npm are needed for the AssemblyScript filters (Debian: apt-get install nodejs npm)"
fi

locate_c_tools
if [ -z "$CLANG_BIN" ] || [ -z "$WASM_LD_BIN" ]; then
  apt_install clang lld ||
    die "clang and wasm-ld are needed for the C filters (Debian: apt-get install clang lld; run as root to have this script do it)"
  locate_c_tools
  [ -n "$CLANG_BIN" ] || die "clang still not found after installing it"
  [ -n "$WASM_LD_BIN" ] || die "wasm-ld still not found after installing lld"
fi
command -v "$CLANG_BIN" >/dev/null 2>&1 || die "clang not runnable: $CLANG_BIN"
command -v "$WASM_LD_BIN" >/dev/null 2>&1 || die "wasm-ld not runnable: $WASM_LD_BIN"

# ---- AssemblyScript ---------------------------------------------------------------------------

lock_satisfied() {
  # True when every package of package-lock.json is installed at its locked version.
  (cd "$AS_DIR" && node -e '
    const lock = require("./package-lock.json");
    for (const [path, meta] of Object.entries(lock.packages || {})) {
      if (!path) continue;
      let version;
      try { version = require("./" + path + "/package.json").version; } catch (e) { process.exit(1); }
      if (version !== meta.version) process.exit(1);
    }' >/dev/null 2>&1)
}

if ! lock_satisfied; then
  say "npm ci (filters/assemblyscript)"
  (cd "$AS_DIR" && npm ci --no-audit --no-fund --loglevel=error >&2) ||
    die "npm ci failed in filters/assemblyscript (is the npm registry reachable?)"
fi
ASC="$AS_DIR/node_modules/.bin/asc"
[ -x "$ASC" ] || die "asc not found at $ASC after npm ci"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG_DIR="$(mktemp -d)"
trap 'rm -rf "$LOG_DIR"' EXIT

# The three compile in parallel (asc is single-threaded and takes ~10 s each).
pids=()
for name in "${AS_FILTERS[@]}"; do
  (
    cd "$AS_DIR"
    # --runtime half: the SDK's malloc/free need the reference-counting runtime, but the runtime's
    # own __alloc/__retain/... need not be exported to the host.
    "$ASC" "$name/assembly/index.ts" \
      --binaryFile "$OUT/$name.wasm" \
      --use abort=abort_proc_exit \
      -O3 --runtime half
  ) >"$LOG_DIR/$name.log" 2>&1 &
  pids+=("$!:$name")
done

# ---- C ----------------------------------------------------------------------------------------

CFLAGS=(--target=wasm32 -nostdlib -O2 -std=c11 -Wall -Wextra -Wno-unused-parameter)
# shellcheck disable=SC2054 # the commas belong to -Wl
LDFLAGS=(-Wl,--no-entry -Wl,-z,stack-size=65536)
case "$(basename "$WASM_LD_BIN")" in
  wasm-ld) ;;
  *) LDFLAGS+=("--ld-path=$WASM_LD_BIN") ;; # e.g. only wasm-ld-14 is installed
esac
for entry in "${C_FILTERS[@]}"; do
  name="${entry%%:*}"
  source="${entry#*:}"
  "$CLANG_BIN" "${CFLAGS[@]}" "${LDFLAGS[@]}" -I "$C_DIR" -o "$OUT/$name.wasm" "$C_DIR/$source" ||
    die "clang failed on filters/c/$source"
  say "built $name.wasm"
done

failed=0
for entry in "${pids[@]}"; do
  pid="${entry%%:*}"
  name="${entry#*:}"
  if wait "$pid"; then
    say "built $name.wasm"
  else
    failed=1
    say "asc failed on filters/assemblyscript/$name:"
    cat "$LOG_DIR/$name.log" >&2
  fi
done
[ "$failed" -eq 0 ] || die "AssemblyScript build failed"
chmod 644 "$OUT"/*.wasm
say "done: $OUT"
