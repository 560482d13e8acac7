/*
 * proxy_wasm.h: a small, libc-free header for writing Proxy-Wasm (ABI v0.2.1) filters in C.
 *
 * Include it in exactly one translation unit per filter (it defines the allocator, mem* functions
 * and the version export) and build with:
 *
 *   clang --target=wasm32 -nostdlib -O2 -Wl,--no-entry -o filter.wasm filter.c
 *
 * What it gives a filter:
 *   - the `env` hostcalls with their exact ABI signatures (only those the shipped filters use are
 *     declared; add more the same way - an unused declaration adds no import);
 *   - the ABI enums (status, action, buffer type, map type, log level);
 *   - `proxy_on_memory_allocate` (exported) backed by a size-class free-list allocator, with
 *     pw_malloc/pw_free, and memcpy/memset/memmove/memcmp (clang may emit calls to them);
 *   - helpers: pw_log, pw_get_header, pw_get_buffer, pw_set_buffer, pw_send_local_response,
 *     pw_read_configuration, pw_json_find_number.
 *
 * Callbacks are exported with PW_EXPORT("proxy_on_request_headers") etc.; a filter defines only
 * those it needs. Memory the host returns (pw_get_*) comes from pw_malloc: release it with pw_free.
 */
#ifndef EDGE_RUNTIME_PROXY_WASM_H
#define EDGE_RUNTIME_PROXY_WASM_H

#include <stddef.h>
#include <stdint.h>

#define PW_EXPORT(name) __attribute__((export_name(name), visibility("default")))
#define PW_IMPORT(name) __attribute__((import_module("env"), import_name(name)))

/* ---- enums ------------------------------------------------------------------------------ */

typedef enum {
  PW_OK = 0,
  PW_NOT_FOUND = 1,
  PW_BAD_ARGUMENT = 2,
  PW_SERIALIZATION_FAILURE = 3,
  PW_PARSE_FAILURE = 4,
  PW_INVALID_MEMORY_ACCESS = 6,
  PW_EMPTY = 7,
  PW_CAS_MISMATCH = 8,
  PW_INTERNAL_FAILURE = 10,
  PW_UNIMPLEMENTED = 12,
} pw_status;

typedef enum { PW_CONTINUE = 0, PW_PAUSE = 1 } pw_action;

typedef enum {
  PW_LOG_TRACE = 0,
  PW_LOG_DEBUG = 1,
  PW_LOG_INFO = 2,
  PW_LOG_WARN = 3,
  PW_LOG_ERROR = 4,
  PW_LOG_CRITICAL = 5,
} pw_log_level;

typedef enum {
  PW_REQUEST_BODY = 0,
  PW_RESPONSE_BODY = 1,
  PW_DOWNSTREAM_DATA = 2,
  PW_UPSTREAM_DATA = 3,
  PW_HTTP_CALL_RESPONSE_BODY = 4,
  PW_GRPC_MESSAGE = 5,
  PW_VM_CONFIGURATION = 6,
  PW_PLUGIN_CONFIGURATION = 7,
  PW_FOREIGN_FUNCTION_ARGUMENTS = 8,
} pw_buffer_type;

typedef enum {
  PW_REQUEST_HEADERS = 0,
  PW_REQUEST_TRAILERS = 1,
  PW_RESPONSE_HEADERS = 2,
  PW_RESPONSE_TRAILERS = 3,
} pw_map_type;

typedef enum { PW_METRIC_COUNTER = 0, PW_METRIC_GAUGE = 1, PW_METRIC_HISTOGRAM = 2 } pw_metric_type;

/* ---- hostcalls (module "env"; every one returns a pw_status) ------------------------------ */

PW_IMPORT("proxy_log")
uint32_t proxy_log(uint32_t level, const char *message, size_t size);
PW_IMPORT("proxy_get_buffer_bytes")
uint32_t proxy_get_buffer_bytes(uint32_t type, uint32_t start, uint32_t max_size, char **ret_ptr,
                                size_t *ret_size);
PW_IMPORT("proxy_set_buffer_bytes")
uint32_t proxy_set_buffer_bytes(uint32_t type, uint32_t start, uint32_t size, const char *data,
                                size_t data_size);
