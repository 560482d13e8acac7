;; Denies every tool call (requests whose :path starts with "tool/") with 403; lets the rest pass.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $respond (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) ":path")
  (data (i32.const 32) "tools are off")
  (data (i32.const 48) "tool/")
  (global $next (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    ;; A bump allocator that starts over when it nears the end: a request's strings are dead
    ;; by the time the next one arrives.
    (if (i32.gt_u (i32.add (global.get $next) (local.get $size)) (i32.const 131072))
      (then (global.set $next (i32.const 4096))))
    (local.set $at (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $value i32)
    (if (i32.ne (call $get (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 64) (i32.const 68))
                (i32.const 0))
      (then (return (i32.const 0))))
    (if (i32.lt_u (i32.load (i32.const 68)) (i32.const 5)) (then (return (i32.const 0))))
    (local.set $value (i32.load (i32.const 64)))
    (if (i32.and
          (i32.eq (i32.load (local.get $value)) (i32.load (i32.const 48)))
          (i32.eq (i32.load8_u offset=4 (local.get $value)) (i32.load8_u (i32.const 52))))
      (then
        (drop (call $respond (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 32)
          (i32.const 13) (i32.const 0) (i32.const 0) (i32.const -1)))
        (return (i32.const 1))))
    (i32.const 0)))
