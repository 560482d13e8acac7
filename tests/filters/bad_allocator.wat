;; A broken allocator: it returns 0 when the plugin configuration is 4 bytes long ("zero"),
;; and 0xFFFFFF00 (past the end of memory) otherwise.
;; on_request_headers asks for a header value and stores the status at address 0.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $answer (mut i32) (i32.const 0))
  (data (i32.const 64) ":path")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (global.get $answer))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32) (param $size i32) (result i32)
    (if (i32.ne (local.get $size) (i32.const 4))
      (then (global.set $answer (i32.const 0xFFFFFF00))))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (i32.store (i32.const 0)
      (call $get (i32.const 0) (i32.const 64) (i32.const 5) (i32.const 128) (i32.const 132)))
    (i32.const 0)))
