"""What a node holds: the SQLite catalog and the files behind it."""
