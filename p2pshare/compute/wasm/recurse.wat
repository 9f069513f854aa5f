;; recurse.wat -- HOSTILE: recurse without end.  The wasm stack limit traps it
;; (stack_overflow) long before the worker's native stack is at risk.
(module
  (memory (export "memory") 1)
  (func $deeper (param $depth i64) (result i64)
    (i64.add (call $deeper (i64.add (local.get $depth) (i64.const 1))) (i64.const 1)))
  (func (export "_start")
    (drop (call $deeper (i64.const 0)))))
