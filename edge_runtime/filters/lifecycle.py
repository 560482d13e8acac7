"""A small wasm module per filter that runs a phase's callbacks in one call from the host.

Each request costs a filter eight callbacks (context create, request headers and body, response
headers and body, done, log, delete). Crossing from Python into wasm costs a few microseconds
each time, so this module, generated for the filter's own exports and instantiated in its store,
strings them together: three crossings per request instead of eight. It stops between headers
and body when the filter answered locally or closed the stream (the host raises `stop`).
"""

from __future__ import annotations

from collections.abc import Mapping

# (params, results) of the filter's exports this module may call.
Arity = tuple[int, int]

_PHASES = {
    "request": ("proxy_on_request_headers", "proxy_on_request_body"),
    "response": ("proxy_on_response_headers", "proxy_on_response_body"),
}
_FINISH = ("proxy_on_done", "proxy_on_log", "proxy_on_delete")
CALLBACKS = ("proxy_on_context_create", *_PHASES["request"], *_PHASES["response"], *_FINISH)


def _call(name: str, arity: Arity, args: list[str]) -> str:
    """A call with the export's own arity (v0.1.0 modules pass fewer arguments)."""
    params, results = arity
    passed = " ".join(args[:params] + ["(i32.const 0)"] * max(0, params - len(args)))
    call = f"(call ${name} {passed})"
    return call if results else f"(block (result i32) {call} (i32.const 0))"


def shim_source(exports: Mapping[str, Arity]) -> str:
    """WAT for a filter exporting ``exports`` (name → (params, results)), callbacks only."""
    present = {n: a for n, a in exports.items() if n in CALLBACKS and a[1] <= 1}
    imports = []
    for name, (params, results) in present.items():
        param_types = " ".join(["i32"] * params)
        result = " (result i32)" if results else ""
        imports.append(f'  (import "filter" "{name}" (func ${name} (param {param_types}){result}))')
    body: list[str] = []

    def phase(kind: str, first: str) -> str:
        headers, body_cb = _PHASES[kind]
        lines = [first] if first else []
        if headers in present:
            eos = "(i32.eqz (local.get $body))"
            lines.append(
                "    (local.set $action "
                + _call(headers, present[headers], ["(local.get $ctx)", "(local.get $n)", eos])
                + ")"
            )
        lines.append("    (if (global.get $stop) (then (return (local.get $action))))")
        if body_cb in present:
            call = _call(
                body_cb,
                present[body_cb],
                ["(local.get $ctx)", "(local.get $body)", "(i32.const 1)"],
            )
            lines.append(f"    (if (local.get $body) (then (local.set $action {call})))")
        lines.append("    (local.get $action)")
        return "\n".join(lines)

    create = ""
    if "proxy_on_context_create" in present:
        create = (
            "    (drop "
            + _call(
                "proxy_on_context_create",
                present["proxy_on_context_create"],
                ["(local.get $ctx)", "(local.get $root)"],
            )
            + ")"
        )
    body.append(
        '  (func (export "request") (param $ctx i32) (param $root i32) (param $n i32)'
        " (param $body i32) (result i32) (local $action i32)\n" + phase("request", create) + ")"
    )
    body.append(
        '  (func (export "response") (param $ctx i32) (param $n i32) (param $body i32)'
        " (result i32) (local $action i32)\n" + phase("response", "") + ")"
    )
    finish = [
        "    (drop " + _call(name, present[name], ["(local.get $ctx)"]) + ")"
        for name in _FINISH
        if name in present
    ]
    body.append('  (func (export "finish") (param $ctx i32)\n' + "\n".join(finish) + ")")
    return (
        "(module\n"
        + "\n".join(imports)
        + '\n  (global $stop (export "stop") (mut i32) (i32.const 0))\n'
        + "\n".join(body)
        + ")\n"
    )
