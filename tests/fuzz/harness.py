"""The fuzzing harness: run settings, the decoder invariant and input strategies.

Invariant (the sans-IO contract of p2pshare.proto): a decoder given untrusted input
returns a value or raises a :class:`~p2pshare.errors.RemoteError` (RemoteProtocolError,
IntegrityError, ...); any other exception is a bug, and so is memory that grows with
what the input *declares* rather than with what it *is*.

Inputs come from three sources, mixed in one strategy per decoder:

* random bytes (or text), for the paths no valid encoding ever takes;
* byte-level mutations of valid encodings: bit flips, interesting bytes and
  integers, insertions of msgpack headers that declare huge or deeply nested
  values, deletions, truncation, splicing two seeds, repetition;
* value-level mutations: a valid encoding is unpacked, one node of its msgpack tree
  is replaced (wrong type, boundary or huge integer, extension type, extra or missing
  fields, keys reordered) and the result is packed and framed again, so the input gets
  past the msgpack layer and reaches the field checks.

``P2PSHARE_FUZZ=1`` turns the quick CI run (a few hundred derandomised examples per
decoder) into the long run (``P2PSHARE_FUZZ_EXAMPLES``, 100 000 by default, random).
"""

from __future__ import annotations

import itertools
import os
import tracemalloc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import msgpack
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from p2pshare.errors import RemoteError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence, Sized

T = TypeVar("T", bound="Sized")

FUZZING = os.environ.get("P2PSHARE_FUZZ", "") not in ("", "0")
FUZZ_EXAMPLES = int(os.environ.get("P2PSHARE_FUZZ_EXAMPLES", "100000"))
CI_EXAMPLES = 200

fuzz_settings = settings(
    max_examples=FUZZ_EXAMPLES if FUZZING else CI_EXAMPLES,
    deadline=None,
    # CI must pass or fail the same way every time; the long run explores.
    derandomize=not FUZZING,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)

# Decoding may cost a fixed overhead (msgpack's packer starts with a 256 KiB buffer,
# and canonical decoders re-encode) plus a small multiple of its input (parsed
# objects); a decoder allocating what a length field announces (up to 4 GiB) would
# exceed this by orders of magnitude.
MEMORY_BASE = 1024 * 1024
MEMORY_PER_INPUT_BYTE = 64


def check_decoder(
    decode: Callable[[T], Any], data: T, *, size: int | None = None, fixed: int = 0
) -> Any:
    """``decode(data)``: its value, or None for a RemoteError; fail on anything else.

    Also fails if decoding allocated more than the bound for ``size`` input bytes
    (by default ``len(data)``) plus ``fixed``: memory of a fixed size the decoder may
    take whatever the input says, such as the data channel's receive buffer.
    """
    # Tracing only around the call: hypothesis itself runs many times slower traced.
    tracemalloc.start()
    try:
        value = decode(data)
    except RemoteError:
        value = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    length = len(data) if size is None else size
    limit = MEMORY_BASE + MEMORY_PER_INPUT_BYTE * length + fixed
    assert peak <= limit, f"decoding {length} input bytes allocated {peak} bytes (limit {limit})"
    return value


# --- msgpack values ----------------------------------------------------------------------

INT_EDGES = (
    -(2**63),
    -(2**31) - 1,
    -(2**31),
    -129,
    -33,
    -1,
    0,
    1,
    15,
    16,
    31,
    32,
    127,
    128,
    255,
    256,
    2**16 - 1,
    2**16,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**53,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(INT_EDGES),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=24),
    st.binary(max_size=48),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
)

msgpack_values: st.SearchStrategy[object] = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(
            st.one_of(st.text(max_size=10), st.binary(max_size=4)), children, max_size=6
        ),
    ),
    max_leaves=24,
)


def nested(depth: int) -> object:
    """A list nested ``depth`` levels deep: msgpack takes about a thousand, repr() not."""
    value: object = None
    for _ in range(depth):
        value = [value]
    return value


