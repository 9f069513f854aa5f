"""A download's setup: from providers to a verified manifest and an open partial.

Each step returns what the next needs, whole: :func:`fetch_manifest` a signed
manifest and every hash page, :func:`open_partial` a :class:`Prepared` with the
output opened and the chunks it already holds, so the transfer that follows has
nothing optional left to check.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from p2pshare.errors import IntegrityError, RemoteError
from p2pshare.proto.bitfield import Bitfield
from p2pshare.proto.manifest import verify_page
from p2pshare.proto.signed_manifest import SignedManifest, decode_signed_manifest
from p2pshare.proto.transfer import MAX_CHUNKS_PER_REQUEST, UnknownContentError
from p2pshare.store.lifecycle import DownloadState
from p2pshare.transfer import failures
from p2pshare.transfer.destination import check_space
from p2pshare.transfer.failures import NoProvidersError
from p2pshare.transfer.output import PartialOutput
from p2pshare.transfer.picker import Picker
from p2pshare.transfer.records import progress_row

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from p2pshare.proto.cid import ContentId
    from p2pshare.proto.pages import HashPage
    from p2pshare.transfer.links import Links
    from p2pshare.transfer.outpath import HomeFence
    from p2pshare.transfer.records import DownloadRecords

# A provider that sends nothing at all for this long is dropped.
REQUEST_TIMEOUT = 60.0
# Requests span about 4 MiB whatever the chunk size (within the protocol's 64 chunks):
# fewer round trips per byte, and small chunks do not mean many tiny requests.
REQUEST_BYTES = 4 << 20


@dataclass(frozen=True)
class Prepared:
    """Everything a transfer starts from."""

    signed: SignedManifest
    pages: dict[int, HashPage]
    # Opened; this download's (a caller removes it if the download fails).
    output: PartialOutput
    # Chunks already on disk and verified (a resume), or none.
    verified: Bitfield
    picker: Picker


async def fetch_manifest(links: Links) -> tuple[SignedManifest, dict[int, HashPage]]:
    """Dial providers until one sends the manifest and every hash page."""
    await _connect(links)
    signed = await _manifest(links)
    return signed, await _pages(links, signed)


async def _connect(links: Links) -> None:
    """Dial the hinted providers (a ticket's) at once; look the others up.

    When a hinted provider answers, the lookup is left to the transfer, which runs
    its first round at once, in the background: a ticket `get` starts within a round
    trip even when the DHT takes seconds (unless no hinted provider sends the
    manifest: see _manifest).  Otherwise the lookup runs first.
    """
    hints = links.swarm.hints
    if hints:
        links.swarm.sources.update(hints)
        await links.dial(list(hints.values()))
        if len(links):
            return
    await _look_up_and_dial(links)


async def _look_up_and_dial(links: Links) -> None:
    """Look providers up, then dial them and the hinted ones; called when no link
    is left (none made yet, or none sent the manifest)."""
    cid, swarm = links.cid, links.swarm
    # The first provider found starts the download; the transfer looks for more.
    sources = swarm.on_first_lookup(await links.lookup(want=1))
    if not sources and swarm.why:
        raise failures.no_manifest(cid, swarm.why)
    if not sources:
        raise NoProvidersError(
            f"no providers found for {cid}; check that a provider is running "
            "and reachable and that the content ID has no typo (content IDs carry no "
            "checksum), or use its ticket, which does"
        )
    await links.dial(sources)
    if not len(links):
        raise NoProvidersError(
            f"none of the {len(sources)} providers of {cid} could be reached; try again later"
        )


async def _manifest(links: Links) -> SignedManifest:
    for peer, link in list(links.items()):
        links.swarm.no_manifest.add(peer)
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                data = await link.manifest(links.cid)
            return decode_signed_manifest(data, links.cid)
        except IntegrityError as exc:
            links.drop(peer, f"sent a forged manifest: {exc}", failures.FORGED, ban=True)
        except UnknownContentError as exc:
            links.drop(peer, f"does not hold it: {exc}", failures.UNSHARED, refused=True)
        except (RemoteError, trio.TooSlowError) as exc:
            links.drop(peer, f"no manifest: {exc}", failures.NO_MANIFEST)
    if not links.swarm.looked_up:
        # Only hinted providers were asked, and none sent it: look for others.
        await _look_up_and_dial(links)
        return await _manifest(links)
    raise failures.no_manifest(links.cid, links.swarm.why)


async def _pages(links: Links, signed: SignedManifest) -> dict[int, HashPage]:
    manifest = signed.manifest
    pages: dict[int, HashPage] = {}
    for page_index in range(len(manifest.page_hashes)):
        while page_index not in pages:
            if not len(links):
                raise NoProvidersError(f"no provider sent hash page {page_index}")
            peer, link = next(iter(links.items()))
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    data = await link.page(links.cid, page_index)
                pages[page_index] = verify_page(manifest, page_index, data)
            except IntegrityError as exc:
                links.drop(peer, f"sent a forged hash page: {exc}", failures.FORGED, ban=True)
            except (RemoteError, trio.TooSlowError) as exc:
                links.drop(peer, f"no hash page: {exc}", failures.NO_MANIFEST)
    return pages


def open_partial(
    *,
    cid: ContentId,
    dest: Path,
    signed: SignedManifest,
    pages: dict[int, HashPage],
    catalog: DownloadRecords,
    umask: int,
    free_space: Callable[[Path], int],
    fence: HomeFence | None,
) -> Prepared:
    """Open the partial at ``dest``: the one a record says holds verified chunks of this
    very manifest (a resume), else a new one."""
    manifest = signed.manifest
    total = manifest.total_chunks
    row = catalog.download(str(cid))
    resume = (
        row is not None
        and row.state == DownloadState.RUNNING
        and row.destination == str(dest)
        and row.signed_manifest == signed.data
    )
    output = PartialOutput(dest, manifest, umask=umask, fence=fence)
    reuse = resume and output.reusable()
    verified = Bitfield(total)
    if reuse and row is not None:
        verified = Bitfield.from_bytes(row.verified, total)
    # Refused before anything is written; chunks verified before are on disk already.
    have = sum(manifest.locate_chunk(i).length for i in verified.iter_set())
    check_space(cid, dest, manifest.total_size - have, free_space)
    if resume and not reuse:
        # The record must never describe a partial made after it: reset it first.
        catalog.save_download(progress_row(cid, dest, signed, verified, DownloadState.RUNNING))
    output.open(resume=reuse)
    batch = max(1, min(MAX_CHUNKS_PER_REQUEST, REQUEST_BYTES // manifest.chunk_size))
    picker = Picker(verified.copy(), batch=batch, start=first_chunk(total))
    return Prepared(signed, pages, output, verified, picker)


def first_chunk(total: int) -> int:
    """Where a download starts asking (picker.py): its own draw, so downloaders of the
    same share start apart."""
    return secrets.randbelow(max(1, total))
