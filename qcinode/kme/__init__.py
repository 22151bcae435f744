"""qcinode.kme."""