def pack(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _nodes(value: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Paths (list indices, map keys) to every node of an unpacked msgpack tree."""
    paths = [path]
    if isinstance(value, list):
        for index, item in enumerate(value):
            paths += _nodes(item, (*path, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            paths += _nodes(item, (*path, key))
    return paths


def _get(value: object, path: tuple[object, ...]) -> object:
    for step in path:
        value = value[step]  # type: ignore[index]
    return value


def _put(value: object, path: tuple[object, ...], new: object) -> object:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, list):
        copy = list(value)
        copy[head] = _put(copy[head], rest, new)  # type: ignore[call-overload]
        return copy
    assert isinstance(value, dict)
    return {key: _put(item, rest, new) if key == head else item for key, item in value.items()}


@st.composite
def _mutated_node(draw: st.DrawFn, node: object) -> object:
    """A replacement for one node: a look-alike that breaks one rule, or anything."""
    if type(node) is int:
        choices: list[st.SearchStrategy[object]] = [
            st.sampled_from(
                [
                    near
                    for near in (node - 1, node + 1, -node, node + 2**32)
                    if -(2**63) <= near < 2**64
                ]
            ),
            st.sampled_from([float(node), bool(node), *INT_EDGES]),
        ]
    elif isinstance(node, bytes):
        choices = [
            st.sampled_from(
                [node[:-1], node + b"\0", node.decode("latin-1"), b"", bytes(len(node))]
            ),
        ]
    elif isinstance(node, str):
        choices = [
            st.sampled_from([node.upper(), node + "\0", node * 100, node.encode(), "", "\x1b[2J"]),
        ]
    elif isinstance(node, list):
        choices = [
            st.sampled_from([node[:-1], [*node, None], node + node, [node], list(reversed(node))]),
        ]
    elif isinstance(node, dict):
        keys = list(node)
        choices = [
            st.sampled_from(
                [
                    dict(reversed(node.items())),
                    {key: node[key] for key in keys[:-1]},
                    {**node, "x": 0},
                    list(node.values()),
                ]
            ),
        ]
    else:
        choices = []
    return draw(st.one_of(*choices, msgpack_values))


@dataclass(frozen=True)
class ValueSeed:
    """A valid input given as a msgpack value and how its packed bytes become input."""

    value: object
    wrap: Callable[[bytes], bytes] = bytes

    def encode(self) -> bytes:
        return self.wrap(pack(self.value))


@st.composite
def value_mutations(draw: st.DrawFn, seeds: Sequence[ValueSeed]) -> bytes:
    """A valid input with one to three nodes of its msgpack tree replaced."""
    seed = draw(st.sampled_from(seeds))
    value = seed.value
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_nodes(value)))
        value = _put(value, path, draw(_mutated_node(_get(value, path))))
    return seed.wrap(pack(value))


# --- byte mutations ----------------------------------------------------------------------

# msgpack headers that announce much more than follows: array32, map32, bin32, str32,
# ext32, uint64 and int64 with their payload cut, never-used 0xc1, floats.
_HOSTILE_HEADERS = (
    b"\xdd\xff\xff\xff\xff",
    b"\xdf\xff\xff\xff\xff",
    b"\xc6\x7f\xff\xff\xff",
    b"\xdb\x7f\xff\xff\xff",
    b"\xc9\x7f\xff\xff\xff\x01",
    b"\xdc\xff\xff",
    b"\xde\xff\xff",
    b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00",
    b"\xc1",
    b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",
    b"\xd4\x00\x00",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00\x00",
    b"\x80\x00\x00\x00",
)
_INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0x90, 0x91, 0xC0, 0xC1, 0xC2, 0xC3, 0xFF)


@st.composite
def _one_edit(draw: st.DrawFn, data: bytes, seeds: Sequence[bytes]) -> bytes:
    size = len(data)
    pos = draw(st.integers(0, size))
    operation = draw(st.integers(0, 8))
    if operation == 0 and size:
        pos = min(pos, size - 1)
        return data[:pos] + bytes([data[pos] ^ (1 << draw(st.integers(0, 7)))]) + data[pos + 1 :]
    if operation == 1 and size:
        pos = min(pos, size - 1)
        byte = draw(st.one_of(st.sampled_from(_INTERESTING_BYTES), st.integers(0, 255)))
        return data[:pos] + bytes([byte]) + data[pos + 1 :]
    if operation == 2:
        insert = draw(st.one_of(st.sampled_from(_HOSTILE_HEADERS), st.binary(min_size=1)))
        return data[:pos] + insert + data[pos:]
    if operation == 3:
        end = draw(st.integers(pos, size))
        return data[:pos] + data[end:]
    if operation == 4:
        return data[:pos]
    if operation == 5:
        other = draw(st.sampled_from(seeds))
        return data[:pos] + other[draw(st.integers(0, len(other))) :]
    if operation == 6:
        end = draw(st.integers(pos, min(size, pos + 64)))
        return data[:end] + data[pos:end] * draw(st.integers(1, 16)) + data[end:]
    if operation == 7:
        # Deep nesting: a tower of one-element arrays or maps.
        depth = draw(st.integers(1, 5000))
        return data[:pos] + draw(st.sampled_from([b"\x91", b"\x81\xa0"])) * depth + data[pos:]
    # A length field overwritten with a boundary value.
    number = draw(st.sampled_from([n for n in INT_EDGES if 0 <= n < 2**32] + [size, size + 1]))
    return data[:pos] + number.to_bytes(4, "big") + data[pos + 4 :]


@st.composite
def byte_mutations(draw: st.DrawFn, seeds: Sequence[bytes]) -> bytes:
    """A valid input with one to five byte-level edits."""
    data = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, 5))):
        data = draw(_one_edit(data, seeds))
    return data


def fuzz_inputs(
    seeds: Sequence[bytes], value_seeds: Sequence[ValueSeed] = (), *, max_random: int = 512
) -> st.SearchStrategy[bytes]:
    """The mix of random, byte-mutated and value-mutated inputs for one decoder."""
    strategies = [st.binary(max_size=max_random), byte_mutations(seeds), st.sampled_from(seeds)]
    if value_seeds:
        strategies.append(value_mutations(value_seeds))
    return st.one_of(strategies)


def text_inputs(seeds: Sequence[str], *, max_random: int = 256) -> st.SearchStrategy[str]:
    """Text for decoders of pasted strings: random, or a mutated valid string.

    ``surrogateescape`` yields the lone surrogates a command line argument holds when it
    was not valid UTF-8.
    """
    encoded = [seed.encode() for seed in seeds]
    return st.one_of(
        st.text(max_size=max_random),
        st.sampled_from(seeds),
        byte_mutations(encoded).map(lambda data: data.decode("utf-8", "surrogateescape")),
    )


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut into pieces at random points, as a stream delivers it."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]
