"""Sans-IO core: everything that turns bytes into values and back.

Nothing in this package touches sockets, files, trio or the clock.  Decoders take
bytes from untrusted sources and return a value or raise
:class:`p2pshare.errors.RemoteProtocolError` (or a subclass); they never raise
anything else and never allocate more than their declared limits.
"""
