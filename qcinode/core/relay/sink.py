"""An incoming relay hop, at a transit node or at the destination (pure; no I/O).

Theory of operation (rules of :func:`receive_hop`), in this order:
    1. **Validate the header** (:func:`~.hop.validate_header`): the hop comes
       from the neighbour before us on the path and ends here; the named pad
       is exactly as long as the hop needs. Else ``BAD_HEADER``.
    2. **Check the tag against the named ranges** without using them
       (:meth:`~qcinode.core.pool.LinkKeyPool.peek_ranges` from the *sender's*
       half, then :func:`~.hop.open_hop`). A range already used is a replayed
       hop (``DUPLICATE``), a block we do not hold is ``UNKNOWN_PAD``, a bad
       tag ``AUTHENTICATION_FAILED``. A refused hop consumes nothing here, so
       a forged hop cannot make this end's ledger differ from the sender's.
    3. **Consume exactly those ranges**, and save the incoming link's ledger
       (:class:`~.messages.SaveLink`). When the next hop's pad must be saved
       too (step 4), both ledgers go in one transaction, one fsync per hop,
       and nothing continues before the save is answered. When it needs no
       save of its own (taken from the link's saved pad stock,
       :mod:`~qcinode.core.relay.context`) and at the destination, the save
       runs *beside* what follows — the next hop sent, the key stored — and
       the hop is answered once both ended. That is safe because the bytes
       are the sender's half: the sender had them on disk as used before it
       sent them, so it never names them again, and we never initiate from
       its half; a crash before our save leaves them free on our disk and
       unused forever (a replay of the hop after a restart carries the same
       share under the same key ID, which the destination answers as a
       duplicate). A failed save refuses the hop (``STORAGE_FAILED``): the
       bytes stay used in memory (the sender used them too), the disk says
       free, and bytes no message depended on are harmless to reuse after a
       restart.
    4. **Not the destination: forward** — the next hop's pad as the source
       does (:func:`~.context.prepare_share`: refused before any pad is spent
       if the next link is missing, cut or short; committed for good once
       reserved), saved with step 3 (unless it came from the saved stock),
       then sent (:func:`~.context.send_prepared`); the hop is answered with the next
       node's answer, so an answer means the rest of the path is done. A
       failed save refuses the hop and sends nothing: the next hop's pad
       stays used in memory, never reused.
    5. **The destination: collect** the share (:class:`~.hop.ShareCollector`,
       keyed by key ID *and* relay ID, so shares of a retried attempt never
       mix with a failed one's); a share that does not complete the key is
       answered delivered; the one that does triggers
       :class:`~.messages.StoreKey`, and the hop is answered with the store's
       result. **Idempotent by key ID:** the store reports a key ID it holds
       with the same key as a duplicate, which is answered delivered — a
       retried relay whose first attempt did arrive is delivered once.

A hop may be answered much later than it arrived (a slow next hop, a key
kept for a later contact): nothing here assumes an answer comes within one
call; each step waits for its result event.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any

from qcinode.core.relay.context import LinkEnd, RelayContext, prepare_share, send_prepared, storage_refusal
from qcinode.core.relay.hop import ShareCollector, next_header, open_hop, pad_bytes_needed, validate_header
from qcinode.core.relay.messages import (
    AnswerHop,
    ForwardFailed,
    HopAnswered,
    HopArrived,
    HopRefused,
    KeyArrived,
    KeyStored,
    LinkSaved,
    Refusal,
    RefusalReason,
    RelayAction,
    SaveLink,
    SealedHop,
    StoreKey,
)
from qcinode.errors import (
    AuthenticationFailed,
    DuplicateShare,
    KeyAlreadyUsed,
    KeyNotFound,
    KeyStoreError,
    LocalProtocolError,
    RemoteProtocolError,
)

__all__ = ["receive_hop"]


def receive_hop(ctx: RelayContext, collector: ShareCollector, event: HopArrived) -> list[RelayAction]:
    """Handles one incoming hop (see the module docstring); the answer is an :class:`AnswerHop` for its token."""
    owner: Hashable = ("hop", event.token)
    hop, previous = event.hop, event.previous_node
    header = hop.header
    link = ctx.neighbours.link_to(previous)
    refusal: Refusal | None = None
    try:
        if link is None:
            raise RemoteProtocolError(f"{previous!r} is not a neighbour of {ctx.node}")
        validate_header(header, ctx.node, previous)
        if sum(r.length_bytes for r in hop.pad) != pad_bytes_needed(header.key_bytes):
            raise RemoteProtocolError(f"the named pad is not {pad_bytes_needed(header.key_bytes)} bytes long")
        initiator = link.pool.role.peer
        share = open_hop(header, hop.ciphertext, hop.tag, link.pool.peek_ranges(hop.pad, initiator=initiator))
        link.pool.consume_ranges(hop.pad, initiator=initiator)  # only once the tag checked
    except AuthenticationFailed as exc:
        refusal = Refusal(RefusalReason.AUTHENTICATION_FAILED, str(exc))
    except KeyAlreadyUsed as exc:
        refusal = Refusal(RefusalReason.DUPLICATE, f"pad already used (a replayed hop): {exc}")
    except KeyNotFound as exc:
        refusal = Refusal(RefusalReason.UNKNOWN_PAD, str(exc))
    except (RemoteProtocolError, KeyStoreError) as exc:  # KeyStoreError: bytes of a half already used up
        refusal = Refusal(RefusalReason.BAD_HEADER, str(exc))
    except LocalProtocolError as exc:  # a pad of the wrong shape cannot be used here
        refusal = Refusal(RefusalReason.BAD_HEADER, str(exc))
    if refusal is not None:
        return _refuse(ctx, event, refusal)
    assert link is not None

    # A transit hop's next pad is reserved and sealed now, so that both links'
    # ledgers go to disk in one transaction (one fsync) before the hop goes on.
    prepared = None if header.destination == ctx.node else prepare_share(ctx, next_header(header), share)
    if prepared is None or (isinstance(prepared, tuple) and not prepared[2]):
        return _beside_save(ctx, collector, event, link.link_id, share, prepared)
    also = (prepared[0].link_id,) if isinstance(prepared, tuple) and prepared[0].link_id != link.link_id else ()

    def saved(result: LinkSaved | HopAnswered | KeyStored) -> list[RelayAction]:
        assert isinstance(result, LinkSaved)
        if result.failure is not None:
            return _refuse(ctx, event, storage_refusal(ctx, result.failure))
        ctx.stats.received += 1
        if isinstance(prepared, Refusal):
            return _forwarded(ctx, event, prepared)
        return send_prepared(ctx, owner, prepared[0], prepared[1], lambda outcome: _forwarded(ctx, event, outcome))

    return [SaveLink(ctx.wait_save(owner, saved, (link.link_id, *also)), link.link_id, also)]


def _beside_save(
    ctx: RelayContext,
    collector: ShareCollector,
    event: HopArrived,
    link_id: str,
    share: bytes,
    prepared: tuple[LinkEnd, SealedHop, bool] | None,
) -> list[RelayAction]:
    """Step 3's save beside what follows it: the next hop sent (its pad from the saved stock) or the share collected.

    The hop is answered once both ended (the module docstring, step 3).
    """
    owner: Hashable = ("hop", event.token)
    outcome: dict[str, Any] = {}

    def join() -> list[RelayAction]:
        if "saved" not in outcome or "then" not in outcome:
            return []
        then: list[RelayAction] = outcome["then"]
        if outcome["saved"] is None:
            ctx.stats.received += 1
            return then
        answer = then[-1]
        if isinstance(answer, AnswerHop) and answer.refusal is not None:
            return then  # refused on its own account already
        return _refuse(ctx, event, storage_refusal(ctx, outcome["saved"]))

    def saved(result: LinkSaved | HopAnswered | KeyStored) -> list[RelayAction]:
        assert isinstance(result, LinkSaved)
        outcome["saved"] = result.failure
        return join()

    def then(actions: list[RelayAction]) -> list[RelayAction]:
        outcome["then"] = actions
        return join()

    actions: list[RelayAction] = [SaveLink(ctx.wait_save(owner, saved, (link_id,)), link_id)]
    if prepared is None:
        return actions + _arrive(ctx, collector, event, share, then)
    return actions + send_prepared(ctx, owner, prepared[0], prepared[1], lambda refusal: then(_forwarded(ctx, event, refusal)))


def _forwarded(ctx: RelayContext, event: HopArrived, outcome: Refusal | None) -> list[RelayAction]:
    if outcome is None:
        ctx.stats.forwarded += 1
        return [AnswerHop(event.token)]
    ctx.stats.failed += 1
    ctx.stats.failures_by_reason[outcome.reason] += 1
    return [ForwardFailed(event.hop.header, outcome), AnswerHop(event.token, outcome)]


def _arrive(
    ctx: RelayContext, collector: ShareCollector, event: HopArrived, share: bytes, then: Callable[[list[RelayAction]], list[RelayAction]]
) -> list[RelayAction]:
    header = event.hop.header
    # Shares are collected per attempt: a retried attempt (new relay_id, same
    # key_id) never mixes with shares of a failed one.
    attempt = dataclasses.replace(header, key_id=f"{header.key_id}#{header.relay_id}")
    try:
        key = collector.add(attempt, share, event.now)
    except DuplicateShare as exc:
        return then(_refuse(ctx, event, Refusal(RefusalReason.DUPLICATE, str(exc))))
    except RemoteProtocolError as exc:
        return then(_refuse(ctx, event, Refusal(RefusalReason.BAD_HEADER, str(exc))))
    if key is None:
        return then([AnswerHop(event.token)])  # a share; the key completes with the last one

    def stored(result: LinkSaved | HopAnswered | KeyStored) -> list[RelayAction]:
        assert isinstance(result, KeyStored)
        if result.refusal is not None:
            return then(_refuse(ctx, event, result.refusal))
        hops = len(header.path) - 1
        return then([KeyArrived(header.key_id, header.source, hops, duplicate=result.duplicate), AnswerHop(event.token)])

    ref = ctx.wait(("hop", event.token), KeyStored, stored)
    return [StoreKey(ref, header.key_id, header.master_sae, header.slave_saes, key)]


def _refuse(ctx: RelayContext, event: HopArrived, refusal: Refusal) -> list[RelayAction]:
    ctx.stats.failed += 1
    ctx.stats.failures_by_reason[refusal.reason] += 1
    return [HopRefused(event.hop.header, event.previous_node, refusal), AnswerHop(event.token, refusal)]
