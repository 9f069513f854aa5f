"""Error types specific to the content model, all placed in p2pshare's one hierarchy.

Text that a person pastes (tickets, content IDs) fails with a sentence the CLI can
print as is, so those errors are also :class:`~p2pshare.errors.UserError`: the CLI
parses a ticket itself and shows ``str(err)``, while the daemon, receiving the same
text from a control client, still sees a :class:`~p2pshare.errors.RemoteProtocolError`.
"""

from __future__ import annotations

from p2pshare.errors import LocalProtocolError, RemoteProtocolError, UserError


class UnsafePathError(RemoteProtocolError):
    """A path in a share would not materialise safely and identically on every receiver.

    Raised for manifests from peers and, by the same rules, for a local tree about
    to be shared; the share scanner turns the latter into a message naming the file.
    """


class MalformedReferenceError(RemoteProtocolError, UserError):
    """A ticket or content ID string is not well formed; ``str()`` says what to do."""


class ManifestTooLargeError(LocalProtocolError, UserError):
    """A share cannot be described within the manifest limits (too many files or chunks)."""
