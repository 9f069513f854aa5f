"""Errors of the compute layer, placed in p2pshare's one hierarchy (p2pshare.errors)."""

from __future__ import annotations

from p2pshare.errors import P2PShareError, RemoteError, UserError


class InvalidModuleError(RemoteError):
    """The module is not a WebAssembly core module that the sandbox can run."""


class ForbiddenImportError(RemoteError):
    """The module imports something outside the allow-list; ``imports`` names each one."""

    def __init__(self, message: str, imports: tuple[str, ...]) -> None:
        super().__init__(message)
        self.imports = imports


class SandboxError(P2PShareError):
    """The sandbox itself failed (the host, not the job): a bug or an exhausted resource."""


class WorkerCrashedError(P2PShareError):
    """A worker process died during a job without being told to; the pool replaced it."""


class WorkerStartError(UserError):
    """Compute worker processes cannot be started (wasmtime missing, or no resources)."""


class JobFailedError(UserError):
    """Every worker asked refused or failed, or too few could be found."""
