"""Link-state routing over key availability (pure; no I/O).

Theory of operation:
    * **Adverts.** Every node periodically *originates* a
      :class:`LinkStateAdvert`: one :class:`LinkAdvert` per QKD link it
      terminates, saying whether the link is up and how many key bytes the
      node can spend on it on its own initiative (its initiator half of the
      pool, :mod:`qcinode.core.pool`). The driver floods each advert to every
      neighbour over the classical network (docs/design.md, "Routing").
    * **Signed by their origin.** An advert carries an ECDSA signature
      made by its origin over :func:`advert_bytes` (origin, sequence and
      links in a prefix-free encoding; nothing else), and the origin's
      certificate. :meth:`LinkStateDatabase.receive` asks the injected
      :class:`AdvertVerifier` whether that certificate is a node certificate
      of the cluster naming the origin and whether the signature verifies,
      *before* it believes or floods anything: a neighbour can relay an
      advert but can neither forge one for another origin nor alter one.
      Without a verifier (in-process tests only) adverts are not checked.
    * **Flooding.** An advert is stored only if its sequence number is
      higher than the one held for that origin (or the origin is unknown),
      and ``receive`` answers ``True`` exactly then: the driver forwards it
      to every neighbour except the one it came from. The copy we hold
      answers ``False``, so flooding stops once every node holds the newest
      advert of every origin, whatever the topology (it has cycles). An
      advert claiming to come from the local node is never stored: only
      :meth:`LinkStateDatabase.originate` speaks for it.
    * **Refusals** raise :class:`AdvertRejected` with a reason from the
      closed vocabulary :class:`RejectReason` and change nothing but the
      per-reason count (:attr:`LinkStateDatabase.rejections`): a malformed
      advert, an unsigned one, a certificate that is not a cluster node's or
      does not name the origin, a bad signature, a sequence too far in the
      future or too far in the past, or one older than what we hold (a
      replay). The cheap checks (shape, sequence window, the copy we hold)
      come first, so a steady flood costs one signature check per new
      advert and junk costs none.
    * **Sequence numbers** strictly increase per origin, also across process
      restarts, without persisting anything: ``originate`` uses
      ``max(last + 1, int(now · 1000))`` with ``now`` the wall-clock time in
      seconds, so a restarted node's first advert beats every advert it sent
      before the restart (provided it originated fewer than 1000 adverts per
      second on average and its clock did not step back).
    * **Sequence window.** A received sequence must lie within
      ``max_skew_s`` (60 s) of our wall clock in the future and within
      ``max_age_s + max_skew_s`` in the past. Nothing can push a floor ahead
      of where the real origin will be a minute later (a huge sequence is
      refused, it never becomes the floor), and an old signed advert
      replayed after every copy aged out is refused too. If a genuine copy of
      our own advert comes back with a higher sequence than ours (our clock
      stepped back), the next ``originate`` jumps past it; the window keeps
      that jump within a minute of the clock, so the sequence space can
      never be exhausted by it.
    * **When to originate** (:class:`AdvertSchedule`): when the local links
      change, and otherwise as a slow refresh every ``refresh_s`` (10 s)
      shortened by a random jitter of up to a quarter, so that nodes started
      together do not flood together. :func:`links_change` ranks a change:
      ``links_changed`` (a link appears, goes, goes up or down),
      ``carry_changed`` (a link's key crosses :data:`CARRY_BYTES`, one 256-bit
      key's relay pad: it can carry a key now, or no longer), both of which change which
      paths exist, and ``available_changed`` (the key a link can carry moves
      by at least a quarter, from or to nothing included, or by one 256-bit
      key while either figure is below :data:`LOW_WATER_BYTES`), which only
      changes how much they carry. Changes are held back as OSPF throttles
      its LSAs: after a quiet spell the next change goes out once
      ``first_interval_s`` (1 s) has passed since the last advert, and each
      advert that follows within reach doubles the hold, up to
      ``min_interval_s`` (1 s up to 10 nodes, a tenth of the refresh beyond);
      a quiet spell of ``min_interval_s`` plus the hold starts it over. An
      origin whose links keep changing thus sends at most four adverts more
      per quiet spell than one per ``min_interval_s``.
    * **Capacity alone waits** ``capacity_interval_s`` after the previous
      advert: the minimum interval times ``N / 10``, capped at the refresh
      (1 s up to 10 nodes, as any change; 13 s at 36 nodes; from 100 nodes
      on the refresh itself carries it). Why: pools fill from nothing for
      minutes after a start, below :data:`LOW_WATER_BYTES`, where every key
      is a change, so every node re-originated at every minimum interval and
      each advert floods every link of the network; yet a stale capacity
      figure costs little (the relay source debits its own copy between
      adverts, :meth:`LinkStateDatabase.debit`; a path chosen on a stale
      figure fails its hop with insufficient key and the source retries or
      refuses), whereas a link that can first (or no longer) carry a key
      changes which paths exist and goes out after the hold.
    * **Start-up is no quiet spell.** A starting node's first advert waits
      until every link is up, at most ``first_wait_s`` (the minimum
      interval: 1 s up to 10 nodes, 10 s with 100) after its start, so it
      tells the network about the links that come up with it in one flood
      instead of a flood saying "all down" and one per link after it. After
      the first advert its links, still coming up one by one, are
      advertised a ``min_interval_s`` apart (a hundred nodes starting
      together flooded every link coming up). Measured at 100 nodes on two
      cores before these two rules, until every node knew every node and
      every link both ways: 100 first adverts, 138 link changes, 46 capacity
      changes and 120 refreshes, each flooding some 190 messages.
    * **Scale.** Flooding sends every advert over every link of the network,
      so a node handles about ``2 L / refresh_s`` advert messages a second
      (``L`` links in all): in a mesh, ``L`` grows with the number of nodes
      ``N``, so :func:`advert_timing` stretches the refresh to ``N`` seconds
      (at least 10 s) and the minimum interval to a tenth of that, which
      keeps each node's share constant as the network grows (each message
      costs a gRPC call and, if new, a signature check; the driver sends
      what queues for one neighbour while a call to it is in flight in one
      call, :mod:`qcinode.node.network`); capacity-only adverts, every
      ``capacity_interval_s``, shrink that share as the network grows.
      Measured at 100 nodes with both rules: every node knew every node and
      every link both ways after the 100 first adverts and 3 link changes,
      86 s after the launch (not within 200 s before); with the batched
      calls 57 to 62 s, about 11 s after every node was healthy. Between
      adverts a relay source's own debits (:meth:`LinkStateDatabase.debit`)
      keep its copy honest about what it spent.
    * **Database exchange** (:class:`DatabaseSync`), after OSPF's: a
      neighbour that was down while an advert was flooded misses it, which
      only the origin's next refresh (``N`` seconds in an ``N``-node
      network) would repair, and a node that restarts has lost everything.
      So a node *owes* a neighbour an exchange when a flood did not reach
      it or the neighbour asked, and when it starts it *asks* one neighbour (the
      next one if the ask does not get through) for its database. An
      exchange sends every advert we hold, as its origin signed it
      (:meth:`LinkStateDatabase.signed_adverts`; our debits never leave the
      node), that the neighbour is not known to hold (it sent it to us, or
      we to it); an ask makes the receiver forget what it knew the asker
      held, so the asker gets everything. The receiver treats each advert as
      a flooded one: new ones are stored and flooded on, copies it holds
      cost nothing. A failed exchange is retried after 1 s, doubling up to
      16 s (or the refresh period if shorter); an ask cuts the wait short
      (at most once every 5 s per neighbour: one that asks again and again
      gets the database no more often, asks meanwhile join the one that
      waits), and so does any advert from a neighbour that was unreachable (it is
      back), but not from one whose calls merely timed out: on a saturated
      machine an exchange every tick would feed the load that made it slow.
      One ask
      per start, and exchanges of only what is missing, keep a loaded
      network from feeding its own load: a timed-out flood costs the
      adverts the neighbour lacks, not the whole database. Every signature
      and sequence rule above holds for exchanged adverts as for flooded
      ones.
    * **Ageing.** An advert not refreshed within ``max_age_s`` seconds
      (three and a half refresh periods, 35 s for up to 10 nodes, so two
      lost refreshes do not drop a live origin) is dropped by :meth:`LinkStateDatabase.expire`:
      its origin is taken to be dead. A dead node's links are avoided long
      before that: its neighbours' sessions to it break and their next
      advert, sent at once on that change, reports the links down. The highest sequence of a dropped origin is kept
      as a tombstone for another ``max_age_s``, so a stale copy still being
      flooded cannot resurrect it; after that every node has aged the copy
      out and the sequence window refuses it anyway. A restarted origin
      beats the tombstone through its clock-based sequence, and since a
      tombstone is a sequence we accepted inside the window, the real origin
      passes it within ``max_skew_s`` at worst. Our own advert never ages out.
    * **Edges are directed and need both ends.** A link ``u — v`` is usable
      from ``u`` to ``v`` only if *both* ``u``'s and ``v``'s current adverts
      list it (same link ID, naming each other) as up, and ``u`` advertises at
      least the bytes needed: the sender of a relay hop pays the one-time pad
      from its own half of the link pool, so ``v``'s half says nothing about
      the hop ``u → v``. A link that only one end reports, or that one end
      reports down, is not used: the other end may have lost it.
    * **Paths.** :meth:`LinkStateDatabase.paths` lists up to ``limit`` loop-free
      paths ordered by hop count, ties broken by the larger bottleneck (the
      smallest available byte count along the path), then by node names for
      determinism. It is Yen's k-shortest simple paths (J. Y. Yen, "Finding
      the k shortest loopless paths in a network", Management Science 17
      (1971)) over a widest-shortest-path search; the lexicographic metric
      (hops, −bottleneck) is isotone, so each spur search is optimal.
    * **Disjoint paths.** :meth:`LinkStateDatabase.disjoint_paths` finds up
      to ``count`` node-disjoint paths with the fewest *total* hops by
      min-cost flow (successive shortest paths with node splitting, the
      general form of Suurballe's algorithm), not by greedy removal, which
      can block itself in "trap" topologies. Used with XOR secret sharing
      (:mod:`qcinode.core.relay.hop`) no single trusted node sees every share.
    * **Validation.** A received advert with a wrong type, an empty name, a
      negative or oversized number, a link to the origin itself or two links
      with the same ID raises :class:`RemoteProtocolError` and changes
      nothing; the same mistakes in our own links raise
      :class:`LocalProtocolError`.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from qcinode.errors import LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_AGE_S",
    "DEFAULT_MIN_INTERVAL_S",
    "ORIGINATION_REASONS",
    "DEFAULT_REFRESH_S",
    "LOW_WATER_BYTES",
    "CARRY_BYTES",
    "SMALL_NETWORK_NODES",
    "LOW_WATER_STEP_BYTES",
    "AdvertSchedule",
    "AdvertTiming",
    "DEFAULT_FIRST_INTERVAL_S",
    "DatabaseSync",
    "advert_timing",
    "DEFAULT_MAX_SKEW_S",
    "MAX_SEQUENCE",
    "AdvertRejected",
    "AdvertSigner",
    "AdvertVerifier",
    "LinkAdvert",
    "LinkStateAdvert",
    "LinkStateDatabase",
    "RejectReason",
    "advert_bytes",
    "links_change",
]

#: Why an advert is originated (AdvertSchedule.due): a closed vocabulary (metric label).
ORIGINATION_REASONS = ("first", "links_changed", "carry_changed", "available_changed", "refresh")

#: Default advert lifetime without a refresh: three and a half default refresh periods.
DEFAULT_MAX_AGE_S = 35.0

#: Default longest time between two adverts of an origin whose links did not change.
DEFAULT_REFRESH_S = 10.0

#: Default shortest time between two adverts of one origin.
DEFAULT_MIN_INTERVAL_S = 1.0

#: Default hold after a quiet spell: a change is advertised this soon, the hold then backs off to the minimum interval.
DEFAULT_FIRST_INTERVAL_S = 1.0

#: Below this many bytes a link's pool is scarce: any move of LOW_WATER_STEP_BYTES is a change.
#: (A quarter of a nearly empty pool is a few keys; a relay source whose copy lags
#: that far refuses requests the path could carry, so scarce pools are advertised
#: as they move, still no more often than the minimum interval.)
LOW_WATER_BYTES = 16384

#: The smallest move of a scarce pool worth an advert: what one 256-bit key's relay hop spends, its
#: 32-byte one-time MAC key and 32-byte pad (:func:`qcinode.core.relay.hop.pad_bytes_needed`, as for
#: CARRY_BYTES). A step of 32 bytes advertised half-keys: twice the adverts for no path that changed.
LOW_WATER_STEP_BYTES = 64

#: A link "can carry a key" from this many bytes on: one relay hop of a 256-bit key spends a 32-byte
#: one-time MAC key and a 32-byte pad (:func:`qcinode.core.relay.hop.pad_bytes_needed`), what a path
#: search for such a key asks of every link. Crossing it changes which paths exist.
CARRY_BYTES = 64

#: Up to this many nodes every change is advertised as soon as the hold allows (capacity ones included).
SMALL_NETWORK_NODES = 10

#: Refresh period per node of the network, once that exceeds DEFAULT_REFRESH_S.
REFRESH_PER_NODE_S = 1.0

#: Advert lifetime in refresh periods.
MAX_AGE_REFRESHES = 3.5

#: How far a received sequence may lie ahead of our wall clock (seconds of the ms scheme).
DEFAULT_MAX_SKEW_S = 60.0

_ADVERT_DOMAIN = b"qcinode/advert/v1\x00"

#: Largest sequence number or byte count accepted (fits a signed 64-bit field).
MAX_SEQUENCE = 2**63 - 1

_MAX_NAME_CHARS = 256


@dataclass(frozen=True, slots=True)
class LinkAdvert:
    """One link as its advertising node sees it.

    Attributes:
        link_id: The link's ID, the same at both ends.
        peer: The node at the other end.
        up: Whether the link is currently working (both ends must say so).
        available_out_bytes: Key bytes the *advertising* node can spend on
            this link on its own initiative (its half of the pool).
    """

    link_id: str
    peer: str
    up: bool
    available_out_bytes: int


@dataclass(frozen=True, slots=True)
class LinkStateAdvert:
    """Every link of one node, as flooded through the network.

    Attributes:
        origin: The advertising node.
        sequence: Strictly increasing per origin; a higher one replaces a lower.
        links: The origin's links, each link ID at most once.
        signature: The origin's signature over :func:`advert_bytes` (empty: unsigned).
        certificate: The origin's certificate (DER), which the signature
            verifies against; carried so that a node that never met the
            origin can check it against the cluster CA.
    """

    origin: str
    sequence: int
    links: tuple[LinkAdvert, ...]
    signature: bytes = field(default=b"", repr=False)
    certificate: bytes = field(default=b"", repr=False)


class RejectReason(enum.Enum):
    """Why an advert was refused: a closed vocabulary (log field and metric label)."""

    MALFORMED = "malformed"
    """Wrong types, empty or oversized names, a link to the origin itself, duplicate link IDs."""
    UNSIGNED = "unsigned"
    """No signature or no certificate."""
    UNTRUSTED_CERTIFICATE = "untrusted_certificate"
    """The certificate does not parse, is not issued by the cluster CA, or is not valid now."""
    NOT_A_NODE_CERTIFICATE = "not_a_node_certificate"
    """A certificate of the cluster, but an SAE's or the admin's, not a node's."""
    WRONG_ORIGIN = "wrong_origin"
    """A node certificate, but of another node than the advert's origin."""
    BAD_SIGNATURE = "bad_signature"
    """The signature does not verify over the advert's bytes: forged or altered."""
    FUTURE_SEQUENCE = "future_sequence"
    """The sequence lies more than the allowed skew ahead of our clock."""
    EXPIRED_SEQUENCE = "expired_sequence"
    """The sequence is older than any live advert could be: a replay."""
    STALE = "stale"
    """Older than (or a different advert with the same sequence as) the one held: a replay."""


