"""Compute: run peers' WebAssembly jobs in a sandbox, in worker processes the daemon can kill.

* :mod:`p2pshare.compute.imports` -- reads a module's imports and checks them against
  the allow-list, in pure Python, before wasmtime compiles anything;
* :mod:`p2pshare.compute.sandbox` -- runs one job with wasmtime under fuel, memory,
  stack, wall-clock and output limits and the deterministic WASI profile;
* :mod:`p2pshare.compute.worker` -- the worker process (``python -m
  p2pshare.compute.worker``) and the messages it exchanges with the daemon;
* :mod:`p2pshare.compute.pool` -- pre-started worker processes behind an async API.

Importing this package imports neither trio nor wasmtime; each submodule brings its
own dependencies.  Model, limits and security boundary: docs/compute.md.
"""
