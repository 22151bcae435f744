"""Routing trusts no neighbour: signatures, the sequence window, tombstones, rejection reasons.

The database is pure: these tests inject a fake verifier that accepts an
advert only if its "signature" is the one its origin would make (a tag
derived from the origin's secret), so forging, altering and replaying are
tested without keys; tests/unit/test_pki_adverts.py runs the real ECDSA
verifier.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from qcinode.core.routing import (
    MAX_SEQUENCE,
    AdvertRejected,
    LinkAdvert,
    LinkStateAdvert,
    LinkStateDatabase,
    RejectReason,
    advert_bytes,
)
from qcinode.errors import LocalProtocolError

T0 = 1_700_000_000.0
S0 = int(T0 * 1000)


class _FakeSigner:
    """Signs as node ``name``: the tag is a hash of the name's secret and the payload."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def certificate(self) -> bytes:
        return f"cert:{self.name}".encode()

    def sign(self, payload: bytes) -> bytes:
        return hashlib.sha256(f"secret:{self.name}".encode() + payload).digest()


class _FakeVerifier:
    """Knows every node's secret; counts the signature checks it makes."""

    def __init__(self) -> None:
        self.checks = 0

    def verify(self, origin: str, payload: bytes, signature: bytes, certificate: bytes) -> RejectReason | None:
        self.checks += 1
        if not certificate.startswith(b"cert:"):
            return RejectReason.UNTRUSTED_CERTIFICATE
        if certificate != f"cert:{origin}".encode():
            return RejectReason.WRONG_ORIGIN
        if signature != _FakeSigner(origin).sign(payload):
            return RejectReason.BAD_SIGNATURE
        return None


#: The advert lifetime the timings of these tests are written for (the rules scale with it).
MAX_AGE_S = 6.0


def _origin_db(name: str = "a") -> LinkStateDatabase:
    return LinkStateDatabase(name, signer=_FakeSigner(name), verifier=_FakeVerifier(), max_age_s=MAX_AGE_S)


def _receiver(name: str = "b") -> tuple[LinkStateDatabase, _FakeVerifier]:
    verifier = _FakeVerifier()
    return LinkStateDatabase(name, signer=_FakeSigner(name), verifier=verifier, max_age_s=MAX_AGE_S), verifier


def _refused(db: LinkStateDatabase, advert: LinkStateAdvert, now: float) -> RejectReason:
    before = db.snapshot()["origins"]
    with pytest.raises(AdvertRejected) as refused:
        db.receive(advert, now)
    assert db.snapshot()["origins"] == before, "a refused advert changed the database"
    return refused.value.reason


def test_signed_adverts_are_believed_and_flooded() -> None:
    a = _origin_db("a")
    b, verifier = _receiver()
    advert = a.originate([LinkAdvert("l", "b", True, 100)], T0)
    assert advert.signature and advert.certificate == b"cert:a"
    assert b.receive(advert, T0) is True
    assert b.adverts["a"].links == advert.links
    # The copy another neighbour floods again costs no signature check.
    assert b.receive(advert, T0) is False
    assert verifier.checks == 1


