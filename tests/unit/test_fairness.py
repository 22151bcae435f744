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
    # Short (3 keys for 2 SAEs asking 4): the hog has had far more than half.
    refusal = _refused(admission, "hog", ["b"], ["n2"], 4, 3)
    assert refusal.reason is RefusalReason.FAIR_SHARE and "fair share" in str(refusal) and "b" in str(refusal)
    admission.admit("polite", ["d"], ["n2"], 1, 3).release(True)  # under its share: admitted
    # Another destination is another path: no share counted there.
    admission.admit("hog", ["x"], ["n3"], 4, 3).release(True)
    assert admission.refusals == {"fair_share": 1}


def test_undelivered_keys_count_as_spent_and_a_failure_gives_the_share_back() -> None:
    clock = Clock()
    admission = Admission(clock=clock)
    admission.admit("polite", ["d"], ["n2"], 1, 100).release(True)
    in_flight = [admission.admit("hog", ["b"], ["n2"], 4, 100) for _ in range(24)]  # 96 keys not delivered yet
    refusal = _refused(admission, "hog", ["b"], ["n2"], 4, 100)  # 100 - 96 in flight < 4 × 2
    assert refusal.reason is RefusalReason.FAIR_SHARE
    for ticket in in_flight:
        ticket.release(False)  # they failed: nothing of them counts
    admission.admit("hog", ["b"], ["n2"], 4, 100).release(True)


def test_the_window_forgets() -> None:
    clock = Clock()
    admission = Admission(window_s=10.0, clock=clock)
    admission.admit("polite", ["d"], ["n2"], 1, 10**6).release(True)
    for _ in range(5):
        admission.admit("hog", ["b"], ["n2"], 4, 10**6).release(True)
    _refused(admission, "hog", ["b"], ["n2"], 4, 1)
    clock.now += 11  # the polite SAE has not asked for a while: the hog is alone again
    admission.admit("hog", ["b"], ["n2"], 4, 1).release(True)


def _simulate(fair_share: bool, seconds: float = 20.0, regrow_keys_per_s: float = 40.0) -> tuple[int, int, int]:
    """A path regrowing key; a hog asking a key every 10 ms (as fast as it regrows), a polite SAE one every 250 ms.

    Returns (polite requests, polite served, hog keys served).
    """
    clock = Clock()
    admission = Admission(fair_share=fair_share, window_s=10.0, clock=clock)
    pad = 10.0  # what the path held when the hog started
    polite_asked = polite_served = hog_keys = 0
    step = 0.01
    for tick in range(int(seconds / step)):
        clock.now += step
        pad += regrow_keys_per_s * step
        requests = [("hog", 1)]
        if tick % 25 == 0:
            requests.append(("polite", 1))
            polite_asked += 1
        for master, keys in requests:
            try:
                ticket = admission.admit(master, ["peer"], ["n2"], keys, int(pad))
            except DeliveryRefused:
                continue
            delivered = int(pad) >= keys  # the network refuses what the pad cannot carry
            if delivered:
                pad -= keys
                if master == "polite":
                    polite_served += 1
                else:
                    hog_keys += keys
            ticket.release(delivered)
    return polite_asked, polite_served, hog_keys


def test_a_looping_sae_cannot_starve_another_on_the_same_path() -> None:
    asked, served, hog = _simulate(fair_share=True)
    assert served == asked  # every request of the polite SAE is served (it asks far less than half)
    assert hog >= 0.9 * (40 * 20 - served)  # and the hog still gets nearly all the rest
    asked_unfair, served_unfair, _ = _simulate(fair_share=False)
    assert served_unfair < 0.2 * asked_unfair  # without the rule the hog takes nearly everything