PW_IMPORT("proxy_get_header_map_value")
uint32_t proxy_get_header_map_value(uint32_t map, const char *key, size_t key_size, char **ret_ptr,
                                    size_t *ret_size);
PW_IMPORT("proxy_send_local_response")
uint32_t proxy_send_local_response(uint32_t status, const char *details, size_t details_size,
                                   const char *body, size_t body_size, const char *pairs,
                                   size_t pairs_size, int32_t grpc_status);

/* ---- memory ------------------------------------------------------------------------------ */

__attribute__((no_builtin)) void *memcpy(void *dst, const void *src, size_t n) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  while (n--) *d++ = *s++;
  return dst;
}

__attribute__((no_builtin)) void *memmove(void *dst, const void *src, size_t n) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  if (d < s) {
    while (n--) *d++ = *s++;
  } else {
    while (n--) d[n] = s[n];
  }
  return dst;
}

__attribute__((no_builtin)) void *memset(void *dst, int c, size_t n) {
  unsigned char *d = dst;
  while (n--) *d++ = (unsigned char)c;
  return dst;
}

__attribute__((no_builtin)) int memcmp(const void *a, const void *b, size_t n) {
  const unsigned char *x = a, *y = b;
  for (; n; n--, x++, y++)
    if (*x != *y) return *x - *y;
  return 0;
}

/*
 * Allocator: blocks of 2^k bytes (k >= 4) with an 8-byte header holding k; freed blocks go on a
 * list per k and are reused for the next request of that class. Simple, no coalescing, and memory
 * stays bounded by the peak use of each class, which suits per-request filters.
 */
extern unsigned char __heap_base;
static uintptr_t pw_heap_top;
static void *pw_free_lists[32];

#define PW_PAGE 65536u
#define PW_HEADER 8u

void *pw_malloc(size_t size) {
  if (size > (1u << 28)) return 0; /* 256 MiB: keeps 2^k and the heap end in 32 bits */
  uint32_t k = 4;
  while (((size_t)1 << k) < size + PW_HEADER) k++;
  void *block = pw_free_lists[k];
  if (block) {
    pw_free_lists[k] = *(void **)((char *)block + PW_HEADER);
  } else {
    if (!pw_heap_top) pw_heap_top = ((uintptr_t)&__heap_base + 15u) & ~(uintptr_t)15u;
    uintptr_t start = pw_heap_top;
    uintptr_t end = start + ((uintptr_t)1 << k);
    uintptr_t have = (uintptr_t)__builtin_wasm_memory_size(0) * PW_PAGE;
    if (end > have) {
      size_t pages = (end - have + PW_PAGE - 1) / PW_PAGE;
      if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) return 0;
    }
    pw_heap_top = end;
    block = (void *)start;
  }
  *(uint32_t *)block = k;
  return (char *)block + PW_HEADER;
}

void pw_free(void *ptr) {
  if (!ptr) return;
  char *block = (char *)ptr - PW_HEADER;
  uint32_t k = *(uint32_t *)block;
  if (k < 4 || k > 31) return; /* not ours */
  *(void **)ptr = pw_free_lists[k];
  pw_free_lists[k] = block;
}

PW_EXPORT("proxy_on_memory_allocate")
void *proxy_on_memory_allocate(size_t size) { return pw_malloc(size); }

/* The ABI version this module speaks: the host looks for this export. */
PW_EXPORT("proxy_abi_version_0_2_1")
void proxy_abi_version_0_2_1(void) {}

/* ---- helpers ----------------------------------------------------------------------------- */

static inline size_t pw_strlen(const char *s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}

static inline void pw_log(pw_log_level level, const char *message) {
  proxy_log(level, message, pw_strlen(message));
}

/* A header's value; NOT_FOUND (or any failure) leaves *value = 0, *size = 0. */
static inline pw_status pw_get_header(pw_map_type map, const char *name, char **value,
                                      size_t *size) {
  *value = 0;
  *size = 0;
  pw_status status = proxy_get_header_map_value(map, name, pw_strlen(name), value, size);
  if (status != PW_OK) {
    *value = 0;
    *size = 0;
  }
  return status;
}

