;; escape.wat -- HOSTILE: try to read and write host files around the input directory.
;;
;; For each attempt prints "<path> <errno>\n"; if an open ever succeeded it would copy
;; up to 4 KiB of the file to stdout.  In the sandbox every attempt fails: the inputs
;; are a read-only preopened directory and WASI refuses paths that leave it.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)

  ;; Memory layout: 0 iovec; 8 count; 12 opened fd; 32 the errno text; 256 paths;
  ;; 8192 the read buffer.
  (data (i32.const 256) "../../etc/passwd")          ;; 16 bytes at 256
  (data (i32.const 288) "/etc/passwd")               ;; 11 bytes at 288
  (data (i32.const 320) "sub/../../../etc/passwd")   ;; 23 bytes at 320
  (data (i32.const 352) "..")                        ;; 2 bytes at 352
  (data (i32.const 384) "pwned.txt")                 ;; 9 bytes at 384

  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))

  ;; Print " <errno>\n" for an errno below 1000.
  (func $print_errno (param $errno i32)
    (i32.store8 (i32.const 32) (i32.const 32))
    (i32.store8 (i32.const 33)
      (i32.add (i32.const 48) (i32.rem_u (i32.div_u (local.get $errno) (i32.const 100)) (i32.const 10))))
    (i32.store8 (i32.const 34)
      (i32.add (i32.const 48) (i32.rem_u (i32.div_u (local.get $errno) (i32.const 10)) (i32.const 10))))
    (i32.store8 (i32.const 35)
      (i32.add (i32.const 48) (i32.rem_u (local.get $errno) (i32.const 10))))
    (i32.store8 (i32.const 36) (i32.const 10))
    (call $write (i32.const 32) (i32.const 5)))

  ;; Try to open a path with some open flags and rights; leak the file if it works.
  (func $try (param $ptr i32) (param $len i32) (param $oflags i32) (param $rights i64)
    (local $errno i32)
    (local.set $errno
      (call $path_open (i32.const 3) (i32.const 1) (local.get $ptr) (local.get $len)
        (local.get $oflags) (local.get $rights) (local.get $rights) (i32.const 0) (i32.const 12)))
    (call $write (local.get $ptr) (local.get $len))
    (call $print_errno (local.get $errno))
    (if (i32.eqz (local.get $errno))
      (then
        (i32.store (i32.const 0) (i32.const 8192))
        (i32.store (i32.const 4) (i32.const 4096))
        (drop (call $fd_read (i32.load (i32.const 12)) (i32.const 0) (i32.const 1) (i32.const 8)))
        (call $write (i32.const 8192) (i32.load (i32.const 8))))))

  (func (export "_start")
    ;; Read attempts (right fd_read = 2), escaping in different ways.
    (call $try (i32.const 256) (i32.const 16) (i32.const 0) (i64.const 2))
    (call $try (i32.const 288) (i32.const 11) (i32.const 0) (i64.const 2))
    (call $try (i32.const 320) (i32.const 23) (i32.const 0) (i64.const 2))
    (call $try (i32.const 352) (i32.const 2) (i32.const 1) (i64.const 2))
    ;; Create a file (O_CREAT = 1) with the right to write (fd_write = 64).
    (call $try (i32.const 384) (i32.const 9) (i32.const 1) (i64.const 64))))
