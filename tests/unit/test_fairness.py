"""Who gets key when a path runs short: the KME's per-master-SAE admission."""

from __future__ import annotations

import pytest

from qcinode.kme.fairness import Admission
from qcinode.kme.handlers import DeliveryRefused, RefusalReason


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _refused(admission: Admission, *args: object) -> DeliveryRefused:
    with pytest.raises(DeliveryRefused) as refused:
        admission.admit(*args)  # type: ignore[arg-type]
    return refused.value


def test_the_token_bucket_caps_a_master_sae_and_a_refusal_costs_nothing() -> None:
    clock = Clock()
    admission = Admission(rate_per_s=2.0, burst=4, fair_share=False, clock=clock)
    admission.admit("a", ["b"], ["n2"], 3, 10**6).release(True)
    refusal = _refused(admission, "a", ["b"], ["n2"], 2, 10**6)
    assert refusal.reason is RefusalReason.RATE_LIMIT
    assert "2 keys/s" in str(refusal) and "kme.max_keys_per_sae_per_s" in str(refusal) and "retry in 0.5 s" in str(refusal)
    admission.admit("a", ["b"], ["n2"], 1, 10**6).release(True)  # the refusal took no token: one is left
    clock.now += 1.0  # two more
    admission.admit("a", ["b"], ["n2"], 2, 10**6).release(True)
    # Another SAE has its own bucket.
    admission.admit("c", ["b"], ["n2"], 4, 10**6).release(True)
    refusal = _refused(admission, "c", ["b"], ["n2"], 5, 10**6)
    assert "at most 4 keys at once" in str(refusal)
    assert admission.refusals == {"rate_limit": 2}


def test_a_failed_delivery_gives_its_tokens_back() -> None:
    clock = Clock()
    admission = Admission(rate_per_s=1.0, burst=2, fair_share=False, clock=clock)
    admission.admit("a", ["b"], ["n2"], 2, 10**6).release(False)
    admission.admit("a", ["b"], ["n2"], 2, 10**6).release(True)
    _refused(admission, "a", ["b"], ["n2"], 1, 10**6)


def test_fair_share_applies_only_when_the_path_is_short() -> None:
    clock = Clock()
    admission = Admission(clock=clock)
    for _ in range(20):
        admission.admit("hog", ["b"], ["n2"], 4, 10**6).release(True)  # plenty: nobody is refused, alone or not
    admission.admit("polite", ["d"], ["n2"], 1, 10**6).release(True)
    for _ in range(5):
        admission.admit("hog", ["b"], ["n2"], 4, 1000).release(True)
    # Short (3 keys; after 4 for the hog none would be left for the polite SAE): the hog is far ahead.
    refusal = _refused(admission, "hog", ["b"], ["n2"], 4, 3)
    assert refusal.reason is RefusalReason.FAIR_SHARE and "fair share" in str(refusal) and "b" in str(refusal)
    admission.admit("polite", ["d"], ["n2"], 1, 3).release(True)  # behind the hog: admitted, short or not
    # Another destination is another path: no share counted there.
    admission.admit("hog", ["x"], ["n3"], 4, 3).release(True)
    assert admission.refusals == {"fair_share": 1}


def test_undelivered_keys_count_as_spent_and_a_failure_gives_the_share_back() -> None:
    clock = Clock()
    admission = Admission(clock=clock)
    admission.admit("polite", ["d"], ["n2"], 1, 100).release(True)  # asks 1 key/s: owed a reserve of 5 (window / 2)
    in_flight = []
    with pytest.raises(DeliveryRefused) as refused:
        while True:  # the path could carry 100; admitted requests not delivered yet count as spent
            in_flight.append(admission.admit("hog", ["b"], ["n2"], 4, 100))
    assert refused.value.reason is RefusalReason.FAIR_SHARE
    assert len(in_flight) == 23  # 100 - 92 in flight - 4 < the polite SAE's reserve of 5
    for ticket in in_flight:
        ticket.release(False)  # they failed: nothing of them counts
    admission.admit("hog", ["b"], ["n2"], 4, 100).release(True)


