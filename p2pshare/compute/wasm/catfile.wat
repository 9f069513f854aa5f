;; catfile.wat -- copy the input file named by the first argument to stdout.
;;
;; Shows how a job reads its input files: they sit in the read-only directory that
;; WASI preopens as file descriptor 3 ("/"), under the guest paths of the job spec.
;; Exits 2 without an argument, 1 (with a message on stderr) when the file cannot be
;; opened or read.
(module
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 3)

  ;; Memory layout: 0 iovec; 8 count; 12 argc; 16 argv buffer size; 20 opened fd;
  ;; 64 the error message; 1024 argv pointers; 8192..65536 argv strings; 65536 buffer.
  (data (i32.const 64) "catfile: cannot open or read the input\n")

  (func $fail
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 39))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $proc_exit (i32.const 1)))

  (func $strlen (param $p i32) (result i32)
    (local $n i32)
    (block $done
      (loop $each
        (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $each)))
    (local.get $n))

  (func (export "_start")
    (local $path i32) (local $fd i32) (local $n i32)
    (if (call $args_sizes_get (i32.const 12) (i32.const 16)) (then (call $fail)))
    ;; Room for 1792 pointers and 56 KiB of strings.
    (if (i32.or
          (i32.lt_u (i32.load (i32.const 12)) (i32.const 2))
          (i32.or
            (i32.gt_u (i32.load (i32.const 12)) (i32.const 1792))
            (i32.gt_u (i32.load (i32.const 16)) (i32.const 57344))))
      (then (call $proc_exit (i32.const 2))))
    (if (call $args_get (i32.const 1024) (i32.const 8192)) (then (call $fail)))
    (local.set $path (i32.load (i32.const 1028)))
    ;; Open argv[1] relative to the preopened directory, for reading only.
    (if (call $path_open
          (i32.const 3) (i32.const 0)
          (local.get $path) (call $strlen (local.get $path))
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 20))
      (then (call $fail)))
    (local.set $fd (i32.load (i32.const 20)))
    (block $eof
      (loop $blocks
        (i32.store (i32.const 0) (i32.const 65536))
        (i32.store (i32.const 4) (i32.const 65536))
        (if (call $fd_read (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))
          (then (call $fail)))
        (local.set $n (i32.load (i32.const 8)))
        (br_if $eof (i32.eqz (local.get $n)))
        (i32.store (i32.const 4) (local.get $n))
        (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
          (then (call $proc_exit (i32.const 1))))
        (br $blocks)))))
