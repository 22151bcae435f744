"""Generated protobuf and gRPC code. Do not edit: run ``python -m qcinode.transport.generate``."""
