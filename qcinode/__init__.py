"""qcinode: an emulated Quantum Communication Infrastructure node."""

__version__ = "0.1.0"
