;; rot13.wat -- copy stdin to stdout with ROT13 applied to ASCII letters.
;;
;; A streaming byte transform: 64 KiB in, transformed in place, 64 KiB out.  Applying
;; it twice gives back the input.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)

  ;; Memory layout: 0 iovec {ptr, len}; 8 count read or written; 65536 the buffer.

  ;; ROT13 of one letter between $first and $first + 25; anything else unchanged.
  (func $rotate (param $c i32) (param $first i32) (result i32)
    (local $offset i32)
    (local.set $offset (i32.sub (local.get $c) (local.get $first)))
    (if (result i32) (i32.lt_u (local.get $offset) (i32.const 26))
      (then
        (i32.add (local.get $first)
          (i32.rem_u (i32.add (local.get $offset) (i32.const 13)) (i32.const 26))))
      (else (local.get $c))))

  (func (export "_start")
    (local $n i32) (local $p i32) (local $end i32)
    (block $eof
      (loop $blocks
        (i32.store (i32.const 0) (i32.const 65536))
        (i32.store (i32.const 4) (i32.const 65536))
        (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8))
          (then (call $proc_exit (i32.const 1))))
        (local.set $n (i32.load (i32.const 8)))
        (br_if $eof (i32.eqz (local.get $n)))
        (local.set $p (i32.const 65536))
        (local.set $end (i32.add (i32.const 65536) (local.get $n)))
        (loop $each
          (i32.store8 (local.get $p)
            (call $rotate
              (call $rotate (i32.load8_u (local.get $p)) (i32.const 65))
              (i32.const 97)))
          (local.set $p (i32.add (local.get $p) (i32.const 1)))
          (br_if $each (i32.lt_u (local.get $p) (local.get $end))))
        (i32.store (i32.const 0) (i32.const 65536))
        (i32.store (i32.const 4) (local.get $n))
        (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
          (then (call $proc_exit (i32.const 1))))
        (br $blocks)))))