class AdvertRejected(RemoteProtocolError):
    """An advert was refused; nothing changed but the rejection count. Expected from a misbehaving neighbour.

    Attributes:
        reason: Why, from :class:`RejectReason`.
        origin: The origin the advert claimed (may be garbage for a malformed one).
    """

    def __init__(self, reason: RejectReason, origin: object, detail: str) -> None:
        super().__init__(f"advert of {str(origin)[:80]!r} rejected ({reason.value}): {detail}")
        self.reason = reason
        self.origin = origin


class AdvertVerifier(Protocol):
    """Checks that an advert was signed by its origin (the seam to the PKI)."""

    def verify(self, origin: str, payload: bytes, signature: bytes, certificate: bytes) -> RejectReason | None:
        """Whether ``signature`` over ``payload`` was made by node ``origin``.

        Args:
            origin: The node the advert claims to come from.
            payload: :func:`advert_bytes` of the advert.
            signature: The signature it carries.
            certificate: The certificate (DER) it carries.

        Returns:
            None if ``certificate`` is a node certificate of the cluster
            naming ``origin`` and the signature verifies; otherwise why not.
        """
        ...


class AdvertSigner(Protocol):
    """Signs the local node's adverts with its node key."""

    @property
    def certificate(self) -> bytes:
        """The local node's certificate (DER), carried in every advert."""
        ...

    def sign(self, payload: bytes) -> bytes:
        """The signature of ``payload`` (:func:`advert_bytes`)."""
        ...


