"""Who gets key when there is not enough for everyone: per-master-SAE admission (pure; clock injected).

Theory of operation:
    * **Token bucket per master SAE** (optional, ``kme.max_keys_per_sae_per_s``
      and ``kme.burst``): each master SAE's bucket fills at the configured
      rate up to ``burst`` keys; an ``enc_keys`` request takes as many tokens
      as keys. A request the bucket cannot cover is refused and takes
      nothing; a request for more than ``burst`` keys can never pass and
      says so. It caps what any one application can take, whatever the
      network could give.
    * **Fair share when a path runs short** (``kme.fair_share``): the KME
      remembers, per destination node (the path's far end), which master
      SAEs asked for key there in the last ``window_s`` seconds, how many
      keys each asked for (refused requests too), the size of each one's
      last request, and how many keys each was admitted. Each other SAE
      ``X`` asking there is owed a *reserve*: its last request, or what it
      asks in ``window_s / 2`` at the rate it asked in the window, whichever
      is more (key grows in blocks, seconds apart: the reserve carries it
      over the gap). A request of ``k`` keys from SAE ``M`` is *short* when
      the key the path could carry now, less what admitted requests have
      not delivered yet, less ``k``, would not leave every other SAE its
      reserve. Then ``M`` is admitted only if it is not ahead of anyone
      waiting: ``used(M) + k <= used(X) + last(X)`` for every other SAE
      ``X``. So an SAE that asks little is always served (the others are
      ahead of it), a looping SAE gets what the others leave, and two SAEs
      that both want more than the path grows end up with equal shares
      (max-min fairness over the window). While the path has plenty,
      nobody is refused, and an SAE alone on a path may take all of it.
    * **Nothing is consumed by a refusal**: no tokens, no share. An admitted
      request whose delivery then fails gives its tokens and its share
      back (:meth:`Ticket.release`), so failures elsewhere do not count
      against the caller.
    * Memory is bounded by the SAEs attached to this KME and the nodes of the
      topology (both fixed), times the requests of one window.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence

from qcinode.kme.handlers import DeliveryRefused, RefusalReason

__all__ = ["Admission", "Ticket"]


@dataclasses.dataclass(slots=True, eq=False)  # compared by identity: two requests are never the same
class _Use:
    at: float
    master: str
    keys: int
    delivered: bool = False


@dataclasses.dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclasses.dataclass(slots=True)
class Ticket:
    """An admitted request: release it once its delivery ended, saying whether it delivered."""

    _admission: Admission
    _master: str
    _tokens: int
    _uses: list[tuple[str, _Use]]
    _released: bool = False

    def release(self, delivered: bool) -> None:
        """Keep the request's share if it delivered; give tokens and share back if it did not. Idempotent."""
        if self._released:
            return
        self._released = True
        self._admission._settle(self, delivered)


