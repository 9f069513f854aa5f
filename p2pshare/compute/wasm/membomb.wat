;; membomb.wat -- HOSTILE: grow linear memory by 64 KiB until refused, then abort.
;;
;; The store's memory limit makes memory.grow return -1; the module then traps
;; (`unreachable`), as an allocator failing an allocation would, and the sandbox
;; reports memory_limit.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $grow
      (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable))
