;; Imports the hostcall @solo-io/proxy-runtime 0.1.8 misnames; no host provides it.
(module
  (import "env" "proxy_set_buffer_status" (func (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_0"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024)))
