"""The local control API: a trio server in the daemon, a blocking client for the CLI."""
