;; Its allocator makes a hostcall that needs the allocator again, and the nested allocation
;; traps: the host must unwind cleanly (the instance dies, the daemon does not).
(module
  (import "env" "proxy_get_property" (func $get (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $depth (mut i32) (i32.const 0))
  (data (i32.const 16) "plugin_name")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32)
    (global.set $depth (i32.add (global.get $depth) (i32.const 1)))
    (if (i32.eq (global.get $depth) (i32.const 2)) (then unreachable))
    (drop (call $get (i32.const 16) (i32.const 11) (i32.const 100) (i32.const 104)))
    (i32.const 200))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (global.set $depth (i32.const 0))
    (drop (call $get (i32.const 16) (i32.const 11) (i32.const 100) (i32.const 104)))
    (i32.const 0)))