def advert_bytes(advert: LinkStateAdvert) -> bytes:
    """The canonical bytes of an advert, which its origin signs.

    Layout: a domain string; ``origin`` as a 4-byte big-endian length and
    UTF-8 bytes; ``sequence`` as 8 bytes; the number of links (4 bytes);
    then per link ``link_id`` and ``peer`` (length-prefixed UTF-8), ``up``
    (one byte, 0 or 1) and ``available_out_bytes`` (8 bytes). Every field
    is length-prefixed or of fixed size, so distinct adverts give distinct
    bytes and no encoding is a prefix of another. The signature and the
    certificate are not part of it.

    Raises:
        LocalProtocolError: If a field cannot be encoded (validate received
            adverts first).
    """
    try:
        parts = [_ADVERT_DOMAIN, _text(advert.origin), advert.sequence.to_bytes(8, "big"), len(advert.links).to_bytes(4, "big")]
        for link in advert.links:
            parts += [_text(link.link_id), _text(link.peer), b"\x01" if link.up else b"\x00", link.available_out_bytes.to_bytes(8, "big")]
    except (AttributeError, TypeError, ValueError, OverflowError) as exc:  # UnicodeEncodeError is a ValueError
        raise LocalProtocolError(f"advert cannot be encoded: {exc}") from None
    return b"".join(parts)


def _text(value: str) -> bytes:
    data = value.encode("utf-8")
    return len(data).to_bytes(4, "big") + data


@dataclass(frozen=True, slots=True)
class _Held:
    """An advert in the database, its bytes as its origin signed them, and when we last accepted a version of it."""

    advert: LinkStateAdvert  # as stored; our own debits are kept beside it (LinkStateDatabase._debits)
    received_at: float
    payload: bytes  # advert_bytes as received
    signed: LinkStateAdvert  # the advert as its origin signed it: what we pass on


