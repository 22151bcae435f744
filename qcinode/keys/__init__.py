"""qcinode.keys."""
