"""Trusted-node key relay (pure; no I/O).

* :mod:`~qcinode.core.relay.hop` — one hop's cryptography: the
  authenticated header, one-time-pad sealing and opening, XOR shares and
  their collector at the destination.
* :mod:`~qcinode.core.relay.messages` — the engine's events and actions,
  and the closed vocabulary of refusal reasons.
* :mod:`~qcinode.core.relay.engine` — :class:`~.engine.RelayEngine`, one
  node's relay decisions, ``receive(event) -> list[action]``, built from
  :mod:`~qcinode.core.relay.source` (a request at the master's node),
  :mod:`~qcinode.core.relay.sink` (an incoming hop at a transit node or the
  destination) and :mod:`~qcinode.core.relay.context` (what they share,
  and the steps of one outgoing hop).
* :mod:`~qcinode.core.relay.harness` — several nodes' engines run together
  in one process over real link pools, seeded, with injectable faults.

The node's driver (:mod:`qcinode.node.network`) performs the engine's
actions over gRPC and the node's stores; ``docs/relay.md`` walks one key
through all of it.
"""
