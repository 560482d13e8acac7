/*
 * size-guard: answers 413 to a request whose body is over a configured size.
 *
 * Root id "size-guard". Configuration (JSON): {"max_bytes": 4096}
 * The declared content-length is checked in the headers phase, the body actually buffered in the
 * body phase (the host passes the total buffered size), so a missing or lying header does not help.
 */
#include "proxy_wasm.h"

static uint64_t max_bytes = 0;
static int configured = 0;

PW_EXPORT("proxy_on_vm_start")
uint32_t proxy_on_vm_start(uint32_t root_id, uint32_t vm_configuration_size) { return 1; }

PW_EXPORT("proxy_on_configure")
uint32_t proxy_on_configure(uint32_t root_id, uint32_t configuration_size) {
  char *config = pw_read_configuration(configuration_size);
  int64_t value = config ? pw_json_find_number(config, "max_bytes") : -1;
  pw_free(config);
  if (value < 0) {
    pw_log(PW_LOG_ERROR, "size-guard: configuration needs {\"max_bytes\": <non-negative integer>}");
    return 0;
  }
  max_bytes = (uint64_t)value;
  configured = 1;
  return 1;
}

PW_EXPORT("proxy_on_context_create")
void proxy_on_context_create(uint32_t context_id, uint32_t root_id) {}

static uint32_t reject(void) {
  char body[96];
  static const char head[] = "{\"error\":{\"status\":413,\"message\":\"body over ";
  static const char tail[] = " bytes\"}}";
  size_t n = sizeof head - 1;
  memcpy(body, head, n);
  n += pw_format_u64(max_bytes, body + n);
  memcpy(body + n, tail, sizeof tail - 1);
  n += sizeof tail - 1;
  char limit[24];
  pw_format_u64(max_bytes, limit);
  const char *headers[] = {"content-type", "application/json", "x-max-bytes", limit, 0};
  pw_log(PW_LOG_DEBUG, "size-guard: 413");
  pw_send_local_response(413, "size_guard_too_large", body, n, headers);
  return PW_PAUSE;
}

/* Parses a content-length value; -1 when it is not a plain decimal number. */
static int64_t parse_length(const char *text, size_t size) {
  if (size == 0 || size > 18) return -1;
  int64_t value = 0;
  for (size_t i = 0; i < size; i++) {
    if (text[i] < '0' || text[i] > '9') return -1;
    value = value * 10 + (text[i] - '0');
  }
  return value;
}

PW_EXPORT("proxy_on_request_headers")
uint32_t proxy_on_request_headers(uint32_t context_id, uint32_t headers, uint32_t end_of_stream) {
  if (!configured) return PW_CONTINUE;
  char *value;
  size_t size;
  if (pw_get_header(PW_REQUEST_HEADERS, "content-length", &value, &size) != PW_OK) {
    return PW_CONTINUE;
  }
  int64_t length = parse_length(value, size);
  pw_free(value);
  if (length >= 0 && (uint64_t)length > max_bytes) return reject();
  return PW_CONTINUE;
}

PW_EXPORT("proxy_on_request_body")
uint32_t proxy_on_request_body(uint32_t context_id, uint32_t body_size, uint32_t end_of_stream) {
  if (configured && body_size > max_bytes) return reject();
  return PW_CONTINUE;
}
