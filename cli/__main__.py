"""``python -m p2pshare_cli`` runs the same command as ``p2pshare``."""

from .main import main

main()
