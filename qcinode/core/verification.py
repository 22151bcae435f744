"""Error verification: a universal-hash tag of the corrected key.

Theory of operation:
    * After error correction Alice and Bob each hold a key that *should* be
      equal. One end draws a fresh public seed (from a CSPRNG, after error
      correction has finished, so the keys are fixed before the hash is
      chosen) and both compute a short tag of their key with the hash the
      seed selects; the tags are exchanged over the authenticated channel and
      the block is discarded if they differ (docs/design.md §1 step 5).
    * The hash is a random ``tag_bits × n`` Toeplitz matrix
      (:func:`qcinode.core.amplification.toeplitz_hash`). Random Toeplitz
      matrices form a universal family (Krawczyk, CRYPTO '94), so for two
      distinct keys the tags collide with probability ``2^-tag_bits`` over
      the choice of matrix. A collision is the only way distinct keys pass,
      hence the correctness parameter is ``ε_cor = 2^-tag_bits``
      (Tomamichel, Lim, Gisin, Renner, Nat. Commun. 3, 634 (2012): the
      ``log2(1/ε_cor)`` term in the key length; Lim et al., PRA 89, 022307
      (2014), Eq. (1)). The default 64 bits give ``ε_cor ≈ 5.4·10^-20``.
    * The ``n + tag_bits − 1`` seed bits are expanded from the short public
      seed with SHAKE-256 (FIPS 202), domain-separated and bound to ``n`` and
      ``tag_bits``. The matrix is therefore pseudorandom rather than
      uniformly random: ``ε_cor`` holds against any adversary who cannot
      distinguish SHAKE-256 from random, which is the usual practice for
      verification seeds (the *secrecy* of the final key does not depend on
      it). A seed shorter than :data:`MIN_SEED_BYTES` is refused.
    * The tag is computed with 64-bit words
      (:func:`qcinode.core.amplification.toeplitz_hash_packed`): the same
      matrix and the same tag as the FFT, in ``O(tag_bits · n / 64)`` exact
      word operations, so the family and its ``ε_cor`` are unchanged.
    * The tag is public and reveals ``tag_bits`` bits about the key; the
      key-length formula subtracts them before privacy amplification.
    * Tags are compared in constant time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np

from qcinode.core.amplification import (
    MAX_SEED_BITS,
    pack_bits,
    seed_bits_needed,
    toeplitz_hash_packed,
)
from qcinode.errors import LocalProtocolError

__all__ = ["DEFAULT_TAG_BITS", "MIN_SEED_BYTES", "tags_match", "verification_tag"]

#: Default tag length: ε_cor = 2^-64.
DEFAULT_TAG_BITS = 64

#: Shortest public seed accepted (128 bits of entropy for the SHAKE-256 expansion).
MIN_SEED_BYTES = 16

_DOMAIN = b"qcinode/verification/toeplitz-seed/v1\x00"


def verification_tag(key_bits: np.ndarray, seed: bytes, tag_bits: int = DEFAULT_TAG_BITS) -> bytes:
    """Toeplitz-hash the corrected key to a ``tag_bits``-bit tag.

    Args:
        key_bits: The corrected key, a 1-D array of 0/1, at least 1 bit.
        seed: Public random seed (at least :data:`MIN_SEED_BYTES` bytes),
            identical at both ends and drawn after error correction.
        tag_bits: Tag length in bits; collision probability ``2^-tag_bits``.

    Returns:
        The tag packed big-endian into ``ceil(tag_bits / 8)`` bytes (zero
        padding in the last byte when ``tag_bits`` is not a multiple of 8).

    Raises:
        LocalProtocolError: On an empty or non-bit key, a short seed or a
            non-positive ``tag_bits``.
    """
    if not isinstance(seed, (bytes, bytearray)) or len(seed) < MIN_SEED_BYTES:
        raise LocalProtocolError(f"seed must be at least {MIN_SEED_BYTES} bytes")
    if not isinstance(key_bits, np.ndarray) or key_bits.ndim != 1 or key_bits.size == 0:
        raise LocalProtocolError("key_bits must be a non-empty 1-D array of bits")
    n = int(key_bits.size)
    needed = seed_bits_needed(n, tag_bits)
    if needed > MAX_SEED_BITS:
        raise LocalProtocolError(f"key of {n} bits with a {tag_bits}-bit tag exceeds MAX_SEED_BITS")
    tag = toeplitz_hash_packed(key_bits, _expand_seed(bytes(seed), n, tag_bits, needed), tag_bits)
    return pack_bits(tag)


def tags_match(a: bytes, b: bytes) -> bool:
    """Compare two tags in constant time.

    Args:
        a: Our tag.
        b: The peer's tag.

    Returns:
        True if the tags are byte-for-byte equal.
    """
    return hmac.compare_digest(a, b)


def _expand_seed(seed: bytes, n: int, tag_bits: int, needed: int) -> bytes:
    """Expand ``seed`` to ``needed`` Toeplitz seed bits with SHAKE-256, packed big-endian
    (the padding bits of the last byte are ignored by the hash)."""
    header = _DOMAIN + n.to_bytes(8, "big") + int(tag_bits).to_bytes(4, "big")
    return hashlib.shake_256(header + seed).digest(-(-needed // 8))