def test_a_neighbour_can_neither_forge_nor_alter_an_advert() -> None:
    a, c = _origin_db("a"), _origin_db("c")
    b, _ = _receiver()
    genuine = a.originate([LinkAdvert("l", "b", True, 100)], T0)
    assert b.receive(genuine, T0)
    newer = genuine.sequence + 1
    # c signs an advert for origin a with its own key and certificate.
    forged = LinkStateAdvert("a", newer, (), certificate=b"cert:c")
    forged = dataclasses.replace(forged, signature=_FakeSigner("c").sign(advert_bytes(forged)))
    assert _refused(b, forged, T0) is RejectReason.WRONG_ORIGIN
    # c relays a's advert with the links changed (and a higher sequence to replace it).
    altered = dataclasses.replace(genuine, sequence=newer, links=(LinkAdvert("l", "b", False, 0),))
    assert _refused(b, altered, T0) is RejectReason.BAD_SIGNATURE
    # The same sequence as held, other links: a different advert under the same number.
    same_number = dataclasses.replace(genuine, links=())
    assert _refused(b, same_number, T0) is RejectReason.BAD_SIGNATURE
    # Stripped of its signature.
    assert _refused(b, dataclasses.replace(genuine, sequence=newer, signature=b""), T0) is RejectReason.UNSIGNED
    assert _refused(b, dataclasses.replace(genuine, sequence=newer, certificate=b"junk"), T0) is RejectReason.UNTRUSTED_CERTIFICATE
    assert b.adverts["a"].links == genuine.links
    assert b.rejections == {
        RejectReason.WRONG_ORIGIN: 1,
        RejectReason.BAD_SIGNATURE: 2,
        RejectReason.UNSIGNED: 1,
        RejectReason.UNTRUSTED_CERTIFICATE: 1,
    }
    assert b.snapshot()["rejected"] == {"bad_signature": 2, "unsigned": 1, "untrusted_certificate": 1, "wrong_origin": 1}
    # The real origin's next advert still goes through.
    c.originate([], T0)
    assert b.receive(a.originate([LinkAdvert("l", "b", True, 50)], T0 + 1), T0 + 1)


def test_a_replayed_old_advert_is_refused() -> None:
    a = _origin_db("a")
    b, _ = _receiver()
    old = a.originate([LinkAdvert("l", "b", True, 100)], T0)
    assert b.receive(old, T0)
    assert b.receive(a.originate([LinkAdvert("l", "b", False, 0)], T0 + 1), T0 + 1)
    assert _refused(b, old, T0 + 2) is RejectReason.STALE
    # Long after every copy aged out, the window refuses it too.
    assert _refused(b, old, T0 + 1000) is RejectReason.EXPIRED_SEQUENCE


def test_a_huge_sequence_never_becomes_a_floor() -> None:
    """The attack this guards against: a forged 2^63 - 1 advert replaced the real one and stayed as its floor."""
    a = _origin_db("a")
    b, verifier = _receiver()
    assert b.receive(a.originate([LinkAdvert("l", "b", True, 100)], T0), T0)
    poisoned = LinkStateAdvert("a", MAX_SEQUENCE, ())
    poisoned = dataclasses.replace(poisoned, signature=_FakeSigner("a").sign(advert_bytes(poisoned)), certificate=b"cert:a")
    checks = verifier.checks
    # Even correctly signed (a stolen key, a broken clock) it is refused, before any signature check.
    assert _refused(b, poisoned, T0) is RejectReason.FUTURE_SEQUENCE
    assert verifier.checks == checks
    # After the real advert ages out, its tombstone is a sequence the origin passes at once.
    assert b.expire(T0 + 7) == ["a"]
    assert b.receive(a.originate([LinkAdvert("l", "b", True, 7)], T0 + 8), T0 + 8)
    assert b.adverts["a"].links == (LinkAdvert("l", "b", True, 7),)


def test_the_window_is_sixty_seconds_ahead() -> None:
    b, _ = _receiver()
    signer = _FakeSigner("a")

    def signed(sequence: int) -> LinkStateAdvert:
        advert = LinkStateAdvert("a", sequence, ())
        return dataclasses.replace(advert, signature=signer.sign(advert_bytes(advert)), certificate=signer.certificate)

    assert _refused(b, signed(S0 + 60_001), T0) is RejectReason.FUTURE_SEQUENCE
    assert b.receive(signed(S0 + 60_000), T0) is True  # an origin whose clock is a minute ahead is still heard


def test_a_tombstone_is_forgotten_once_no_copy_can_circulate() -> None:
    a = _origin_db("a")
    b, _ = _receiver()
    ahead = a.originate([], T0 + 50)  # an origin whose clock ran 50 s ahead, then restarted correct
    assert b.receive(ahead, T0)
    assert b.expire(T0 + 7) == ["a"]
    restarted = _origin_db("a")
    fresh = restarted.originate([LinkAdvert("l", "b", True, 1)], T0 + 8)
    assert _refused(b, fresh, T0 + 8) is RejectReason.STALE  # the tombstone still guards against stale copies
    # max_age_s after the drop the tombstone is gone: the origin is heard again long before its clock catches up.
    later = restarted.originate([LinkAdvert("l", "b", True, 2)], T0 + 14)
    assert b.receive(later, T0 + 14) is True
    assert "a" in b.nodes()


