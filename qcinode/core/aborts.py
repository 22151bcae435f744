"""Why a block was discarded: a closed vocabulary, with the human detail kept apart.

Theory of operation:
    A block ends in :class:`~qcinode.core.pipeline.BlockAborted` with a
    *reason text*: a sentence from the key-length formula ("phase error
    bound is 1/2 or more"), a code from the pipeline ("verification_failed")
    or, for a block the peer gave up, whatever text the peer sent in its
    ``Estimate``, ``Confirm`` or ``Verdict``. The text is for people
    (``qcinode status`` shows it in ``recent_aborts``); counting by it would
    give Prometheus an unbounded label set, one a misbehaving peer could
    grow at will.

    So every reason text is *classified* into one :class:`AbortReason`, a
    closed list: the label values of ``qcinode_link_blocks_aborted`` and the
    keys of ``aborts_by_reason`` in ``qcinode status --json``. The rules:

    1. A text this module knows (the formula's sentences, the pipeline's
       and the link worker's codes) maps to its member, with or without a
       ``": detail"`` tail (``"no_usable_statistics: ..."``).
    2. Anything else is :attr:`AbortReason.OTHER`: a reason only a peer of
       another version, or a misbehaving one, would send.
    3. A member's value is its code; :attr:`AbortReason.short` is how the
       status table spells it in a few characters.

    New failure kinds are new members: a reviewed change to a closed list.
"""

from __future__ import annotations

import enum
from typing import Final

from .estimation import (
    REASON_CORRECTIONS,
    REASON_NO_KEY_COUNTS,
    REASON_NO_SINGLE_PHOTON_KEY,
    REASON_NO_SINGLE_PHOTON_TEST,
    REASON_NO_TEST_COUNTS,
    REASON_PHASE_ERROR,
    REASON_TAGGED_KEY,
    REASON_TAGGED_TEST,
)

__all__ = ["AbortReason", "abort_reason"]


class AbortReason(enum.StrEnum):
    """Why a block was discarded, as a bounded label value."""

    #: No key-basis detection in the block (the formula has nothing to bound).
    NO_KEY_COUNTS = "no_key_counts"
    #: No test-basis detection (or no test bits) in the block.
    NO_TEST_COUNTS = "no_test_counts"
    #: The single-photon key-basis events cannot be bounded above zero (s_Z1 <= 0).
    NO_SINGLE_PHOTON_KEY = "no_single_photon_key"
    #: The single-photon test-basis events cannot be bounded above zero (s_X1 <= 0).
    NO_SINGLE_PHOTON_TEST = "no_single_photon_test"
    #: The phase-error bound reaches 1/2: an eavesdropper or too much noise.
    PHASE_ERROR = "phase_error"
    #: The error-correction leak and finite-size corrections exceed the entropy.
    NO_ENTROPY = "no_entropy"
    #: The source's statistics cannot feed the bounds (a misconfigured source).
    NO_USABLE_STATISTICS = "no_usable_statistics"
    #: The block was cut short by the end of a satellite pass and is too small.
    PASS_TOO_SHORT = "pass_too_short"
    #: Error correction left no key: every LDPC frame failed to decode and was discarded.
    RECONCILIATION_FAILED = "reconciliation_failed"
    #: The corrected keys' hashes differ.
    VERIFICATION_FAILED = "verification_failed"
    #: The link's reserve of one-time MAC keys is empty.
    AUTHENTICATION_KEYS_EXHAUSTED = "authentication_keys_exhausted"
    #: The peer's transcript tag did not verify here.
    AUTHENTICATION_FAILED = "authentication_failed"
    #: Our transcript tag did not verify at the peer (its Commit says so).
    AUTHENTICATION_FAILED_AT_PEER = "authentication_failed_at_peer"
    #: The two ends computed different key lengths or leaks.
    KEY_LENGTH_MISMATCH = "key_length_mismatch"
    #: The privacy-amplification seed has the wrong length.
    BAD_AMPLIFICATION_SEED = "bad_amplification_seed"
    #: Bob held the block pending a Commit that never came, and Alice does not hold it.
    COMMIT_LOST = "commit_lost"
    #: The session broke (the peer went away, a protocol error, a partition).
    SESSION_LOST = "session_lost"
    #: A free-space link's classical channel closed with the end of the pass.
    CONTACT_ENDED = "contact_ended"
    #: The link's state could not be written to disk.
    STORAGE_WRITE_FAILED = "storage_write_failed"
    #: The peer refused the block without saying why.
    REJECTED_BY_PEER = "rejected_by_peer"
    #: The peer aborted at estimation without saying why.
    ABORTED_BY_PEER = "aborted_by_peer"
    #: A reason this end does not know (sent by a peer): its text is in ``recent_aborts``.
    OTHER = "other"

    @property
    def short(self) -> str:
        """The reason in a few characters, as the status table shows it."""
        return _SHORT.get(self, self.value)


_SHORT: Final[dict[AbortReason, str]] = {
    AbortReason.NO_KEY_COUNTS: "no key-basis clicks",
    AbortReason.NO_TEST_COUNTS: "no test-basis clicks",
    AbortReason.NO_SINGLE_PHOTON_KEY: "s_Z1<=0",
    AbortReason.NO_SINGLE_PHOTON_TEST: "s_X1<=0",
    AbortReason.PHASE_ERROR: "phase error >= 1/2",
    AbortReason.NO_ENTROPY: "no entropy left",
    AbortReason.RECONCILIATION_FAILED: "no frame decoded",
}

#: Reason texts that are not a member's value, by the member they mean.
_TEXTS: Final[dict[str, AbortReason]] = {
    REASON_NO_KEY_COUNTS: AbortReason.NO_KEY_COUNTS,
    REASON_NO_TEST_COUNTS: AbortReason.NO_TEST_COUNTS,
    "no_test_bits": AbortReason.NO_TEST_COUNTS,
    REASON_NO_SINGLE_PHOTON_KEY: AbortReason.NO_SINGLE_PHOTON_KEY,
    REASON_TAGGED_KEY: AbortReason.NO_SINGLE_PHOTON_KEY,
    REASON_NO_SINGLE_PHOTON_TEST: AbortReason.NO_SINGLE_PHOTON_TEST,
    REASON_TAGGED_TEST: AbortReason.NO_SINGLE_PHOTON_TEST,
    REASON_PHASE_ERROR: AbortReason.PHASE_ERROR,
    REASON_CORRECTIONS: AbortReason.NO_ENTROPY,
    "insufficient_entropy": AbortReason.NO_ENTROPY,
}


def abort_reason(text: str) -> AbortReason:
    """The member a reason text means (rules 1 and 2 of the module docstring).

    Args:
        text: A :class:`~qcinode.core.pipeline.BlockAborted` reason, ours or
            the peer's, or a member's value (a counter saved by this version).

    Returns:
        Its member; :attr:`AbortReason.OTHER` for a text this end does not know.
    """
    known = _TEXTS.get(text)
    if known is not None:
        return known
    code = text.split(":", 1)[0].strip()
    try:
        return AbortReason(code)
    except ValueError:
        return AbortReason.OTHER
