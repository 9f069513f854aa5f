"""Daemon lifecycle: one trio nursery owns every service of a running node."""
