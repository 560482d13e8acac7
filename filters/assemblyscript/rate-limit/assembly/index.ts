// rate-limit: a token bucket per device in shared data; over the limit answers 429 + retry-after.
//
// Root id "rate-limit". Configuration (JSON):
//   {"rate_per_second": 2, "burst": 5}
// Each device (property `device.id`; else `source.address`; else one shared "unknown" bucket) holds
// up to `burst` tokens, refilled at `rate_per_second`; a request takes one. The bucket lives in
// shared data under "rate-limit/<device>" as "<tokens_milli>,<last_ns>", updated with
// compare-and-swap so instances and filters sharing it never lose an update. Rejections count in
// the counter metric "rate_limit_rejected".

export * from "@solo-io/proxy-runtime/proxy";
import { RootContext, Context, registerRootContext } from "@solo-io/proxy-runtime";
import {
  debugEnabled,
  readLogLevel,
  CONTINUE, STOP, OK, NOT_FOUND, CAS_MISMATCH, METRIC_COUNTER,
  readConfiguration, getPropertyString, getSharedData, setSharedData, nowNanoseconds,
  defineMetric, incrementMetric, sendLocalResponse, errorBody, debug, info, error,
} from "../../common/hostcalls";
import { JsonValue, parseJson } from "../../common/json";

const KEY_PREFIX = "rate-limit/";
const MAX_ATTEMPTS = 8;
const MILLI: i64 = 1000;

class LimitConfig {
  ratePerSecond: f64 = 1;
  burstMilli: i64 = MILLI;
}

class Bucket {
  tokensMilli: i64 = 0;
  lastNs: i64 = 0;
  valid: bool = false;
}

/** Parses "<tokens_milli>,<last_ns>"; `valid` is false for anything else. */
function parseBucket(data: ArrayBuffer): Bucket {
  let bucket = new Bucket();
  let p = changetype<usize>(data);
  let n = data.byteLength;
  let field = 0;
  let value: i64 = 0;
  let digits = 0;
  for (let i = 0; i < n; i++) {
    let c = load<u8>(p + i);
    // 19 digits hold any i64 this bucket stores (nanosecond timestamps have 19 today).
    if (c >= 0x30 && c <= 0x39 && digits < 19) {
      value = value * 10 + <i64>(c - 0x30);
      digits++;
    } else if (c == 0x2c && field == 0 && digits > 0) {
      bucket.tokensMilli = value;
      field = 1;
      value = 0;
      digits = 0;
    } else {
      return bucket;
    }
  }
  if (field == 1 && digits > 0) {
    bucket.lastNs = value;
    bucket.valid = true;
  }
  return bucket;
}

class RateLimitRoot extends RootContext {
  config: LimitConfig = new LimitConfig();
  rejectedMetric: i64 = -1;

  createContext(context_id: u32): Context {
    return new RateLimit(context_id, this);
  }

  onConfigure(configuration_size: u32): bool {
    readLogLevel();
    let doc = parseJson(readConfiguration(configuration_size));
    if (doc === null || !doc.isObject()) {
      error("rate-limit: configuration is not a JSON object");
      return false;
    }
    let root = changetype<JsonValue>(doc);
    let rate = root.get("rate_per_second");
    if (rate === null || !rate.isNumber() || !(rate.num > 0) || rate.num > 1e9) {
      error("rate-limit: \"rate_per_second\" must be a number > 0");
      return false;
    }
    let config = new LimitConfig();
    config.ratePerSecond = rate.num;
    let burst = root.get("burst");
    let tokens = Math.max(1, Math.ceil(rate.num));
    if (burst !== null) {
      if (!burst.isNumber() || !(burst.num >= 1) || burst.num > 1e9) {
        error("rate-limit: \"burst\" must be a number >= 1");
        return false;
      }
      tokens = burst.num;
    }
    config.burstMilli = <i64>(tokens * <f64>MILLI);
    this.config = config;
    if (this.rejectedMetric < 0) {
      this.rejectedMetric = defineMetric(METRIC_COUNTER, "rate_limit_rejected");
    }
    return true;
  }
}

class RateLimit extends Context {
  constructor(context_id: u32, root_context: RateLimitRoot) {
    super(context_id, root_context);
  }
  // The SDK's defaults build a DEBUG string on every call; these callbacks have nothing to do.
  onDone(): bool {
    return true;
  }

  onLog(): void {}

  onDelete(): void {}


  onRequestHeaders(a: u32, end_of_stream: bool): i32 {
    let root = this.root_context as RateLimitRoot;
    let config = root.config;
    let device = getPropertyString("device.id");
    if (device === null || device.length == 0) {
      device = getPropertyString("source.address");
    }
    if (device === null || device.length == 0) {
      device = "unknown";
    }
    let key = KEY_PREFIX + (device as string);

    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      let now = <i64>nowNanoseconds();
      let stored = getSharedData(key);
      let tokens = config.burstMilli;
      let last = now;
      let cas: u32 = 0;
      if (stored.status == OK) {
        cas = stored.cas;
        let bucket = parseBucket(stored.value);
        if (bucket.valid) {
          tokens = bucket.tokensMilli;
          last = bucket.lastNs;
        }
      } else if (stored.status != NOT_FOUND) {
        info("rate-limit: shared data unavailable (status " + stored.status.toString() + "), letting the request through");
        return CONTINUE;
      }
      let elapsed = now - last;
      if (elapsed > 0) {
        // milli-tokens = ns * rate / 1e6; in f64 so a long idle time cannot overflow.
        let refill = <f64>elapsed * config.ratePerSecond / 1e6;
        let filled = <f64>tokens + refill;
        tokens = filled >= <f64>config.burstMilli ? config.burstMilli : <i64>filled;
      } else {
        // Clock went backwards or another writer is ahead of us: keep its timestamp.
        now = last;
      }
      if (tokens > config.burstMilli) {
        tokens = config.burstMilli;
      }
      if (tokens < MILLI) {
        let missing = <f64>(MILLI - tokens);
        let wait = <i64>Math.ceil(missing / (config.ratePerSecond * <f64>MILLI));
        if (wait < 1) {
          wait = 1;
        }
        incrementMetric(root.rejectedMetric, 1);
        if (debugEnabled()) debug("rate-limit: " + (device as string) + " over the limit, retry in " + wait.toString() + " s");
        sendLocalResponse(429, "rate_limited",
          errorBody(429, "rate limit exceeded, retry in " + wait.toString() + " s"),
          ["content-type", "retry-after"], ["application/json", wait.toString()]);
        return STOP;
      }
      tokens -= MILLI;
      let status = setSharedData(key, tokens.toString() + "," + now.toString(), cas);
      if (status == OK) {
        return CONTINUE;
      }
      if (status != CAS_MISMATCH) {
        info("rate-limit: shared data write failed (status " + status.toString() + "), letting the request through");
        return CONTINUE;
      }
    }
    info("rate-limit: bucket for " + (device as string) + " too contended, letting the request through");
    return CONTINUE;
  }
}

registerRootContext((context_id: u32): RootContext => { return new RateLimitRoot(context_id); }, "rate-limit");
