"""Job specs, job IDs, job messages and signed receipts: round trips, refusals, tampering."""

from __future__ import annotations

import contextlib
import itertools
from typing import TYPE_CHECKING, Any

import blake3
import msgpack
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from p2pshare.errors import (
    IntegrityError,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
)
from p2pshare.identity import NodeKey
from p2pshare.proto.cid import ContentId
from p2pshare.proto.errors import UnsafePathError
from p2pshare.proto.framing import FrameDecoder, encode_frame
from p2pshare.proto.job import (
    MAX_ARG_BYTES,
    MAX_ARGS,
    MAX_EXIT_CODE,
    MAX_FETCHED,
    MAX_FUEL,
    MAX_INLINE_OUTPUT,
    MAX_MEMORY,
    MAX_MESSAGE_SIZE,
    MAX_OFFER_SIZE,
    MAX_OUTPUT_BYTES,
    MAX_REJECT_MESSAGE,
    MAX_WALL_SECONDS,
    MIN_MEMORY,
    NONCE_SIZE,
    RECEIPT_DOMAIN,
    Accept,
    Cancel,
    JobLimits,
    JobMessage,
    JobRejectedError,
    JobSpec,
    JobState,
    JobStatus,
    OfferReply,
    OfferRequest,
    Progress,
    Receipt,
    Reject,
    RejectCode,
    Result,
    Submit,
    build_job_spec,
    check_receipt,
    decode_job_message,
    decode_job_spec,
    decode_receipt,
    encode_job_message,
    encode_job_spec,
    encode_receipt,
    job_id,
    output_digest,
    receipt_signing_message,
    sign_receipt,
    verify_receipt,
)
from p2pshare.proto.signed_manifest import SIGNATURE_DOMAIN
from tests.proto.signed_kinds import WORKER, cids, limits, receipts

if TYPE_CHECKING:
    from collections.abc import Callable

OTHER = NodeKey.from_seed(bytes(range(1, 33)))
MODULE = ContentId(blake3.blake3(b"module").digest())
STDIN = ContentId(blake3.blake3(b"stdin").digest())
NONCE = bytes(range(NONCE_SIZE))


def _cid(tag: bytes) -> ContentId:
    return ContentId(blake3.blake3(tag).digest())


def _pack(value: object) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _unpack(data: bytes) -> dict[str, Any]:
    value: dict[str, Any] = msgpack.unpackb(data)
    return value


SPEC = build_job_spec(
    MODULE,
    args=["--words", "données"],
    stdin=STDIN,
    inputs={"in/b.txt": _cid(b"b"), "in/a.txt": _cid(b"a"), "z": _cid(b"z")},
    limits=JobLimits(fuel=10**9, memory=16 * 1024**2, wall_seconds=2, max_output=1 << 20),
)


def _receipt(**change: Any) -> Receipt:
    fields: dict[str, Any] = {
        "job_id": job_id(SPEC),
        "worker": WORKER.public_key,
        "status": JobStatus.OK,
        "exit_code": 0,
        "fuel_used": 123_456,
        "output": _cid(b"output"),
        "digest": output_digest(b"2 5 25\n"),
    }
    return Receipt(**(fields | change))


# --- strategies -------------------------------------------------------------------------

components = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=8)
guest_paths = st.lists(components, min_size=1, max_size=3).map("/".join)
arguments = st.text(max_size=40).filter(lambda text: "\0" not in text)


@st.composite
def specs(draw: st.DrawFn) -> JobSpec:
    inputs = draw(st.dictionaries(guest_paths, cids, max_size=6))
    try:
        return build_job_spec(
            draw(cids),
            args=draw(st.lists(arguments, max_size=6)),
            stdin=draw(st.none() | cids),
            inputs=inputs,
            limits=draw(limits),
        )
    except UnsafePathError:
        # "a" and "a/b", or "." and "..": not a tree; the refusal has its own tests.
        assume(False)
        raise


messages: st.SearchStrategy[JobMessage] = st.one_of(
    st.just(OfferRequest()),
    st.builds(OfferReply, st.binary(max_size=MAX_OFFER_SIZE)),
    st.builds(Submit, specs(), st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE)),
    st.builds(Accept, st.binary(min_size=32, max_size=32)),
    st.builds(
        Reject,
        st.binary(min_size=32, max_size=32),
        st.sampled_from([RejectCode.BUSY, RejectCode.FORBIDDEN_IMPORT, "from_the_future_2"]),
        st.text(max_size=MAX_REJECT_MESSAGE),
    ),
    st.builds(
        Progress,
        st.binary(min_size=32, max_size=32),
        st.sampled_from(JobState),
        st.none() | st.integers(0, MAX_FUEL),
        st.none() | st.integers(0, MAX_FETCHED),
    ),
    st.builds(Cancel, st.binary(min_size=32, max_size=32)),
    receipts().map(lambda receipt: Result(sign_receipt(receipt, WORKER))),
)