def test_own_origin_recovers_from_a_genuine_copy_and_ignores_a_poisoned_one() -> None:
    a = _origin_db("a")
    first = a.originate([], T0)
    # A genuine copy of ours from before a clock step (made by our own key) is passed at once.
    earlier_life = _origin_db("a")
    ahead = earlier_life.originate([], T0 + 30)
    assert a.receive(ahead, T0) is False
    assert a.originate([], T0).sequence == ahead.sequence + 1
    # A forged one, even near the end of the sequence space, changes nothing.
    forged = LinkStateAdvert("a", MAX_SEQUENCE - 1, (), signature=b"x", certificate=b"cert:a")
    assert _refused(a, forged, T0) is RejectReason.FUTURE_SEQUENCE
    forged_now = LinkStateAdvert("a", first.sequence + 40_000, (), signature=b"x", certificate=b"cert:a")
    assert _refused(a, forged_now, T0) is RejectReason.BAD_SIGNATURE
    assert a.originate([], T0).sequence == ahead.sequence + 2


def test_own_origin_recovery_near_the_end_of_the_sequence_space() -> None:
    """A clock near 2^63 ms: recovery still jumps, and never past the space."""
    now = (MAX_SEQUENCE - 200_000) / 1000  # (a double resolves about 1 s here)
    a = _origin_db("a")
    a.originate([], now)
    copy = _origin_db("a").originate([], now + 45)  # within the window, near the maximum
    assert a.receive(copy, now) is False
    assert a.originate([], now).sequence == copy.sequence + 1 <= MAX_SEQUENCE
    poisoned = LinkStateAdvert("a", MAX_SEQUENCE, (), signature=b"x", certificate=b"cert:a")
    assert _refused(a, poisoned, now) is RejectReason.FUTURE_SEQUENCE
    assert a.originate([], now).sequence == copy.sequence + 2


def test_without_a_verifier_nothing_is_checked_but_the_window_still_holds() -> None:
    db = LinkStateDatabase("b")
    assert db.receive(LinkStateAdvert("a", S0, ()), T0)
    assert _refused(db, LinkStateAdvert("a", MAX_SEQUENCE, ()), T0) is RejectReason.FUTURE_SEQUENCE


def test_every_reason_has_a_stable_label() -> None:
    labels = [reason.value for reason in RejectReason]
    assert len(set(labels)) == len(labels)
    assert all(label.isidentifier() and label.islower() for label in labels)


def test_advert_bytes_are_prefix_free_and_cover_every_field() -> None:
    base = LinkStateAdvert("a", S0, (LinkAdvert("l", "b", True, 5),))
    variants = [
        base,
        dataclasses.replace(base, origin="ab"),
        dataclasses.replace(base, sequence=S0 + 1),
        dataclasses.replace(base, links=()),
        dataclasses.replace(base, links=(LinkAdvert("lb", "", True, 5),)),
        dataclasses.replace(base, links=(LinkAdvert("l", "b", False, 5),)),
        dataclasses.replace(base, links=(LinkAdvert("l", "b", True, 6),)),
        dataclasses.replace(base, links=(LinkAdvert("l", "b", True, 5), LinkAdvert("m", "c", True, 5))),
    ]
    encodings = [advert_bytes(v) for v in variants]
    assert len(set(encodings)) == len(encodings)
    for x in encodings:
        for y in encodings:
            assert x == y or not y.startswith(x)
    # The signature and certificate are carried, not signed.
    assert advert_bytes(dataclasses.replace(base, signature=b"s", certificate=b"c")) == encodings[0]
    with pytest.raises(LocalProtocolError):
        advert_bytes(LinkStateAdvert("a", -1, ()))


def test_bad_window_settings_are_local_errors() -> None:
    with pytest.raises(LocalProtocolError):
        LinkStateDatabase("a", max_skew_s=0)
    with pytest.raises(LocalProtocolError):
        LinkStateDatabase("a", max_skew_s=float("inf"))
