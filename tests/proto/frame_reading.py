"""Driving proto.dataframes.FrameReader as EncryptedStream does, without a socket.

The kernel is modelled as the bytes that have arrived: each read takes what fits the
reader's free space (and at most the size a test chose), then every frame that became
whole is decrypted before the next read, as the shell does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from p2pshare.proto.dataframes import FrameReader


def receive(
    reader: FrameReader,
    arrivals: Iterable[bytes],
    *,
    read_size: Callable[[], int] | None = None,
    plaintexts: list[bytes] | None = None,
) -> list[bytes]:
    """Plaintexts (the FIN as ``b""``) of ``arrivals``, each the bytes one wake-up finds.

    ``read_size`` gives the most each ``recv_into`` may take (a short read);
    by default a read takes all that fits.  Plaintexts are appended to
    ``plaintexts`` if given, so a caller keeps those delivered before an error.
    """
    plaintexts = [] if plaintexts is None else plaintexts
    for arrival in arrivals:
        pending = memoryview(arrival)
        while pending:
            free = reader.free_space()
            assert len(free) >= reader.wanted() >= 1, "room for what the reader waits for"
            size = min(len(free), len(pending), read_size() if read_size else len(pending))
            free[:size] = pending[:size]
            reader.advance(size)
            pending = pending[size:]
            while (ciphertext := reader.next_ciphertext()) is not None:
                assert ciphertext.obj is free.obj, "opened where it was received, not copied"
                plaintexts.append(reader.decrypt(ciphertext))
    return plaintexts
