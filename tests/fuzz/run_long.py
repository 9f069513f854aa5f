"""The long fuzz run, driven without hypothesis' search engine.

``P2PSHARE_FUZZ=1 pytest tests/fuzz`` costs about 3 ms of CPU per example, most of it
in hypothesis' generation bookkeeping.  This feeds each fuzz test's
``hypothesis.fuzz_one_input`` random buffers instead, which runs the same strategies
and the same invariant at about half the cost, and reports progress as it goes; it
gives up shrinking, so a failure is reported with the buffer that caused it::

    .venv/bin/python -m tests.fuzz.run_long --examples 100000 [--shard 0/4] [-k NAME]

Replay a reported buffer with ``test.hypothesis.fuzz_one_input(bytes.fromhex(HEX))``.
"""

from __future__ import annotations

import argparse
import importlib
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any

MODULES = [
    f"tests.fuzz.{path.stem}" for path in sorted(Path(__file__).parent.glob("test_fuzz_*.py"))
]


def fuzz_tests(name_filter: str) -> list[tuple[str, Any]]:
    found = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, test in vars(module).items():
            if name.startswith("test_") and hasattr(test, "hypothesis") and name_filter in name:
                found.append((f"{module_name.rsplit('.', 1)[1]}::{name}", test))
    return found


def run(label: str, test: Any, examples: int, seed: int) -> bool:
    rng = random.Random(f"{seed}:{label}")
    start = time.monotonic()
    cpu = time.process_time()
    done = 0
    while done < examples:
        # Up to 8 KiB: room for every draw the strategies make, mutations included.
        buffer = rng.randbytes(rng.choice((64, 512, 8192)))
        try:
            # None: the buffer ran out before the strategies did, so nothing was tested.
            if test.hypothesis.fuzz_one_input(buffer) is None:
                continue
        except Exception:  # noqa: BLE001 - every failure is reported, then the next test runs
            print(f"FAILED {label} at example {done + 1}: buffer {buffer.hex()}", flush=True)
            traceback.print_exc()
            return False
        done += 1
        if done % 10_000 == 0 or done == examples:
            print(
                f"{label}: {done} examples, {time.monotonic() - start:.0f} s wall, "
                f"{time.process_time() - cpu:.0f} s CPU",
                flush=True,
            )
    print(f"PASSED {label}: {examples} examples", flush=True)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th test from the I-th")
    parser.add_argument("-k", default="", help="only tests whose name contains this")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    index, count = (int(part) for part in args.shard.split("/"))
    tests = fuzz_tests(args.k)[index::count]
    results = [run(label, test, args.examples, args.seed) for label, test in tests]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