class Admission:
    """Admission of ``enc_keys`` requests by master SAE: token bucket and fair share (see the module docstring)."""

    __slots__ = ("_asked", "_buckets", "_burst", "_clock", "_fair_share", "_last", "_rate", "_seen", "_uses", "_window_s", "refusals")

    def __init__(
        self,
        *,
        rate_per_s: float | None = None,
        burst: int = 256,
        fair_share: bool = True,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Set the limits.

        Args:
            rate_per_s: Keys per second a master SAE's bucket refills; None: no bucket.
            burst: Bucket size in keys.
            fair_share: Whether to apply the fair-share rule.
            window_s: How far back use of a path is remembered.
            clock: Monotonic seconds.
        """
        self._rate = rate_per_s
        self._burst = burst
        self._fair_share = fair_share
        self._window_s = window_s
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._uses: dict[str, deque[_Use]] = {}
        self._seen: dict[str, dict[str, float]] = {}  # destination -> master -> when it last asked
        self._last: dict[str, dict[str, int]] = {}  # destination -> master -> keys it last asked for
        # destination -> master -> [second, keys asked in it], the window's seconds only
        self._asked: dict[str, dict[str, deque[list[float]]]] = {}
        #: Refused requests so far, by reason (``rate_limit``, ``fair_share``).
        self.refusals: Counter[str] = Counter()

    def admit(self, master: str, slaves: Sequence[str], destinations: Sequence[str], keys: int, available: int) -> Ticket:
        """Admit a request of ``keys`` keys from ``master`` to ``slaves`` (at nodes ``destinations``), or refuse it.

        Args:
            master: The caller (master SAE).
            slaves: The slave SAEs (named in refusals).
            destinations: Their nodes: the paths' far ends, whose share is counted.
            keys: Keys asked for.
            available: Keys the network could carry to the slaves now (the
                least over them), as the key supplier reports.

        Returns:
            The ticket to release once delivery ended.

        Raises:
            DeliveryRefused: ``rate_limit`` or ``fair_share``, naming the limit; nothing consumed.
        """
        now = self._clock()
        self._forget_before(now - self._window_s)
        for destination in destinations:
            self._seen.setdefault(destination, {})[master] = now
            self._last.setdefault(destination, {})[master] = keys
            seconds = self._asked.setdefault(destination, {}).setdefault(master, deque())
            second = float(int(now))
            if seconds and seconds[-1][0] == second:
                seconds[-1][1] += keys
            else:
                seconds.append([second, float(keys)])
        tokens = 0
        if self._rate is not None:
            bucket = self._bucket(master, now)
            if keys > self._burst:
                self._refuse(RefusalReason.RATE_LIMIT, f"{master} may take at most {self._burst} keys at once (kme.burst); ask for fewer", master)
            if bucket.tokens < keys:
                wait_s = (keys - bucket.tokens) / self._rate
                self._refuse(
                    RefusalReason.RATE_LIMIT,
                    f"{master} is limited to {self._rate:g} keys/s (kme.max_keys_per_sae_per_s, bursts of {self._burst}); "
                    f"{keys} key(s) asked: retry in {wait_s:.1f} s",
                    master,
                )
            tokens = keys
        if self._fair_share:
            for destination in destinations:
                self._check_share(master, slaves, destination, keys, available)
        if tokens:
            self._buckets[master].tokens -= tokens
        uses = []
        for destination in destinations:
            use = _Use(now, master, keys)
            self._uses.setdefault(destination, deque()).append(use)
            uses.append((destination, use))
        return Ticket(self, master, tokens, uses)

    def _check_share(self, master: str, slaves: Sequence[str], destination: str, keys: int, available: int) -> None:
        others = [x for x in self._seen.get(destination, {}) if x != master]
        if not others:
            return  # alone on the path: it may take all of it
        last = self._last[destination]
        asked = self._asked[destination]
        uses = self._uses.get(destination, deque())
        undelivered = sum(u.keys for u in uses if not u.delivered)
        horizon_s = self._window_s / 2
        now = self._clock()

        def rate(x: str) -> float:
            """Keys per second ``x`` asked for, over the window (or since it started asking, if later)."""
            seconds = asked[x]
            span = min(self._window_s, max(1.0, now - seconds[0][0])) if seconds else self._window_s
            return sum(keys for _, keys in seconds) / span

        reserve = sum(max(last[x], rate(x) * horizon_s) for x in others)
        if available - undelivered - keys >= reserve:
            return  # plenty: every other SAE keeps its reserve
        used: Counter[str] = Counter()
        for use in uses:
            used[use.master] += use.keys
        ahead_of = [x for x in others if used[master] + keys > used[x] + last[x]]
        if ahead_of:
            self._refuse(
                RefusalReason.FAIR_SHARE,
                f"the network is short of key to {', '.join(slaves)} and {master} has had more than its fair share of it "
                f"in the last {self._window_s:g} s, with {len(others)} other application(s) waiting (kme.fair_share); retry later",
                master,
            )

    def _bucket(self, master: str, now: float) -> _Bucket:
        assert self._rate is not None
        bucket = self._buckets.get(master)
        if bucket is None:
            bucket = self._buckets[master] = _Bucket(float(self._burst), now)
        bucket.tokens = min(float(self._burst), bucket.tokens + (now - bucket.at) * self._rate)
        bucket.at = now
        return bucket

    def _refuse(self, reason: RefusalReason, message: str, master: str) -> None:
        self.refusals[reason.value] += 1
        raise DeliveryRefused(reason, message, internal=f"admission refused {master}: {reason.value}")

    def _forget_before(self, cutoff: float) -> None:
        for uses in self._uses.values():
            while uses and uses[0].at < cutoff and uses[0].delivered:
                uses.popleft()
        for destination, seen in self._seen.items():
            for master in [m for m, at in seen.items() if at < cutoff]:
                del seen[master]
                self._last[destination].pop(master, None)
                self._asked[destination].pop(master, None)
        for by_master in self._asked.values():
            for seconds in by_master.values():
                while seconds and seconds[0][0] < cutoff - 1:
                    seconds.popleft()

    def _settle(self, ticket: Ticket, delivered: bool) -> None:
        if delivered:
            for _, use in ticket._uses:
                use.delivered = True
            return
        if ticket._tokens and self._rate is not None:
            bucket = self._buckets[ticket._master]
            bucket.tokens = min(float(self._burst), bucket.tokens + ticket._tokens)
        for destination, use in ticket._uses:
            uses = self._uses.get(destination)
            if uses is not None and use in uses:
                uses.remove(use)
