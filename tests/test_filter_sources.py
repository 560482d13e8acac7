"""The shipped filters: committed modules speak the ABI, and build.sh rebuilds them from source."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import wasmtime

ROOT = Path(__file__).resolve().parent.parent
FILTERS = ROOT / "filters"
BUILD = FILTERS / "build.sh"

# Every filter: root id = file stem = example config name; the callbacks it must export.
AS_CALLBACKS = {
    "proxy_on_context_create",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_request_headers",
    "proxy_on_request_body",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_done",
    "proxy_on_log",
    "proxy_on_delete",
}
NEEDED_EXPORTS = {
    "router": AS_CALLBACKS,
    "device-auth": AS_CALLBACKS,
    "rate-limit": AS_CALLBACKS,
    "size-guard": {
        "proxy_on_vm_start",
        "proxy_on_configure",
        "proxy_on_request_headers",
        "proxy_on_request_body",
    },
    "redact": {
        "proxy_on_vm_start",
        "proxy_on_configure",
        "proxy_on_request_body",
        "proxy_on_response_body",
    },
}
# Hostcalls each filter is expected to import (a filter that loses one has lost a behaviour).
NEEDED_IMPORTS = {
    "router": {
        "proxy_get_header_map_value",
        "proxy_get_buffer_bytes",
        "proxy_add_header_map_value",
    },
    "device-auth": {
        "proxy_get_header_map_value",
        "proxy_get_property",
        "proxy_remove_header_map_value",
        "proxy_send_local_response",
    },
    "rate-limit": {
        "proxy_get_property",
        "proxy_get_shared_data",
        "proxy_set_shared_data",
        "proxy_get_current_time_nanoseconds",
        "proxy_define_metric",
        "proxy_increment_metric",
        "proxy_send_local_response",
    },
    "size-guard": {
        "proxy_get_header_map_value",
        "proxy_get_buffer_bytes",
        "proxy_send_local_response",
    },
    "redact": {"proxy_get_buffer_bytes", "proxy_set_buffer_bytes"},
}
AS_FILTERS = ("router", "device-auth", "rate-limit")

I32, I64 = "i32", "i64"
# The ABI v0.2.x hostcalls and their exact wasm signatures (params, results).
HOSTCALLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "proxy_log": ((I32,) * 3, (I32,)),
    "proxy_get_log_level": ((I32,), (I32,)),
    "proxy_get_current_time_nanoseconds": ((I32,), (I32,)),
    "proxy_set_tick_period_milliseconds": ((I32,), (I32,)),
    "proxy_set_effective_context": ((I32,), (I32,)),
    "proxy_done": ((), (I32,)),
    "proxy_get_buffer_bytes": ((I32,) * 5, (I32,)),
    "proxy_set_buffer_bytes": ((I32,) * 5, (I32,)),
    "proxy_get_buffer_status": ((I32,) * 3, (I32,)),
    "proxy_get_header_map_size": ((I32,) * 2, (I32,)),
    "proxy_get_header_map_pairs": ((I32,) * 3, (I32,)),
    "proxy_set_header_map_pairs": ((I32,) * 3, (I32,)),
    "proxy_get_header_map_value": ((I32,) * 5, (I32,)),
    "proxy_add_header_map_value": ((I32,) * 5, (I32,)),
    "proxy_replace_header_map_value": ((I32,) * 5, (I32,)),
    "proxy_remove_header_map_value": ((I32,) * 3, (I32,)),
    "proxy_continue_stream": ((I32,), (I32,)),
    "proxy_close_stream": ((I32,), (I32,)),
    "proxy_get_status": ((I32,) * 3, (I32,)),
    "proxy_send_local_response": ((I32,) * 8, (I32,)),
    "proxy_http_call": ((I32,) * 10, (I32,)),
    "proxy_get_shared_data": ((I32,) * 5, (I32,)),
    "proxy_set_shared_data": ((I32,) * 5, (I32,)),
    "proxy_register_shared_queue": ((I32,) * 3, (I32,)),
    "proxy_resolve_shared_queue": ((I32,) * 5, (I32,)),
    "proxy_enqueue_shared_queue": ((I32,) * 3, (I32,)),
    "proxy_dequeue_shared_queue": ((I32,) * 3, (I32,)),
    "proxy_define_metric": ((I32,) * 4, (I32,)),
    "proxy_record_metric": ((I32, I64), (I32,)),
    "proxy_increment_metric": ((I32, I64), (I32,)),
    "proxy_get_metric": ((I32,) * 2, (I32,)),
    "proxy_get_property": ((I32,) * 4, (I32,)),
    "proxy_set_property": ((I32,) * 4, (I32,)),
}
WASI_MODULES = {"wasi_snapshot_preview1", "wasi_unstable"}
WASI_ALLOWED = {"proc_exit": ((I32,), ()), "fd_write": ((I32,) * 4, (I32,))}
CALLBACK_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "proxy_on_memory_allocate": ((I32,), (I32,)),
    "malloc": ((I32,), (I32,)),
    "proxy_on_context_create": ((I32,) * 2, ()),
    "proxy_on_vm_start": ((I32,) * 2, (I32,)),
    "proxy_on_configure": ((I32,) * 2, (I32,)),
    "proxy_on_request_headers": ((I32,) * 3, (I32,)),
    "proxy_on_request_body": ((I32,) * 3, (I32,)),
    "proxy_on_response_headers": ((I32,) * 3, (I32,)),
    "proxy_on_response_body": ((I32,) * 3, (I32,)),
    "proxy_on_done": ((I32,), (I32,)),
    "proxy_on_log": ((I32,), ()),
    "proxy_on_delete": ((I32,), ()),
}
VERSION_EXPORT = re.compile(r"^proxy_abi_version_0_(2_1|2_0|1_0)$")

Signature = tuple[tuple[str, ...], tuple[str, ...]]


def signature(func_type: wasmtime.FuncType) -> Signature:
    return tuple(str(p) for p in func_type.params), tuple(str(r) for r in func_type.results)


def describe(path: Path) -> tuple[dict[tuple[str, str], Signature], dict[str, Signature | None]]:
    """Imports (module, name) → signature and exports name → signature (None for non-functions)."""
    module = wasmtime.Module(wasmtime.Engine(), path.read_bytes())
    imports: dict[tuple[str, str], Signature] = {}
    for imp in module.imports:
        assert isinstance(imp.type, wasmtime.FuncType), (
            f"{path.name} imports non-function {imp.name}"
        )
        key = (imp.module, imp.name or "")
        assert key not in imports, f"{path.name} imports {key} twice"
        imports[key] = signature(imp.type)
    exports: dict[str, Signature | None] = {}
    for exp in module.exports:
        exports[exp.name] = signature(exp.type) if isinstance(exp.type, wasmtime.FuncType) else None
    return imports, exports


def check_module(name: str, path: Path) -> None:
    imports, exports = describe(path)
    for (module, field), sig in imports.items():
        if module == "env":
            assert field in HOSTCALLS, f"{name}: unknown hostcall env.{field}"
            assert sig == HOSTCALLS[field], f"{name}: env.{field} has signature {sig}"
        else:
            assert module in WASI_MODULES, f"{name}: import from unexpected module {module}"
            assert WASI_ALLOWED.get(field) == sig, f"{name}: unexpected WASI import {field} {sig}"
    # The SDK's misnamed setter must not survive into the module.
    assert ("env", "proxy_set_buffer_status") not in imports
    assert NEEDED_IMPORTS[name] <= {field for module, field in imports if module == "env"}

    versions = [e for e in exports if VERSION_EXPORT.match(e)]
    assert len(versions) == 1, f"{name}: version exports {versions}"
    assert exports[versions[0]] == ((), ())
    assert "memory" in exports and exports["memory"] is None
    allocator = "proxy_on_memory_allocate" if "proxy_on_memory_allocate" in exports else "malloc"
    assert allocator in exports, f"{name}: no allocator export"
    for callback in NEEDED_EXPORTS[name] | {allocator}:
        assert callback in exports, f"{name}: missing export {callback}"
        assert exports[callback] == CALLBACK_TYPES[callback], f"{name}: {callback} type"


def test_each_filter_has_sources_and_an_example_config() -> None:
    for name in NEEDED_EXPORTS:
        config = FILTERS / "examples" / f"{name}.json"
        assert json.loads(config.read_text(encoding="utf-8")) is not None
        if name in AS_FILTERS:
            source = FILTERS / "assemblyscript" / name / "assembly" / "index.ts"
            # The root id the SDK compares with the plugin_root_id property.
            assert f'}}, "{name}");' in source.read_text(encoding="utf-8")
        else:
            assert (FILTERS / "c" / f"{name.replace('-', '_')}.c").is_file()
    lock = json.loads((FILTERS / "assemblyscript" / "package-lock.json").read_text())
    packages = lock["packages"]
    assert packages["node_modules/@solo-io/proxy-runtime"]["version"] == "0.1.8"
    assert packages["node_modules/assemblyscript"]["version"].startswith("0.14.")


@pytest.mark.parametrize("name", sorted(NEEDED_EXPORTS))
def test_committed_module_speaks_the_abi(name: str) -> None:
    check_module(name, FILTERS / f"{name}.wasm")


def _clang_major() -> str:
    clang = shutil.which("clang")
    if not clang:
        return ""
    out = subprocess.run([clang, "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"clang version (\d+)\.", out)
    return found.group(1) if found else ""


# The committed C modules were built with Debian 12's clang 14; another clang may emit other bytes.
COMMITTED_CLANG_MAJOR = "14"


def test_build_script_rebuilds_every_filter(tmp_path: Path) -> None:
    # The build script installs clang, lld and the npm packages itself when they are missing.
    result = subprocess.run(
        ["bash", str(BUILD), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    same_clang = _clang_major() == COMMITTED_CLANG_MAJOR
    for name in NEEDED_EXPORTS:
        built = tmp_path / f"{name}.wasm"
        check_module(name, built)
        committed = FILTERS / f"{name}.wasm"
        assert describe(built) == describe(committed), f"{name}: rebuilt module differs in ABI"
        # Sources and committed modules must not drift apart: the AssemblyScript toolchain is
        # pinned by the lock file, so its output is byte-for-byte reproducible.
        if name in AS_FILTERS or same_clang:
            assert built.read_bytes() == committed.read_bytes(), (
                f"filters/{name}.wasm is stale: run filters/build.sh and commit the result"
            )
