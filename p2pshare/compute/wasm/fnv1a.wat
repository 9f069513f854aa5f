;; fnv1a.wat -- 64-bit FNV-1a digest of stdin, printed as 16 hex digits and a newline.
;;
;; A byte-crunching job for throughput measurements: it reads stdin in 64 KiB blocks
;; and does one xor and one multiply per byte, so the cost is all in WebAssembly.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)

  ;; Memory layout: 0 iovec {ptr, len}; 8 count read or written; 16 digits "0123456789abcdef";
  ;; 32 the 17-byte output line; 65536 the 64 KiB read buffer.
  (data (i32.const 16) "0123456789abcdef")

  (func $read_block (result i32)
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 65536))
    (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8))
      (then (call $proc_exit (i32.const 1))))
    (i32.load (i32.const 8)))

  (func (export "_start")
    (local $hash i64) (local $n i32) (local $p i32) (local $end i32) (local $i i32)
    (local.set $hash (i64.const 0xcbf29ce484222325))
    (block $eof
      (loop $blocks
        (local.set $n (call $read_block))
        (br_if $eof (i32.eqz (local.get $n)))
        (local.set $p (i32.const 65536))
        (local.set $end (i32.add (i32.const 65536) (local.get $n)))
        (loop $bytes
          (local.set $hash
            (i64.mul
              (i64.xor (local.get $hash) (i64.load8_u (local.get $p)))
              (i64.const 0x100000001b3)))
          (local.set $p (i32.add (local.get $p) (i32.const 1)))
          (br_if $bytes (i32.lt_u (local.get $p) (local.get $end))))
        (br $blocks)))
    ;; Sixteen hex digits, most significant first.
    (loop $digits
      (i32.store8
        (i32.add (i32.const 32) (local.get $i))
        (i32.load8_u
          (i32.add (i32.const 16)
            (i32.wrap_i64
              (i64.and
                (i64.shr_u (local.get $hash)
                  (i64.extend_i32_u (i32.sub (i32.const 60) (i32.mul (local.get $i) (i32.const 4)))))
                (i64.const 15))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $digits (i32.lt_u (local.get $i) (i32.const 16))))
    (i32.store8 (i32.const 48) (i32.const 10))
    (i32.store (i32.const 0) (i32.const 32))
    (i32.store (i32.const 4) (i32.const 17))
    (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
      (then (call $proc_exit (i32.const 1))))))
