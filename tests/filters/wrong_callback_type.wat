;; Exports a callback with a type no host can call it with.
(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 8))
  (func (export "proxy_on_request_headers") (param i64 i32 i32) (result i32) (i32.const 0)))
