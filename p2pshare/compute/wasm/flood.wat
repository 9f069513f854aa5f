;; flood.wat -- HOSTILE: write "y\n" to stdout forever, 64 KiB at a time, ignoring errors.
;;
;; The sandbox keeps stdout up to the job's output limit exactly and traps the
;; write that would exceed it (output_limit).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)

  ;; Memory layout: 0 iovec; 8 count written; 65536 the 64 KiB block.
  (func (export "_start")
    (local $p i32)
    (local.set $p (i32.const 65536))
    (loop $fill
      (i32.store16 (local.get $p) (i32.const 0x0a79))  ;; "y\n", little-endian
      (local.set $p (i32.add (local.get $p) (i32.const 2)))
      (br_if $fill (i32.lt_u (local.get $p) (i32.const 131072))))
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $forever
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (br $forever))))
