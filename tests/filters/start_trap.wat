;; Traps in its start function, before the host ever calls it.
(module
  (memory (export "memory") 1)
  (func $boom unreachable)
  (start $boom)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param i32) (result i32) (i32.const 8)))
