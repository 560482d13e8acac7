// Raw Proxy-Wasm ABI v0.2 hostcalls and small helpers over them, shared by the AssemblyScript filters.
//
// Why not the SDK's wrappers: @solo-io/proxy-runtime 0.1.8 declares the body-setting hostcall under
// the wrong import, passes wrong arguments in get_shared_data / set_shared_data / get_metric and in
// RootContext.onConfigure (the configuration size goes where a pointer belongs), and aborts
// (proc_exit) on any non-OK status, e.g. a missing property. The filters call the raw imports below
// instead, with the signatures of the ABI spec, and treat NOT_FOUND as "absent".

import * as imports from "@solo-io/proxy-runtime/imports";
import { free } from "@solo-io/proxy-runtime/malloc";
import { log as sdkLog, LogLevelValues } from "@solo-io/proxy-runtime";

// Declared here because the SDK does not declare it (it binds its setter to another name).
// @ts-ignore: decorator
@external("env", "proxy_set_buffer_bytes")
declare function proxy_set_buffer_bytes(typ: i32, start: u32, length: u32, data: usize, size: usize): u32;

// The SDK's raw declarations of these two are right, but its wrappers are not; declare our own.
// @ts-ignore: decorator
@external("env", "proxy_get_shared_data")
declare function proxy_get_shared_data(key_ptr: usize, key_size: usize, value_ptr_ptr: usize, value_size_ptr: usize, cas_ptr: usize): u32;
// @ts-ignore: decorator
@external("env", "proxy_get_log_level")
declare function proxy_get_log_level(level_ptr: usize): u32;

@external("env", "proxy_set_shared_data")
declare function proxy_set_shared_data(key_ptr: usize, key_size: usize, value_ptr: usize, value_size: usize, cas: u32): u32;

export const OK: u32 = 0;
export const NOT_FOUND: u32 = 1;
export const CAS_MISMATCH: u32 = 8;

export const REQUEST_HEADERS: i32 = 0;
export const RESPONSE_HEADERS: i32 = 2;
export const REQUEST_BODY: i32 = 0;
export const RESPONSE_BODY: i32 = 1;
export const PLUGIN_CONFIGURATION: i32 = 7;

export const METRIC_COUNTER: i32 = 0;

// Filter return codes (Envoy's; the host treats any non-zero as "pause").
export const CONTINUE: i32 = 0;
export const STOP: i32 = 1;

/** Out-parameters the host writes into: a (pointer, size) pair, a u32 and a u64. */
class Slots {
  ptr: usize = 0;
  size: usize = 0;
  cas: u32 = 0;
  u64val: u64 = 0;
}
const slots = new Slots();

function ptrSlot(): usize { return changetype<usize>(slots) + offsetof<Slots>("ptr"); }
function sizeSlot(): usize { return changetype<usize>(slots) + offsetof<Slots>("size"); }
function casSlot(): usize { return changetype<usize>(slots) + offsetof<Slots>("cas"); }
function u64Slot(): usize { return changetype<usize>(slots) + offsetof<Slots>("u64val"); }

function resetSlots(): void {
  slots.ptr = 0;
  slots.size = 0;
  slots.cas = 0;
}

/** Takes ownership of the buffer the host allocated through `malloc` (empty when none). */
function takeBuffer(): ArrayBuffer {
  let ptr = slots.ptr;
  let size = slots.size;
  slots.ptr = 0;
  slots.size = 0;
  if (ptr == 0 || size == 0) {
    return new ArrayBuffer(0);
  }
  // The host filled memory from the SDK's `malloc`, which returns a retained ArrayBuffer of exactly
  // `size` bytes: adopt it and drop malloc's extra reference (the same dance as the SDK).
  let array = changetype<ArrayBuffer>(ptr);
  free(ptr);
  return array;
}

// The host's level for this filter, read when the configuration arrives. Building a log
// message costs string allocations in wasm, so callers check debugEnabled() first.
const DEBUG_LEVEL: u32 = 1;
let hostLogLevel: u32 = 0;