class LinkStateDatabase:
    """One node's view of the whole network's links and key availability.

    Feed it our own links (:meth:`originate`) and the peers' adverts
    (:meth:`receive`); flood what it says to flood; call :meth:`expire`
    periodically; ask it for :meth:`paths`.
    """

    __slots__ = (
        "_local_node",
        "_max_age_s",
        "_max_skew_s",
        "_held",
        "_tombstones",
        "_last_sequence",
        "_verifier",
        "_signer",
        "_rejections",
        "_debits",
        "_candidates",
    )

    def __init__(
        self,
        local_node: str,
        *,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        max_skew_s: float = DEFAULT_MAX_SKEW_S,
        verifier: AdvertVerifier | None = None,
        signer: AdvertSigner | None = None,
    ) -> None:
        """Create an empty database.

        Args:
            local_node: This node's name.
            max_age_s: An advert not refreshed for longer than this is dropped
                by :meth:`expire`; must be positive and finite.
            max_skew_s: How far ahead of our clock a received sequence may lie
                (seconds); positive and finite.
            verifier: Checks every received advert's signature and
                certificate. None accepts unsigned adverts: for in-process
                tests and tools only, never in a running node.
            signer: Signs our own adverts; None leaves them unsigned.

        Raises:
            LocalProtocolError: On an empty name or a bad ``max_age_s`` or ``max_skew_s``.
        """
        _check_name(local_node, "local_node", LocalProtocolError)
        for name, value in (("max_age_s", max_age_s), ("max_skew_s", max_skew_s)):
            if not _is_finite_number(value) or value <= 0:
                raise LocalProtocolError(f"{name} must be positive and finite, got {value!r}")
        self._local_node = local_node
        self._max_age_s = float(max_age_s)
        self._max_skew_s = float(max_skew_s)
        self._held: dict[str, _Held] = {}
        self._tombstones: dict[str, tuple[int, float]] = {}  # origin -> (sequence, dropped at)
        self._last_sequence = -1
        self._verifier = verifier
        self._signer = signer
        self._rejections: Counter[RejectReason] = Counter()
        # What debit() took from each origin's links since its advert was stored: origin -> link_id -> bytes.
        self._debits: dict[str, dict[str, int]] = {}
        # usable_edges' links that are up at both ends, (u, v, link_id, bytes advertised), in the order it
        # visits them; made again after an advert is stored or dropped (None), not after a debit.
        self._candidates: list[tuple[str, str, str, int]] | None = None

    @property
    def local_node(self) -> str:
        """This node's name."""
        return self._local_node

    @property
    def max_age_s(self) -> float:
        """Advert lifetime without a refresh."""
        return self._max_age_s

    @property
    def rejections(self) -> dict[RejectReason, int]:
        """How many received adverts were refused so far, by reason (a copy)."""
        return dict(self._rejections)

    @property
    def adverts(self) -> dict[str, LinkStateAdvert]:
        """The current advert of every known origin (a copy, with our :meth:`debit` applied), our own included once originated."""
        return {origin: self._routed(origin, held.advert) for origin, held in sorted(self._held.items())}

    def _routed(self, origin: str, advert: LinkStateAdvert) -> LinkStateAdvert:
        """``advert`` with what :meth:`debit` took from its links since it was stored."""
        debits = self._debits.get(origin)
        if not debits:
            return advert
        links = tuple(
            dataclasses.replace(link, available_out_bytes=max(0, link.available_out_bytes - debits[link.link_id]))
            if link.link_id in debits
            else link
            for link in advert.links
        )
        return dataclasses.replace(advert, links=links)

    def _stored(self, origin: str) -> None:
        """``origin``'s advert was stored or dropped: its debits go, and the graph is made again."""
        self._debits.pop(origin, None)
        self._candidates = None

    def signed_advert(self, origin: str) -> LinkStateAdvert | None:
        """The advert we hold for ``origin`` as its origin signed it (None if we hold none)."""
        held = self._held.get(origin)
        return held.signed if held is not None else None

    def signed_adverts(self) -> list[LinkStateAdvert]:
        """Every advert we hold as its origin signed it (our own first, then by origin): a neighbour's database exchange.

        Our :meth:`debit` changes what we route on, never what we pass on:
        a debited copy would no longer verify.
        """
        own = self._held.get(self._local_node)
        others = [held.signed for origin, held in sorted(self._held.items()) if origin != self._local_node]
        return ([own.signed] if own is not None else []) + others

    @property
    def received_at(self) -> dict[str, float]:
        """When (the ``now`` given) the current advert of every known origin arrived (a copy)."""
        return {origin: held.received_at for origin, held in sorted(self._held.items())}

    # -- adverts ---------------------------------------------------------------

    def originate(self, links: Sequence[LinkAdvert], now: float) -> LinkStateAdvert:
        """Make, store and return our own advert; flood it to every neighbour.

        Args:
            links: Our links now.
            now: Wall-clock time in seconds (e.g. ``time.time()``); it seeds
                the sequence number so that it keeps increasing across restarts.

        Returns:
            The new advert, with a sequence higher than any we made before.

        Raises:
            LocalProtocolError: On malformed links or a bad ``now``.
        """
        _check_now(now)
        if not isinstance(links, Sequence) or isinstance(links, str):
            raise LocalProtocolError("links must be a sequence of LinkAdvert")
        advert = LinkStateAdvert(origin=self._local_node, sequence=0, links=tuple(links))
        _validate_advert(advert, LocalProtocolError)
        sequence = max(self._last_sequence + 1, int(now * 1000))
        if sequence > MAX_SEQUENCE:
            raise LocalProtocolError("sequence number space exhausted")
        advert = LinkStateAdvert(origin=self._local_node, sequence=sequence, links=advert.links)
        if self._signer is not None:
            advert = dataclasses.replace(
                advert, signature=self._signer.sign(advert_bytes(advert)), certificate=self._signer.certificate
            )
        self._last_sequence = sequence
        self._held[self._local_node] = _Held(advert, float(now), advert_bytes(advert), advert)
        self._stored(self._local_node)
        return advert

    def receive(self, advert: LinkStateAdvert, now: float) -> bool:
        """Take in an advert from a neighbour.

        Args:
            advert: The advert as received.
            now: Current wall-clock time in seconds (``time.time()``): the
                sequence window is checked against it, and :meth:`expire`
                must use the same clock.

        Returns:
            ``True`` if the advert was new and stored: forward it to every
            neighbour except the sender. ``False`` for the copy we already
            hold, or a genuine copy of our own advert.

        Raises:
            AdvertRejected: The advert is refused (the reason says why;
                nothing changes but :attr:`rejections`).
            LocalProtocolError: On a bad ``now``.
        """
        _check_now(now)
        try:
            return self._receive(advert, now)
        except AdvertRejected as exc:
            self._rejections[exc.reason] += 1
            raise

    def _receive(self, advert: LinkStateAdvert, now: float) -> bool:
        try:
            _validate_advert(advert, RemoteProtocolError)
            payload = advert_bytes(advert)
        except ProtocolError as exc:
            origin = getattr(advert, "origin", None)
            raise AdvertRejected(RejectReason.MALFORMED, origin, str(exc)) from None
        origin, sequence = advert.origin, advert.sequence
        now_ms = int(now * 1000)
        if sequence > now_ms + int(self._max_skew_s * 1000):
            raise AdvertRejected(
                RejectReason.FUTURE_SEQUENCE, origin, f"sequence {sequence} is more than {self._max_skew_s:g} s ahead of {now_ms}"
            )
        if sequence < now_ms - int((self._max_age_s + self._max_skew_s) * 1000):
            raise AdvertRejected(
                RejectReason.EXPIRED_SEQUENCE,
                origin,
                f"sequence {sequence} is more than {self._max_age_s + self._max_skew_s:g} s behind {now_ms}",
            )
        if origin == self._local_node:
            # Only originate() speaks for us; a genuine copy of ours from
            # before a clock step makes the next advert beat it (the window
            # above keeps that jump within a minute of the clock).
            self._authenticate(advert, payload)
            self._last_sequence = max(self._last_sequence, sequence)
            return False
        held = self._held.get(origin)
        if held is not None and sequence == held.advert.sequence:
            if held.payload == payload:
                return False  # the copy we hold, from another neighbour: nothing to check
            self._authenticate(advert, payload)  # a different advert under the same number
            raise AdvertRejected(RejectReason.STALE, origin, f"sequence {sequence} is already held with other links")
        floor = held.advert.sequence if held is not None else self._tombstone(origin, now)
        if sequence <= floor:
            raise AdvertRejected(RejectReason.STALE, origin, f"sequence {sequence} is not newer than {floor}")
        self._authenticate(advert, payload)
        self._tombstones.pop(origin, None)
        stored = LinkStateAdvert(origin, sequence, tuple(advert.links), advert.signature, advert.certificate)
        self._held[origin] = _Held(stored, float(now), payload, stored)
        self._stored(origin)
        return True

    def _authenticate(self, advert: LinkStateAdvert, payload: bytes) -> None:
        if self._verifier is None:
            return
        if not advert.signature or not advert.certificate:
            raise AdvertRejected(RejectReason.UNSIGNED, advert.origin, "no signature or no certificate")
        reason = self._verifier.verify(advert.origin, payload, bytes(advert.signature), bytes(advert.certificate))
        if reason is not None:
            raise AdvertRejected(reason, advert.origin, f"the signature or certificate does not prove {advert.origin!r} made it")

    def _tombstone(self, origin: str, now: float) -> int:
        """The floor a dropped origin's tombstone still holds (-1 once it is forgotten)."""
        found = self._tombstones.get(origin)
        if found is None:
            return -1
        sequence, dropped_at = found
        if now - dropped_at > self._max_age_s:
            # Every node has aged its copy out by now: nothing can resurrect it.
            del self._tombstones[origin]
            return -1
        return sequence

    def expire(self, now: float) -> list[str]:
        """Drop the adverts of origins that stopped refreshing them.

        Args:
            now: Current time in seconds.

        Returns:
            The dropped origins, sorted.
        """
        _check_now(now)
        dropped = sorted(
            origin
            for origin, held in self._held.items()
            if origin != self._local_node and now - held.received_at > self._max_age_s
        )
        for origin in dropped:
            self._tombstones[origin] = (self._held.pop(origin).advert.sequence, float(now))
            self._stored(origin)
        for origin in [o for o, (_, at) in self._tombstones.items() if now - at > self._max_age_s]:
            del self._tombstones[origin]
        return dropped

    def debit(self, path: Sequence[str], need_bytes: int) -> None:
        """Lowers, in our copy, what each hop of ``path`` can spend, by ``need_bytes``.

        A relay we send spends pad on every hop of its path long before the
        nodes' next adverts say so; debiting our copy at once keeps the next
        requests (and the keys of the same request) from counting the same
        bytes twice. The next advert of each origin replaces the debit with
        what it really has. Hops whose link we do not know are skipped.

        Raises:
            LocalProtocolError: If ``need_bytes`` is negative or not an int.
        """
        _check_count(need_bytes, "need_bytes")
        for u, v in zip(path, path[1:]):
            held = self._held.get(u)
            if held is None:
                continue
            debits = self._debits.get(u, {})
            spent, most = None, -1
            for link in held.advert.links:  # the link to v with the most bytes left: the one usable_edges counts
                if link.peer == v and link.up and (left := link.available_out_bytes - debits.get(link.link_id, 0)) > most:
                    spent, most = link, left
            if spent is not None:
                self._debits.setdefault(u, debits)[spent.link_id] = debits.get(spent.link_id, 0) + need_bytes

    # -- graph -----------------------------------------------------------------

    def nodes(self) -> set[str]:
        """The local node and every origin whose advert we hold."""
        return {self._local_node, *self._held}

    def usable_edges(self, need_bytes: int) -> dict[str, dict[str, int]]:
        """Directed edges that can carry a hop needing ``need_bytes`` of pad.

        Args:
            need_bytes: Key bytes the sender of a hop must spend, ``≥ 0``.

        Returns:
            ``u → {v: available_out_bytes of u}`` for every link ``u — v``
            that both ``u``'s and ``v``'s adverts list as up and on which
            ``u`` can spend at least ``need_bytes``. Between two nodes joined
            by several links, the one with the most bytes counts. Every node
            with an outgoing edge is a key; others may be missing.

        Raises:
            LocalProtocolError: If ``need_bytes`` is negative or not an int.
        """
        _check_count(need_bytes, "need_bytes")
        if self._candidates is None:
            up_links: dict[str, dict[str, str]] = {}  # origin -> {link_id: peer} of up links
            for origin, held in self._held.items():
                up_links[origin] = {link.link_id: link.peer for link in held.advert.links if link.up}
            self._candidates = [
                (u, link.peer, link.link_id, link.available_out_bytes)
                for u, held in sorted(self._held.items())
                for link in held.advert.links
                if link.up and up_links.get(link.peer, {}).get(link.link_id) == u
            ]
        debits = self._debits
        edges: dict[str, dict[str, int]] = {}
        for u, v, link_id, advertised in self._candidates:
            taken = debits.get(u)
            left = max(0, advertised - taken.get(link_id, 0)) if taken else advertised
            if left < need_bytes:
                continue
            out = edges.setdefault(u, {})
            out[v] = max(out.get(v, 0), left)
        return edges

    def paths(self, source: str, destination: str, need_bytes: int, limit: int = 4) -> list[list[str]]:
        """Up to ``limit`` loop-free paths, shortest first.

        Args:
            source: First node.
            destination: Last node.
            need_bytes: Pad bytes each hop's sender must have on its link.
            limit: Most paths to return, ``≥ 0``.

        Returns:
            Distinct simple paths (lists of node names from ``source`` to
            ``destination``) over :meth:`usable_edges`, ordered by hop count,
            then larger bottleneck, then node names; ``[[source]]`` if
            ``source == destination``; ``[]`` if there is none.

        Raises:
            LocalProtocolError: On a negative ``need_bytes`` or ``limit``.
        """
        _check_count(limit, "limit")
        edges = self.usable_edges(need_bytes)
        if limit == 0:
            return []
        if source == destination:
            return [[source]]
        return [list(path) for path in _yen(edges, source, destination, limit)]

    def disjoint_paths(
        self, source: str, destination: str, need_bytes: int, count: int
    ) -> list[list[str]]:
        """Up to ``count`` node-disjoint paths with the fewest total hops.

        Paths share only ``source`` and ``destination``. The number of paths
        is the largest possible up to ``count`` (by Menger's theorem, the
        minimum node cut), and among such sets one with the fewest total hops
        is returned (min-cost flow, not greedy removal). Bottlenecks only
        order the result; they do not choose between sets of equal total hops.

        Args:
            source: First node.
            destination: Last node.
            need_bytes: Pad bytes each hop's sender must have on its link.
            count: Most paths to return, ``≥ 0``.

        Returns:
            The paths ordered by hop count, then larger bottleneck, then node
            names; ``[[source]]`` if ``source == destination`` (and ``count ≥ 1``);
            ``[]`` if there is none.

        Raises:
            LocalProtocolError: On a negative ``need_bytes`` or ``count``.
        """
        _check_count(count, "count")
        edges = self.usable_edges(need_bytes)
        if count == 0:
            return []
        if source == destination:
            return [[source]]
        found = _min_cost_disjoint(edges, source, destination, count)
        found.sort(key=lambda path: _path_key(edges, path))
        return [list(path) for path in found]

    # -- status ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able view for ``qcinode status``."""
        return {
            "local_node": self._local_node,
            "max_age_s": self._max_age_s,
            "rejected": {reason.value: count for reason, count in sorted(self._rejections.items(), key=lambda item: item[0].value)},
            "origins": {
                origin: {
                    "sequence": held.advert.sequence,
                    "received_at": held.received_at,
                    "links": [
                        {
                            "link_id": link.link_id,
                            "peer": link.peer,
                            "up": link.up,
                            "available_out_bytes": link.available_out_bytes,
                        }
                        for link in self._routed(origin, held.advert).links
                    ],
                }
                for origin, held in sorted(self._held.items())
            },
        }

    def __repr__(self) -> str:
        return f"LinkStateDatabase(local_node={self._local_node!r}, origins={sorted(self._held)!r})"


