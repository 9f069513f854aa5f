"""The three signed kinds -- receipts, offers, manifests -- as test_signed.py checks them.

Each :class:`Kind` says how its wire bytes are decoded by a peer that does not know the
signer, how body and signature are put on the wire, and draws valid :class:`Sample`s
that carry the check of a peer that does know the signer.  The strategies of signed
values live here too, so test_job.py and test_offer.py draw the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgpack
from hypothesis import strategies as st

from p2pshare.identity import NodeKey
from p2pshare.proto.chunks import MIN_CHUNK_SIZE, chunk_count
from p2pshare.proto.cid import ContentId
from p2pshare.proto.jobspec import (
    MAX_FUEL,
    MAX_MEMORY,
    MAX_OUTPUT_BYTES,
    MAX_WALL_SECONDS,
    MIN_MEMORY,
    JobLimits,
)
from p2pshare.proto.manifest import FileEntry, ShareKind, build_manifest
from p2pshare.proto.offer import (
    MAX_EXPIRES,
    MAX_INPUT_BYTES,
    MAX_SLOTS,
    MAX_SPEED,
    Offer,
    decode_offer,
    offer_signing_message,
    sign_offer,
    verify_offer,
)
from p2pshare.proto.receipt import (
    MAX_EXIT_CODE,
    JobStatus,
    Receipt,
    decode_receipt,
    receipt_signing_message,
    sign_receipt,
    verify_receipt,
)
from p2pshare.proto.signed_manifest import (
    decode_signed_manifest,
    sign_manifest,
    signing_message,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

WORKER = NodeKey.from_seed(bytes(range(32)))
# Paths that never clash with one another ("a" and "a/b" would not be a tree).
_PATHS = ("docs/readme.txt", "empty", "data.bin", "a", "b/c", "Ünïcode ✓.txt")
# Empty directories that clash with none of _PATHS nor with one another.
_EMPTY_DIRS = ("void", "docs/old", "x/y/z", "Ñ")

cids = st.binary(min_size=32, max_size=32).map(ContentId)
limits = st.builds(
    JobLimits,
    fuel=st.integers(1, MAX_FUEL),
    memory=st.integers(MIN_MEMORY, MAX_MEMORY),
    wall_seconds=st.integers(1, MAX_WALL_SECONDS),
    max_output=st.integers(0, MAX_OUTPUT_BYTES),
)


@st.composite
def receipts(draw: st.DrawFn) -> Receipt:
    status = draw(st.sampled_from(JobStatus))
    return Receipt(
        job_id=draw(st.binary(min_size=32, max_size=32)),
        worker=WORKER.public_key,
        status=status,
        exit_code=draw(st.integers(1, MAX_EXIT_CODE)) if status is JobStatus.EXIT else 0,
        fuel_used=draw(st.integers(0, MAX_FUEL)),
        output=draw(st.none() | cids),
        digest=draw(st.binary(min_size=32, max_size=32)),
    )


@st.composite
def offers(draw: st.DrawFn) -> Offer:
    slots = draw(st.integers(1, MAX_SLOTS))
    return Offer(
        worker=WORKER.public_key,
        limits=draw(limits),
        max_input=draw(st.integers(0, MAX_INPUT_BYTES)),
        slots=slots,
        free=draw(st.integers(0, slots)),
        speed=draw(st.integers(0, MAX_SPEED)),
        expires=draw(st.integers(0, MAX_EXPIRES)),
    )


@st.composite
def _file_entry(draw: st.DrawFn, path: str) -> FileEntry:
    # Only the number of chunk hashes is checked when signing, not what they hash.
    size = draw(st.integers(0, 3 * MIN_CHUNK_SIZE))
    count = chunk_count(size, MIN_CHUNK_SIZE)
    hashes = draw(st.binary(min_size=32 * count, max_size=32 * count))
    return FileEntry(path, size, hashes, executable=draw(st.booleans()))


@st.composite
def _receipt_samples(draw: st.DrawFn) -> Sample:
    signed = sign_receipt(draw(receipts()), WORKER)
    job = signed.receipt.job_id
    return Sample(
        signed.data,
        signed.body,
        signed.signature,
        lambda data: verify_receipt(data, worker=WORKER.public_key, job=job),
    )


@st.composite
def _offer_samples(draw: st.DrawFn) -> Sample:
    signed = sign_offer(draw(offers()), WORKER)
    now = signed.offer.expires
    return Sample(
        signed.data,
        signed.body,
        signed.signature,
        lambda data: verify_offer(data, worker=WORKER.public_key, now=now),
    )


@st.composite
def _manifest_samples(draw: st.DrawFn) -> Sample:
    paths = draw(st.sets(st.sampled_from(_PATHS), min_size=1))
    built = build_manifest(
        [draw(_file_entry(path)) for path in sorted(paths)],
        kind=ShareKind.DIRECTORY,
        publisher=WORKER.public_key,
        created=draw(st.integers(0, 2**32)),
        chunk_size=MIN_CHUNK_SIZE,
        name=draw(st.sampled_from([None, "album"])),
        directories=draw(st.sets(st.sampled_from(_EMPTY_DIRS))),
    )
    signed = sign_manifest(built.manifest, WORKER)
    return Sample(
        signed.data,
        signed.body,
        signed.signature,
        # The content ID is what a downloader knows before it has the bytes.
        lambda data: decode_signed_manifest(data, signed.cid),
    )


def msgpack_values(keys: Sequence[str]) -> st.SearchStrategy[object]:
    """Any msgpack tree, its maps keyed mostly with ``keys`` so some get past the key check."""
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.binary(max_size=40)
        | st.text(max_size=10)
        | st.sampled_from(keys)
        | st.just(WORKER.public_key),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(st.sampled_from(keys) | st.text(max_size=10), inner, max_size=4)
        ),
        max_leaves=12,
    )


@dataclass(frozen=True)
class Sample:
    """A validly signed value's wire bytes, and the check of a peer that knows its signer.

    ``verify`` binds what that peer expects: worker key and job ID, clock, content ID.
    """

    data: bytes
    body: bytes
    signature: bytes
    verify: Callable[[bytes], object]


@dataclass(frozen=True)
class Kind:
    """One signed kind.  ``decode`` is the check of a peer that does not know the signer."""

    name: str
    samples: st.SearchStrategy[Sample]
    decode: Callable[[bytes], object]
    wire: Callable[[bytes, bytes], bytes]
    signing_message: Callable[[bytes], bytes]
    # What a malicious signer might put where the body goes.
    values: st.SearchStrategy[object]


def _manifest_wire(body: bytes, signature: bytes) -> bytes:
    packed: bytes = msgpack.packb({"body": body, "sig": signature}, use_bin_type=True)
    return packed


KINDS = (
    Kind(
        name="receipt",
        samples=_receipt_samples(),
        decode=decode_receipt,
        wire=lambda body, signature: body + signature,
        signing_message=receipt_signing_message,
        values=msgpack_values(["v", "job", "worker", "status", "exit", "fuel", "output", "digest"]),
    ),
    Kind(
        name="offer",
        samples=_offer_samples(),
        decode=decode_offer,
        wire=lambda body, signature: body + signature,
        signing_message=offer_signing_message,
        values=msgpack_values(["v", "worker", "limits", "slots", "free", "fuel"]),
    ),
    Kind(
        name="manifest",
        samples=_manifest_samples(),
        decode=decode_signed_manifest,
        wire=_manifest_wire,
        signing_message=signing_message,
        values=msgpack_values(
            [
                "v",
                "kind",
                "name",
                "publisher",
                "created",
                "chunk_size",
                "entries",
                "hashes",
                "pages",
                "dirs",
                "exec",
            ]
        ),
    ),
)