# --- specs and job IDs -------------------------------------------------------------------


@given(specs())
def test_spec_round_trips(spec: JobSpec) -> None:
    data = encode_job_spec(spec)
    assert decode_job_spec(data) == spec
    assert job_id(decode_job_spec(data)) == job_id(spec) == blake3.blake3(data).digest()


@given(specs(), st.randoms(use_true_random=False))
def test_job_id_does_not_depend_on_the_order_of_inputs(spec: JobSpec, rng: Any) -> None:
    entries = [(entry.path, entry.cid) for entry in spec.inputs]
    rng.shuffle(entries)
    rebuilt = build_job_spec(
        spec.module, args=spec.args, stdin=spec.stdin, inputs=dict(entries), limits=spec.limits
    )
    assert rebuilt == spec
    assert job_id(rebuilt) == job_id(spec)


def test_job_id_is_pinned() -> None:
    # The job ID is part of the protocol: a change of encoding must be deliberate.
    spec = build_job_spec(
        ContentId(bytes(32)),
        args=["a"],
        inputs={"x": ContentId(bytes(range(32)))},
        limits=JobLimits(fuel=1000, memory=65536, wall_seconds=1, max_output=10),
    )
    assert encode_job_spec(spec).hex() == (
        "86a17601a66d6f64756c65c424015" + "51e20" + "00" * 32
        + "a461726773" + "91a161"
        + "a5737464696ec0"
        + "a6696e7075747391" + "92a178c424015" + "51e20" + bytes(range(32)).hex()
        + "a66c696d69747384" + "a46675656ccd03e8" + "a66d656d6f7279ce00010000"
        + "a477616c6c01" + "a66f75747075740a"
    )  # fmt: skip
    assert job_id(spec) == blake3.blake3(encode_job_spec(spec)).digest()


def test_different_specs_have_different_job_ids() -> None:
    assert job_id(SPEC) != job_id(build_job_spec(MODULE, args=SPEC.args, inputs={}))
    assert job_id(SPEC) != job_id(
        build_job_spec(
            MODULE,
            args=SPEC.args,
            stdin=STDIN,
            inputs={entry.path: entry.cid for entry in SPEC.inputs},
            limits=JobLimits(fuel=10**9 + 1, memory=16 * 1024**2, wall_seconds=2),
        )
    )


@pytest.mark.parametrize(
    "path", ["../x", "/etc/passwd", "a/../../b", "", "a//b", "a\\b", "a\0b", ".", "a/./b"]
)
def test_unsafe_input_paths_are_refused(path: str) -> None:
    with pytest.raises(UnsafePathError):
        build_job_spec(MODULE, inputs={path: STDIN})


@pytest.mark.parametrize(
    "inputs",
    [{"a": STDIN, "a/b": STDIN}, {"Data.txt": STDIN, "data.txt": STDIN}],
    ids=["file and directory", "case collision"],
)
def test_inputs_that_are_not_one_tree_are_refused(inputs: dict[str, ContentId]) -> None:
    with pytest.raises(UnsafePathError):
        build_job_spec(MODULE, inputs=inputs)


@pytest.mark.parametrize(
    "args",
    [["a\0b"], ["x" * (MAX_ARG_BYTES + 1)], ["a"] * (MAX_ARGS + 1), ["\udc80"]],
    ids=["NUL", "long", "many", "surrogate"],
)
def test_bad_arguments_are_refused(args: list[str]) -> None:
    with pytest.raises(LocalProtocolError):
        build_job_spec(MODULE, args=args)


def test_oversize_spec_is_refused() -> None:
    inputs = {f"{'d' * 250}/{index:04d}": STDIN for index in range(1024)}
    with pytest.raises(LocalProtocolError, match="bytes"):
        build_job_spec(MODULE, inputs=inputs)