/* Up to `max_size` bytes from the start of a buffer; an empty buffer gives 0/0 and PW_OK. */
static inline pw_status pw_get_buffer(pw_buffer_type type, size_t max_size, char **data,
                                      size_t *size) {
  *data = 0;
  *size = 0;
  if (max_size == 0) return PW_OK;
  pw_status status = proxy_get_buffer_bytes(type, 0, max_size, data, size);
  if (status != PW_OK) {
    *data = 0;
    *size = 0;
  }
  return status;
}

/* Replaces the first `old_size` bytes of a buffer (the whole buffer when that is its size). */
static inline pw_status pw_set_buffer(pw_buffer_type type, size_t old_size, const char *data,
                                      size_t size) {
  return proxy_set_buffer_bytes(type, 0, old_size, data, size);
}

/* The plugin configuration, NUL-terminated, from pw_malloc (0 when empty or unreadable). */
static inline char *pw_read_configuration(size_t size) {
  char *data;
  size_t got;
  if (pw_get_buffer(PW_PLUGIN_CONFIGURATION, size, &data, &got) != PW_OK || !data) return 0;
  char *text = pw_malloc(got + 1);
  if (text) {
    memcpy(text, data, got);
    text[got] = 0;
  }
  pw_free(data);
  return text;
}

/*
 * The non-negative integer value of `"key": <digits>` in a flat JSON text, or -1 when the key is
 * missing or its value is not a plain integer. Enough for our one-number configurations.
 */
static inline int64_t pw_json_find_number(const char *json, const char *key) {
  size_t klen = pw_strlen(key);
  for (const char *p = json; *p; p++) {
    if (*p != '"' || memcmp(p + 1, key, klen) != 0 || p[1 + klen] != '"') continue;
    const char *q = p + 2 + klen;
    while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r') q++;
    if (*q != ':') continue;
    q++;
    while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r') q++;
    if (*q < '0' || *q > '9') return -1;
    int64_t value = 0;
    while (*q >= '0' && *q <= '9') {
      if (value > (INT64_MAX - 9) / 10) return -1;
      value = value * 10 + (*q++ - '0');
    }
    return value;
  }
  return -1;
}

/* Writes `value` in decimal into `out` (at least 21 bytes); returns the length. */
static inline size_t pw_format_u64(uint64_t value, char *out) {
  char tmp[21];
  size_t n = 0;
  do {
    tmp[n++] = (char)('0' + value % 10);
    value /= 10;
  } while (value);
  for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
  out[n] = 0;
  return n;
}

/*
 * Ends the request with a local response. `headers` is a NULL-terminated list of name, value
 * strings, e.g. (const char *[]){"content-type", "application/json", 0}.
 */
static inline pw_status pw_send_local_response(uint32_t status, const char *details,
                                               const char *body, size_t body_size,
                                               const char *const *headers) {
  uint32_t count = 0;
  size_t size = 4;
  for (const char *const *h = headers; h && h[0]; h += 2) {
    count++;
    size += 8 + pw_strlen(h[0]) + pw_strlen(h[1]) + 2;
  }
  char *pairs = pw_malloc(size);
  if (!pairs) return PW_INTERNAL_FAILURE;
  memcpy(pairs, &count, 4);
  char *lens = pairs + 4;
  char *data = pairs + 4 + 8 * count;
  for (const char *const *h = headers; h && h[0]; h += 2) {
    uint32_t klen = (uint32_t)pw_strlen(h[0]);
    uint32_t vlen = (uint32_t)pw_strlen(h[1]);
    memcpy(lens, &klen, 4);
    memcpy(lens + 4, &vlen, 4);
    lens += 8;
    memcpy(data, h[0], klen);
    data += klen;
    *data++ = 0;
    memcpy(data, h[1], vlen);
    data += vlen;
    *data++ = 0;
  }
  pw_status result = proxy_send_local_response(status, details, pw_strlen(details), body,
                                                body_size, pairs, size, -1);
  pw_free(pairs);
  return result;
}

#endif /* EDGE_RUNTIME_PROXY_WASM_H */
