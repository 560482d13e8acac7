;; An ABI 0.1.0 module with the 2-parameter on_request_headers of that spec, using the v0.1.0
;; proxy_continue_request; adds "x-v010: 1".
(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_request" (func $continue (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "x-v010")
  (data (i32.const 32) "1")
  (func (export "proxy_abi_version_0_1_0"))
  (func (export "malloc") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32) (result i32)
    (drop (call $add (i32.const 0) (i32.const 16) (i32.const 6) (i32.const 32) (i32.const 1)))
    (drop (call $continue))
    (i32.const 0)))
