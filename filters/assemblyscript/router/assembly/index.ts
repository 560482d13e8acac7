// router: picks the route (x-route header) from the topic/path and from keywords in the prompt.
//
// Root id "router". Configuration (JSON):
//   {"default": "orchestrate",
//    "override": false,
//    "rules": [{"path_prefix": "edge/req/diag", "route": "echo"},
//              {"keywords": ["weather", "天气", "remind"], "route": "orchestrate"},
//              {"keywords": ["say"], "route": "direct"}]}
// Path rules are tried first, in the headers phase (first match wins); keyword rules then, in the
// body phase, in config order (first match wins); otherwise "default". A request that already
// carries x-route keeps it unless "override" is true. Keywords match case-insensitively (ASCII) as
// substrings of the prompt: the "prompt" string, or else the last user message's "content", of a
// JSON body (so \u escapes are decoded first), or the raw body when it is not JSON.

export * from "@solo-io/proxy-runtime/proxy";
import { RootContext, Context, registerRootContext } from "@solo-io/proxy-runtime";
import {
  debugEnabled,
  readLogLevel,
  CONTINUE, STOP, REQUEST_HEADERS, REQUEST_BODY,
  readConfiguration, getHeader, getHeaderString, setHeader, getBody, debug, error,
} from "../../common/hostcalls";
import { JsonValue, parseJson } from "../../common/json";

const ROUTE_HEADER = "x-route";

class PathRule {
  prefix: string;
  route: string;
  constructor(prefix: string, route: string) {
    this.prefix = prefix;
    this.route = route;
  }
}

class KeywordRule {
  keywords: Array<ArrayBuffer>; // lowercased (ASCII), UTF-8
  route: string;
  constructor(keywords: Array<ArrayBuffer>, route: string) {
    this.keywords = keywords;
    this.route = route;
  }
}

class RouterConfig {
  defaultRoute: string = "orchestrate";
  override: bool = false;
  pathRules: Array<PathRule> = new Array<PathRule>();
  keywordRules: Array<KeywordRule> = new Array<KeywordRule>();
}

function asciiLower(data: ArrayBuffer): ArrayBuffer {
  let out = new ArrayBuffer(data.byteLength);
  let src = changetype<usize>(data);
  let dst = changetype<usize>(out);
  for (let i = 0; i < data.byteLength; i++) {
    let c = load<u8>(src + i);
    if (c >= 0x41 && c <= 0x5a) {
      c += 0x20;
    }
    store<u8>(dst + i, c);
  }
  return out;
}

function containsBytes(haystack: ArrayBuffer, needle: ArrayBuffer): bool {
  let n = needle.byteLength;
  let h = haystack.byteLength;
  if (n == 0) {
    return false;
  }
  if (n > h) {
    return false;
  }
  let hp = changetype<usize>(haystack);
  let np = changetype<usize>(needle);
  let first = load<u8>(np);
  for (let i = 0; i <= h - n; i++) {
    if (load<u8>(hp + i) != first) {
      continue;
    }
    let j = 1;
    while (j < n && load<u8>(hp + i + j) == load<u8>(np + j)) {
      j++;
    }
    if (j == n) {
      return true;
    }
  }
  return false;
}

function isWhitespace(c: u8): bool {
  return c == 0x20 || c == 0x09 || c == 0x0a || c == 0x0d;
}

/** The text keywords are matched against: the prompt of a JSON body, else the body itself. */
function promptText(body: ArrayBuffer): ArrayBuffer {
  let p = changetype<usize>(body);
  let i = 0;
  while (i < body.byteLength && isWhitespace(load<u8>(p + i))) {
    i++;
  }
  if (i >= body.byteLength || load<u8>(p + i) != 0x7b) {
    return body;
  }
  let doc = parseJson(String.UTF8.decode(body));
  if (doc === null) {
    return body;
  }
  let root = changetype<JsonValue>(doc);
  let prompt = root.get("prompt");
  if (prompt !== null && prompt.isString()) {
    return String.UTF8.encode(prompt.str);
  }
  let messages = root.get("messages");
  if (messages !== null && messages.isArray()) {
    for (let k = messages.items.length - 1; k >= 0; k--) {
      let message = messages.items[k];
      let role = message.get("role");
      let content = message.get("content");
      if (role !== null && role.isString() && role.str == "user" && content !== null && content.isString()) {
        return String.UTF8.encode(content.str);
      }
    }
  }
  return body;
}

