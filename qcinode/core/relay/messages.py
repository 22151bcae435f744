"""What the relay engine takes and returns: events in, actions out (pure; no I/O).

Every type here is a frozen dataclass; the engine
(:class:`~qcinode.core.relay.engine.RelayEngine`) is driven only through
them. Three kinds:

* **Events** (:data:`RelayEvent`) are what the driver tells the engine: a
  request from the KME (:class:`KeysRequested`), a hop from a neighbour
  (:class:`HopArrived`), and the result of an action it performed
  (:class:`LinkSaved`, :class:`HopAnswered`, :class:`KeyStored`), or that it
  gave up waiting (:class:`RequestAbandoned`, :class:`HopAbandoned`).
* **Actions** (:data:`RelayAction`) are what the engine asks of the driver.
  Those carrying a ``ref`` expect exactly one result event with the same
  ``ref``, at any later time: :class:`SaveLink` (write the link's state
  through, answered by :class:`LinkSaved`), :class:`SendHop` (answered by
  :class:`HopAnswered`), :class:`StoreKey` (answered by :class:`KeyStored`).
  The rest are final answers: :class:`AnswerHop` to a hop's sender,
  :class:`DeliverKeys` or :class:`FailRequest` to the KME.
* **Notices** (also actions, no answer expected) say what happened, for the
  driver's logs: :class:`HopRefused`, :class:`ForwardFailed`,
  :class:`PathFailed`, :class:`KeyArrived`.

Why a failure happened is a :class:`RefusalReason` — a closed vocabulary, so
metric labels stay bounded — with the human detail kept apart in
:class:`Refusal`.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass, field

from qcinode.core.pool import KeyRange
from qcinode.core.relay.hop import RelayHeader

__all__ = [
    "AnswerHop",
    "DeliverKeys",
    "FailRequest",
    "ForwardFailed",
    "HopAbandoned",
    "HopAnswered",
    "HopArrived",
    "HopRefused",
    "KeyArrived",
    "KeyStored",
    "KeysRequested",
    "LinkSaved",
    "PathFailed",
    "Refusal",
    "RefusalReason",
    "RelayAction",
    "RelayEvent",
    "RelayedKey",
    "RequestAbandoned",
    "SaveLink",
    "SealedHop",
    "SendHop",
    "StoreKey",
]


class RefusalReason(enum.Enum):
    """Why a hop, a path or a request failed. The values are the metric labels."""

    #: No path has enough key on every hop (no route at all, or none left to try).
    NO_PATH = "no_path"
    #: Not enough key: the routes cannot carry the request now (refused up
    #: front), a link pool cannot give a hop's pad, or a slave has too many
    #: keys waiting.
    INSUFFICIENT_KEY = "insufficient_key"
    #: The next node cannot be reached: not a neighbour, the link is cut, or
    #: the call failed.
    PEER_UNAVAILABLE = "peer_unavailable"
    #: A node further along the path refused the hop (its answer says why).
    PEER_REFUSED = "peer_refused"
    #: The hop's one-time tag did not verify: forged or altered on the way.
    AUTHENTICATION_FAILED = "authentication_failed"
    #: The header or the named pad ranges break a rule (wrong hop, wrong
    #: half, bad lengths, not from a neighbour).
    BAD_HEADER = "bad_header"
    #: The named pad lies in a block this end does not hold.
    UNKNOWN_PAD = "unknown_pad"
    #: Seen before: the named pad was already used (a replayed hop), a share
    #: arrived twice, or the key ID is stored with another key.
    DUPLICATE = "duplicate"
    #: State that must be on disk first could not be written (full or
    #: unwritable data directory).
    STORAGE_FAILED = "storage_failed"
    #: The key store refused the key for another reason (no store, closed).
    STORE_REFUSED = "store_refused"
    #: The next node did not answer in time.
    TIMEOUT = "timeout"
    #: The hop never reached the next node.
    LOST = "lost"
    #: Request level: every path tried for a destination failed (the detail
    #: lists each hop failure).
    RELAY_FAILED = "relay_failed"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A failure: a reason from the closed vocabulary and a human detail (never key material)."""

    reason: RefusalReason
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}" if self.detail else self.reason.value


@dataclass(frozen=True, slots=True)
class SealedHop:
    """One hop as it travels: the authenticated header, the pad ranges it used, ciphertext and tag.

    Attributes:
        header: The hop's header (``hop_index`` names this hop).
        pad: The ranges of the link pool the sender used, from its own half,
            in key order: the one-time MAC key, then the pad.
        ciphertext: ``share ⊕ pad``.
        tag: The one-time Poly1305 tag of header and ciphertext.
    """

    header: RelayHeader
    pad: tuple[KeyRange, ...]
    ciphertext: bytes = field(repr=False)
    tag: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class RelayedKey:
    """A key delivered to every slave's node, as handed to the master.

    Attributes:
        key_id: Its ID (a UUID4 string).
        key: The key bytes (kept out of the repr).
        paths: Every path a share of it travelled, per destination node in
            order; empty for a key whose slaves are all at the master's node.
    """

    key_id: str
    key: bytes = field(repr=False)
    paths: tuple[tuple[str, ...], ...] = ()


# -- events: the driver tells the engine ------------------------------------------


