"""Privacy amplification by Toeplitz hashing, computed with the FFT.

Theory of operation:
    * **Hash family.** Alice and Bob hold the same corrected key ``x`` of
      ``n`` bits. Both apply the same random ``m × n`` Toeplitz matrix ``T``
      over GF(2) and keep ``y = T·x mod 2`` (``m`` bits). Random Toeplitz
      matrices form a two-universal family: for ``x ≠ x'``,
      ``Pr_T[T·x = T·x'] = 2^-m`` (Krawczyk, CRYPTO '94, "LFSR-based hashing
      and authentication"; Mansour, Nisan, Tiwari, STOC '90). The leftover
      hash lemma then makes ``y`` ε-close to uniform and independent of Eve
      when ``m = H_min^ε(X|E) − 2 log2(1/(2ε_PA))`` (Renner 2005; Tomamichel
      et al. 2012; Lim et al., PRA 89, 022307 (2014), Eq. (B1)); the length
      itself comes from the key-length formula, not from this module.
    * **Convention.** A Toeplitz matrix is constant along its diagonals, so
      ``n + m − 1`` seed bits define it. Here::

          T[i, j] = seed[i − j + n − 1]      0 ≤ i < m, 0 ≤ j < n

      so the first row is ``seed[n−1], seed[n−2], …, seed[0]`` and the last
      column is ``seed[m−1 … n+m−2]`` going down. Row ``i`` is the window
      ``seed[i : i + n]`` reversed. Both ends must build the seed bits in the
      same order; :func:`seed_bits_needed` gives the length.
    * **FFT.** With ``k = i + n − 1``, ``y[i] = Σ_j seed[k − j]·x[j]``, i.e.
      entry ``k`` of the linear convolution ``seed * x``. A cyclic
      convolution of length ``L ≥ n + m − 1`` computes the entries
      ``k ∈ [n−1, n+m−2]`` without wrap-around (the largest index of the
      full convolution is ``2n + m − 3 < (n − 1) + L``), so one real FFT of
      each input, a pointwise product and one inverse FFT give all of ``y``
      in ``O(L log L)``. ``L`` is rounded up to a 5-smooth length, which
      pocketfft (numpy's FFT) transforms fastest.
    * **Exactness.** The convolution entries are integers in ``[0, n]``;
      we round to the nearest integer and keep the parity. Rounding is exact
      while the floating-point error stays below 1/2. Percival's bound for
      FFT convolution in IEEE double precision (C. Percival, "Rapid
      multiplication modulo the sum and difference of highly composite
      numbers", Math. Comp. 72 (2003), Thm. 5.1) gives an error below
      ``‖x‖₂‖seed‖₂ · ((1+ε)^{3k}(1+ε√5)^{3k+1}(1+β)^{3k} − 1)`` with
      ``L = 2^k``, ``ε = 2^-53`` and ``β ≈ ε`` the twiddle-factor error,
      i.e. about ``13·k·ε·‖x‖₂‖seed‖₂ < 13·k·ε·L``. With ``L ≤ 2^26``
      (:data:`MAX_SEED_BITS`) that is below ``3·10^-6`` — five orders of
      magnitude inside the 1/2 margin; the observed error at
      ``n = 10^6`` is around ``10^-9``. Larger inputs are refused rather
      than trusted. As a run-time guard every call also checks that the
      distance to the nearest integer stays below :data:`ROUNDING_MARGIN`
      and raises otherwise, so a wrong hash is never returned silently.
    * **Short outputs: 64-bit words.** Row ``i`` of ``T·x`` is the parity of
      ``seed[i : i + n] AND reverse(x)``. With both packed into 64-bit words
      a row costs ``n/64`` ANDs and XORs, so ``m`` rows cost ``O(m·n/64)``
      word operations against the FFT's ``O(L log L)`` floating-point work:
      for the 64-bit verification tag of a 10^6-bit key that is about 50
      times less. Same matrix, same output, exact integer arithmetic (no
      rounding to guard); :func:`toeplitz_hash` uses it while
      ``m ≤`` :data:`WORDS_MAX_OUT_BITS`, and :func:`toeplitz_hash_packed`
      takes the seed packed (as a seed expander produces it).
    * **Bit packing.** Bits travel and are stored packed with
      ``numpy.packbits`` in big-endian bit order: bit 0 of the array is the
      most significant bit of byte 0; the last byte is padded with zero bits.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from qcinode.errors import LocalProtocolError

__all__ = [
    "MAX_SEED_BITS",
    "ROUNDING_MARGIN",
    "pack_bits",
    "WORDS_MAX_OUT_BITS",
    "seed_bits_needed",
    "toeplitz_hash",
    "toeplitz_hash_packed",
    "unpack_bits",
]

Bits = npt.NDArray[np.uint8]

#: Largest ``n + m − 1`` accepted; keeps the FFT rounding provably exact
#: (see the module docstring) and the working memory below about 2 GiB.
MAX_SEED_BITS = 1 << 26

#: A convolution entry farther than this from an integer aborts the hash.
ROUNDING_MARGIN = 0.25

#: Largest output computed with 64-bit words rather than the FFT (module
#: docstring): past it the word method's ``m·n/64`` operations cost more.
WORDS_MAX_OUT_BITS = 2048


def seed_bits_needed(n: int, m: int) -> int:
    """Number of seed bits that define an ``m × n`` Toeplitz matrix.

    Args:
        n: Input length in bits (columns), at least 1.
        m: Output length in bits (rows), at least 1.

    Returns:
        ``n + m − 1``.

    Raises:
        LocalProtocolError: If ``n`` or ``m`` is not a positive int.
    """
    _require_positive_int(n, "n")
    _require_positive_int(m, "m")
    return n + m - 1


def toeplitz_hash(bits: np.ndarray, seed_bits: np.ndarray, out_bits: int) -> Bits:
    """Compute ``T·bits mod 2`` for the Toeplitz matrix defined by ``seed_bits``.

    ``T[i, j] = seed_bits[i − j + n − 1]`` with ``n = len(bits)`` and
    ``m = out_bits`` (module docstring).

    Args:
        bits: The input key, a 1-D array of 0/1 (uint8 or bool), length ``n ≥ 1``.
        seed_bits: ``n + out_bits − 1`` uniformly random bits, shared by both ends.
        out_bits: Output length ``m ≥ 1``. ``m > n`` is allowed (it is
            still a universal hash) but privacy amplification always has
            ``m < n``.

    Returns:
        The ``m`` output bits as a uint8 array of 0/1.

    Raises:
        LocalProtocolError: On a non-bit array, a wrong seed length, a
            non-positive size, a size above :data:`MAX_SEED_BITS`, or (never
            expected) a rounding error beyond :data:`ROUNDING_MARGIN`.
    """
    x = _require_bits(bits, "bits")
    seed = _require_bits(seed_bits, "seed_bits")
    n = int(x.size)
    if n == 0:
        raise LocalProtocolError("bits must not be empty")
    _require_positive_int(out_bits, "out_bits")
    needed = seed_bits_needed(n, out_bits)
    if seed.size != needed:
        raise LocalProtocolError(
            f"seed_bits has {seed.size} bits; a {out_bits}x{n} Toeplitz matrix needs {needed}"
        )
    if needed > MAX_SEED_BITS:
        raise LocalProtocolError(
            f"n + m - 1 = {needed} exceeds MAX_SEED_BITS = {MAX_SEED_BITS} (FFT exactness bound)"
        )
    if out_bits <= WORDS_MAX_OUT_BITS:
        return _toeplitz_words(x, np.packbits(seed.astype(np.uint8, copy=False)), out_bits)
    return _toeplitz_fft(x, seed, out_bits)


def _toeplitz_fft(x: np.ndarray, seed: np.ndarray, out_bits: int) -> Bits:
    """``T·x mod 2`` by one cyclic convolution (module docstring), checked sizes."""
    n = int(x.size)
    length = _fast_length(n + out_bits - 1)
    # One zero-padded float buffer serves both inputs (the seed covers the
    # key's n entries and more): no padded copy per transform.
    buffer = np.zeros(length, np.float64)
    buffer[:n] = x
    spectrum = np.fft.rfft(buffer)
    buffer[: seed.size] = seed
    spectrum *= np.fft.rfft(buffer)
    window = np.fft.irfft(spectrum, length)[n - 1 : n - 1 + out_bits]
    rounded = np.rint(window)
    window -= rounded
    worst = float(np.max(np.abs(window)))
    if worst > ROUNDING_MARGIN:
        raise LocalProtocolError(f"FFT rounding error {worst:.3g} too large for an exact hash")
    return (rounded.astype(np.int64) & 1).astype(np.uint8)


def toeplitz_hash_packed(bits: np.ndarray, seed: bytes, out_bits: int) -> Bits:
    """:func:`toeplitz_hash` with the seed given packed, always with 64-bit words.

    Equal to ``toeplitz_hash(bits, unpack_bits(seed, n + out_bits - 1), out_bits)``;
    seed bits past ``n + out_bits − 1`` (padding of the last byte, or more)
    are ignored. Meant for short outputs (a verification tag): the cost is
    ``O(out_bits · n / 64)``.

    Args:
        bits: The input, a 1-D array of 0/1, length ``n ≥ 1``.
        seed: At least ``ceil((n + out_bits − 1) / 8)`` bytes, big-endian bit order.
        out_bits: Output length ``m ≥ 1``.

    Returns:
        The ``m`` output bits as a uint8 array of 0/1.

    Raises:
        LocalProtocolError: On a non-bit array, an empty one, a short seed or
            a non-positive ``out_bits``.
    """
    x = _require_bits(bits, "bits")
    if x.size == 0:
        raise LocalProtocolError("bits must not be empty")
    needed = seed_bits_needed(int(x.size), out_bits)
    if not isinstance(seed, (bytes, bytearray)) or 8 * len(seed) < needed:
        raise LocalProtocolError(f"seed must be bytes holding at least {needed} bits")
    return _toeplitz_words(x, np.frombuffer(bytes(seed), dtype=np.uint8), out_bits)


def _toeplitz_words(x: np.ndarray, seed_packed: np.ndarray, m: int) -> Bits:
    """``T·x mod 2`` with 64-bit words (module docstring); ``seed_packed`` holds ≥ ``n + m − 1`` bits.

    Row ``i`` is the parity of ``seed[i : i + n] & xr`` with ``xr = x[::-1]``
    zero-padded to whole words, so seed bits past ``n + m − 2`` (or any
    padding) always meet zeros.
    """
    n = int(x.size)
    words = -(-n // 64)
    xr = np.zeros(64 * words, np.uint8)
    xr[:n] = x[::-1]
    key = np.packbits(xr).view(">u8").astype(np.uint64)
    # Seed words, zero-padded so that every window [q, q + words] exists.
    seed_words = words + (m - 1) // 64 + 2
    padded = np.zeros(8 * seed_words, np.uint8)
    used = min(seed_packed.size, padded.size)
    padded[:used] = seed_packed[:used]
    seed = padded.view(">u8").astype(np.uint64)
    acc = np.empty(m, np.uint64)
    for r in range(min(m, 64)):
        # Words of the seed shifted left by r bits: bit b of word w is seed bit 64 w + r + b.
        shifted = seed[:-1] if r == 0 else (seed[:-1] << np.uint64(r)) | (seed[1:] >> np.uint64(64 - r))
        for i in range(r, m, 64):
            q = i // 64
            acc[i] = np.bitwise_xor.reduce(shifted[q : q + words] & key)
    for width in (32, 16, 8, 4, 2, 1):  # parity of each word
        acc ^= acc >> np.uint64(width)
    return (acc & np.uint64(1)).astype(np.uint8)


def pack_bits(bits: np.ndarray) -> bytes:
    """Pack 0/1 bits into bytes, big-endian bit order, zero-padded at the end.

    Args:
        bits: A 1-D array of 0/1.

    Returns:
        ``ceil(len(bits) / 8)`` bytes; bit 0 is the MSB of byte 0.

    Raises:
        LocalProtocolError: If ``bits`` is not a 1-D array of 0/1.
    """
    x = _require_bits(bits, "bits")
    return np.packbits(x.astype(np.uint8, copy=False), bitorder="big").tobytes()


def unpack_bits(data: bytes, n: int) -> Bits:
    """Inverse of :func:`pack_bits`: the first ``n`` bits of ``data``.

    Args:
        data: Packed bytes (big-endian bit order).
        n: Number of bits to return, ``0 ≤ n ≤ 8·len(data)``; trailing
            bits beyond ``n`` are ignored.

    Returns:
        A uint8 array of ``n`` bits, 0/1.

    Raises:
        LocalProtocolError: If ``n`` is negative or larger than ``data`` holds.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise LocalProtocolError(f"n must be a non-negative int, got {n!r}")
    if n > 8 * len(data):
        raise LocalProtocolError(f"{len(data)} bytes hold {8 * len(data)} bits, not {n}")
    packed = np.frombuffer(bytes(data), dtype=np.uint8)
    return np.unpackbits(packed, count=n, bitorder="big")


def _require_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise LocalProtocolError(f"{name} must be a positive int, got {value!r}")


def _require_bits(bits: np.ndarray, name: str) -> np.ndarray:
    """Check that ``bits`` is a 1-D bool/integer array of 0/1 values."""
    if not isinstance(bits, np.ndarray):
        raise LocalProtocolError(f"{name} must be a numpy array, got {type(bits).__name__}")
    if bits.ndim != 1:
        raise LocalProtocolError(f"{name} must be 1-D, got shape {bits.shape}")
    if bits.dtype.kind not in "biu":
        raise LocalProtocolError(f"{name} must hold integers 0/1, got dtype {bits.dtype}")
    if bits.size and bits.dtype.kind != "b" and (int(bits.min()) < 0 or int(bits.max()) > 1):
        raise LocalProtocolError(f"{name} must hold only 0 and 1")
    return bits


def _fast_length(target: int) -> int:
    """Smallest 5-smooth integer (2^a·3^b·5^c) that is ``≥ target``."""
    best = 1 << max(target - 1, 0).bit_length()
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            quotient = -(-target // power35)
            candidate = (1 << max(quotient - 1, 0).bit_length()) * power35
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best
