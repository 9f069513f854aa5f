"""Compute job specs: what a run depends on, its limits, and the job ID that names it.

Sans-IO.  Normative description: docs/compute.md.

A **job spec** names everything a run depends on: the module and the stdin by content
ID, the arguments, the input files (guest path -> content ID) and the limits.  Its
canonical msgpack bytes are what the **job ID** hashes (BLAKE3), so two requesters
asking for the same computation name it identically, and the job ID doubles as the
seed of the guest's deterministic random numbers.  Receipts
(:mod:`p2pshare.proto.receipt`) and the messages that carry both
(:mod:`p2pshare.proto.job`) build on this module.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import blake3

from p2pshare.errors import LocalProtocolError, P2PShareError, RemoteProtocolError
from p2pshare.proto.canonical import (
    Codec,
    Limits,
    expect_bytes,
    expect_int,
    expect_list,
    expect_map,
    expect_str,
    pack,
)
from p2pshare.proto.cid import CID_BYTES, ContentId
from p2pshare.proto.paths import MAX_PATH_BYTES, check_tree

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

JOB_VERSION: Final = 1
JOB_ID_SIZE: Final = 32
PUBLIC_KEY_SIZE: Final = 32

# --- limits on what a spec may say -----------------------------------------------------
# Arguments reach the guest as C strings through args_get: bounded so a spec stays small.
MAX_ARGS: Final = 256
MAX_ARG_BYTES: Final = 4096
MAX_INPUTS: Final = 1024
# The whole spec travels in one SUBMIT frame and is decoded before anything else.
MAX_SPEC_SIZE: Final = 256 * 1024

# Protocol maxima: far above any offer, low enough that arithmetic on them stays sane.
# An offer (the worker's own limits) is usually much lower; see JobLimits.exceeding.
MIN_FUEL: Final = 1
MAX_FUEL: Final = 10**15
WASM_PAGE_SIZE: Final = 64 * 1024
MIN_MEMORY: Final = WASM_PAGE_SIZE
# wasm32 addresses 4 GiB at most; memory64 is not part of the job profile.
MAX_MEMORY: Final = 4 * 1024**3
MIN_WALL_SECONDS: Final = 1
MAX_WALL_SECONDS: Final = 24 * 3600
MAX_OUTPUT_BYTES: Final = 1024**3

# Defaults of a job that does not say otherwise (docs/compute.md, "Limits").
DEFAULT_FUEL: Final = 5 * 10**11
DEFAULT_MEMORY: Final = 256 * 1024**2
DEFAULT_WALL_SECONDS: Final = 60
DEFAULT_OUTPUT_BYTES: Final = 64 * 1024**2

_SPEC_KEYS: Final = ("v", "module", "args", "stdin", "inputs", "limits")
_LIMIT_KEYS: Final = ("fuel", "memory", "wall", "output")


# --- limits ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JobLimits:
    """What one run may consume.  Out-of-range values raise LocalProtocolError."""

    fuel: int = DEFAULT_FUEL
    memory: int = DEFAULT_MEMORY
    wall_seconds: int = DEFAULT_WALL_SECONDS
    max_output: int = DEFAULT_OUTPUT_BYTES

    def __post_init__(self) -> None:
        try:
            _check_limit_values(self.fuel, self.memory, self.wall_seconds, self.max_output)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(str(exc)) from None

    def exceeding(self, maximum: JobLimits) -> list[str]:
        """The names of the limits above ``maximum`` (a worker's offer); empty if none."""
        return [
            name
            for name, mine, theirs in (
                ("fuel", self.fuel, maximum.fuel),
                ("memory", self.memory, maximum.memory),
                ("wall_seconds", self.wall_seconds, maximum.wall_seconds),
                ("max_output", self.max_output, maximum.max_output),
            )
            if mine > theirs
        ]


def encode_limits(limits: JobLimits) -> dict[str, int]:
    """The wire map of limits, as a job spec and a worker's offer carry it."""
    return {
        "fuel": limits.fuel,
        "memory": limits.memory,
        "wall": limits.wall_seconds,
        "output": limits.max_output,
    }


def parse_limits(value: object, *, what: str) -> JobLimits:
    """Limits from their wire map; RemoteProtocolError unless well formed and in range."""
    return _check_limit_values(*expect_map(value, _LIMIT_KEYS, what=what))


def _check_limit_values(fuel: object, memory: object, wall: object, output: object) -> JobLimits:
    """Range checks shared by the decoder and JobLimits itself."""
    values = (
        expect_int(fuel, what="fuel limit", low=MIN_FUEL, high=MAX_FUEL),
        expect_int(memory, what="memory limit", low=MIN_MEMORY, high=MAX_MEMORY),
        expect_int(wall, what="wall-clock limit", low=MIN_WALL_SECONDS, high=MAX_WALL_SECONDS),
        expect_int(output, what="output limit", low=0, high=MAX_OUTPUT_BYTES),
    )
    # object.__new__ skips __post_init__, which is what calls this function.
    limits = object.__new__(JobLimits)
    for name, value in zip(("fuel", "memory", "wall_seconds", "max_output"), values, strict=True):
        object.__setattr__(limits, name, value)
    return limits


# --- job spec -------------------------------------------------------------------------


@dataclass(frozen=True)
class InputFile:
    """An input file of a job: where the guest finds it, and the content that fills it."""

    path: str
    cid: ContentId


@dataclass(frozen=True)
class JobSpec:
    """Everything a run depends on.  Build with :func:`build_job_spec`.

    ``inputs`` are sorted by path bytes (the canonical order); constructing a spec
    directly skips the checks that :func:`build_job_spec` and the decoder apply.
    """

    module: ContentId
    args: tuple[str, ...] = ()
    stdin: ContentId | None = None
    inputs: tuple[InputFile, ...] = ()
    limits: JobLimits = field(default_factory=JobLimits)

    @property
    def job_id(self) -> bytes:
        return job_id(self)


def _path_order(path: str) -> bytes:
    # surrogatepass: an unencodable path must reach check_tree, which explains the refusal.
    return path.encode("utf-8", "surrogatepass")


def build_job_spec(
    module: ContentId,
    *,
    args: Iterable[str] = (),
    stdin: ContentId | None = None,
    inputs: Mapping[str, ContentId] | None = None,
    limits: JobLimits | None = None,
) -> JobSpec:
    """A checked spec; the order of ``inputs`` does not matter (they are sorted).

    Raises UnsafePathError for an input path a worker would refuse, LocalProtocolError
    for anything else the protocol does not allow.
    """
    spec = JobSpec(
        module=module,
        args=tuple(args),
        stdin=stdin,
        inputs=tuple(
            InputFile(path, cid)
            for path, cid in sorted((inputs or {}).items(), key=lambda item: _path_order(item[0]))
        ),
        limits=limits if limits is not None else JobLimits(),
    )
    check_spec(spec, LocalProtocolError)
    size = len(encode_job_spec(spec))
    if size > MAX_SPEC_SIZE:
        raise LocalProtocolError(
            f"the job spec would take {size} bytes, more than the {MAX_SPEC_SIZE} allowed; "
            "pass fewer or shorter arguments and input paths"
        )
    return spec


def check_spec(spec: JobSpec, fail: type[P2PShareError]) -> None:
    if len(spec.args) > MAX_ARGS:
        raise fail(f"a job has at most {MAX_ARGS} arguments, not {len(spec.args)}")
    for arg in spec.args:
        _check_arg(arg, fail)
    if len(spec.inputs) > MAX_INPUTS:
        raise fail(f"a job has at most {MAX_INPUTS} input files, not {len(spec.inputs)}")
    # The inputs become files in one directory on the worker's disk: the share rules
    # (relative, no '..', no case or normalisation collisions) apply unchanged.
    check_tree(entry.path for entry in spec.inputs)
    encoded = [entry.path.encode("utf-8") for entry in spec.inputs]
    if any(a >= b for a, b in itertools.pairwise(encoded)):
        raise fail("job inputs must be sorted by path bytes")


def _check_arg(arg: str, fail: type[P2PShareError]) -> None:
    if type(arg) is not str:
        raise fail("job arguments are strings")
    try:
        size = len(arg.encode("utf-8"))
    except UnicodeEncodeError:
        raise fail("a job argument is not valid UTF-8") from None
    if size > MAX_ARG_BYTES:
        raise fail(f"a job argument has {size} bytes, more than {MAX_ARG_BYTES}")
    # argv reaches the guest as NUL-terminated strings: a NUL would cut the argument.
    if "\0" in arg:
        raise fail("a job argument cannot contain a NUL character")


def encode_job_spec(spec: JobSpec) -> bytes:
    """The canonical bytes of a spec: a map with the keys of ``_SPEC_KEYS`` in that order."""
    return pack(
        {
            "v": JOB_VERSION,
            "module": spec.module.to_bytes(),
            "args": list(spec.args),
            "stdin": None if spec.stdin is None else spec.stdin.to_bytes(),
            "inputs": [[entry.path, entry.cid.to_bytes()] for entry in spec.inputs],
            "limits": encode_limits(spec.limits),
        }
    )


def job_id(spec: JobSpec) -> bytes:
    """The job ID: BLAKE3 of the spec's canonical bytes."""
    return blake3.blake3(encode_job_spec(spec)).digest()


def decode_job_spec(data: bytes) -> JobSpec:
    """Decode untrusted spec bytes; raise RemoteProtocolError unless valid and canonical."""
    return JOB_SPEC.decode(data)


def parse_cid(value: object, what: str) -> ContentId:
    return ContentId.from_bytes(expect_bytes(value, what=what, max_len=CID_BYTES))


def _parse_spec(value: object) -> JobSpec:
    if isinstance(value, dict) and "v" in value and value["v"] != JOB_VERSION:
        raise RemoteProtocolError(
            f"job spec version {value['v']!r} is not supported "
            f"(this p2pshare reads version {JOB_VERSION})"
        )
    version, module, args, stdin, inputs, limits = expect_map(value, _SPEC_KEYS, what="job spec")
    expect_int(version, what="job spec version", low=JOB_VERSION, high=JOB_VERSION)
    spec = JobSpec(
        module=parse_cid(module, "module content ID"),
        args=tuple(
            expect_str(arg, what="job argument")
            for arg in expect_list(args, what="job arguments", max_len=MAX_ARGS)
        ),
        stdin=None if stdin is None else parse_cid(stdin, "stdin content ID"),
        inputs=tuple(
            _parse_input(entry)
            for entry in expect_list(inputs, what="job inputs", max_len=MAX_INPUTS)
        ),
        limits=parse_limits(limits, what="job limits"),
    )
    check_spec(spec, RemoteProtocolError)
    return spec


def _parse_input(value: object) -> InputFile:
    path, cid = expect_list(value, what="job input", length=2, max_len=2)
    return InputFile(expect_str(path, what="input path"), parse_cid(cid, "input content ID"))


JOB_SPEC: Final = Codec(
    what="job spec",
    encode=encode_job_spec,
    parse=_parse_spec,
    limits=Limits(
        max_size=MAX_SPEC_SIZE,
        max_str_len=max(MAX_PATH_BYTES, MAX_ARG_BYTES),
        max_bin_len=CID_BYTES,
        max_array_len=max(MAX_ARGS, MAX_INPUTS),
        max_map_len=len(_SPEC_KEYS),
    ),
)
