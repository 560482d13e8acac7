/*
 * redact: masks e-mail addresses ("[email]") and phone numbers ("[phone]") in request and response
 * bodies.
 *
 * Root id "redact". Configuration: any non-empty text (e.g. "{}"); it has no settings.
 * A phone number is a run of 7 or more digits that may contain spaces, dashes and parentheses and
 * may start with "+" (an ISO date, YYYY-MM-DD, is not one); it stands on its own, so digits
 * inside a word (a hex id such as "afa7f0123456e46b") are not one. An e-mail address is local@domain.tld. In a JSON body only the insides of
 * string literals are rewritten (escape sequences are left alone), so the body stays valid JSON and
 * numbers such as token counts are untouched; any other body is rewritten as text. CBOR bodies
 * (content-type application/cbor) pass unchanged: their strings are length-prefixed.
 * The whole body is buffered (pause until end of stream), then rewritten once.
 */
#include "proxy_wasm.h"

#define MIN_PHONE_DIGITS 7
#define MAX_SEPARATOR_RUN 3

PW_EXPORT("proxy_on_vm_start")
uint32_t proxy_on_vm_start(uint32_t root_id, uint32_t vm_configuration_size) { return 1; }

PW_EXPORT("proxy_on_configure")
uint32_t proxy_on_configure(uint32_t root_id, uint32_t configuration_size) { return 1; }

PW_EXPORT("proxy_on_context_create")
void proxy_on_context_create(uint32_t context_id, uint32_t root_id) {}

