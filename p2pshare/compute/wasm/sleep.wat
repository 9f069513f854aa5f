;; sleep.wat -- HOSTILE: ask poll_oneoff to sleep for an hour.
;;
;; wasmtime's own poll_oneoff would block inside the host, where the epoch deadline
;; cannot interrupt it.  The sandbox's poll_oneoff fails with ENOSYS (52) at once;
;; this prints "poll_oneoff 052\n" and exits normally.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)

  ;; Memory layout: 0 the subscription (48 bytes); 64 the event; 128 the event count;
  ;; 136 iovec; 144 count written; 256 the output line.
  (data (i32.const 256) "poll_oneoff 000\n")

  (func (export "_start")
    (local $errno i32)
    ;; subscription: userdata 0, tag 0 (clock), clock id 1 (monotonic),
    ;; timeout 3600 s in ns, precision 0, flags 0 (relative).
    (i64.store (i32.const 0) (i64.const 7))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (i64.store (i32.const 32) (i64.const 0))
    (i32.store16 (i32.const 40) (i32.const 0))
    (local.set $errno
      (call $poll_oneoff (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
    (i32.store8 (i32.const 268)
      (i32.add (i32.const 48) (i32.rem_u (i32.div_u (local.get $errno) (i32.const 100)) (i32.const 10))))
    (i32.store8 (i32.const 269)
      (i32.add (i32.const 48) (i32.rem_u (i32.div_u (local.get $errno) (i32.const 10)) (i32.const 10))))
    (i32.store8 (i32.const 270)
      (i32.add (i32.const 48) (i32.rem_u (local.get $errno) (i32.const 10))))
    (i32.store (i32.const 136) (i32.const 256))
    (i32.store (i32.const 140) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 136) (i32.const 1) (i32.const 144)))))