# -- validation ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdvertTiming:
    """The advert periods of a network: every node must use the same (they come from the topology)."""

    refresh_s: float
    min_interval_s: float
    max_age_s: float
    first_interval_s: float = DEFAULT_FIRST_INTERVAL_S
    #: Capacity-only changes wait this long after the previous advert (the minimum interval up to 10 nodes).
    capacity_interval_s: float = DEFAULT_MIN_INTERVAL_S
    #: A starting node's first advert waits this long for its links to come up (the minimum interval).
    first_wait_s: float = DEFAULT_MIN_INTERVAL_S


def advert_timing(n_nodes: int) -> AdvertTiming:
    """The advert periods for a network of ``n_nodes`` nodes (the module docstring's "When to originate").

    Args:
        n_nodes: Nodes in the topology, at least 1.

    Raises:
        LocalProtocolError: ``n_nodes`` is not a positive int.
    """
    if not _is_int(n_nodes) or n_nodes < 1:
        raise LocalProtocolError(f"n_nodes must be a positive int, got {n_nodes!r}")
    refresh = max(DEFAULT_REFRESH_S, REFRESH_PER_NODE_S * n_nodes)
    min_interval = max(DEFAULT_MIN_INTERVAL_S, refresh / 10)
    # The minimum interval times N / 10, capped at the refresh: 1 s up to 10 nodes, 13 s at 36, the
    # refresh itself (100 s) from 100 nodes on, where capacity-only changes ride the refresh.
    capacity_interval = min(refresh, min_interval * max(1.0, n_nodes / SMALL_NETWORK_NODES))
    return AdvertTiming(
        refresh_s=refresh,
        min_interval_s=min_interval,
        max_age_s=MAX_AGE_REFRESHES * refresh,
        first_interval_s=min(DEFAULT_FIRST_INTERVAL_S, min_interval),
        capacity_interval_s=capacity_interval,
        first_wait_s=min_interval,
    )


