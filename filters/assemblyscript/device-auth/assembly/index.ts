// device-auth: lets a request through only with the API key registered for its device.
//
// Root id "device-auth". Configuration (JSON):
//   {"header": "x-api-key", "keys": {"sensor-1": "s3cret", "sensor-2": "k2"}}
// The device is the property `device.id`. No key header: 401 with www-authenticate. Unknown device
// or wrong key: 403 (same body for both,
// so a caller cannot probe which device ids exist). On success the key header is removed, so later filters and logs never see it.

export * from "@solo-io/proxy-runtime/proxy";
import { RootContext, Context, registerRootContext } from "@solo-io/proxy-runtime";
import {
  debugEnabled,
  readLogLevel,
  CONTINUE, STOP, REQUEST_HEADERS,
  readConfiguration, getHeader, removeHeader, getProperty, sendLocalResponse, errorBody, debug, error,
} from "../../common/hostcalls";
import { JsonValue, parseJson } from "../../common/json";

class AuthConfig {
  header: string = "x-api-key";
  devices: Array<ArrayBuffer> = new Array<ArrayBuffer>();
  keys: Array<ArrayBuffer> = new Array<ArrayBuffer>();
}

function sameBytes(a: ArrayBuffer, b: ArrayBuffer): bool {
  if (a.byteLength != b.byteLength) {
    return false;
  }
  let pa = changetype<usize>(a);
  let pb = changetype<usize>(b);
  let diff: u32 = 0;
  // No early exit on the first difference: the time taken does not reveal how much of a key matched.
  for (let i = 0; i < a.byteLength; i++) {
    diff |= <u32>(load<u8>(pa + i) ^ load<u8>(pb + i));
  }
  return diff == 0;
}

class DeviceAuthRoot extends RootContext {
  config: AuthConfig = new AuthConfig();

  createContext(context_id: u32): Context {
    return new DeviceAuth(context_id, this);
  }

  onConfigure(configuration_size: u32): bool {
    readLogLevel();
    let doc = parseJson(readConfiguration(configuration_size));
    if (doc === null || !doc.isObject()) {
      error("device-auth: configuration is not a JSON object");
      return false;
    }
    let root = changetype<JsonValue>(doc);
    let config = new AuthConfig();
    let header = root.get("header");
    if (header !== null) {
      if (!header.isString() || header.str.length == 0) {
        error("device-auth: \"header\" must be a non-empty string");
        return false;
      }
      config.header = header.str.toLowerCase();
    }
    let keys = root.get("keys");
    if (keys === null || !keys.isObject()) {
      error("device-auth: \"keys\" must be an object of device id to key");
      return false;
    }
    for (let i = 0; i < keys.keys.length; i++) {
      let key = keys.items[i];
      if (!key.isString() || key.str.length == 0) {
        error("device-auth: the key of device \"" + keys.keys[i] + "\" must be a non-empty string");
        return false;
      }
      config.devices.push(String.UTF8.encode(keys.keys[i]));
      config.keys.push(String.UTF8.encode(key.str));
    }
    this.config = config;
    return true;
  }
}

class DeviceAuth extends Context {
  constructor(context_id: u32, root_context: DeviceAuthRoot) {
    super(context_id, root_context);
  }
  // The SDK's defaults build a DEBUG string on every call; these callbacks have nothing to do.
  onDone(): bool {
    return true;
  }

  onLog(): void {}

  onDelete(): void {}


  reject(status: u32, details: string, message: string): i32 {
    let config = (this.root_context as DeviceAuthRoot).config;
    let names = ["content-type"];
    let values = ["application/json"];
    if (status == 401) {
      names.push("www-authenticate");
      values.push("ApiKey header=\"" + config.header + "\"");
    }
    if (debugEnabled()) debug("device-auth: " + status.toString() + " " + details);
    sendLocalResponse(status, details, errorBody(status, message), names, values);
    return STOP;
  }

  onRequestHeaders(a: u32, end_of_stream: bool): i32 {
    let config = (this.root_context as DeviceAuthRoot).config;
    let presented = getHeader(REQUEST_HEADERS, config.header);
    if (presented === null || presented.byteLength == 0) {
      return this.reject(401, "device_auth_missing_key", "missing " + config.header);
    }
    let device = getProperty("device.id");
    if (device === null || device.byteLength == 0) {
      return this.reject(403, "device_auth_unknown_device", "forbidden");
    }
    let known = false;
    let match = false;
    for (let i = 0; i < config.devices.length; i++) {
      if (sameBytes(config.devices[i], changetype<ArrayBuffer>(device))) {
        known = true;
        match = sameBytes(config.keys[i], changetype<ArrayBuffer>(presented));
      }
    }
    if (!known) {
      return this.reject(403, "device_auth_unknown_device", "forbidden");
    }
    if (!match) {
      return this.reject(403, "device_auth_bad_key", "forbidden");
    }
    removeHeader(REQUEST_HEADERS, config.header);
    return CONTINUE;
  }
}

registerRootContext((context_id: u32): RootContext => { return new DeviceAuthRoot(context_id); }, "device-auth");
