"""The ``p2pshare`` command line (installed as the import package ``p2pshare_cli``)."""
