"""qcinode.testing."""
