;; wordcount.wat -- count the lines, words and bytes of stdin, like `wc`.
;;
;; Prints "LINES WORDS BYTES\n".  A word is a maximal run of bytes other than space,
;; tab, newline, carriage return, vertical tab and form feed.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)

  ;; Memory layout: 0 iovec {ptr, len}; 8 count read or written; 16..128 the output
  ;; line, built backwards from 128; 65536 the 64 KiB read buffer.

  ;; Write the decimal digits of $value so that they end just before $end; return
  ;; where they start.
  (func $utoa (param $value i64) (param $end i32) (result i32)
    (loop $digit
      (local.set $end (i32.sub (local.get $end) (i32.const 1)))
      (i32.store8 (local.get $end)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $value) (i64.const 10)))))
      (local.set $value (i64.div_u (local.get $value) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $value) (i64.const 0))))
    (local.get $end))

  (func $read_block (result i32)
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 65536))
    (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8))
      (then (call $proc_exit (i32.const 1))))
    (i32.load (i32.const 8)))

  (func $is_space (param $c i32) (result i32)
    (i32.or
      (i32.eq (local.get $c) (i32.const 32))
      (i32.and
        (i32.ge_u (local.get $c) (i32.const 9))
        (i32.le_u (local.get $c) (i32.const 13)))))

  (func (export "_start")
    (local $lines i64) (local $words i64) (local $bytes i64)
    (local $in_word i32) (local $n i32) (local $p i32) (local $end i32) (local $c i32)
    (local $start i32)
    (block $eof
      (loop $blocks
        (local.set $n (call $read_block))
        (br_if $eof (i32.eqz (local.get $n)))
        (local.set $bytes (i64.add (local.get $bytes) (i64.extend_i32_u (local.get $n))))
        (local.set $p (i32.const 65536))
        (local.set $end (i32.add (i32.const 65536) (local.get $n)))
        (loop $each
          (local.set $c (i32.load8_u (local.get $p)))
          (if (i32.eq (local.get $c) (i32.const 10))
            (then (local.set $lines (i64.add (local.get $lines) (i64.const 1)))))
          (if (call $is_space (local.get $c))
            (then (local.set $in_word (i32.const 0)))
            (else
              (if (i32.eqz (local.get $in_word))
                (then
                  (local.set $in_word (i32.const 1))
                  (local.set $words (i64.add (local.get $words) (i64.const 1)))))))
          (local.set $p (i32.add (local.get $p) (i32.const 1)))
          (br_if $each (i32.lt_u (local.get $p) (local.get $end))))
        (br $blocks)))
    ;; "LINES WORDS BYTES\n", built from the end of the line backwards.
    (i32.store8 (i32.const 127) (i32.const 10))
    (local.set $start (call $utoa (local.get $bytes) (i32.const 127)))
    (local.set $start (i32.sub (local.get $start) (i32.const 1)))
    (i32.store8 (local.get $start) (i32.const 32))
    (local.set $start (call $utoa (local.get $words) (local.get $start)))
    (local.set $start (i32.sub (local.get $start) (i32.const 1)))
    (i32.store8 (local.get $start) (i32.const 32))
    (local.set $start (call $utoa (local.get $lines) (local.get $start)))
    (i32.store (i32.const 0) (local.get $start))
    (i32.store (i32.const 4) (i32.sub (i32.const 128) (local.get $start)))
    (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
      (then (call $proc_exit (i32.const 1))))))
