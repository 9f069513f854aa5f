"""Why a download could not finish, in words the user can act on.

The downloader notes, for each provider, the last reason it could not help (one of
the phrases below, never text a peer sent: that could be anything); the error a
download ends with names those reasons.  A provider that lied (a forged manifest, a
chunk that fails verification) is told apart from one that simply does not have the
content: only the first suggests an attack.
"""

from __future__ import annotations

from p2pshare.errors import RemoteError, UserError

# Each phrase completes "the only provider, PEER, ..." and "PEER ...".
UNSHARED = "no longer shares it"
STALE = "no longer serves it (its shared copy changed on disk since it was shared)"
NOT_YET = "does not hold the missing chunks yet"
HOLDS_NONE = "holds none of the missing chunks"
FORGED = "sent a forged manifest or hash page and was banned"
BAD_CHUNK = "sent chunks that failed verification and was banned"
UNREACHABLE = "could not be reached"
GONE = "stopped answering"
NO_MANIFEST = "did not send the manifest"
# Providers named in one sentence; the rest are counted.
MAX_NAMED = 3


class ContentTooLargeError(RemoteError):
    """The content's manifest announces more bytes than the caller will take.

    Raised as soon as the manifest arrives, before any chunk is fetched; callers with
    their own vocabulary (a compute worker's ``oversize`` refusal) translate it.
    """


class NoProvidersError(UserError):
    """Nobody could be found, or reached, who holds the content."""


def _who(reasons: dict[str, str]) -> str:
    if len(reasons) == 1:
        ((peer, why),) = reasons.items()
        return f"the only provider, {peer}, {why}"
    named = [f"{peer} {why}" for peer, why in list(reasons.items())[:MAX_NAMED]]
    if len(reasons) > MAX_NAMED:
        named.append(f"{len(reasons) - MAX_NAMED} more could not send them either")
    return "no provider left could send them: " + "; ".join(named)


def stalled(cid: object, missing: int, reasons: dict[str, str]) -> NoProvidersError:
    """The download ran, and no provider is left that could send a missing chunk."""
    who = _who(reasons) if reasons else "no provider left could send them"
    return NoProvidersError(
        f"download of {cid} stopped with {missing} chunks missing: {who}; run the same get "
        "again to resume"
    )


def no_manifest(cid: object, reasons: dict[str, str]) -> NoProvidersError:
    """Every provider found was asked for the manifest, and none sent a valid one."""
    if reasons and all(why == UNSHARED for why in reasons.values()):
        count = len(reasons)
        return NoProvidersError(
            f"the {count} provider(s) found for {cid} no longer share it; it can be fetched "
            "again once a node shares it"
        )
    if not reasons:
        return NoProvidersError(f"no provider sent the manifest of {cid}; try again later")
    return NoProvidersError(f"no provider sent a valid manifest for {cid}: {_who(reasons)}")
