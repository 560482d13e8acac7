;; Answers every request with 403 from on_request_headers; its body callback would trap if the
;; host called it after the local answer.
(module
  (import "env" "proxy_send_local_response"
    (func $respond (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "denied")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $respond (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 16) (i32.const 6)
      (i32.const 0) (i32.const 0) (i32.const -1)))
    (i32.const 1))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) unreachable))
