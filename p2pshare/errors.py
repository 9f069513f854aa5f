"""The one exception hierarchy of p2pshare.

Who is at fault decides the type:

* ``UserError`` -- something the person at the keyboard can fix (a bad path, a
  malformed config, no daemon running).  ``str(err)`` is the sentence the CLI
  prints, and ``exit_code`` is the process exit status.
* ``RemoteError`` -- a peer or a control client sent us something wrong.  The
  daemon answers or drops that peer and keeps serving everyone else.
* ``LocalProtocolError`` -- we were asked to build something the protocol does
  not allow; reaching it from the wire is impossible, from the API it is a bug
  of the caller.

Any other exception escaping p2pshare code is a bug in p2pshare.
"""

from __future__ import annotations

from typing import ClassVar


class ExitCode:
    """Process exit statuses of the ``p2pshare`` command (see docs/cli.md)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    DAEMON_NOT_RUNNING = 3
    CONFIG = 4
    # compute run: the replicas agreed, but the job did not end ok (trap, limit, exit n).
    JOB_FAILED = 5
    # compute run: the replicas' receipts disagree, or too few finished to compare.
    DISAGREEMENT = 6


class P2PShareError(Exception):
    """Base class of every error p2pshare raises deliberately."""

    exit_code: ClassVar[int] = ExitCode.FAILED


class UserError(P2PShareError):
    """An error the user can act on; the message is the sentence the CLI prints."""


class UsageError(UserError):
    """A command-line argument is malformed (a CID, ticket or multiaddr that cannot parse)."""

    exit_code = ExitCode.USAGE


class ConfigError(UserError):
    """The node's home or its config.toml is missing, malformed or unusable."""

    exit_code = ExitCode.CONFIG


# What every command that needs peers says when the node has none (docs/cli.md).
JOIN_FIRST = (
    "this node knows no peers; join the network first with: "
    "p2pshare connect /ip4/ADDR/tcp/PORT/p2p/PEER_ID, or list a peer in [network] bootstrap "
    "in config.toml"
)


class NoPeersError(UserError):
    """A command needs the network and this node knows no peer to ask."""

    def __init__(self) -> None:
        super().__init__(JOIN_FIRST)


class DaemonNotRunningError(UserError):
    """No daemon answers on the control socket of this home."""

    exit_code = ExitCode.DAEMON_NOT_RUNNING


class DaemonAlreadyRunningError(UserError):
    """Another daemon already owns this home."""


class ControlCallError(UserError):
    """The daemon answered a control request with an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RemoteError(P2PShareError):
    """Base of errors caused by the other side of a connection."""


class RemoteProtocolError(RemoteError):
    """Bytes from a peer or a control client do not follow the protocol."""


class IntegrityError(RemoteError):
    """Data does not match the hash or signature that names it."""


class WouldBlockError(P2PShareError):
    """A call asked not to wait would have had to (data not in the page cache, a lock
    held, work too long for the event loop): make it again where it may block."""


class LocalProtocolError(P2PShareError):
    """We were asked to build a message or object the protocol forbids."""


def leaf_errors(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order; ``[exc]`` for a plain one.

    trio's nurseries wrap every error in an ExceptionGroup; code that reports an
    error to the user looks through the wrapping for the sentence to print.
    """
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaf_errors(inner)]
    return [exc]