class DatabaseSync:
    """Which neighbours are owed the adverts they may lack, and which one we ask for its database (pure).

    The module docstring's "Database exchange". The driver tells it what
    happened to its calls (:meth:`send_failed`, :meth:`asked`) and asks
    :meth:`due` at each tick which neighbours to synchronise now; it sends
    each of those the adverts it holds that the neighbour is not known to
    hold (:meth:`LinkStateDatabase.signed_adverts`), the first call asking
    for the neighbour's database if :meth:`due` says so, and reports the
    outcome with :meth:`done`.
    """

    __slots__ = (
        "_peers", "_owe", "_away", "_need", "_ask_turn", "_next_try", "_backoff", "_busy", "_again",
        "_retry_first_s", "_retry_max_s", "_ask_interval_s", "_served_ask", "_ask_waiting",
    )  # fmt: skip

    def __init__(self, peers: Sequence[str], *, retry_first_s: float = 1.0, retry_max_s: float = 16.0, ask_interval_s: float = 5.0) -> None:
        """A node that starts: it needs a database, and owes nobody anything yet.

        Args:
            peers: The neighbours.
            retry_first_s: Wait after a failed exchange before the next try; it doubles per failure.
            retry_max_s: The longest wait between tries.
            ask_interval_s: The shortest time between two exchanges a
                neighbour's asks bring forward (each ask resends it the
                whole database).

        Raises:
            LocalProtocolError: On a bad retry period or ask interval.
        """
        for name, value in (("retry_first_s", retry_first_s), ("retry_max_s", retry_max_s), ("ask_interval_s", ask_interval_s)):
            if not _is_finite_number(value) or value <= 0:
                raise LocalProtocolError(f"{name} must be positive and finite, got {value!r}")
        if retry_first_s > retry_max_s:
            raise LocalProtocolError(f"retry_first_s ({retry_first_s!r}) must not exceed retry_max_s ({retry_max_s!r})")
        self._retry_first_s = float(retry_first_s)
        self._retry_max_s = float(retry_max_s)
        self._ask_interval_s = float(ask_interval_s)
        self._served_ask: dict[str, float] = {}  # peer -> when its last ask is (or was) answered
        self._ask_waiting: set[str] = set()  # peers whose ask waits for the interval to pass
        self._peers = sorted(peers)
        self._owe: set[str] = set()  # they may lack adverts we hold
        self._away: set[str] = set()  # owed because they were unreachable (not merely slow)
        self._need = bool(self._peers)  # we may lack adverts: ask one neighbour for its database
        self._ask_turn = 0  # the neighbour asked next (the next one after a failed ask)
        self._next_try: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._busy: set[str] = set()
        self._again: set[str] = set()  # busy peers owed another exchange (something happened after it started)

    @property
    def pending(self) -> dict[str, bool]:
        """``peer -> whether we would ask it for its database`` for every neighbour an exchange is due to."""
        due = {peer: False for peer in self._owe}
        if self._need:
            due[self._peers[self._ask_turn]] = True
        return dict(sorted(due.items()))

    @property
    def needs_database(self) -> bool:
        """Whether we still have to ask a neighbour for its database (no ask got through yet)."""
        return self._need

    def send_failed(self, peer: str, *, away: bool = True) -> None:
        """An advert did not reach ``peer``: it may miss that and whatever else was flooded meanwhile.

        Args:
            peer: The neighbour.
            away: It could not be reached (no connection, a cut link); False:
                the call timed out (a slow neighbour on a saturated machine),
                whose exchange waits out its back-off whatever the neighbour
                sends, so that a loaded network does not feed its own load.
        """
        self._owe.add(peer)
        if away:
            self._away.add(peer)
        if peer in self._busy:
            self._again.add(peer)  # the running exchange may not hold that advert

    def asked(self, peer: str, now: float) -> None:
        """``peer`` asked for our database (it restarted or started): send it at once.

        At once, unless an ask of ``peer`` was answered less than
        ``ask_interval_s`` ago: then when that interval is over. An ask that
        arrives while an earlier one waits for its turn joins it, so asking
        again and again neither speeds the exchange up nor delays it.
        """
        self._owe.add(peer)
        if peer in self._busy:
            self._again.add(peer)  # it may have restarted after the running exchange passed it some adverts
        self._backoff.pop(peer, None)
        if peer in self._ask_waiting:
            serve = self._served_ask[peer]  # an earlier ask waits for its turn: this one joins it
        else:
            last = self._served_ask.get(peer)
            serve = now if last is None or now - last >= self._ask_interval_s else last + self._ask_interval_s
            self._served_ask[peer] = serve
            if serve > now:
                self._ask_waiting.add(peer)
        if serve > now:
            self._next_try[peer] = serve
        else:
            self._next_try.pop(peer, None)

    def heard(self, peer: str) -> None:
        """A call from ``peer`` arrived: it is back, so an exchange we owe it for being away need not wait out its back-off."""
        if peer in self._away:
            self._next_try.pop(peer, None)
            self._backoff.pop(peer, None)

    def due(self, now: float) -> list[tuple[str, bool]]:
        """The neighbours to synchronise now, each with whether to ask it for its database; marks them busy until :meth:`done`."""
        ready = [peer for peer in self._peers if peer not in self._busy and now >= self._next_try.get(peer, -math.inf)]
        asked = self._peers[self._ask_turn] if self._need else None
        picked = [(peer, peer == asked) for peer in ready if peer in self._owe or peer == asked]
        self._busy.update(peer for peer, _ in picked)
        self._ask_waiting.difference_update(peer for peer, _ in picked)  # this exchange answers their asks
        return picked

    def done(self, peer: str, ok: bool, now: float, *, asked: bool = False, ask_delivered: bool = False) -> None:
        """The exchange :meth:`due` gave for ``peer`` ended.

        Args:
            peer: The neighbour.
            ok: Whether every call reached it (refusals of single adverts count as reached).
            now: The driver's clock.
            asked: Whether the exchange asked for the neighbour's database.
            ask_delivered: Whether the call carrying the ask reached it (it then owes us its database).
        """
        self._busy.discard(peer)
        if asked:
            if ask_delivered:
                self._need = False
            elif self._peers:
                self._ask_turn = (self._ask_turn + 1) % len(self._peers)  # try the next neighbour
        again = peer in self._again
        self._again.discard(peer)
        if ok:
            if not again:
                self._owe.discard(peer)
                self._away.discard(peer)
            self._next_try.pop(peer, None)
            self._backoff.pop(peer, None)
        else:
            wait = self._backoff.get(peer, self._retry_first_s / 2) * 2
            self._backoff[peer] = min(self._retry_max_s, wait)
            self._next_try[peer] = now + self._backoff[peer]
        if peer in self._ask_waiting and self._served_ask[peer] > self._next_try.get(peer, now):
            self._next_try[peer] = self._served_ask[peer]  # an ask that came during the exchange waits for its turn