@dataclass(frozen=True, slots=True)
class KeysRequested:
    """A master SAE asked for keys (``enc_keys``), validated by the KME.

    Attributes:
        request_id: Chosen by the driver; the answer carries it.
        master_sae: The SAE that gets the keys.
        slave_saes: Every SAE that may redeem them.
        destinations: ``(slave SAE, its node)`` for each slave, the node
            None if unknown (the request is then refused).
        number: How many keys.
        key_bytes: Length of each key.
        keys: ``(key ID, key)`` pairs to relay instead of drawing new ones
            (``number`` of them, each ``key_bytes`` long): keys that arrived
            from another network (ETSI GS QKD 020) or a key stream's chunks
            with agreed IDs. Empty: the engine draws the keys and their IDs.
    """

    request_id: str
    master_sae: str
    slave_saes: tuple[str, ...]
    destinations: tuple[tuple[str, str | None], ...]
    number: int
    key_bytes: int
    keys: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class HopArrived:
    """A neighbour sent us a hop.

    Attributes:
        token: Chosen by the driver; the :class:`AnswerHop` for it carries it.
        previous_node: The authenticated neighbour it came from.
        hop: The hop as received.
        now: Current time in seconds (for incomplete multipath keys' expiry).
    """

    token: Hashable
    previous_node: str
    hop: SealedHop
    now: float


@dataclass(frozen=True, slots=True)
class LinkSaved:
    """Result of :class:`SaveLink`: ``failure`` is None if the state is on disk, else why not."""

    ref: int
    failure: str | None = None


@dataclass(frozen=True, slots=True)
class HopAnswered:
    """Result of :class:`SendHop`: ``refusal`` None means the rest of the path delivered it."""

    ref: int
    refusal: Refusal | None = None


@dataclass(frozen=True, slots=True)
class KeyStored:
    """Result of :class:`StoreKey`.

    Attributes:
        ref: The action's ref.
        refusal: None if the key is stored (now or before), else why not.
        duplicate: The same key was already stored (a retried relay): stored
            before, nothing changed.
    """

    ref: int
    refusal: Refusal | None = None
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class RequestAbandoned:
    """The driver stopped waiting for a request (cancelled, deadline): forget it.

    Pad already committed stays used; results still due for the request's
    actions are ignored.
    """

    request_id: str


@dataclass(frozen=True, slots=True)
class HopAbandoned:
    """The driver stopped waiting for the answer to an incoming hop (the caller went away)."""

    token: Hashable


RelayEvent = KeysRequested | HopArrived | LinkSaved | HopAnswered | KeyStored | RequestAbandoned | HopAbandoned


# -- actions: the engine asks the driver ------------------------------------------


@dataclass(frozen=True, slots=True)
class SaveLink:
    """Write link ``link_id``'s state (its pool ledger) through; answer :class:`LinkSaved`.

    Nothing that depends on it is asked for before the answer. With
    ``also``, those links' states are written too, in the same transaction
    (one fsync): a hop through a transit node uses pad of the link it came
    in on and of the link it goes out on, and both must be on disk before
    it goes on; the answer says whether all of them are.
    """

    ref: int
    link_id: str
    also: tuple[str, ...] = ()

    @property
    def link_ids(self) -> tuple[str, ...]:
        """Every link to write, ``link_id`` first."""
        return (self.link_id, *self.also)


@dataclass(frozen=True, slots=True)
class SendHop:
    """Send ``hop`` to neighbour ``peer`` over link ``link_id``; answer :class:`HopAnswered`.

    The hop's pad is already used and saved (a :class:`SaveLink` of this link
    was answered first). A hop the driver cannot send is answered with a
    refusal; it must never be sent twice on the driver's own initiative.
    """

    ref: int
    link_id: str
    peer: str
    hop: SealedHop


@dataclass(frozen=True, slots=True)
class StoreKey:
    """Store ``key`` for those of ``slave_saes`` attached here; answer :class:`KeyStored`.

    The hand-off point of a relay: a node that serves the slaves stores the
    key for ``dec_keys``; a gateway could pass it on to another network.
    """

    ref: int
    key_id: str
    master_sae: str
    slave_saes: tuple[str, ...]
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class AnswerHop:
    """Answer the hop that arrived with ``token``: delivered (``refusal`` None) or refused."""

    token: Hashable
    refusal: Refusal | None = None


@dataclass(frozen=True, slots=True)
class DeliverKeys:
    """The request succeeded: every key is stored at every slave's node; hand them to the master."""

    request_id: str
    keys: tuple[RelayedKey, ...]


@dataclass(frozen=True, slots=True)
class FailRequest:
    """The request failed (all or nothing: the master gets no key). The first failure says why."""

    request_id: str
    refusal: Refusal


@dataclass(frozen=True, slots=True)
class HopRefused:
    """Notice: this node refused an incoming hop (nothing of its pad was used here unless it was saved)."""

    header: RelayHeader
    previous_node: str
    refusal: Refusal


@dataclass(frozen=True, slots=True)
class ForwardFailed:
    """Notice: a hop accepted here could not be carried on to the next node."""

    header: RelayHeader
    refusal: Refusal


@dataclass(frozen=True, slots=True)
class PathFailed:
    """Notice: an attempt to carry a key over ``paths`` failed; another may follow."""

    key_id: str
    paths: tuple[tuple[str, ...], ...]
    refusals: tuple[Refusal, ...]


@dataclass(frozen=True, slots=True)
class KeyArrived:
    """Notice: a key reached its destination here and is stored (``duplicate``: it was already)."""

    key_id: str
    source: str
    hops: int
    duplicate: bool = False


RelayAction = (
    SaveLink
    | SendHop
    | StoreKey
    | AnswerHop
    | DeliverKeys
    | FailRequest
    | HopRefused
    | ForwardFailed
    | PathFailed
    | KeyArrived
)