@pytest.mark.parametrize(
    "fields",
    [
        {"fuel": 0},
        {"fuel": MAX_FUEL + 1},
        {"memory": MIN_MEMORY - 1},
        {"memory": MAX_MEMORY + 1},
        {"wall_seconds": 0},
        {"wall_seconds": MAX_WALL_SECONDS + 1},
        {"max_output": -1},
        {"max_output": MAX_OUTPUT_BYTES + 1},
        {"fuel": True},
    ],
)
def test_limits_out_of_range_are_refused(fields: dict[str, int]) -> None:
    with pytest.raises(LocalProtocolError):
        JobLimits(**fields)


def test_limits_exceeding_an_offer_are_named() -> None:
    offer = JobLimits(fuel=10**10, memory=64 << 20, wall_seconds=60, max_output=1 << 20)
    assert (
        JobLimits(fuel=10**9, memory=1 << 20, wall_seconds=1, max_output=0).exceeding(offer) == []
    )
    asked = JobLimits(fuel=10**11, memory=64 << 20, wall_seconds=600, max_output=1 << 20)
    assert asked.exceeding(offer) == ["fuel", "wall_seconds"]


def _spec_map() -> dict[str, Any]:
    return _unpack(encode_job_spec(SPEC))


NON_CANONICAL_SPECS: dict[str, Callable[[], bytes]] = {
    "keys reordered": lambda: _pack(dict(reversed(_spec_map().items()))),
    "limit keys reordered": lambda: _pack(
        _spec_map() | {"limits": dict(reversed(_spec_map()["limits"].items()))}
    ),
    "inputs unsorted": lambda: _pack(_spec_map() | {"inputs": _spec_map()["inputs"][::-1]}),
    "extra key": lambda: _pack(_spec_map() | {"env": {}}),
    "version 2": lambda: _pack(_spec_map() | {"v": 2}),
    "bool fuel": lambda: _pack(_spec_map() | {"limits": _spec_map()["limits"] | {"fuel": True}}),
    "float wall": lambda: _pack(_spec_map() | {"limits": _spec_map()["limits"] | {"wall": 2.0}}),
    "wide integer": lambda: encode_job_spec(SPEC).replace(b"\xa4wall\x02", b"\xa4wall\xcd\x00\x02"),
    "module as text": lambda: _pack(_spec_map() | {"module": "b" * 36}),
    "IPFS sha2 CID": lambda: _pack(_spec_map() | {"module": b"\x01\x55\x12\x20" + bytes(32)}),
    "unsafe input": lambda: _pack(_spec_map() | {"inputs": [["../x", STDIN.to_bytes()]]}),
    "NUL argument": lambda: _pack(_spec_map() | {"args": ["a\0"]}),
    "trailing byte": lambda: encode_job_spec(SPEC) + b"\xc0",
    "array": lambda: _pack(list(_spec_map().values())),
}


@pytest.mark.parametrize("make", NON_CANONICAL_SPECS.values(), ids=NON_CANONICAL_SPECS.keys())
def test_non_canonical_or_invalid_spec_is_refused(make: Callable[[], bytes]) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_job_spec(make())


# Signed receipts get the same check in test_signed.py.
@given(st.binary(max_size=512))
def test_arbitrary_bytes_give_only_typed_errors(data: bytes) -> None:
    for decode in (decode_job_spec, decode_job_message):
        with contextlib.suppress(RemoteError):
            decode(data)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=40)
    | st.text(max_size=10)
    | st.sampled_from(["t", "submit", "result", "progress", "job", "offer", "offer_request"]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(
        st.sampled_from(["t", "job", "spec", "nonce", "state", "fuel", "fetched", "offer", "v"]),
        inner,
    ),
    max_leaves=12,
)  # fmt: skip


@given(msgpack_values)
def test_arbitrary_msgpack_gives_only_typed_errors(value: object) -> None:
    data = _pack(value)
    for decode in (decode_job_spec, decode_job_message):
        with contextlib.suppress(RemoteError):
            decode(data)


# --- messages ---------------------------------------------------------------------------


@given(messages)
def test_messages_round_trip(message: JobMessage) -> None:
    assert decode_job_message(encode_job_message(message)) == message


@given(st.lists(messages, max_size=4), st.lists(st.integers(min_value=0), max_size=12))
def test_framed_messages_survive_any_split(batch: list[JobMessage], cuts: list[int]) -> None:
    stream = b"".join(
        encode_frame(encode_job_message(message), MAX_MESSAGE_SIZE) for message in batch
    )
    points = sorted({cut % (len(stream) + 1) for cut in cuts})
    decoder = FrameDecoder(MAX_MESSAGE_SIZE)
    received = []
    for start, end in itertools.pairwise([0, *points, len(stream)]):
        decoder.feed(stream[start:end])
        while (frame := decoder.next_frame()) is not None:
            received.append(decode_job_message(frame))
    assert received == batch