export function readLogLevel(): void {
  slots.cas = 0;
  if (proxy_get_log_level(casSlot()) == OK) {
    hostLogLevel = slots.cas;
  }
}

export function debugEnabled(): bool {
  return hostLogLevel <= DEBUG_LEVEL;
}

export function debug(message: string): void {
  sdkLog(LogLevelValues.debug, message);
}

export function info(message: string): void {
  sdkLog(LogLevelValues.info, message);
}

export function warn(message: string): void {
  sdkLog(LogLevelValues.warn, message);
}

export function error(message: string): void {
  sdkLog(LogLevelValues.error, message);
}

/** The plugin configuration as a string; the SDK's own reader passes a size where a pointer goes. */
export function readConfiguration(size: u32): string {
  resetSlots();
  if (size == 0) {
    return "";
  }
  let status = imports.proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, size, ptrSlot(), sizeSlot());
  if (status != OK) {
    return "";
  }
  return String.UTF8.decode(takeBuffer());
}

/** A header's value, or null when the map does not hold it. */
export function getHeader(map: i32, name: string): ArrayBuffer | null {
  resetSlots();
  let key = String.UTF8.encode(name);
  let status = imports.proxy_get_header_map_value(map, changetype<usize>(key), key.byteLength, ptrSlot(), sizeSlot());
  if (status != OK) {
    return null;
  }
  return takeBuffer();
}

export function getHeaderString(map: i32, name: string): string | null {
  let value = getHeader(map, name);
  if (value === null) {
    return null;
  }
  return String.UTF8.decode(changetype<ArrayBuffer>(value));
}

/** Sets a header, replacing any value it had. */
export function setHeader(map: i32, name: string, value: string, present: bool): u32 {
  let key = String.UTF8.encode(name);
  let val = String.UTF8.encode(value);
  if (present) {
    return imports.proxy_replace_header_map_value(map, changetype<usize>(key), key.byteLength, changetype<usize>(val), val.byteLength);
  }
  return imports.proxy_add_header_map_value(map, changetype<usize>(key), key.byteLength, changetype<usize>(val), val.byteLength);
}

export function removeHeader(map: i32, name: string): u32 {
  let key = String.UTF8.encode(name);
  return imports.proxy_remove_header_map_value(map, changetype<usize>(key), key.byteLength);
}

function getPropertyRaw(path: ArrayBuffer): ArrayBuffer | null {
  resetSlots();
  let status = imports.proxy_get_property(changetype<usize>(path), path.byteLength, ptrSlot(), sizeSlot());
  if (status != OK) {
    return null;
  }
  return takeBuffer();
}

/**
 * A property's raw bytes, or null when the host has none. `dotted` is the Envoy-style name
 * ("device.id"); it is asked for as NUL-separated segments first, as Envoy SDKs send it, then as one
 * dotted segment.
 */
export function getProperty(dotted: string): ArrayBuffer | null {
  let segmented = String.UTF8.encode(dotted.replaceAll(".", "\0"));
  let value = getPropertyRaw(segmented);
  if (value === null && dotted.includes(".")) {
    value = getPropertyRaw(String.UTF8.encode(dotted));
  }
  return value;
}

export function getPropertyString(dotted: string): string | null {
  let value = getProperty(dotted);
  if (value === null) {
    return null;
  }
  return String.UTF8.decode(changetype<ArrayBuffer>(value));
}

/** The first `size` bytes of a body buffer (empty when the host has none). */
export function getBody(typ: i32, size: u32): ArrayBuffer {
  resetSlots();
  if (size == 0) {
    return new ArrayBuffer(0);
  }
  let status = imports.proxy_get_buffer_bytes(typ, 0, size, ptrSlot(), sizeSlot());
  if (status != OK) {
    return new ArrayBuffer(0);
  }
  return takeBuffer();
}

/** Replaces the first `oldLength` bytes of a body buffer (all of it, when that is its length). */
export function setBody(typ: i32, oldLength: u32, data: ArrayBuffer): u32 {
  return proxy_set_buffer_bytes(typ, 0, oldLength, changetype<usize>(data), data.byteLength);
}

