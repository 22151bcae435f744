"""Ledger audit across both ends of every link (pure: works on status data).

Each end of a link keeps a ledger of the pool bytes it used, per block and per
initiating half (:mod:`qcinode.core.pool`). The initiator of a range (the end
that chose it, for a relay hop's pad) marks it used and saves that before
anything leaves; the other end consumes exactly the ranges the message names.
So, across the two ends:

* every byte the *receiving* end used, the initiating end used too — a byte
  consumed only by the receiver would be a byte the initiator may use again;
* a byte only the initiator used was spent by a message that never arrived
  or was refused (a lost, forged or refused relay hop): wasted, never reused;
* with no faults, the two ledgers are equal;
* a pool folds closed blocks beyond its most recent ones into an aggregate
  (:mod:`qcinode.core.pool`, Folding) and lists them no more: a block one
  end no longer lists because it folded it (its seq is below the end's
  ``ledger_folded_through``) cannot be compared and is skipped, counted in
  ``blocks_folded``. Both ends fold alike, so with no faults none is skipped.

Within one end the pool refuses to use a byte twice, and its ledger merges
used ranges; :func:`audit_ledgers` also checks that no two ranges of one end
overlap, in case a ledger was edited or corrupted on disk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["LedgerAudit", "LinkLedgerAudit", "audit_ledgers"]

Interval = tuple[int, int]


@dataclasses.dataclass(slots=True)
class LinkLedgerAudit:
    """One link's audit."""

    link_id: str
    bytes_both: int = 0  # used at both ends
    bytes_initiator_only: int = 0  # spent by the initiator on messages that did not arrive or were refused
    blocks_folded: int = 0  # listed at one end only, folded at the other: not compared
    violations: list[str] = dataclasses.field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.violations and self.bytes_initiator_only == 0


@dataclasses.dataclass(slots=True)
class LedgerAudit:
    """The audit of every link that reported both ends."""

    links: dict[str, LinkLedgerAudit]
    missing_ends: list[str]  # links where an end did not answer (not audited)

    @property
    def violations(self) -> list[str]:
        return [v for link in self.links.values() for v in link.violations]

    @property
    def ok(self) -> bool:
        return not self.violations and not self.missing_ends


def _merge(intervals: Iterable[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _overlaps(intervals: list[Interval]) -> list[Interval]:
    ordered = sorted(intervals)
    return [b for a, b in zip(ordered, ordered[1:]) if b[0] < a[1]]


def _length(intervals: Iterable[Interval]) -> int:
    return sum(end - start for start, end in intervals)


def _intersection(a: list[Interval], b: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _seq(block_id: str) -> int | None:
    """The seq of a block ID ``"<link_id>/<seq>"``, None for any other."""
    digits = block_id.rpartition("/")[2]
    return int(digits) if digits.isascii() and digits.isdigit() else None


def _by_half(entries: Iterable[Any]) -> dict[tuple[str, str], list[Interval]]:
    halves: dict[tuple[str, str], list[Interval]] = {}
    for block_id, offset, length, initiator in entries:
        halves.setdefault((str(block_id), str(initiator)), []).append((int(offset), int(offset) + int(length)))
    return halves


def audit_link(link_id: str, ledgers: Mapping[str, Iterable[Any]], folded_through: Mapping[str, int] | None = None) -> LinkLedgerAudit:
    """Audits one link from its two ends' ledgers, keyed by role ("alice", "bob").

    Each ledger entry is ``[block_id, offset_bytes, length_bytes, initiator]``
    as the admin status reports it; ``folded_through`` each end's
    ``ledger_folded_through`` (absent: 0, nothing folded).
    """
    audit = LinkLedgerAudit(link_id)
    views = {role: _by_half(entries) for role, entries in ledgers.items()}
    listed = {role: {block_id for block_id, _ in halves} for role, halves in views.items()}
    folded_through = folded_through or {}
    skipped: set[str] = set()
    for role, blocks in listed.items():
        below = folded_through.get(role, 0)
        for other, other_blocks in listed.items():
            if other != role:
                skipped.update(b for b in other_blocks - blocks if (seq := _seq(b)) is not None and seq < below)
    audit.blocks_folded = len(skipped)
    views = {role: {key: v for key, v in halves.items() if key[0] not in skipped} for role, halves in views.items()}
    for role, halves in views.items():
        for (block_id, initiator), intervals in halves.items():
            for start, end in _overlaps(intervals):
                audit.violations.append(f"{link_id}: {role} used bytes [{start}, {end}) of {block_id} ({initiator}'s half) twice")
    keys = set(views["alice"]) | set(views["bob"])
    for block_id, initiator in sorted(keys):
        receiver = "bob" if initiator == "alice" else "alice"
        at_initiator = _merge(views.get(initiator, {}).get((block_id, initiator), []))
        at_receiver = _merge(views.get(receiver, {}).get((block_id, initiator), []))
        both = _length(_intersection(at_initiator, at_receiver))
        only_receiver = _length(at_receiver) - both
        if only_receiver:
            audit.violations.append(
                f"{link_id}: {receiver} used {only_receiver} bytes of {block_id} ({initiator}'s half) that {initiator} never used"
            )
        audit.bytes_both += both
        audit.bytes_initiator_only += _length(at_initiator) - both
    return audit


def audit_ledgers(status: Mapping[str, Any]) -> LedgerAudit:
    """Audits every link in a :func:`~qcinode.cluster.launcher.cluster_status` taken with ``ledger=True``."""
    ends: dict[str, dict[str, Any]] = {}
    folded: dict[str, dict[str, int]] = {}
    for node in status["nodes"].values():
        for link in node.get("links", []):
            if "ledger" in link:
                ends.setdefault(link["link_id"], {})[link["role"]] = link["ledger"]
                folded.setdefault(link["link_id"], {})[link["role"]] = int(link.get("ledger_folded_through", 0))
    audits: dict[str, LinkLedgerAudit] = {}
    missing: list[str] = []
    for link_id in sorted(status.get("links", ends)):
        views = ends.get(link_id, {})
        if set(views) != {"alice", "bob"}:
            missing.append(link_id)
            continue
        audits[link_id] = audit_link(link_id, views, folded.get(link_id))
    return LedgerAudit(audits, missing)