class AdvertSchedule:
    """When a node originates its advert: on a change of its links, else a jittered slow refresh (pure).

    The rules are the module docstring's "When to originate". Ask
    :meth:`due` with the local links at each tick of the driver; after
    originating, tell :meth:`sent`.
    """

    __slots__ = (
        "_refresh_s",
        "_min_interval_s",
        "_first_interval_s",
        "_hold_s",
        "_jitter",
        "_change_fraction",
        "_capacity_interval_s",
        "_first_wait_s",
        "_started_at",
        "_rng",
        "_last",
        "_last_at",
        "_next_refresh",
    )

    def __init__(
        self,
        rng: np.random.Generator,
        *,
        refresh_s: float = DEFAULT_REFRESH_S,
        min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
        first_interval_s: float | None = None,
        jitter: float = 0.25,
        change_fraction: float = 0.25,
        capacity_interval_s: float = 0.0,
        first_wait_s: float = 0.0,
    ) -> None:
        """A schedule that has sent nothing yet.

        Args:
            rng: Draws the refresh jitter (seeded in tests).
            refresh_s: Longest time between adverts when nothing changes (the
                refresh comes after ``refresh_s · U(1 - jitter, 1)``).
            min_interval_s: Shortest time between adverts of a node whose links
                keep changing (the hold once it has backed off).
            first_interval_s: The hold after a quiet spell (no advert for
                ``min_interval_s``); it doubles with each advert that follows
                within the hold's reach, up to ``min_interval_s``. None: the
                smaller of :data:`DEFAULT_FIRST_INTERVAL_S` and ``min_interval_s``.
            jitter: Fraction of ``refresh_s`` by which a refresh may come early, in [0, 1).
            change_fraction: A link's available bytes moving by at least this
                fraction of the larger of the old and new figures is a change, in (0, 1].
            capacity_interval_s: A capacity-only change (``"available_changed"``)
                waits at least this long after the previous advert (and the
                hold), in [0, ``refresh_s``]; 0: only the hold, as any change.
            first_wait_s: The first advert waits this long after the first
                :meth:`due` (the node's start) unless every link is up
                before, in [0, ``min_interval_s``]; 0: at once.

        Raises:
            LocalProtocolError: On a bad interval or fraction.
        """
        for name, value in (("refresh_s", refresh_s), ("min_interval_s", min_interval_s)):
            if not _is_finite_number(value) or value <= 0:
                raise LocalProtocolError(f"{name} must be positive and finite, got {value!r}")
        if first_interval_s is None:
            first_interval_s = min(DEFAULT_FIRST_INTERVAL_S, float(min_interval_s))
        if not _is_finite_number(first_interval_s) or first_interval_s <= 0:
            raise LocalProtocolError(f"first_interval_s must be positive and finite, got {first_interval_s!r}")
        if min_interval_s > refresh_s:
            raise LocalProtocolError(f"min_interval_s ({min_interval_s!r}) must not exceed refresh_s ({refresh_s!r})")
        if first_interval_s > min_interval_s:
            raise LocalProtocolError(f"first_interval_s ({first_interval_s!r}) must not exceed min_interval_s ({min_interval_s!r})")
        if not _is_finite_number(jitter) or not 0 <= jitter < 1:
            raise LocalProtocolError(f"jitter must be in [0, 1), got {jitter!r}")
        if not _is_finite_number(change_fraction) or not 0 < change_fraction <= 1:
            raise LocalProtocolError(f"change_fraction must be in (0, 1], got {change_fraction!r}")
        if not _is_finite_number(capacity_interval_s) or not 0 <= capacity_interval_s <= refresh_s:
            raise LocalProtocolError(f"capacity_interval_s must lie in [0, refresh_s = {refresh_s!r}], got {capacity_interval_s!r}")
        if not _is_finite_number(first_wait_s) or not 0 <= first_wait_s <= min_interval_s:
            raise LocalProtocolError(f"first_wait_s must lie in [0, min_interval_s = {min_interval_s!r}], got {first_wait_s!r}")
        self._refresh_s = float(refresh_s)
        self._min_interval_s = float(min_interval_s)
        self._first_interval_s = float(first_interval_s)
        self._hold_s = self._first_interval_s
        self._jitter = float(jitter)
        self._change_fraction = float(change_fraction)
        self._capacity_interval_s = float(capacity_interval_s)
        self._first_wait_s = float(first_wait_s)
        self._started_at: float | None = None  # the first due(): when the node started looking at its links
        self._rng = rng
        self._last: dict[str, LinkAdvert] | None = None
        self._last_at = -math.inf
        self._next_refresh = -math.inf

    @property
    def refresh_s(self) -> float:
        """Longest time between two adverts when nothing changes."""
        return self._refresh_s

    @property
    def hold_s(self) -> float:
        """How long after the last advert a change may be advertised (between ``first_interval_s`` and ``min_interval_s``)."""
        return self._hold_s

    def due(self, links: Sequence[LinkAdvert], now: float) -> str | None:
        """Why an advert is due now (one of :data:`ORIGINATION_REASONS`), or None.

        The first call marks the node's start (the first advert's wait runs from it).

        Args:
            links: The local links now.
            now: The driver's clock (seconds).
        """
        if self._last is None:
            if self._started_at is None:
                self._started_at = now
            if all(link.up for link in links) or now - self._started_at >= self._first_wait_s:
                return "first"
            return None  # links still coming up: one advert with them beats one flood per link
        if now - self._last_at < self._hold_s:
            return None
        change = links_change(self._last.values(), links, self._change_fraction)
        if change == "available_changed" and now - self._last_at < self._capacity_interval_s:
            change = None  # the paths are the same, only their capacity moved: not worth a flood yet
        if change is not None:
            return change
        if now >= self._next_refresh:
            return "refresh"
        return None

    def sent(self, links: Sequence[LinkAdvert], now: float) -> None:
        """Records that ``links`` were advertised at ``now``; sets the next hold and draws the next refresh time."""
        if self._last is None:
            # The first advert: the node has just started and its links are coming up one by one, which
            # is no quiet spell. In a large network every start-up advert is a flood over every link, and
            # a hundred nodes starting together flooded each link coming up (measured: the cores were
            # saturated by adverts alone); so their changes wait the minimum interval (1 s up to 10 nodes).
            self._hold_s = self._min_interval_s
        elif now - self._last_at >= self._min_interval_s + self._hold_s:
            self._hold_s = self._first_interval_s  # a quiet spell: the next change goes out quickly again
        else:
            self._hold_s = min(self._min_interval_s, 2 * self._hold_s)  # changes keep coming: back off
        self._last = {link.link_id: link for link in links}
        self._last_at = now
        self._next_refresh = now + self._refresh_s * float(self._rng.uniform(1.0 - self._jitter, 1.0))


def links_change(old: Iterable[LinkAdvert], new: Iterable[LinkAdvert], change_fraction: float = 0.25) -> str | None:
    """Whether ``new`` links differ from ``old`` by a change worth an advert (the module docstring's "When to originate").

    Returns:
        The most significant change: ``"links_changed"`` (a link appeared,
        went, or went up or down), ``"carry_changed"`` (a link's bytes
        crossed :data:`CARRY_BYTES`: it can now carry a 256-bit key, or no
        longer), ``"available_changed"`` (a link's bytes moved by
        ``change_fraction`` of the larger figure, or by a 256-bit key while
        scarce), or None: the same links, only small moves of their bytes (a
        refresh).
    """
    before = {link.link_id: link for link in old}
    after = {link.link_id: link for link in new}
    if {k: (v.peer, v.up) for k, v in after.items()} != {k: (v.peer, v.up) for k, v in before.items()}:
        return "links_changed"
    for link_id, link in after.items():
        if (before[link_id].available_out_bytes >= CARRY_BYTES) != (link.available_out_bytes >= CARRY_BYTES):
            return "carry_changed"
    for link_id, link in after.items():
        was, now = before[link_id].available_out_bytes, link.available_out_bytes
        if was != now and abs(now - was) >= change_fraction * max(was, now):
            return "available_changed"
        if min(was, now) < LOW_WATER_BYTES and abs(now - was) >= LOW_WATER_STEP_BYTES:
            return "available_changed"  # a scarce pool: every key counts
    return None


def _validate_advert(advert: object, error: type[ProtocolError]) -> None:
    if not isinstance(advert, LinkStateAdvert):
        raise error(f"expected a LinkStateAdvert, got {type(advert).__name__}")
    _check_name(advert.origin, "origin", error)
    if not _is_int(advert.sequence) or not 0 <= advert.sequence <= MAX_SEQUENCE:
        raise error(f"advert of {advert.origin!r}: bad sequence {advert.sequence!r}")
    if not isinstance(advert.links, (tuple, list)):
        raise error(f"advert of {advert.origin!r}: links must be a sequence")
    seen: set[str] = set()
    for index, link in enumerate(advert.links):
        where = f"advert of {advert.origin!r}, links[{index}]"
        if not isinstance(link, LinkAdvert):
            raise error(f"{where}: expected a LinkAdvert, got {type(link).__name__}")
        _check_name(link.link_id, f"{where}.link_id", error)
        _check_name(link.peer, f"{where}.peer", error)
        if link.peer == advert.origin:
            raise error(f"{where}: a link to the origin itself")
        if not isinstance(link.up, bool):
            raise error(f"{where}.up must be a bool")
        if not _is_int(link.available_out_bytes) or not 0 <= link.available_out_bytes <= MAX_SEQUENCE:
            raise error(f"{where}.available_out_bytes must be a non-negative int")
        if link.link_id in seen:
            raise error(f"{where}: duplicate link_id {link.link_id!r}")
        seen.add(link.link_id)


def _check_name(value: object, what: str, error: type[ProtocolError]) -> None:
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME_CHARS:
        raise error(f"{what} must be a non-empty string of at most {_MAX_NAME_CHARS} characters")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    )


def _check_now(now: float) -> None:
    if not _is_finite_number(now) or now < 0:
        raise LocalProtocolError(f"now must be a finite non-negative number of seconds, got {now!r}")


