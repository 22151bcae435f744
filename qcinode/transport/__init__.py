"""qcinode.transport."""
