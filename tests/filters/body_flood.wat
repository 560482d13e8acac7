;; Appends 64 KiB to the request body 300 times, claiming to replace 4 GiB each time; the host
;; must hold the body to its cap.
(module
  (import "env" "proxy_set_buffer_bytes" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (local $i i32)
    (loop $again
      (drop (call $set (i32.const 0) (i32.const 0x7fffffff) (i32.const -1) (i32.const 0) (i32.const 65536)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 300))))
    (i32.const 0)))