def _check_count(value: int, what: str) -> None:
    if not _is_int(value) or value < 0:
        raise LocalProtocolError(f"{what} must be a non-negative int, got {value!r}")


# -- path search -----------------------------------------------------------------

Edges = dict[str, dict[str, int]]
PathKey = tuple[int, int, tuple[str, ...]]


def _bottleneck(edges: Edges, path: Sequence[str]) -> int:
    return min(edges[u][v] for u, v in zip(path, path[1:]))


def _path_key(edges: Edges, path: Sequence[str]) -> PathKey:
    """Sort key: fewer hops, then larger bottleneck, then names."""
    return (len(path) - 1, -_bottleneck(edges, path), tuple(path))


def _widest_shortest(
    edges: Edges,
    source: str,
    destination: str,
    banned_nodes: set[str],
    banned_edges: set[tuple[str, str]],
    cap: float = math.inf,
) -> tuple[str, ...] | None:
    """The least path under (hops, −min(cap, bottleneck), names) avoiding the bans.

    ``cap`` is the bottleneck of the root a Yen spur path is appended to:
    widths above it do not improve the whole path, so they must not outrank
    a path with smaller names (that would break Yen's ordering).
    """

    def successors(u: str) -> list[tuple[str, int]]:
        return [
            (v, available)
            for v, available in sorted(edges.get(u, {}).items())
            if v not in banned_nodes and (u, v) not in banned_edges
        ]

    # 1. Breadth-first layers from the source.
    hops = {source: 0}
    order = [source]
    for u in order:
        if u == destination:
            continue
        for v, _ in successors(u):
            if v not in hops:
                hops[v] = hops[u] + 1
                order.append(v)
    if destination not in hops:
        return None
    # 2. The widest shortest-path width, layer by layer (a node of layer d is
    #    settled before any node of layer d + 1 is read).
    width: dict[str, float] = {source: cap}
    for u in order:
        if hops[u] >= hops[destination]:
            break
        for v, available in successors(u):
            if hops.get(v) == hops[u] + 1:
                width[v] = max(width.get(v, -math.inf), min(width[u], available))
    best = width[destination]
    # 3. On the edges at least that wide, every shortest path has that width;
    #    walk the one with the smallest names, steering by distance-to-go.
    wide: dict[str, list[str]] = {
        u: [v for v, available in successors(u) if available >= best] for u in order
    }
    to_go = {destination: 0}
    frontier = [destination]
    reverse: dict[str, list[str]] = {}
    for u, vs in wide.items():
        for v in vs:
            reverse.setdefault(v, []).append(u)
    for v in frontier:
        for u in reverse.get(v, []):
            if u not in to_go:
                to_go[u] = to_go[v] + 1
                frontier.append(u)
    path = [source]
    while path[-1] != destination:
        u = path[-1]
        path.append(next(v for v in wide[u] if to_go.get(v) == to_go[u] - 1))
    return tuple(path)


def _yen(edges: Edges, source: str, destination: str, limit: int) -> list[tuple[str, ...]]:
    """Yen's k-shortest simple paths under the (hops, −bottleneck, names) order."""
    first = _widest_shortest(edges, source, destination, set(), set())
    if first is None:
        return []
    accepted: list[tuple[str, ...]] = [first]
    seen: set[tuple[str, ...]] = {first}
    candidates: list[tuple[PathKey, tuple[str, ...]]] = []
    while len(accepted) < limit:
        last = accepted[-1]
        for i in range(len(last) - 1):
            root = last[: i + 1]
            banned_edges = {(p[i], p[i + 1]) for p in accepted if p[: i + 1] == root}
            cap = _bottleneck(edges, root) if i > 0 else math.inf
            spur = _widest_shortest(edges, last[i], destination, set(root[:-1]), banned_edges, cap)
            if spur is None:
                continue
            path = root[:-1] + spur
            if path not in seen:
                seen.add(path)
                heapq.heappush(candidates, (_path_key(edges, path), path))
        if not candidates:
            break
        accepted.append(heapq.heappop(candidates)[1])
    return accepted


class _FlowGraph:
    """A residual graph with unit capacities for successive shortest paths."""

    __slots__ = ("head", "cap", "cost", "adjacency")

    def __init__(self, n_vertices: int) -> None:
        self.head: list[int] = []
        self.cap: list[int] = []
        self.cost: list[int] = []
        self.adjacency: list[list[int]] = [[] for _ in range(n_vertices)]

    def add(self, tail: int, head: int, capacity: int, cost: int) -> int:
        """Add an arc and its residual twin; returns the arc's index (twin = index ^ 1)."""
        index = len(self.head)
        self.head += [head, tail]
        self.cap += [capacity, 0]
        self.cost += [cost, -cost]
        self.adjacency[tail].append(index)
        self.adjacency[head].append(index + 1)
        return index

    def cheapest_path(self, start: int, goal: int) -> list[int] | None:
        """Arc indices of a least-cost residual path (Bellman–Ford: costs may be negative)."""
        n = len(self.adjacency)
        distance: list[float] = [math.inf] * n
        via: list[int] = [-1] * n
        distance[start] = 0
        for _ in range(n - 1):
            changed = False
            for tail in range(n):
                if distance[tail] == math.inf:
                    continue
                for arc in self.adjacency[tail]:
                    if self.cap[arc] > 0 and distance[tail] + self.cost[arc] < distance[self.head[arc]]:
                        distance[self.head[arc]] = distance[tail] + self.cost[arc]
                        via[self.head[arc]] = arc
                        changed = True
            if not changed:
                break
        if distance[goal] == math.inf:
            return None
        arcs: list[int] = []
        vertex = goal
        while vertex != start:
            arc = via[vertex]
            arcs.append(arc)
            vertex = self.head[arc ^ 1]
        arcs.reverse()
        return arcs


def _min_cost_disjoint(
    edges: Edges, source: str, destination: str, count: int
) -> list[tuple[str, ...]]:
    """Node-disjoint paths of least total hops, by min-cost flow with node splitting.

    Node ``x`` becomes ``x_in → x_out`` with capacity 1 (so at most one path
    crosses it); link ``u → v`` becomes ``u_out → v_in`` with capacity 1 and
    cost 1. Each augmentation along a cheapest residual path keeps the flow
    of least cost for its value (Ahuja, Magnanti & Orlin, *Network Flows*,
    1993, §9.7), and a least-cost flow has no cycles because every cycle
    costs at least 1.
    """
    names = sorted({source, destination, *edges, *(v for out in edges.values() for v in out)})
    index = {name: i for i, name in enumerate(names)}
    graph = _FlowGraph(2 * len(names))  # vertex 2i is name i's "in", 2i + 1 its "out"
    for name in names:
        if name not in (source, destination):
            graph.add(2 * index[name], 2 * index[name] + 1, 1, 0)
    link_arcs: list[tuple[int, str, str]] = []
    for u, out in sorted(edges.items()):
        if u == destination:
            continue
        for v in sorted(out):
            if v == source:
                continue
            link_arcs.append((graph.add(2 * index[u] + 1, 2 * index[v], 1, 1), u, v))
    start, goal = 2 * index[source] + 1, 2 * index[destination]
    for _ in range(count):
        arcs = graph.cheapest_path(start, goal)
        if arcs is None:
            break
        for arc in arcs:
            graph.cap[arc] -= 1
            graph.cap[arc ^ 1] += 1
    following: dict[str, list[str]] = {}
    for arc, u, v in link_arcs:
        if graph.cap[arc] == 0:  # one unit of flow crosses this link
            following.setdefault(u, []).append(v)
    found: list[tuple[str, ...]] = []
    for first in following.get(source, []):
        path = [source, first]
        while path[-1] != destination:
            path.append(following[path[-1]][0])
        found.append(tuple(path))
    return found
