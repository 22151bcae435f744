"""Trusted-node key relay (pure; no I/O).

* :mod:`~qcinode.core.relay.hop` — one hop's cryptography: the
  authenticated header, one-time-pad sealing and opening, XOR shares and
  their collector at the destination.
"""