class RouterRoot extends RootContext {
  config: RouterConfig = new RouterConfig();

  createContext(context_id: u32): Context {
    return new Router(context_id, this);
  }

  onConfigure(configuration_size: u32): bool {
    readLogLevel();
    let text = readConfiguration(configuration_size);
    let doc = parseJson(text);
    if (doc === null || !doc.isObject()) {
      error("router: configuration is not a JSON object");
      return false;
    }
    let root = changetype<JsonValue>(doc);
    let config = new RouterConfig();
    let dflt = root.get("default");
    if (dflt !== null) {
      if (!dflt.isString() || dflt.str.length == 0) {
        error("router: \"default\" must be a non-empty string");
        return false;
      }
      config.defaultRoute = dflt.str;
    }
    let override = root.get("override");
    if (override !== null && override.isBool()) {
      config.override = override.flag;
    }
    let rules = root.get("rules");
    if (rules !== null) {
      if (!rules.isArray()) {
        error("router: \"rules\" must be an array");
        return false;
      }
      for (let i = 0; i < rules.items.length; i++) {
        let rule = rules.items[i];
        let route = rule.get("route");
        if (route === null || !route.isString() || route.str.length == 0) {
          error("router: rule " + i.toString() + " needs a \"route\" string");
          return false;
        }
        let prefix = rule.get("path_prefix");
        let keywords = rule.get("keywords");
        if (prefix !== null && prefix.isString()) {
          config.pathRules.push(new PathRule(prefix.str, route.str));
        } else if (keywords !== null && keywords.isArray()) {
          let encoded = new Array<ArrayBuffer>();
          for (let k = 0; k < keywords.items.length; k++) {
            let word = keywords.items[k];
            if (word.isString() && word.str.length > 0) {
              encoded.push(asciiLower(String.UTF8.encode(word.str)));
            }
          }
          config.keywordRules.push(new KeywordRule(encoded, route.str));
        } else {
          error("router: rule " + i.toString() + " needs \"path_prefix\" or \"keywords\"");
          return false;
        }
      }
    }
    this.config = config;
    return true;
  }
}

class Router extends Context {
  pending: bool = false;
  hadRoute: bool = false;

  constructor(context_id: u32, root_context: RouterRoot) {
    super(context_id, root_context);
  }
  // The SDK's defaults build a DEBUG string on every call; these callbacks have nothing to do.
  onDone(): bool {
    return true;
  }

  onLog(): void {}

  onDelete(): void {}


  config(): RouterConfig {
    return (this.root_context as RouterRoot).config;
  }

  setRoute(route: string): void {
    setHeader(REQUEST_HEADERS, ROUTE_HEADER, route, this.hadRoute);
    if (debugEnabled()) debug("router: x-route " + route);
  }

  onRequestHeaders(a: u32, end_of_stream: bool): i32 {
    let config = this.config();
    this.hadRoute = getHeader(REQUEST_HEADERS, ROUTE_HEADER) !== null;
    if (this.hadRoute && !config.override) {
      return CONTINUE;
    }
    let path = getHeaderString(REQUEST_HEADERS, ":path");
    if (path !== null) {
      for (let i = 0; i < config.pathRules.length; i++) {
        let rule = config.pathRules[i];
        if (path.startsWith(rule.prefix)) {
          this.setRoute(rule.route);
          return CONTINUE;
        }
      }
    }
    if (config.keywordRules.length == 0 || end_of_stream) {
      this.setRoute(config.defaultRoute);
      return CONTINUE;
    }
    // The keywords are in the body: hold the headers until it has been read.
    this.pending = true;
    return STOP;
  }

  onRequestBody(body_buffer_length: usize, end_of_stream: bool): i32 {
    if (!this.pending) {
      return CONTINUE;
    }
    if (!end_of_stream) {
      return STOP; // StopIterationAndBuffer: call again with the whole body
    }
    this.pending = false;
    let config = this.config();
    let text = asciiLower(promptText(getBody(REQUEST_BODY, <u32>body_buffer_length)));
    for (let i = 0; i < config.keywordRules.length; i++) {
      let rule = config.keywordRules[i];
      for (let k = 0; k < rule.keywords.length; k++) {
        if (containsBytes(text, rule.keywords[k])) {
          this.setRoute(rule.route);
          return CONTINUE;
        }
      }
    }
    this.setRoute(config.defaultRoute);
    return CONTINUE;
  }
}

registerRootContext((context_id: u32): RootContext => { return new RouterRoot(context_id); }, "router");