export function nowNanoseconds(): u64 {
  slots.u64val = 0;
  imports.proxy_get_current_time_nanoseconds(u64Slot());
  return slots.u64val;
}

/** Result of a shared-data read: status, value and the CAS token to write it back with. */
export class SharedValue {
  status: u32 = 0;
  value: ArrayBuffer = new ArrayBuffer(0);
  cas: u32 = 0;
}

export function getSharedData(key: string): SharedValue {
  resetSlots();
  let k = String.UTF8.encode(key);
  let result = new SharedValue();
  result.status = proxy_get_shared_data(changetype<usize>(k), k.byteLength, ptrSlot(), sizeSlot(), casSlot());
  if (result.status == OK) {
    result.cas = slots.cas;
    result.value = takeBuffer();
  }
  return result;
}

export function setSharedData(key: string, value: string, cas: u32): u32 {
  let k = String.UTF8.encode(key);
  let v = String.UTF8.encode(value);
  return proxy_set_shared_data(changetype<usize>(k), k.byteLength, changetype<usize>(v), v.byteLength, cas);
}

/** Defines a metric; returns its id, or -1 when the host refused. */
export function defineMetric(typ: i32, name: string): i64 {
  slots.cas = 0;
  let n = String.UTF8.encode(name);
  let status = imports.proxy_define_metric(typ, changetype<usize>(n), n.byteLength, casSlot());
  if (status != OK) {
    return -1;
  }
  return <i64>slots.cas;
}

export function incrementMetric(id: i64, by: i64): void {
  if (id >= 0) {
    imports.proxy_increment_metric(<u32>id, by);
  }
}

/** Header pairs in the ABI's map encoding: count, (key_len, value_len)*, then key\0value\0 each. */
function encodePairs(names: Array<string>, values: Array<string>): ArrayBuffer {
  let n = names.length;
  let keys = new Array<ArrayBuffer>(n);
  let vals = new Array<ArrayBuffer>(n);
  let total = 4 + 8 * n;
  for (let i = 0; i < n; i++) {
    keys[i] = String.UTF8.encode(names[i]);
    vals[i] = String.UTF8.encode(values[i]);
    total += keys[i].byteLength + vals[i].byteLength + 2;
  }
  let out = new ArrayBuffer(total);
  let base = changetype<usize>(out);
  store<u32>(base, n);
  let data = base + 4 + 8 * n;
  for (let i = 0; i < n; i++) {
    let k = keys[i];
    let v = vals[i];
    store<u32>(base + 4 + 8 * i, k.byteLength);
    store<u32>(base + 8 + 8 * i, v.byteLength);
    memory.copy(data, changetype<usize>(k), k.byteLength);
    data += k.byteLength;
    store<u8>(data, 0);
    data += 1;
    memory.copy(data, changetype<usize>(v), v.byteLength);
    data += v.byteLength;
    store<u8>(data, 0);
    data += 1;
  }
  return out;
}

/** Answers the request locally with a JSON body; the filter then returns STOP. */
export function sendLocalResponse(status: u32, details: string, body: string, names: Array<string>, values: Array<string>): u32 {
  let d = String.UTF8.encode(details);
  let b = String.UTF8.encode(body);
  let pairs = encodePairs(names, values);
  return imports.proxy_send_local_response(status, changetype<usize>(d), d.byteLength,
    changetype<usize>(b), b.byteLength, changetype<usize>(pairs), pairs.byteLength, <u32>-1);
}

/** The project's error body: {"error":{"status":N,"message":"..."}}. */
export function errorBody(status: u32, message: string): string {
  return "{\"error\":{\"status\":" + status.toString() + ",\"message\":\"" + jsonEscape(message) + "\"}}";
}

export function jsonEscape(text: string): string {
  let out = "";
  for (let i = 0; i < text.length; i++) {
    let c = text.charCodeAt(i);
    if (c == 0x22) {
      out += "\\\"";
    } else if (c == 0x5c) {
      out += "\\\\";
    } else if (c < 0x20) {
      out += c == 0x0a ? "\\n" : " ";
    } else {
      out += String.fromCharCode(c);
    }
  }
  return out;
}
