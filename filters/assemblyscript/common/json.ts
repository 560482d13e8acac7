// A small JSON reader for filter configurations and request bodies (no third-party dependency).
//
// One node class with a kind tag keeps it simple for AssemblyScript 0.14 (no closures, limited
// union types). Parsing never traps: malformed input yields null.

export const NULL: i32 = 0;
export const BOOL: i32 = 1;
export const NUMBER: i32 = 2;
export const STRING: i32 = 3;
export const ARRAY: i32 = 4;
export const OBJECT: i32 = 5;

const MAX_DEPTH: i32 = 64;

export class JsonValue {
  kind: i32 = NULL;
  flag: bool = false;
  num: f64 = 0;
  str: string = "";
  items: Array<JsonValue> = new Array<JsonValue>();
  keys: Array<string> = new Array<string>();

  isString(): bool { return this.kind == STRING; }
  isNumber(): bool { return this.kind == NUMBER; }
  isBool(): bool { return this.kind == BOOL; }
  isArray(): bool { return this.kind == ARRAY; }
  isObject(): bool { return this.kind == OBJECT; }

  /** The member named `key` of an object (the last one when repeated), or null. */
  get(key: string): JsonValue | null {
    if (this.kind != OBJECT) {
      return null;
    }
    for (let i = this.keys.length - 1; i >= 0; i--) {
      if (this.keys[i] == key) {
        return this.items[i];
      }
    }
    return null;
  }
}

class Parser {
  text: string;
  pos: i32 = 0;
  failed: bool = false;

  constructor(text: string) {
    this.text = text;
  }

  fail(): JsonValue {
    this.failed = true;
    return new JsonValue();
  }

  skipWhitespace(): void {
    while (this.pos < this.text.length) {
      let c = this.text.charCodeAt(this.pos);
      if (c == 0x20 || c == 0x09 || c == 0x0a || c == 0x0d) {
        this.pos++;
      } else {
        break;
      }
    }
  }

  peek(): i32 {
    return this.pos < this.text.length ? this.text.charCodeAt(this.pos) : -1;
  }

  literal(word: string): bool {
    if (this.text.startsWith(word, this.pos)) {
      this.pos += word.length;
      return true;
    }
    return false;
  }

  value(depth: i32): JsonValue {
    if (depth > MAX_DEPTH) {
      return this.fail();
    }
    this.skipWhitespace();
    let c = this.peek();
    let v = new JsonValue();
    if (c == 0x7b) {
      return this.object(depth);
    } else if (c == 0x5b) {
      return this.array(depth);
    } else if (c == 0x22) {
      v.kind = STRING;
      v.str = this.string();
    } else if (c == 0x2d || (c >= 0x30 && c <= 0x39)) {
      v.kind = NUMBER;
      v.num = this.number();
    } else if (this.literal("true")) {
      v.kind = BOOL;
      v.flag = true;
    } else if (this.literal("false")) {
      v.kind = BOOL;
    } else if (this.literal("null")) {
      v.kind = NULL;
    } else {
      return this.fail();
    }
    return v;
  }

  object(depth: i32): JsonValue {
    let v = new JsonValue();
    v.kind = OBJECT;
    this.pos++; // {
    this.skipWhitespace();
    if (this.peek() == 0x7d) {
      this.pos++;
      return v;
    }
    while (!this.failed) {
      this.skipWhitespace();
      if (this.peek() != 0x22) {
        return this.fail();
      }
      let key = this.string();
      this.skipWhitespace();
      if (this.peek() != 0x3a) {
        return this.fail();
      }
      this.pos++;
      let item = this.value(depth + 1);
      if (this.failed) {
        return item;
      }
      v.keys.push(key);
      v.items.push(item);
      this.skipWhitespace();
      let c = this.peek();
      this.pos++;
      if (c == 0x7d) {
        return v;
      }
      if (c != 0x2c) {
        return this.fail();
      }
    }
    return v;
  }

  array(depth: i32): JsonValue {
    let v = new JsonValue();
    v.kind = ARRAY;
    this.pos++; // [
    this.skipWhitespace();
    if (this.peek() == 0x5d) {
      this.pos++;
      return v;
    }
    while (!this.failed) {
      let item = this.value(depth + 1);
      if (this.failed) {
        return item;
      }
      v.items.push(item);
      this.skipWhitespace();
      let c = this.peek();
      this.pos++;
      if (c == 0x5d) {
        return v;
      }
      if (c != 0x2c) {
        return this.fail();
      }
    }
    return v;
  }

  hex4(): i32 {
    if (this.pos + 4 > this.text.length) {
      this.failed = true;
      return 0;
    }
    let n = 0;
    for (let i = 0; i < 4; i++) {
      let c = this.text.charCodeAt(this.pos + i);
      let d: i32;
      if (c >= 0x30 && c <= 0x39) {
        d = c - 0x30;
      } else if (c >= 0x61 && c <= 0x66) {
        d = c - 0x61 + 10;
      } else if (c >= 0x41 && c <= 0x46) {
        d = c - 0x41 + 10;
      } else {
        this.failed = true;
        return 0;
      }
      n = (n << 4) | d;
    }
    this.pos += 4;
    return n;
  }

  string(): string {
    this.pos++; // opening quote
    let out = "";
    let start = this.pos;
    while (this.pos < this.text.length) {
      let c = this.text.charCodeAt(this.pos);
      if (c == 0x22) {
        out += this.text.substring(start, this.pos);
        this.pos++;
        return out;
      }
      if (c == 0x5c) {
        out += this.text.substring(start, this.pos);
        this.pos++;
        if (this.pos >= this.text.length) {
          break;
        }
        let e = this.text.charCodeAt(this.pos);
        this.pos++;
        if (e == 0x6e) {
          out += "\n";
        } else if (e == 0x74) {
          out += "\t";
        } else if (e == 0x72) {
          out += "\r";
        } else if (e == 0x62) {
          out += "\b";
        } else if (e == 0x66) {
          out += "\f";
        } else if (e == 0x75) {
          // \uXXXX: UTF-16 code units, so surrogate pairs come out right by concatenation.
          let unit = this.hex4();
          if (this.failed) {
            return out;
          }
          out += String.fromCharCode(unit);
        } else if (e == 0x22 || e == 0x5c || e == 0x2f) {
          out += String.fromCharCode(e);
        } else {
          break;
        }
        start = this.pos;
        continue;
      }
      if (c < 0x20) {
        break;
      }
      this.pos++;
    }
    this.failed = true;
    return out;
  }

  number(): f64 {
    let start = this.pos;
    if (this.peek() == 0x2d) {
      this.pos++;
    }
    let digits = 0;
    while (this.pos < this.text.length) {
      let c = this.text.charCodeAt(this.pos);
      if ((c >= 0x30 && c <= 0x39) || c == 0x2e || c == 0x65 || c == 0x45 || c == 0x2b || c == 0x2d) {
        if (c >= 0x30 && c <= 0x39) {
          digits++;
        }
        this.pos++;
      } else {
        break;
      }
    }
    if (digits == 0) {
      this.failed = true;
      return 0;
    }
    let n = parseFloat(this.text.substring(start, this.pos));
    if (isNaN(n)) {
      this.failed = true;
    }
    return n;
  }
}

/** Parses a whole JSON document; null when it is not valid JSON. */
export function parseJson(text: string): JsonValue | null {
  let p = new Parser(text);
  let v = p.value(0);
  if (p.failed) {
    return null;
  }
  p.skipWhitespace();
  if (p.pos != text.length) {
    return null;
  }
  return v;
}
