"""qcinode.cluster."""