def test_the_window_forgets() -> None:
    clock = Clock()
    admission = Admission(window_s=10.0, clock=clock)
    admission.admit("polite", ["d"], ["n2"], 1, 10**6).release(True)
    for _ in range(5):
        admission.admit("hog", ["b"], ["n2"], 4, 10**6).release(True)
    _refused(admission, "hog", ["b"], ["n2"], 4, 4)
    clock.now += 11  # the polite SAE has not asked for a while: the hog is alone again
    admission.admit("hog", ["b"], ["n2"], 4, 1).release(True)


def _simulate(
    fair_share: bool, *, regrow_keys_per_s: float, polite_every_s: float, hog_keys: int, seconds: float = 20.0, block_every_s: float = 0.01
) -> tuple[int, int, int]:
    """A path regrowing key (in blocks every ``block_every_s``); a hog asking ``hog_keys`` keys every 10 ms, a polite SAE one key every ``polite_every_s``.

    The network refuses what the pad cannot carry (as the relay's up-front
    check does). Returns (polite requests, polite keys served, hog keys served).
    """
    clock = Clock()
    admission = Admission(fair_share=fair_share, window_s=10.0, clock=clock)
    pad = 10.0  # what the path held when the hog started
    polite_asked = polite_served = hog_served = 0
    step = 0.01
    polite_every = round(polite_every_s / step)
    block_every = round(block_every_s / step)
    for tick in range(int(seconds / step)):
        clock.now += step
        if tick % block_every == 0:
            pad += regrow_keys_per_s * block_every_s
        requests = [("hog", hog_keys)]
        if tick % polite_every == 0:
            requests.append(("polite", 1))
            polite_asked += 1
        for master, keys in requests:
            try:
                ticket = admission.admit(master, ["peer"], ["n2"], keys, int(pad))
            except DeliveryRefused:
                continue
            delivered = int(pad) >= keys
            if delivered:
                pad -= keys
                if master == "polite":
                    polite_served += 1
                else:
                    hog_served += keys
            ticket.release(delivered)
    return polite_asked, polite_served, hog_served


@pytest.mark.parametrize("hog_keys", [1, 8])
@pytest.mark.parametrize("block_every_s", [0.01, 1.5], ids=["smooth", "blocks"])
def test_a_looping_sae_cannot_starve_another_that_asks_little(hog_keys: int, block_every_s: float) -> None:
    """The polite SAE asks 4 keys/s of a path growing 40: its fair share is all it asks."""
    asked, served, hog = _simulate(True, regrow_keys_per_s=40, polite_every_s=0.25, hog_keys=hog_keys, block_every_s=block_every_s)
    assert served == asked
    assert hog + served >= 0.9 * 40 * 20  # and the hog still gets nearly all the rest
    if hog_keys == 1 and block_every_s < 0.1:  # a hog asking single keys as fast as they grow leaves nothing without the rule
        asked, served, _ = _simulate(False, regrow_keys_per_s=40, polite_every_s=0.25, hog_keys=hog_keys, block_every_s=block_every_s)
        assert served < 0.2 * asked


@pytest.mark.parametrize("hog_keys", [1, 8])
@pytest.mark.parametrize("block_every_s", [0.01, 1.5], ids=["smooth", "blocks"])
def test_two_saes_that_both_want_more_than_the_path_grows_share_it_equally(hog_keys: int, block_every_s: float) -> None:
    """The polite SAE asks 4 keys/s of a path growing 2.4: max-min fairness gives each about half."""
    _, served, hog = _simulate(True, regrow_keys_per_s=2.4, polite_every_s=0.25, hog_keys=hog_keys, block_every_s=block_every_s)
    total = served + hog
    assert total >= 0.9 * 2.4 * 20
    assert 0.4 * total <= served <= 0.6 * total, (served, hog)