@given(messages, st.data())
def test_a_flipped_bit_gives_a_typed_error_or_another_canonical_message(
    message: JobMessage, data: st.DataObject
) -> None:
    encoded = encode_job_message(message)
    bit = data.draw(st.integers(0, 8 * len(encoded) - 1))
    damaged = bytearray(encoded)
    damaged[bit // 8] ^= 1 << (bit % 8)
    try:
        decoded = decode_job_message(bytes(damaged))
    except RemoteError:
        return
    # Canonical decoding: whatever is accepted is exactly the encoding of what it means.
    assert decoded != message
    assert encode_job_message(decoded) == damaged


def test_submit_carries_the_spec_bytes_and_its_job_id() -> None:
    message = Submit(SPEC, NONCE)
    data = encode_job_message(message)
    assert _unpack(data)["spec"] == encode_job_spec(SPEC)
    decoded = decode_job_message(data)
    assert isinstance(decoded, Submit)
    assert decoded.job_id == job_id(SPEC)


@pytest.mark.parametrize(
    "message",
    [
        Submit(SPEC, b"short"),
        Accept(b"\0" * 31),
        Reject(job_id(SPEC), "Not A Code", "x"),
        Reject(job_id(SPEC), "busy", "x" * (MAX_REJECT_MESSAGE + 1)),
        Progress(job_id(SPEC), JobState.RUNNING, -1),
        Progress(job_id(SPEC), JobState.FETCHING, None, -1),
        Progress(job_id(SPEC), JobState.FETCHING, None, MAX_FETCHED + 1),
        OfferReply(bytes(MAX_OFFER_SIZE + 1)),
        Cancel(b""),
    ],
)
def test_invalid_messages_cannot_be_encoded(message: JobMessage) -> None:
    with pytest.raises(LocalProtocolError):
        encode_job_message(message)


NON_CANONICAL_MESSAGES: dict[str, bytes] = {
    "type last": _pack({"job": bytes(32), "t": "accept"}),
    "unknown type": _pack({"t": "hello", "job": bytes(32)}),
    "missing fuel": _pack({"t": "progress", "job": bytes(32), "state": "running"}),
    "missing fetched": _pack({"t": "progress", "job": bytes(32), "state": "running", "fuel": 1}),
    "unknown state": _pack(
        {"t": "progress", "job": bytes(32), "state": "paused", "fuel": None, "fetched": None}
    ),
    "bool fetched": _pack(
        {"t": "progress", "job": bytes(32), "state": "fetching", "fuel": None, "fetched": True}
    ),
    "oversize offer": _pack({"t": "offer", "offer": bytes(MAX_OFFER_SIZE + 1)}),
    "offer as text": _pack({"t": "offer", "offer": "x"}),
    "offer request with a field": _pack({"t": "offer_request", "job": bytes(32)}),
    "spec as map": _pack({"t": "submit", "spec": _unpack(encode_job_spec(SPEC)), "nonce": NONCE}),
    "bad spec bytes": _pack({"t": "submit", "spec": b"\x80", "nonce": NONCE}),
    "extra key": _pack({"t": "cancel", "job": bytes(32), "why": "x"}),
    "wide string": _pack({"t": "cancel", "job": bytes(32)}).replace(b"\xa1t", b"\xd9\x01t"),
    "empty map": _pack({}),
}


@pytest.mark.parametrize("data", NON_CANONICAL_MESSAGES.values(), ids=NON_CANONICAL_MESSAGES.keys())
def test_malformed_messages_are_refused(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_job_message(data)


def test_reject_becomes_a_typed_printable_error() -> None:
    reject = Reject(job_id(SPEC), RejectCode.FORBIDDEN_IMPORT, "imports env.socket\x1b[2J")
    decoded = decode_job_message(encode_job_message(reject))
    assert isinstance(decoded, Reject)
    error = decoded.exception()
    assert isinstance(error, JobRejectedError)
    assert isinstance(error, RemoteError)
    assert error.code == "forbidden_import"
    assert "\x1b" not in str(error)
    assert "env.socket" in str(error)


# --- receipts ---------------------------------------------------------------------------
# Tampering and garbage, alike for every signed kind, are in test_signed.py.


@given(receipts())
def test_receipt_round_trips(receipt: Receipt) -> None:
    signed = sign_receipt(receipt, WORKER)
    assert decode_receipt(signed.data) == signed
    assert verify_receipt(signed.data, worker=WORKER.public_key, job=receipt.job_id) == signed
    assert signed.receipt.worker_peer_id == WORKER.peer_id


def test_receipt_signature_is_domain_separated() -> None:
    signed = sign_receipt(_receipt(), WORKER)
    assert receipt_signing_message(signed.body) == RECEIPT_DOMAIN + signed.body
    assert RECEIPT_DOMAIN == b"p2pshare-receipt-v1\0"
    assert signed.body == encode_receipt(signed.receipt)
    # The same body signed under the manifest domain is no receipt.
    forged = signed.body + WORKER.sign(SIGNATURE_DOMAIN + signed.body)
    with pytest.raises(IntegrityError):
        verify_receipt(forged, worker=WORKER.public_key)


def test_receipt_from_another_worker_or_for_another_job_is_refused() -> None:
    signed = sign_receipt(_receipt(), WORKER)
    with pytest.raises(IntegrityError):
        verify_receipt(signed.data, worker=OTHER.public_key)
    with pytest.raises(IntegrityError, match="another job"):
        verify_receipt(signed.data, worker=WORKER.public_key, job=bytes(32))
    # A worker relaying someone else's valid receipt as its own:
    with pytest.raises(IntegrityError, match="another worker"):
        check_receipt(signed, worker=OTHER.public_key)
    with pytest.raises(LocalProtocolError):
        sign_receipt(_receipt(), OTHER)


def test_result_with_a_forged_receipt_is_an_integrity_error() -> None:
    signed = sign_receipt(_receipt(), WORKER)
    forged = signed.body + OTHER.sign(receipt_signing_message(signed.body))
    with pytest.raises(IntegrityError):
        decode_job_message(_pack({"t": "result", "receipt": forged, "stdout": None}))


def test_result_carries_small_stdout_checked_against_the_digest() -> None:
    stdout = b"2 3 14\n"
    signed = sign_receipt(_receipt(digest=output_digest(stdout)), WORKER)
    message = Result(signed, stdout)
    assert decode_job_message(encode_job_message(message)) == message
    with pytest.raises(IntegrityError, match="does not match"):
        decode_job_message(_pack({"t": "result", "receipt": signed.data, "stdout": b"42\n"}))
    with pytest.raises(LocalProtocolError):
        encode_job_message(Result(signed, b"42\n"))


def test_inline_stdout_is_bounded() -> None:
    stdout = bytes(MAX_INLINE_OUTPUT + 1)
    signed = sign_receipt(_receipt(digest=output_digest(stdout)), WORKER)
    with pytest.raises(RemoteProtocolError, match="more than"):
        decode_job_message(_pack({"t": "result", "receipt": signed.data, "stdout": stdout}))


@pytest.mark.parametrize(
    "change",
    [
        {"status": JobStatus.EXIT, "exit_code": 0},
        {"status": JobStatus.OK, "exit_code": 3},
        {"exit_code": MAX_EXIT_CODE + 1},
        {"fuel_used": -1},
        {"digest": bytes(31)},
        {"job_id": bytes(33)},
        {"worker": bytes(32)},
        {"status": "ok"},
    ],
)
def test_inconsistent_receipts_cannot_be_built(change: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError):
        _receipt(**change)


def test_replicas_agree_on_outcome_not_on_fuel_or_output_share() -> None:
    first = _receipt()
    second = _receipt(
        worker=OTHER.public_key, fuel_used=first.fuel_used + 1, output=_cid(b"other share")
    )
    assert first.outcome == second.outcome
    assert first.outcome != _receipt(digest=output_digest(b"a lie\n")).outcome
    assert first.outcome != _receipt(status=JobStatus.EXIT, exit_code=1).outcome


def test_signed_receipt_body_is_canonical() -> None:
    signed = sign_receipt(_receipt(), WORKER)
    body = _unpack(signed.body)
    reordered = _pack(dict(reversed(body.items())))
    resigned = reordered + WORKER.sign(receipt_signing_message(reordered))
    with pytest.raises(RemoteProtocolError):
        decode_receipt(resigned)
    # Signed by the right worker but malformed: still not a receipt.
    with pytest.raises(IntegrityError, match="malformed"):
        verify_receipt(resigned, worker=WORKER.public_key)
