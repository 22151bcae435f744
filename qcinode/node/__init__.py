"""qcinode.node."""
