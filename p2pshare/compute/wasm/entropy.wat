;; entropy.wat -- print what the guest learns from the clocks and random_get.
;;
;; Prints one line of hex: the realtime clock (8 bytes), the monotonic clock
;; (8 bytes) and 32 random bytes.  Under the deterministic profile two runs of the
;; same job print the same line: the clock stands still and random_get is seeded
;; with the job ID.
(module
  (import "wasi_snapshot_preview1" "clock_time_get"
    (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)

  ;; Memory layout: 0 iovec; 8 count; 16 digits; 64 the 48 raw bytes; 128 the line.
  (data (i32.const 16) "0123456789abcdef")

  (func (export "_start")
    (local $i i32) (local $byte i32)
    (if (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 64))
      (then (call $proc_exit (i32.const 1))))
    (if (call $clock_time_get (i32.const 1) (i64.const 1) (i32.const 72))
      (then (call $proc_exit (i32.const 1))))
    (if (call $random_get (i32.const 80) (i32.const 32))
      (then (call $proc_exit (i32.const 1))))
    (loop $each
      (local.set $byte (i32.load8_u (i32.add (i32.const 64) (local.get $i))))
      (i32.store8 (i32.add (i32.const 128) (i32.shl (local.get $i) (i32.const 1)))
        (i32.load8_u (i32.add (i32.const 16) (i32.shr_u (local.get $byte) (i32.const 4)))))
      (i32.store8 (i32.add (i32.const 129) (i32.shl (local.get $i) (i32.const 1)))
        (i32.load8_u (i32.add (i32.const 16) (i32.and (local.get $byte) (i32.const 15)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $each (i32.lt_u (local.get $i) (i32.const 48))))
    (i32.store8 (i32.const 224) (i32.const 10))
    (i32.store (i32.const 0) (i32.const 128))
    (i32.store (i32.const 4) (i32.const 97))
    (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
      (then (call $proc_exit (i32.const 1))))))