static int is_alpha(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static int is_local(unsigned char c) {
  return is_alpha(c) || is_digit(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}
static int is_domain(unsigned char c) { return is_alpha(c) || is_digit(c) || c == '.' || c == '-'; }
static int is_phone_separator(unsigned char c) {
  return c == ' ' || c == '-' || c == '(' || c == ')';
}

typedef struct {
  char *data;
  size_t size;
} out_buf;

static void emit(out_buf *out, const char *data, size_t n) {
  memcpy(out->data + out->size, data, n);
  out->size += n;
}

/* End of the e-mail address whose local part starts at `start`, or 0 when there is none. */
static size_t match_email(const unsigned char *s, size_t start, size_t end) {
  size_t at = start;
  while (at < end && is_local(s[at])) at++;
  if (at == start || at >= end || s[at] != '@') return 0;
  size_t d = at + 1;
  while (d < end && is_domain(s[d])) d++;
  while (d > at + 1 && (s[d - 1] == '.' || s[d - 1] == '-')) d--;
  if (d == at + 1 || s[at + 1] == '.' || s[at + 1] == '-') return 0;
  /* the top-level domain: at least two letters after the last dot */
  size_t dot = d;
  while (dot > at + 1 && s[dot - 1] != '.') dot--;
  if (dot == at + 1 || d - dot < 2) return 0;
  for (size_t i = dot; i < d; i++)
    if (!is_alpha(s[i])) return 0;
  return d;
}

/* 1 when s[start:] begins with an ISO date (YYYY-MM-DD), which is not a phone number. */
static int is_iso_date(const unsigned char *s, size_t start, size_t end) {
  static const char shape[] = "dddd-dd-dd";
  if (end - start < 10) return 0;
  for (size_t k = 0; k < 10; k++) {
    if (shape[k] == 'd' ? !is_digit(s[start + k]) : s[start + k] != '-') return 0;
  }
  return start + 10 == end || !is_digit(s[start + 10]);
}

/* End of the phone number starting at `start`, or 0 when there is none. */
static size_t match_phone(const unsigned char *s, size_t start, size_t end, size_t *begin) {
  if (is_iso_date(s, start, end)) return 0;
  size_t i = start;
  if (s[i] == '+') i++;
  size_t digits = 0, last = 0, separators = 0, opened = 0, closed = 0;
  for (; i < end; i++) {
    unsigned char c = s[i];
    if (is_digit(c)) {
      digits++;
      separators = 0;
      last = i + 1;
    } else if (is_phone_separator(c) && ++separators <= MAX_SEPARATOR_RUN) {
      if (c == '(') opened++;
      if (c == ')' && opened > closed) {
        closed++;
        if (digits) last = i + 1;
      }
    } else {
      break;
    }
  }
  if (digits < MIN_PHONE_DIGITS) return 0;
  /* digits running on into letters are part of a word (an id, a hash), not a number */
  if (last < end && is_alpha(s[last])) return 0;
  /* "(555-123-4567)": drop an opening parenthesis that the number does not close */
  *begin = start;
  if (s[start] == '(' && opened > closed) *begin = start + 1;
  return last;
}

/* Rewrites s[start:end) into `out`. */
static void redact_text(const unsigned char *s, size_t start, size_t end, out_buf *out) {
  size_t j = start;
  while (j < end) {
    unsigned char c = s[j];
    if (is_local(c) && (j == start || !is_local(s[j - 1]))) {
      size_t stop = match_email(s, j, end);
      if (stop) {
        emit(out, "[email]", 7);
        j = stop;
        continue;
      }
    }
    if ((is_digit(c) || c == '+' || c == '(') &&
        (j == start || (!is_digit(s[j - 1]) && !is_alpha(s[j - 1])))) {
      size_t begin;
      size_t stop = match_phone(s, j, end, &begin);
      if (stop) {
        emit(out, (const char *)s + j, begin - j);
        emit(out, "[phone]", 7);
        j = stop;
        continue;
      }
    }
    out->data[out->size++] = (char)c;
    j++;
  }
}

/* Rewrites only the insides of JSON string literals, between escape sequences. */
static void redact_json(const unsigned char *s, size_t n, out_buf *out) {
  size_t i = 0;
  while (i < n) {
    if (s[i] != '"') {
      out->data[out->size++] = (char)s[i++];
      continue;
    }
    out->data[out->size++] = '"';
    i++;
    size_t segment = i;
    while (i < n && s[i] != '"') {
      if (s[i] == '\\') {
        redact_text(s, segment, i, out);
        size_t escape = (i + 1 < n && s[i + 1] == 'u') ? 6 : 2;
        if (i + escape > n) escape = n - i;
        emit(out, (const char *)s + i, escape);
        i += escape;
        segment = i;
      } else {
        i++;
      }
    }
    redact_text(s, segment, i, out);
    if (i < n) out->data[out->size++] = (char)s[i++];
  }
}

static int is_json(const unsigned char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n') continue;
    return s[i] == '{' || s[i] == '[';
  }
  return 0;
}

/* 1 when the content-type of the map says CBOR. */
static int is_cbor(pw_map_type map) {
  char *value;
  size_t size;
  if (pw_get_header(map, "content-type", &value, &size) != PW_OK || !value) return 0;
  int found = 0;
  for (size_t i = 0; i + 4 <= size && !found; i++) {
    found = (value[i] | 0x20) == 'c' && (value[i + 1] | 0x20) == 'b' &&
            (value[i + 2] | 0x20) == 'o' && (value[i + 3] | 0x20) == 'r';
  }
  pw_free(value);
  return found;
}

static uint32_t redact_body(pw_buffer_type buffer, pw_map_type headers, uint32_t body_size,
                            uint32_t end_of_stream) {
  if (!end_of_stream) return PW_PAUSE; /* buffer: an address may straddle two chunks */
  if (body_size == 0 || is_cbor(headers)) return PW_CONTINUE;
  char *body;
  size_t size;
  if (pw_get_buffer(buffer, body_size, &body, &size) != PW_OK || !body) return PW_CONTINUE;
  /* each match grows by at most 1 byte ("a@b.cc" -> "[email]"), so size * 7/6 + 8 suffices */
  out_buf out = {pw_malloc(size + size / 2 + 16), 0};
  if (!out.data) {
    pw_free(body);
    pw_log(PW_LOG_WARN, "redact: out of memory, body left as is");
    return PW_CONTINUE;
  }
  const unsigned char *s = (const unsigned char *)body;
  if (is_json(s, size)) {
    redact_json(s, size, &out);
  } else {
    redact_text(s, 0, size, &out);
  }
  if (out.size != size || memcmp(out.data, body, size) != 0) {
    pw_set_buffer(buffer, size, out.data, out.size);
    pw_log(PW_LOG_DEBUG, "redact: body rewritten");
  }
  pw_free(out.data);
  pw_free(body);
  return PW_CONTINUE;
}

PW_EXPORT("proxy_on_request_body")
uint32_t proxy_on_request_body(uint32_t context_id, uint32_t body_size, uint32_t end_of_stream) {
  return redact_body(PW_REQUEST_BODY, PW_REQUEST_HEADERS, body_size, end_of_stream);
}

PW_EXPORT("proxy_on_response_body")
uint32_t proxy_on_response_body(uint32_t context_id, uint32_t body_size, uint32_t end_of_stream) {
  return redact_body(PW_RESPONSE_BODY, PW_RESPONSE_HEADERS, body_size, end_of_stream);
}
