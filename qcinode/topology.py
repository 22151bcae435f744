"""The topology model: nodes, links and their physical settings, from YAML.

Theory of operation
-------------------
A topology file (docs/design.md §2, docs/topology.md) is a user-facing contract:
the YAML keys are exactly the dataclass field names below, so
``topology_to_mapping`` is little more than ``dataclasses.asdict``.

Rules this module keeps:

1. Every config object is a frozen, slotted dataclass validated in
   ``__post_init__``; a value that passes is normalised (ints to floats for
   real-valued fields, lists to tuples), so equal topologies compare equal.
2. ``from_mapping(data, path)`` builds an object from plain YAML data.
   ``path`` is where ``data`` sits in the file (``links[1].detector``); every
   error is a :class:`~qcinode.errors.ConfigError` whose message starts with
   the full path of the offending field, then says what is wrong and what is
   allowed. ``__post_init__`` only knows field names relative to its own
   object, so it raises :class:`_Invalid` and ``from_mapping`` prefixes the
   path (``_at``).
3. Unknown keys are rejected by name, with the closest valid key suggested.
4. ``defaults:`` holds link settings (source, fibre, detector,
   postprocessing). A link overrides any single field of them. The merge is a
   deep merge of *plain mappings* done before any dataclass is built, so an
   invalid merged value is reported at the link's own path
   (``links[1].detector.efficiency``), and ``defaults`` is validated on its
   own first, so a bad default is reported as ``defaults.detector.efficiency``.
5. YAML 1.1 (PyYAML) reads ``1.0e9`` and ``1e-6`` as *strings* because its
   float pattern wants a dot and a signed exponent. The loader here also
   accepts the exponent forms people write for rates and probabilities, and
   rejects duplicate keys instead of silently keeping the last one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import difflib
import io
import math
import numbers
import os
import pathlib
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, Self

import yaml

from qcinode.core.clock import NetworkClock
from qcinode.core.estimation import NO_DECOY_BOUNDS, NO_DECOY_GLLP, NO_DECOY_SINGLE_PHOTON
from qcinode.core.finite_key import DEFAULT_FINITE_KEY, FINITE_KEY_ANALYSES
from qcinode.core.freespace import FreeSpaceOptics, SkyRadiance
from qcinode.core.orbit import TleSatellite, format_utc, parse_utc
from qcinode.core.physics import PROBABILITY_SUM_TOLERANCE
from qcinode.core.reconciliation import (
    DEFAULT_CASCADE_LOOKAHEAD,
    DEFAULT_ERROR_CORRECTION,
    DEFAULT_LDPC_PROFILE,
    ERROR_CORRECTION_LDPC,
    ERROR_CORRECTION_METHODS,
    LDPC_EXTRA_HINT,
    LDPC_PROFILES,
    ldpc_available,
)
from qcinode.errors import ConfigError

__all__ = [
    "EAVESDROPPER_ATTACKS",
    "FAULT_CHANNELS",
    "FAULT_KINDS",
    "NO_DECOY_BOUNDS",
    "PROBABILITY_SUM_TOLERANCE",
    "SETTINGS_SECTIONS",
    "BasisProbabilities",
    "DetectorConfig",
    "EavesdropperConfig",
    "EmulationConfig",
    "FaultConfig",
    "FibreConfig",
    "InterfacesConfig",
    "Intensities",
    "InterworkingConfig",
    "InterworkingPeerConfig",
    "IntensityProbabilities",
    "LinkConfig",
    "LinkSettings",
    "NodeConfig",
    "PostprocessingConfig",
    "SourceConfig",
    "Topology",
    "builtin_topology_path",
    "load_topology",
    "parse_topology",
    "topology_to_mapping",
    "with_clock_anchor",
]

EAVESDROPPER_ATTACKS: Final[tuple[str, ...]] = ("none", "intercept-resend", "photon-number-splitting")
"""Every attack an ``eavesdropper.attack`` may name. New attacks go here."""

FAULT_KINDS: Final[tuple[str, ...]] = ("none", "flip", "drop", "delay", "reorder", "replay", "partition")
"""Every classical-channel fault a ``fault.kind`` may name (see :mod:`qcinode.node.faults`)."""

FAULT_CHANNELS: Final[tuple[str, ...]] = ("all", "postprocessing", "relay")
"""The messages a ``fault.channel`` may restrict a fault to."""

MAX_FAULT_DELAY_MS: Final = 60_000.0

"""How far a set of probabilities may sum from 1 (float rounding in YAML)."""

#: A node name (and any other DNS-1123 label): 1-63 lowercase letters, digits and '-'. Use ``fullmatch``.
DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
#: An SAE ID: it becomes a file name and a certificate's common name, so a portable set. Use ``fullmatch``.
SAE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
#: An https base URL (scheme, host, optional port; no path). Use ``fullmatch``.
_HTTPS_BASE: Final = re.compile(r"https://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")


# --------------------------------------------------------------------------
# Error plumbing


class _Invalid(ConfigError):
    """A field failed validation; ``field_path`` is relative to the object checked.

    Raised by ``__post_init__``. ``from_mapping`` turns it into a plain
    :class:`ConfigError` whose message carries the full path.
    """

    def __init__(self, field_path: str, problem: str) -> None:
        super().__init__(f"{field_path}: {problem}" if field_path else problem)
        self.field_path = field_path
        self.problem = problem


def _join(path: str, name: str) -> str:
    """Joins a field path and a relative name: ``links[1]`` + ``detector``."""
    if not path:
        return name
    if not name:
        return path
    return f"{path}{name}" if name.startswith("[") else f"{path}.{name}"


@contextlib.contextmanager
def _at(path: str) -> Iterator[None]:
    """Re-raises :class:`_Invalid` as a ConfigError located at ``path``."""
    try:
        yield
    except _Invalid as exc:
        raise ConfigError(f"{_join(path, exc.field_path)}: {exc.problem}") from None


def _describe(value: object) -> str:
    """A short, quoted description of a bad value for error messages."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _suggest(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` naming the closest choice, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# --------------------------------------------------------------------------
# Value checks used by __post_init__ (they raise _Invalid with the field name)


@dataclass(frozen=True, slots=True)
class _Range:
    """A real interval; ``None`` bounds are unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x: float) -> bool:
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        if self.high is not None and (x >= self.high if self.high_open else x > self.high):
            return False
        return True

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


def _real(obj: object, name: str, allowed: _Range) -> float:
    """Checks that ``obj.name`` is a finite real in ``allowed``; stores it as float."""
    raw = getattr(obj, name)
    if isinstance(raw, bool) or not isinstance(raw, numbers.Real):
        raise _Invalid(name, f"must be a number {allowed}, got {_describe(raw)}")
    value = float(raw)
    if not math.isfinite(value) or value not in allowed:
        raise _Invalid(name, f"must be {allowed}, got {value!r}")
    object.__setattr__(obj, name, value)
    return value


def _integer(obj: object, name: str, low: int, high: int) -> int:
    """Checks that ``obj.name`` is an integer in [low, high]; ``1e5`` counts."""
    raw = getattr(obj, name)
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if isinstance(raw, bool) or not isinstance(raw, numbers.Integral):
        raise _Invalid(name, f"must be an integer in [{low}, {high}], got {_describe(raw)}")
    value = int(raw)
    if not low <= value <= high:
        raise _Invalid(name, f"must be an integer in [{low}, {high}], got {value}")
    object.__setattr__(obj, name, value)
    return value


def _string(value: object, name: str, what: str) -> str:
    """Checks that ``value`` is a string; points out YAML's yes/no/on/off trap."""
    if isinstance(value, str):
        return value
    hint = ""
    if isinstance(value, bool) or value is None:
        hint = " (YAML reads unquoted yes/no/on/off/true/false/null as non-strings; quote it)"
    raise _Invalid(name, f"must be a string ({what}), got {_describe(value)}{hint}")


def _dns_label(value: object, name: str, what: str) -> str:
    """Checks a DNS-1123 label: lowercase letters, digits and '-', at most 63."""
    text = _string(value, name, what)
    if not DNS_LABEL.fullmatch(text):
        raise _Invalid(
            name,
            f"{text!r} is not a valid {what}: use a DNS-1123 label, 1-63 characters of "
            "lowercase letters, digits and '-', starting and ending with a letter or digit",
        )
    return text


def _instance(obj: object, name: str, cls: type) -> None:
    """Checks that a nested section was built (direct construction misuse)."""
    value = getattr(obj, name)
    if not isinstance(value, cls):
        raise _Invalid(name, f"must be a {cls.__name__}, got {_describe(value)}")


def _sums_to_one(values: Mapping[str, float]) -> None:
    total = math.fsum(values.values())
    if abs(total - 1.0) > PROBABILITY_SUM_TOLERANCE:
        parts = ", ".join(f"{k}={v:g}" for k, v in values.items())
        raise _Invalid(
            "",
            f"must sum to 1 (within {PROBABILITY_SUM_TOLERANCE:g}), got {parts} (sum {total:.12g})",
        )


# --------------------------------------------------------------------------
# Parsing plain YAML data (these raise ConfigError with the full path)


def _mapping(data: object, path: str) -> Mapping[str, object]:
    """``data`` as a mapping with string keys; an empty YAML value is ``{}``."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'document'}: must be a mapping, got {_describe(data)}")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{path or 'document'}: keys must be strings, got {_describe(key)}")
    return data


def _sequence(data: object, path: str) -> tuple[object, ...]:
    """``data`` as a tuple; it must be a YAML list (an empty value is ``()``)."""
    if data is None:
        return ()
    if not isinstance(data, (list, tuple)):
        raise ConfigError(f"{path}: must be a list, got {_describe(data)}")
    return tuple(data)


def _check_keys(
    data: Mapping[str, object],
    allowed: Iterable[str],
    path: str,
    hints: Mapping[str, str] | None = None,
) -> None:
    """Rejects a key that is not a field, suggesting the closest one."""
    allowed = tuple(allowed)
    for key in data:
        if key not in allowed:
            hint = (hints or {}).get(key)
            advice = f"; {hint}" if hint else _suggest(key, allowed)
            raise ConfigError(
                f"{_join(path, key)}: unknown field{advice} (allowed here: {', '.join(allowed)})"
            )


def _parser(parse: Callable[[object, str], object]) -> dict[str, object]:
    """Field metadata: how ``from_mapping`` turns the raw YAML value into the field."""
    return {"parse": parse}


def _optional(parse: Callable[[object, str], object]) -> Callable[[object, str], object]:
    """A parser that maps an absent/empty YAML value to ``None``."""

    def parse_optional(data: object, path: str) -> object:
        return None if data is None else parse(data, path)

    return parse_optional


def _deep_merge(base: object, override: object) -> object:
    """Overrides ``base`` with ``override``, merging mappings key by key.

    An empty override (YAML null) of a mapping keeps the mapping; anything
    else that is not a mapping on both sides replaces the base value, so a
    bad override is still caught by the validation that follows.
    """
    if override is None and isinstance(base, Mapping):
        return base
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _deep_merge(base.get(key), value)
        return merged
    return override


class _Section:
    """Base of the config dataclasses: the generic ``from_mapping``."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Any]]  # set by @dataclass on each subclass
    _HINTS: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def from_mapping(cls, data: object, path: str) -> Self:
        """Builds the section from YAML data.

        Args:
            data: The parsed YAML value (a mapping; ``None`` means all defaults).
            path: Where ``data`` sits in the file, e.g. ``links[1].detector``;
                used to name fields in error messages.

        Returns:
            The validated section.

        Raises:
            ConfigError: Unknown key, missing required field or invalid value;
                the message names the field's full path.
        """
        raw = _mapping(data, path)
        fields = dataclasses.fields(cls)
        _check_keys(raw, (f.name for f in fields), path, cls._HINTS)
        kwargs: dict[str, Any] = {}
        for f in fields:
            if f.name in raw:
                parse = f.metadata.get("parse")
                value = raw[f.name]
                kwargs[f.name] = parse(value, _join(path, f.name)) if parse else value
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{_join(path, f.name)}: required field is missing")
        with _at(path):
            return cls(**kwargs)


def _section(cls: type[_Section]) -> Any:
    """A nested-section field: defaults to ``cls()``, parsed by ``cls.from_mapping``."""
    return field(default_factory=cls, metadata=_parser(cls.from_mapping))


# --------------------------------------------------------------------------
# Link settings


@dataclass(frozen=True, slots=True, kw_only=True)
class Intensities(_Section):
    """Mean photon numbers of the three intensity classes (decoy-state BB84).

    Attributes:
        signal: μ1, mean photon number of signal pulses (> 0).
        decoy: μ2, mean photon number of decoy pulses (>= 0).
        vacuum: μ3, mean photon number of "vacuum" pulses (>= 0; Lim et al.
            allow a weak non-zero μ3).

    The ordering μ1 > μ2 + μ3, μ2 > μ3 (Lim et al., PRA 89, 022307) is
    checked by :class:`SourceConfig`, because it only applies when decoy
    states are on.
    """

    signal: float = 0.5
    decoy: float = 0.2
    vacuum: float = 0.0

    def __post_init__(self) -> None:
        _real(self, "signal", _Range(0.0, low_open=True))
        _real(self, "decoy", _Range(0.0))
        _real(self, "vacuum", _Range(0.0))


@dataclass(frozen=True, slots=True, kw_only=True)
class IntensityProbabilities(_Section):
    """Probability that a pulse belongs to each intensity class.

    Attributes:
        signal: p1, in (0, 1].
        decoy: p2, in [0, 1].
        vacuum: p3, in [0, 1].

    They sum to 1 within :data:`PROBABILITY_SUM_TOLERANCE`.
    """

    signal: float = 0.4
    decoy: float = 0.3
    vacuum: float = 0.3

    def __post_init__(self) -> None:
        _real(self, "signal", _Range(0.0, 1.0, low_open=True))
        _real(self, "decoy", _Range(0.0, 1.0))
        _real(self, "vacuum", _Range(0.0, 1.0))
        _sums_to_one({"signal": self.signal, "decoy": self.decoy, "vacuum": self.vacuum})


@dataclass(frozen=True, slots=True, kw_only=True)
class BasisProbabilities(_Section):
    """Probability that Alice (and, independently, Bob) picks each basis.

    Attributes:
        z: Probability of the Z basis, which carries the key; in (0, 1).
        x: Probability of the X basis, which tests for the phase error; in (0, 1).

    They sum to 1 within :data:`PROBABILITY_SUM_TOLERANCE`. Both parties
    choose Z with probability ``z``, so a fraction ``z**2`` of detections is
    sifted into the key basis.
    """

    z: float = 0.6
    x: float = 0.4

    def __post_init__(self) -> None:
        _real(self, "z", _Range(0.0, 1.0, low_open=True, high_open=True))
        _real(self, "x", _Range(0.0, 1.0, low_open=True, high_open=True))
        _sums_to_one({"z": self.z, "x": self.x})


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceConfig(_Section):
    """Alice's weak-coherent-pulse source.

    Attributes:
        rate_hz: Pulse repetition rate in emulated time (> 0).
        intensities: Mean photon numbers per intensity class.
        probabilities: Probability of each intensity class per pulse.
        basis_probabilities: Probability of the Z (key) and X (test) bases.
        decoy_states: Whether the decoy and vacuum classes are sent. When
            false, only signal pulses are sent: ``probabilities`` must be
            ``{signal: 1, decoy: 0, vacuum: 0}`` and the intensity ordering is
            not required (a no-decoy run wants a small ``signal``).
        no_decoy_bound: The key-length assumption of a link without decoy
            states, one of :data:`NO_DECOY_BOUNDS`
            (:func:`qcinode.core.estimation.no_decoy_key_length`): ``gllp``
            (secure, every multi-photon pulse tagged) or ``single-photon``
            (insecure, every detection trusted as a single photon; for
            demonstrating the photon-number-splitting attack). Only
            ``gllp`` is accepted with decoy states on, where it is unused.

    With decoy states on, the intensities must satisfy μ1 > μ2 + μ3 and
    μ2 > μ3 >= 0 (Lim et al., PRA 89, 022307), and the decoy and vacuum
    classes need non-zero probabilities, since the finite-size bounds divide
    by them.
    """

    rate_hz: float = 1.0e9
    intensities: Intensities = _section(Intensities)
    probabilities: IntensityProbabilities = _section(IntensityProbabilities)
    basis_probabilities: BasisProbabilities = _section(BasisProbabilities)
    decoy_states: bool = True
    no_decoy_bound: str = NO_DECOY_GLLP

    def __post_init__(self) -> None:
        _real(self, "rate_hz", _Range(0.0, low_open=True))
        _instance(self, "intensities", Intensities)
        _instance(self, "probabilities", IntensityProbabilities)
        _instance(self, "basis_probabilities", BasisProbabilities)
        if not isinstance(self.decoy_states, bool):
            raise _Invalid(
                "decoy_states", f"must be true or false, got {_describe(self.decoy_states)}"
            )
        bound = _string(self.no_decoy_bound, "no_decoy_bound", "no-decoy bound")
        if bound not in NO_DECOY_BOUNDS:
            raise _Invalid(
                "no_decoy_bound",
                f"unknown bound {bound!r}{_suggest(bound, NO_DECOY_BOUNDS)} "
                f"(allowed: {', '.join(NO_DECOY_BOUNDS)})",
            )
        if self.decoy_states and bound == NO_DECOY_SINGLE_PHOTON:
            raise _Invalid(
                "no_decoy_bound",
                f"{NO_DECOY_SINGLE_PHOTON!r} applies only to a link without decoy states; with "
                "decoy_states: true the key length is the decoy-state bound. Set "
                f"decoy_states: false (and probabilities: {{signal: 1.0, decoy: 0.0, vacuum: 0.0}}) "
                f"or leave no_decoy_bound at {NO_DECOY_GLLP!r}",
            )
        mu, p = self.intensities, self.probabilities
        if self.decoy_states:
            if not (mu.signal > mu.decoy + mu.vacuum and mu.decoy > mu.vacuum):
                raise _Invalid(
                    "intensities",
                    "decoy-state estimation needs signal > decoy + vacuum and decoy > vacuum >= 0 "
                    f"(Lim et al. 2014); got signal={mu.signal:g}, decoy={mu.decoy:g}, "
                    f"vacuum={mu.vacuum:g}",
                )
            if p.decoy == 0.0 or p.vacuum == 0.0:
                raise _Invalid(
                    "probabilities",
                    "with decoy_states: true the decoy and vacuum probabilities must be > 0 "
                    f"(the decoy-state bounds need pulses of every class); got decoy={p.decoy:g}, "
                    f"vacuum={p.vacuum:g}. Set decoy_states: false to send signal pulses only",
                )
        elif p.decoy != 0.0 or p.vacuum != 0.0:
            raise _Invalid(
                "probabilities",
                "with decoy_states: false only signal pulses are sent, so decoy and vacuum "
                f"probabilities must be 0; got decoy={p.decoy:g}, vacuum={p.vacuum:g}. "
                "Set probabilities: {signal: 1.0, decoy: 0.0, vacuum: 0.0}",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class FibreConfig(_Section):
    """The quantum channel's fibre.

    Attributes:
        attenuation_db_per_km: Loss coefficient α in dB/km (>= 0).
    """

    attenuation_db_per_km: float = 0.2

    def __post_init__(self) -> None:
        _real(self, "attenuation_db_per_km", _Range(0.0))


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorConfig(_Section):
    """Bob's receiver (MQZL PRA 72, 012326 channel model).

    Attributes:
        efficiency: η_Bob, Bob's optics transmittance × detector efficiency, in (0, 1].
        dark_count_probability: Y0, probability of a background click in a
            pulse slot with no signal photon, in [0, 1).
        misalignment_error: e_detector, probability that a photon hits the
            wrong detector, in [0, 0.5).
    """

    efficiency: float = 0.1
    dark_count_probability: float = 1.0e-6
    misalignment_error: float = 0.01

    def __post_init__(self) -> None:
        _real(self, "efficiency", _Range(0.0, 1.0, low_open=True))
        _real(self, "dark_count_probability", _Range(0.0, 1.0, high_open=True))
        _real(self, "misalignment_error", _Range(0.0, 0.5, high_open=True))


@dataclass(frozen=True, slots=True, kw_only=True)
class PostprocessingConfig(_Section):
    """Classical post-processing of one block.

    Attributes:
        block_bits: Sifted key-basis bits per post-processing block, in [1000, 10**7].
        security_epsilon: ε_sec of the finite-size key length, in (0, 1e-3].
        verification_tag_bits: Length of the universal-hash verification tag, in [32, 256].
        cascade_max_passes: Most Cascade passes before a block is given up, in [1, 64].
        cascade_lookahead: Bisection levels Cascade asks per round trip in a
            thin batch (fewer leaves left to bisect than 64 per 10^6 key
            bits), in [1, 8]: 1 is textbook Cascade, one level at a time;
            ``d`` > 1 costs ``2**d - 1`` parities per such leaf instead of
            ``d`` and saves round trips, which a block waits on. The default
            3 takes 25-31 % of textbook Cascade's round trips off for f
            +0.3 to +1.2 % on 10^6 bits, 11-14 % for f +0.2 to +0.7 % on
            10^5 bits (6 blocks at 1, 3.3 and 5 % QBER).
        finite_key: The finite-key analysis of a decoy-state block, one of
            :data:`FINITE_KEY_ANALYSES` (:func:`qcinode.core.finite_key.decoy_key_length`):
            ``chernoff`` (per-class Chernoff bounds, the default), ``yin2020``
            (Yin et al. 2020's statistics) or ``lim2014``.
        error_correction: The reconciliation method, one of
            :data:`ERROR_CORRECTION_METHODS`: ``cascade`` (interactive, the
            default) or ``ldpc`` (one-way syndrome decoding; needs the
            ``ldpc`` extra).
        ldpc_profile: The LDPC codes and efficiency schedule, one of
            :data:`LDPC_PROFILES`: ``efficient`` (65,536-bit frames, the
            default), ``fast`` (16,384-bit frames, a third of the decoder
            CPU, a worse efficiency) or ``lean`` (the same frames from f 1.30:
            half the ``fast`` decoder CPU again). Ignored with ``cascade``.
    """

    block_bits: int = 100_000
    security_epsilon: float = 1.0e-10
    verification_tag_bits: int = 64
    cascade_max_passes: int = 6
    cascade_lookahead: int = DEFAULT_CASCADE_LOOKAHEAD
    finite_key: str = DEFAULT_FINITE_KEY
    error_correction: str = DEFAULT_ERROR_CORRECTION
    ldpc_profile: str = DEFAULT_LDPC_PROFILE

    def __post_init__(self) -> None:
        _integer(self, "block_bits", 1_000, 10_000_000)
        _real(self, "security_epsilon", _Range(0.0, 1.0e-3, low_open=True))
        _integer(self, "verification_tag_bits", 32, 256)
        _integer(self, "cascade_max_passes", 1, 64)
        _integer(self, "cascade_lookahead", 1, 8)
        analysis = _string(self.finite_key, "finite_key", "finite-key analysis")
        if analysis not in FINITE_KEY_ANALYSES:
            raise _Invalid(
                "finite_key",
                f"unknown analysis {analysis!r}{_suggest(analysis, FINITE_KEY_ANALYSES)} "
                f"(allowed: {', '.join(FINITE_KEY_ANALYSES)})",
            )
        method = _string(self.error_correction, "error_correction", "reconciliation method")
        if method not in ERROR_CORRECTION_METHODS:
            raise _Invalid(
                "error_correction",
                f"unknown method {method!r}{_suggest(method, ERROR_CORRECTION_METHODS)} "
                f"(allowed: {', '.join(ERROR_CORRECTION_METHODS)})",
            )
        if method == ERROR_CORRECTION_LDPC and not ldpc_available():
            raise _Invalid("error_correction", LDPC_EXTRA_HINT)
        profile = _string(self.ldpc_profile, "ldpc_profile", "LDPC profile")
        if profile not in LDPC_PROFILES:
            raise _Invalid(
                "ldpc_profile",
                f"unknown profile {profile!r}{_suggest(profile, LDPC_PROFILES)} (allowed: {', '.join(LDPC_PROFILES)})",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultConfig(_Section):
    """A fault on the classical channel of one link, at one or both of its ends.

    Attributes:
        kind: One of :data:`FAULT_KINDS` (required); ``none`` is no fault.
        probability: Share of outgoing messages affected, in [0, 1].
        delay_ms: How late a ``delay`` fault sends each affected message, in ms.
        channel: One of :data:`FAULT_CHANNELS`: the messages affected.
    """

    kind: str
    probability: float = 1.0
    delay_ms: float = 0.0
    channel: str = "all"

    def __post_init__(self) -> None:
        kind = _string(self.kind, "kind", "fault kind")
        if kind not in FAULT_KINDS:
            raise _Invalid(
                "kind", f"unknown fault {kind!r}{_suggest(kind, FAULT_KINDS)} (allowed: {', '.join(FAULT_KINDS)})"
            )
        channel = _string(self.channel, "channel", "channel")
        if channel not in FAULT_CHANNELS:
            raise _Invalid(
                "channel", f"unknown channel {channel!r}{_suggest(channel, FAULT_CHANNELS)} (allowed: {', '.join(FAULT_CHANNELS)})"
            )
        _real(self, "probability", _Range(0.0, 1.0))
        _real(self, "delay_ms", _Range(0.0, MAX_FAULT_DELAY_MS))
        if kind == "delay" and self.delay_ms <= 0:
            raise _Invalid("delay_ms", "a delay fault needs delay_ms > 0")

    @property
    def active(self) -> bool:
        """False for ``kind: none``."""
        return self.kind != "none"

    def applies_to(self, channel: str) -> bool:
        """Whether this fault tampers with messages of ``channel``."""
        return self.active and self.channel in ("all", channel)

    def describe(self) -> str:
        """Short text for status tables: ``""`` when there is no fault."""
        if not self.active:
            return ""
        if self.kind == "partition":
            return "partition"
        text = f"{self.kind} p={self.probability:g}"
        if self.delay_ms:
            text += f" {self.delay_ms:g}ms"
        if self.channel != "all":
            text += f" on {self.channel}"
        return text


@dataclass(frozen=True, slots=True, kw_only=True)
class EavesdropperConfig(_Section):
    """An emulated attacker on the quantum channel of one link.

    Attributes:
        attack: One of :data:`EAVESDROPPER_ATTACKS` (required).
        fraction: Fraction of pulses attacked, in [0, 1] (intercept-resend;
            photon-number splitting acts on every pulse, so it must be 1).
    """

    attack: str
    fraction: float = 1.0

    def __post_init__(self) -> None:
        attack = _string(self.attack, "attack", "attack name")
        if attack not in EAVESDROPPER_ATTACKS:
            raise _Invalid(
                "attack",
                f"unknown attack {attack!r}{_suggest(attack, EAVESDROPPER_ATTACKS)} "
                f"(allowed: {', '.join(EAVESDROPPER_ATTACKS)})",
            )
        _real(self, "fraction", _Range(0.0, 1.0))
        if attack == "photon-number-splitting" and self.fraction != 1.0:
            # The model (qcinode.core.physics) splits every multi-photon pulse; a share is not modelled.
            raise _Invalid("fraction", f"photon-number splitting acts on every pulse: only 1 is allowed, got {self.fraction:g}")


FREE_SPACE_CLASSICAL: Final[tuple[str, ...]] = ("always", "contact")
"""How a free-space link's classical channel runs: ``always`` (a ground or RF
network carries the satellite's classical traffic) or ``contact`` (only
during passes)."""

RECEIVER_MODES: Final[tuple[str, ...]] = ("multimode", "single-mode")
"""A free-space receiver's coupling: a multimode detector behind a field stop, or single-mode fibre."""

BUILTIN_TRACES: Final[tuple[str, ...]] = ("micius-2017",)
"""Loss traces shipped with qcinode (``free_space.loss_trace: micius-2017``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SkyRadianceConfig(_Section):
    """Spectral radiance of the sky in the receiver's field of view, by sky condition.

    In W m⁻² sr⁻¹ nm⁻¹ at the link's wavelength. Left out entirely, the
    wavelength band's default applies (780–1000 nm and 1450–1650 nm have
    one, :mod:`qcinode.core.freespace`); ``day`` and ``night`` alone set the
    twilights between them; any value given wins.

    Attributes:
        day: Sun above −0.833°.
        civil_twilight: Sun in (−6°, −0.833°].
        nautical_twilight: Sun in (−12°, −6°].
        astronomical_twilight: Sun in (−18°, −12°].
        night: Sun at or below −18° (moonless).
    """

    day: float | None = None
    civil_twilight: float | None = None
    nautical_twilight: float | None = None
    astronomical_twilight: float | None = None
    night: float | None = None

    def __post_init__(self) -> None:
        for name in ("day", "civil_twilight", "nautical_twilight", "astronomical_twilight", "night"):
            if getattr(self, name) is not None:
                _real(self, name, _Range(0.0))

    def resolve(self, band_default: SkyRadiance) -> SkyRadiance:
        """The radiances to use: the band default, overridden by what is given."""
        day = band_default.day if self.day is None else self.day
        night = band_default.night if self.night is None else self.night
        base = SkyRadiance.from_day_and_night(day=day, night=night)
        given = {k: getattr(self, k) for k in ("civil_twilight", "nautical_twilight", "astronomical_twilight")}
        return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


@dataclass(frozen=True, slots=True, kw_only=True)
class FreeSpaceConfig(_Section):
    """A satellite-to-ground downlink: geometry, optics, atmosphere, background.

    The link's transmittance at each instant is the product of a Gaussian
    beam caught by the receiver aperture, the pointing loss, the atmosphere
    at that elevation, the receiver optics and ``extra_loss_db``
    (:mod:`qcinode.core.freespace`); or, with ``loss_trace``, the loss a CSV
    gives. Bob's ``detector`` section still gives the detector efficiency,
    dark counts and misalignment.

    Attributes:
        elevation_mask_deg: Lowest elevation at which the link runs, degrees, in [0, 89].
        classical: One of :data:`FREE_SPACE_CLASSICAL`.
        wavelength_nm: Wavelength, nm.
        transmitter_aperture_m: Satellite telescope diameter, m (> 0); the beam waist is half of it.
        beam_divergence_urad: Far-field HALF-angle at 1/e² intensity, µrad;
            left out: diffraction-limited for the aperture (λ/(π D_T/2)).
        receiver_aperture_m: Ground telescope diameter, m (> 0).
        pointing_jitter_urad: RMS pointing error per axis, µrad (>= 0).
        zenith_transmittance: Clear-sky atmospheric transmittance at the zenith, in (0, 1];
            left out: the wavelength band's default (0.895 at 850 nm).
        receiver_optics_efficiency: Ground receiver optics, telescope to detectors, in (0, 1].
        receiver_fov_urad: Full-angle field of view of a multimode receiver, µrad (> 0).
        filter_bandwidth_nm: Spectral filter width, nm (> 0).
        single_mode: A single-mode fibre receiver (étendue λ²) instead of a multimode one.
        gate_width_ns: Detection window per pulse slot, ns (> 0).
        sky_radiance: Sky background by sky condition.
        scintillation_index: σ_I² of log-normal turbulence fading at the zenith, in [0, 10].
        fading: Sample the pointing error and the turbulence frame by frame
            (deterministically per instant) instead of using their means.
        extra_loss_db: Losses the model leaves out (calibration), dB, in [0, 100].
        loss_trace: A CSV of loss against time into each pass (``time_s,loss_db``)
            or against slant range (``slant_range_km,loss_db``) replacing the
            optical model: a file path (relative to the topology file) or a
            name from :data:`BUILTIN_TRACES`.
    """

    elevation_mask_deg: float = 10.0
    classical: str = "always"
    wavelength_nm: float = 850.0
    transmitter_aperture_m: float = 0.3
    beam_divergence_urad: float | None = None
    receiver_aperture_m: float = 1.0
    pointing_jitter_urad: float = 2.0
    zenith_transmittance: float | None = None
    receiver_optics_efficiency: float = 0.16
    receiver_fov_urad: float = 100.0
    filter_bandwidth_nm: float = 1.0
    single_mode: bool = False
    gate_width_ns: float = 1.0
    sky_radiance: SkyRadianceConfig = _section(SkyRadianceConfig)
    scintillation_index: float = 0.0
    fading: bool = False
    extra_loss_db: float = 0.0
    loss_trace: str | None = None

    _OPTICS: ClassVar[tuple[str, ...]] = (
        "elevation_mask_deg", "wavelength_nm", "transmitter_aperture_m", "beam_divergence_urad",
        "receiver_aperture_m", "pointing_jitter_urad", "zenith_transmittance", "receiver_optics_efficiency",
        "receiver_fov_urad", "filter_bandwidth_nm", "single_mode", "gate_width_ns", "scintillation_index",
    )

    def __post_init__(self) -> None:
        classical = _string(self.classical, "classical", "classical channel mode")
        if classical not in FREE_SPACE_CLASSICAL:
            raise _Invalid(
                "classical",
                f"unknown mode {classical!r}{_suggest(classical, FREE_SPACE_CLASSICAL)} (allowed: {', '.join(FREE_SPACE_CLASSICAL)})",
            )
        for name in ("single_mode", "fading"):
            if not isinstance(getattr(self, name), bool):
                raise _Invalid(name, f"must be true or false, got {_describe(getattr(self, name))}")
        for name in self._OPTICS:
            if name != "single_mode" and getattr(self, name) is not None:
                _real(self, name, _Range())
        _real(self, "extra_loss_db", _Range(0.0, 100.0))
        _instance(self, "sky_radiance", SkyRadianceConfig)
        if self.loss_trace is not None:
            _string(self.loss_trace, "loss_trace", "CSV file path or built-in trace name")
        self.optics()  # the optics' own ranges, reported at this section's field

    def optics(self) -> FreeSpaceOptics:
        """The core's optics parameters for this link.

        Raises:
            _Invalid: A value the optics refuse; the message names the field.
        """
        kwargs: dict[str, Any] = {name: getattr(self, name) for name in self._OPTICS}
        try:
            band = FreeSpaceOptics(**{**kwargs, "sky_radiance": None}) if self.sky_radiance != SkyRadianceConfig() else None
            if band is not None:
                kwargs["sky_radiance"] = self.sky_radiance.resolve(band.resolved_sky_radiance)
            return FreeSpaceOptics(**kwargs)
        except ConfigError as exc:
            name, sep, problem = str(exc).partition(": ")
            field_name = name if sep and name.split(".")[0] in {f.name for f in dataclasses.fields(self)} else ""
            raise _Invalid(field_name, problem if field_name else str(exc)) from None


_PER_LINK_HINT: Final = "it is set per link, under links[i], not in defaults"


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkSettings(_Section):
    """The settings a link inherits from ``defaults:`` and may override field by field."""

    _HINTS: ClassVar[Mapping[str, str]] = {
        "eavesdropper": _PER_LINK_HINT,
        "fault": _PER_LINK_HINT,
        "length_km": _PER_LINK_HINT,
        "between": _PER_LINK_HINT,
    }

    source: SourceConfig = _section(SourceConfig)
    fibre: FibreConfig = _section(FibreConfig)
    detector: DetectorConfig = _section(DetectorConfig)
    postprocessing: PostprocessingConfig = _section(PostprocessingConfig)
    free_space: FreeSpaceConfig = _section(FreeSpaceConfig)

    def __post_init__(self) -> None:
        for name, cls in _SETTINGS_TYPES.items():
            _instance(self, name, cls)
        _instance(self, "free_space", FreeSpaceConfig)


_SETTINGS_TYPES: Final[Mapping[str, type[_Section]]] = {
    "source": SourceConfig,
    "fibre": FibreConfig,
    "detector": DetectorConfig,
    "postprocessing": PostprocessingConfig,
}
SETTINGS_SECTIONS: Final[tuple[str, ...]] = tuple(_SETTINGS_TYPES)
"""The sections of ``defaults:`` that links inherit and override."""


# --------------------------------------------------------------------------
# Links, nodes, emulation, topology


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkConfig(_Section):
    """One QKD link: a fibre between two nodes, or a satellite's downlink, with its merged settings.

    Attributes:
        between: ``(alice, bob)``: the transmitting node, then the receiving
            node. A satellite is always first: it carries the source (a downlink).
        length_km: Fibre length in km (>= 0); required for a fibre link, absent
            for a free-space one (its distance is the slant range).
        source: Alice's source.
        fibre: The fibre.
        detector: Bob's detector.
        postprocessing: Post-processing settings.
        eavesdropper: An emulated attacker, or ``None`` for an honest channel.
        fault: A classical-channel fault applied at both ends from start-up,
            or ``None``.
        free_space: The downlink's optics and geometry (``defaults.free_space``
            merged under the link's own); ``None`` for a fibre link.
    """

    between: tuple[str, str] = field(metadata=_parser(_sequence))
    length_km: float | None = None
    source: SourceConfig = _section(SourceConfig)
    fibre: FibreConfig = _section(FibreConfig)
    detector: DetectorConfig = _section(DetectorConfig)
    postprocessing: PostprocessingConfig = _section(PostprocessingConfig)
    eavesdropper: EavesdropperConfig | None = field(
        default=None, metadata=_parser(_optional(EavesdropperConfig.from_mapping))
    )
    fault: FaultConfig | None = field(default=None, metadata=_parser(_optional(FaultConfig.from_mapping)))
    free_space: FreeSpaceConfig | None = field(default=None, metadata=_parser(_optional(FreeSpaceConfig.from_mapping)))

    def __post_init__(self) -> None:
        between = self.between
        if not isinstance(between, tuple) or len(between) != 2:
            raise _Invalid(
                "between",
                f"must be a list of two node names [alice, bob], got {_describe(between)}",
            )
        for i, name in enumerate(between):
            _string(name, f"between[{i}]", "node name")
        if between[0] == between[1]:
            raise _Invalid(
                "between", f"a link needs two different nodes, got [{between[0]}, {between[1]}]"
            )
        if self.free_space is not None:
            _instance(self, "free_space", FreeSpaceConfig)
            if self.length_km is not None:
                raise _Invalid(
                    "length_km",
                    "a free-space link has no length: its distance is the satellite's slant range, computed at every instant",
                )
        elif self.length_km is None:
            raise _Invalid("length_km", "required field is missing (the fibre's length in km)")
        else:
            _real(self, "length_km", _Range(0.0))
        for name, cls in _SETTINGS_TYPES.items():
            _instance(self, name, cls)
        if self.eavesdropper is not None:
            _instance(self, "eavesdropper", EavesdropperConfig)
        if self.fault is not None:
            _instance(self, "fault", FaultConfig)

    @classmethod
    def from_mapping(
        cls,
        data: object,
        path: str,
        defaults: Mapping[str, object] | None = None,
        satellites: Collection[str] = (),
    ) -> Self:
        """Builds a link from YAML data, merged over the raw ``defaults:`` mapping.

        Args:
            data: The link's YAML mapping.
            path: Its path, e.g. ``links[1]``.
            defaults: The raw ``defaults:`` mapping (already validated on its
                own); each of its sections is deep-merged under the link's
                (``free_space`` only under a link from a satellite).
            satellites: The names of the topology's satellite nodes.

        Returns:
            The validated link.

        Raises:
            ConfigError: Invalid link; the message names the field, e.g.
                ``links[1].detector.efficiency``.
        """
        raw = _mapping(data, path)
        _check_keys(raw, (f.name for f in dataclasses.fields(cls)), path)
        merged = dict(raw)
        for name in SETTINGS_SECTIONS:
            value = _deep_merge((defaults or {}).get(name), raw.get(name))
            if value is not None:
                merged[name] = value
        between = raw.get("between")
        first = between[0] if isinstance(between, (list, tuple)) and between else None
        if isinstance(first, str) and first in satellites:
            merged["free_space"] = _deep_merge(_deep_merge({}, (defaults or {}).get("free_space")), raw.get("free_space")) or {}
        elif "free_space" in raw:
            raise ConfigError(
                f"{_join(path, 'free_space')}: only a link from a satellite (first in between) is a free-space link"
                + (f"; {first!r} is not a satellite" if isinstance(first, str) else "")
            )
        return super(LinkConfig, cls).from_mapping(merged, path)

    @property
    def alice(self) -> str:
        """The transmitting node."""
        return self.between[0]

    @property
    def bob(self) -> str:
        """The receiving node."""
        return self.between[1]

    @property
    def link_id(self) -> str:
        """``"alice-bob"``; unique within a topology."""
        return f"{self.alice}-{self.bob}"

    @property
    def fibre_transmittance(self) -> float:
        """η_channel = 10^(−α L / 10), the fibre's transmittance (MQZL Sec. II); 1 for a free-space link.

        A free-space link's transmittance changes along each pass
        (:mod:`qcinode.core.freespace`); its base physics carries 1 and the
        channel model sets the value of every frame.
        """
        if self.length_km is None:
            return 1.0
        return math.pow(10.0, -self.fibre.attenuation_db_per_km * self.length_km / 10.0)


def _utc(obj: object, name: str) -> float | None:
    """Checks that ``obj.name`` is None or an ISO 8601 UTC instant; returns POSIX seconds."""
    raw = getattr(obj, name)
    if raw is None:
        return None
    if isinstance(raw, datetime.datetime):  # YAML reads an unquoted timestamp as a datetime
        raw = raw.isoformat()
        object.__setattr__(obj, name, raw)
    text = _string(raw, name, 'UTC instant, e.g. "2027-03-21T18:00:00Z"')
    try:
        return parse_utc(text)
    except ConfigError as exc:
        raise _Invalid(name, str(exc)) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class LocationConfig(_Section):
    """Where a site is on the Earth (geodetic, WGS84).

    Attributes:
        latitude_deg: Geodetic latitude in degrees, in [-90, 90] (north positive).
        longitude_deg: Longitude in degrees, in [-180, 180] (east positive).
        altitude_m: Height above the WGS84 ellipsoid in metres, in [-500, 9000].
    """

    latitude_deg: float
    longitude_deg: float
    altitude_m: float = 0.0

    def __post_init__(self) -> None:
        _real(self, "latitude_deg", _Range(-90.0, 90.0))
        _real(self, "longitude_deg", _Range(-180.0, 180.0))
        _real(self, "altitude_m", _Range(-500.0, 9000.0))


_LTAN: Final = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


@dataclass(frozen=True, slots=True, kw_only=True)
class OrbitConfig(_Section):
    """A circular orbit of a planned satellite (Keplerian, with the J2 drift).

    Attributes:
        altitude_km: Height above the Earth's mean radius, in [160, 40000] km.
        inclination_deg: Inclination in degrees, in [0, 180]; or leave it out
            and set ``sun_synchronous: true``.
        sun_synchronous: Pick the inclination that makes the orbit's plane
            follow the Sun (J2 precession of 360° a year).
        raan_deg: Right ascension of the ascending node at ``epoch``, in
            [0, 360); or leave it out and give ``ltan``.
        ltan: Local time of the ascending node, ``"HH:MM"`` (mean solar time),
            e.g. ``"10:30"`` for a dawn–dusk-free morning orbit.
        argument_of_latitude_deg: Where the satellite is on its orbit at
            ``epoch``, degrees from the ascending node, in [0, 360).
        epoch: UTC instant those elements hold at (default: the emulation's start).
    """

    altitude_km: float
    inclination_deg: float | None = None
    sun_synchronous: bool = False
    raan_deg: float | None = None
    ltan: str | None = None
    argument_of_latitude_deg: float = 0.0
    epoch: str | None = None

    def __post_init__(self) -> None:
        _real(self, "altitude_km", _Range(160.0, 40_000.0))
        if not isinstance(self.sun_synchronous, bool):
            raise _Invalid("sun_synchronous", f"must be true or false, got {_describe(self.sun_synchronous)}")
        if (self.inclination_deg is None) == (not self.sun_synchronous):
            raise _Invalid("inclination_deg", "give either inclination_deg or sun_synchronous: true (one of them)")
        if self.inclination_deg is not None:
            _real(self, "inclination_deg", _Range(0.0, 180.0))
        if (self.raan_deg is None) == (self.ltan is None):
            raise _Invalid("raan_deg", 'give either raan_deg or ltan ("HH:MM"), one of them')
        if self.raan_deg is not None:
            _real(self, "raan_deg", _Range(0.0, 360.0, high_open=True))
        if self.ltan is not None:
            text = _string(self.ltan, "ltan", 'local time of the ascending node, "HH:MM"')
            if not _LTAN.match(text):
                raise _Invalid("ltan", f'must be a time of day "HH:MM" (00:00 to 23:59), got {text!r}')
        _real(self, "argument_of_latitude_deg", _Range(0.0, 360.0, high_open=True))
        _utc(self, "epoch")

    @property
    def epoch_utc(self) -> float | None:
        """``epoch`` as POSIX seconds, or None."""
        return None if self.epoch is None else parse_utc(self.epoch)

    @property
    def ltan_hours(self) -> float | None:
        """``ltan`` in hours, or None."""
        if self.ltan is None:
            return None
        hours, minutes = self.ltan.split(":")
        return int(hours) + int(minutes) / 60.0


def _tle_lines(data: object, path: str) -> tuple[object, ...]:
    lines = _sequence(data, path)
    return lines


@dataclass(frozen=True, slots=True, kw_only=True)
class SatelliteConfig(_Section):
    """A satellite node: a real one by its two-line elements, or a planned one by its orbit.

    Attributes:
        tle: The two lines of a NORAD two-line element set (propagated with SGP4).
        orbit: Circular-orbit elements (:class:`OrbitConfig`).

    Exactly one of them.
    """

    tle: tuple[str, str] | None = field(default=None, metadata=_parser(_optional(_tle_lines)))
    orbit: OrbitConfig | None = field(default=None, metadata=_parser(_optional(OrbitConfig.from_mapping)))

    def __post_init__(self) -> None:
        if (self.tle is None) == (self.orbit is None):
            raise _Invalid("", "give either tle: [line1, line2] or orbit: {...}, one of them")
        if self.tle is not None:
            if not isinstance(self.tle, tuple) or len(self.tle) != 2:
                raise _Invalid("tle", f"must be a list of the two TLE lines, got {_describe(self.tle)}")
            for i, line in enumerate(self.tle):
                _string(line, f"tle[{i}]", "TLE line")
            try:
                TleSatellite(self.tle[0], self.tle[1])
            except ConfigError as exc:
                raise _Invalid("tle", str(exc)) from None
        if self.orbit is not None:
            _instance(self, "orbit", OrbitConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig(_Section):
    """A site: one node process with its KME.

    Attributes:
        name: DNS-1123 label (lowercase letters, digits, '-'; at most 63).
        saes: IDs of the SAEs (applications) attached to this node's KME.
        location: Where the site is (a ground station, or any terrestrial
            site); needed at the ground end of a free-space link.
        satellite: This node is a satellite (a trusted node in orbit).

    A node has at most one of ``location`` and ``satellite``.
    """

    name: str
    saes: tuple[str, ...] = field(default=(), metadata=_parser(_sequence))
    location: LocationConfig | None = field(default=None, metadata=_parser(_optional(LocationConfig.from_mapping)))
    satellite: SatelliteConfig | None = field(default=None, metadata=_parser(_optional(SatelliteConfig.from_mapping)))

    @property
    def is_satellite(self) -> bool:
        """Whether this node is in orbit."""
        return self.satellite is not None

    def __post_init__(self) -> None:
        if self.location is not None and self.satellite is not None:
            raise _Invalid("satellite", "a node is either on the ground (location) or in orbit (satellite), not both")
        _dns_label(self.name, "name", "node name")
        if not isinstance(self.saes, tuple):
            raise _Invalid("saes", f"must be a list of SAE IDs, got {_describe(self.saes)}")
        for i, sae_id in enumerate(self.saes):
            text = _string(sae_id, f"saes[{i}]", "SAE ID")
            if not SAE_ID.fullmatch(text):
                raise _Invalid(
                    f"saes[{i}]",
                    f"{text!r} is not a valid SAE ID: 1-63 characters of letters, digits, "
                    "'.', '_' and '-', starting with a letter or digit",
                )


@dataclass(frozen=True, slots=True, kw_only=True)
class EmulationConfig(_Section):
    """How emulated time relates to wall-clock time: one network clock.

    Emulated UTC = ``start`` + ``speed`` × (wall-clock UTC − ``wall_start``)
    (:class:`qcinode.core.clock.NetworkClock`).

    Attributes:
        speed: Emulated seconds per wall-clock second (> 0), or ``"max"`` to
            run as fast as the CPU allows (fibre only: each link then keeps its
            own emulated time; satellites need the clock).
        start: The emulated UTC instant the network starts at (ISO 8601, e.g.
            ``"2027-03-21T18:00:00Z"``); default: the cluster's start
            (``wall_start``), so emulated UTC is the real one at speed 1.
        wall_start: The wall-clock UTC instant at which emulated time was
            ``start``. ``qcinode up`` and ``qcinode deploy k8s`` fill it in
            when the file leaves it out, so every node — restarted ones
            included — derives the same emulated UTC.
    """

    speed: float | Literal["max"] = 1.0
    start: str | None = None
    wall_start: str | None = None

    def __post_init__(self) -> None:
        _utc(self, "start")
        _utc(self, "wall_start")
        if self.speed == "max":
            return
        if isinstance(self.speed, bool) or not isinstance(self.speed, numbers.Real):
            raise _Invalid("speed", f'must be a number > 0 or "max", got {_describe(self.speed)}')
        _real(self, "speed", _Range(0.0, low_open=True))

    @property
    def start_utc(self) -> float | None:
        """``start`` as POSIX seconds, or None."""
        return None if self.start is None else parse_utc(self.start)

    @property
    def wall_start_utc(self) -> float | None:
        """``wall_start`` as POSIX seconds, or None."""
        return None if self.wall_start is None else parse_utc(self.wall_start)

    @property
    def is_anchored(self) -> bool:
        """Whether every node derives the same clock from this section alone.

        True with ``wall_start``, or at speed 1 without ``start`` (emulated
        UTC is then the wall clock's); always for ``max`` (no clock).
        """
        return self.is_max or self.wall_start is not None or (self.start is None and self.speed == 1.0)

    def clock(self, fallback_wall_start_utc: float) -> NetworkClock | None:
        """The network clock (None for ``max``).

        Args:
            fallback_wall_start_utc: The anchor when the section does not fix
                one (:attr:`is_anchored` False): processes started from such a
                file agree only if they are given the same value.
        """
        if self.is_max:
            return None
        speed = float(self.speed)
        wall = self.wall_start_utc
        if wall is None:
            if self.start is None and speed == 1.0:
                return NetworkClock(0.0, 0.0, 1.0)  # emulated UTC is the wall clock's
            wall = fallback_wall_start_utc
        start = self.start_utc
        return NetworkClock(wall if start is None else start, wall, speed)

    @property
    def is_max(self) -> bool:
        """Whether the emulation runs as fast as the CPU allows."""
        return self.speed == "max"


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayConfig(_Section):
    """How keys travel between nodes that are not neighbours.

    Attributes:
        paths: ``1``: each key travels one path, one-time-pad encrypted hop by
            hop (every trusted node on it holds the key in memory). ``2``–``4``:
            the key is split into that many XOR shares sent over node-disjoint
            paths, so no single trusted node learns it; a key is refused (503)
            when the network has fewer disjoint paths with key on every hop.
        key_ttl_s: How long a key stored for a slave SAE waits to be redeemed
            before its node deletes it (seconds). It bounds what keys nobody
            can redeem cost: those of a request that failed part-way, whose
            IDs the master never got.
    """

    paths: int = 1
    key_ttl_s: float = 86_400.0

    def __post_init__(self) -> None:
        _integer(self, "paths", 1, 4)
        _real(self, "key_ttl_s", _Range(1.0, 365 * 86_400.0))


@dataclass(frozen=True, slots=True, kw_only=True)
class KmeConfig(_Section):
    """How each node's ETSI GS QKD 014 KME shares keys between SAEs, and how every HTTPS interface guards its connections.

    The timeouts apply to the node's ETSI 014, ETSI 020 and SKIP servers alike
    (:mod:`qcinode.kme.guarded`), and to its ETSI 004 stream server, where
    ``header_timeout_s`` bounds a whole request (:mod:`qcinode.kme.etsi004`).

    Attributes:
        max_keys_per_sae_per_s: A token bucket per master SAE: keys its
            ``enc_keys`` calls may take per second, on average; ``None``
            (default): no cap. A request over it is refused with 503 naming
            the limit and consumes nothing.
        burst: The bucket's size in keys: what a master SAE may take at once
            after a pause (a request for more is always refused).
        fair_share: When the key a path could carry now would not give every
            master SAE using it (in the last ``fair_share_window_s``) a
            request of this size, refuse the SAEs that took more than an
            equal share of it in that window (503), so one looping client
            cannot drain a path for everyone.
        fair_share_window_s: How far back "using a path" and "its share" look.
        tls_handshake_timeout_s: A client that has not finished the TLS
            handshake by then is dropped.
        header_timeout_s: A request's line and headers must arrive within
            this after its first byte (slow-header clients are dropped).
        body_timeout_s: A request body must arrive within this (400, connection closed).
        idle_timeout_s: An idle keep-alive connection (no request under way) is closed after this.
        max_connections: Connections each interface server (ETSI 014, ETSI
            020, SKIP, ETSI 004: each its own count) holds open at once; one
            more is closed as it is accepted, before the TLS handshake, so
            that no client can exhaust the node's file descriptors.
    """

    max_keys_per_sae_per_s: float | None = None
    burst: int = 256
    fair_share: bool = True
    fair_share_window_s: float = 10.0
    tls_handshake_timeout_s: float = 5.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    max_connections: int = 256

    def __post_init__(self) -> None:
        if self.max_keys_per_sae_per_s is not None:
            _real(self, "max_keys_per_sae_per_s", _Range(0.0, 1e6, low_open=True))
        _integer(self, "burst", 1, 1_000_000)
        if not isinstance(self.fair_share, bool):
            raise _Invalid("fair_share", f"must be true or false, got {_describe(self.fair_share)}")
        _real(self, "fair_share_window_s", _Range(0.1, 3600.0))
        for name in ("tls_handshake_timeout_s", "header_timeout_s", "body_timeout_s", "idle_timeout_s"):
            _real(self, name, _Range(0.1, 3600.0))
        _integer(self, "max_connections", 1, 4096)


def _host_port(value: object, name: str) -> str:
    """Checks ``HOST:PORT`` (an IPv6 host in brackets); returns it unchanged."""
    text = _string(value, name, "HOST:PORT")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _Invalid(name, f"must be HOST:PORT with a port in [1, 65535], got {text!r}")
    return text


def _https_url(value: object, name: str) -> str:
    """Checks an ``https://host[:port]`` URL with nothing after the authority."""
    text = _string(value, name, "URL")
    if not _HTTPS_BASE.fullmatch(text):
        raise _Invalid(name, f"must be https://HOST[:PORT] (no path), got {text!r}")
    return text


@dataclass(frozen=True, slots=True, kw_only=True)
class InterworkingPeerConfig(_Section):
    """The other network at an interworking site, as this network's operator knows it.

    Attributes:
        network: The other network's name (its topology's ``name``); shown in logs and status.
        kme: The common name of the peer interworking KME's certificate (its
            node name in the other network); a peer whose certificate names
            another is refused.
        url: ``https://HOST:PORT`` of the peer KME's ETSI GS QKD 020 API.
        ca: The other operator's CA certificate (PEM). The 020 interface
            trusts this CA only, in both directions. A relative path is
            relative to the topology file; the file is read when the node
            starts (so two operators can exchange CA files after writing
            their topologies).
        saes: The SAE IDs the other network serves: a key for one of them is
            handed over at this site. SAE IDs are unique across connected
            networks (ETSI GS QKD 020).
    """

    network: str
    kme: str
    url: str
    ca: str
    saes: tuple[str, ...] = field(default=(), metadata=_parser(_sequence))

    def __post_init__(self) -> None:
        _dns_label(self.network, "network", "network name")
        _dns_label(self.kme, "kme", "peer KME (node) name")
        _https_url(self.url, "url")
        if not _string(self.ca, "ca", "CA certificate path"):
            raise _Invalid("ca", "must name the other operator's CA certificate file")
        if not isinstance(self.saes, tuple) or not self.saes:
            raise _Invalid("saes", "must list at least one SAE ID of the other network")
        for i, sae_id in enumerate(self.saes):
            text = _string(sae_id, f"saes[{i}]", "SAE ID")
            if not SAE_ID.fullmatch(text):
                raise _Invalid(f"saes[{i}]", f"{text!r} is not a valid SAE ID (1-63 characters of letters, digits, '.', '_', '-')")
        if len(set(self.saes)) != len(self.saes):
            raise _Invalid("saes", "an SAE ID is listed twice")


@dataclass(frozen=True, slots=True, kw_only=True)
class InterworkingConfig(_Section):
    """One interworking site: a node of this network whose KME exchanges keys with another network's (ETSI GS QKD 020).

    Attributes:
        node: This network's node at the site.
        listen: ``HOST:PORT`` of this KME's ETSI 020 server (mutual TLS, the peer's CA only).
        url: How the peer reaches that server (the base of the
            ``ack_callback_url`` this KME sends); default ``https://LISTEN``.
        peer: The other network's KME at the site.
        ack_timeout_s: How long a handed-over key waits for the peer's
            acknowledgement before it is voided.
        retries: How many times an ``ext_keys`` or ``ext_keys/ack`` call
            that failed (no answer, 408, 503) is sent again before the keys are voided.
    """

    node: str
    listen: str
    url: str | None = None
    peer: InterworkingPeerConfig = field(metadata=_parser(InterworkingPeerConfig.from_mapping))
    ack_timeout_s: float = 20.0
    retries: int = 2

    def __post_init__(self) -> None:
        _dns_label(self.node, "node", "node name")
        _host_port(self.listen, "listen")
        if self.url is not None:
            _https_url(self.url, "url")
        _instance(self, "peer", InterworkingPeerConfig)
        _real(self, "ack_timeout_s", _Range(0.1, 3600.0))
        _integer(self, "retries", 0, 10)

    @property
    def callback_base(self) -> str:
        """The URL the peer uses to reach this KME's 020 server."""
        return self.url if self.url is not None else f"https://{self.listen}"


@dataclass(frozen=True, slots=True, kw_only=True)
class InterfacesConfig(_Section):
    """Which key-delivery interfaces besides ETSI GS QKD 014 every node serves.

    Attributes:
        etsi004: Serve ETSI GS QKD 004 key streams (JSON over mutual TLS).
        skip: Serve SKIP (draft-cisco-skip) over HTTPS with mutual TLS.
        stream_ttl_max_s: The longest TTL a 004 stream may ask for (seconds).
    """

    etsi004: bool = True
    skip: bool = True
    stream_ttl_max_s: float = 86_400.0

    def __post_init__(self) -> None:
        for name in ("etsi004", "skip"):
            if not isinstance(getattr(self, name), bool):
                raise _Invalid(name, f"must be true or false, got {_describe(getattr(self, name))}")
        _real(self, "stream_ttl_max_s", _Range(1.0, 365 * 86_400.0))


def _interworking(data: object, path: str) -> tuple[InterworkingConfig, ...]:
    return tuple(InterworkingConfig.from_mapping(item, f"{path}[{i}]") for i, item in enumerate(_sequence(data, path)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology(_Section):
    """A whole network: nodes, links, shared defaults and emulation settings.

    Attributes:
        name: DNS-1123 label naming the network.
        defaults: The link settings every link starts from.
        emulation: Emulation speed.
        relay: Single-path or multi-path (XOR secret sharing) key relay.
        kme: Per-SAE fairness and connection limits of every node's ETSI 014 KME.
        nodes: At least one node; names unique.
        links: Links between distinct, known nodes; at most one per pair of
            nodes (in either direction).

    SAE IDs are unique across all nodes.
    """

    name: str
    defaults: LinkSettings = _section(LinkSettings)
    emulation: EmulationConfig = _section(EmulationConfig)
    relay: RelayConfig = _section(RelayConfig)
    kme: KmeConfig = _section(KmeConfig)
    nodes: tuple[NodeConfig, ...]
    links: tuple[LinkConfig, ...] = ()
    interfaces: InterfacesConfig = _section(InterfacesConfig)
    interworking: tuple[InterworkingConfig, ...] = ()

    def __post_init__(self) -> None:
        _dns_label(self.name, "name", "topology name")
        _instance(self, "defaults", LinkSettings)
        _instance(self, "emulation", EmulationConfig)
        _instance(self, "relay", RelayConfig)
        _instance(self, "kme", KmeConfig)
        for name, cls in (("nodes", NodeConfig), ("links", LinkConfig)):
            items = getattr(self, name)
            if not isinstance(items, tuple) or not all(isinstance(x, cls) for x in items):
                raise _Invalid(name, f"must be a tuple of {cls.__name__}, got {_describe(items)}")
        if not self.nodes:
            raise _Invalid("nodes", "a topology needs at least one node")
        self._check_nodes()
        self._check_links()
        self._check_clock()
        _instance(self, "interfaces", InterfacesConfig)
        self._check_interworking()

    def _check_nodes(self) -> None:
        first_node: dict[str, int] = {}
        first_sae: dict[str, tuple[int, int]] = {}
        for i, node in enumerate(self.nodes):
            if node.name in first_node:
                raise _Invalid(
                    f"nodes[{i}].name",
                    f"duplicate node name {node.name!r} (also nodes[{first_node[node.name]}].name)",
                )
            first_node[node.name] = i
            for j, sae_id in enumerate(node.saes):
                if sae_id in first_sae:
                    k, m = first_sae[sae_id]
                    raise _Invalid(
                        f"nodes[{i}].saes[{j}]",
                        f"duplicate SAE ID {sae_id!r}: SAE IDs are unique across the network "
                        f"(already nodes[{k}].saes[{m}], on node {self.nodes[k].name!r})",
                    )
                first_sae[sae_id] = (i, j)

    def _check_links(self) -> None:
        names = [node.name for node in self.nodes]
        first_pair: dict[frozenset[str], int] = {}
        first_id: dict[str, int] = {}
        for i, link in enumerate(self.links):
            for j, end in enumerate(link.between):
                if end not in names:
                    raise _Invalid(
                        f"links[{i}].between[{j}]",
                        f"unknown node {end!r}{_suggest(end, names)} (nodes: {', '.join(names)})",
                    )
            self._check_link_ends(i, link)
            pair = frozenset(link.between)
            if pair in first_pair:
                raise _Invalid(
                    f"links[{i}].between",
                    f"duplicate link between {link.alice!r} and {link.bob!r} "
                    f"(already links[{first_pair[pair]}]; "
                    "one link per pair of nodes, in either direction)",
                )
            first_pair[pair] = i
            # link_id joins two names with '-', which names may also contain.
            if link.link_id in first_id:
                raise _Invalid(
                    f"links[{i}].between",
                    f"link ID {link.link_id!r} is ambiguous: links[{first_id[link.link_id]}] "
                    "has the same ID; rename a node",
                )
            first_id[link.link_id] = i

    def _check_link_ends(self, i: int, link: LinkConfig) -> None:
        """A satellite is only ever the first end of a free-space link to a site with a location."""
        alice, bob = self.node(link.alice), self.node(link.bob)
        if bob.is_satellite:
            raise _Invalid(
                f"links[{i}].between",
                f"{bob.name!r} is a satellite: put it first, [{bob.name}, {alice.name}] "
                "(a satellite carries the source; its links are downlinks)"
                + ("; links between two satellites are not supported" if alice.is_satellite else ""),
            )
        if alice.is_satellite and bob.location is None:
            index = next(j for j, node in enumerate(self.nodes) if node.name == bob.name)
            raise _Invalid(
                f"nodes[{index}].location",
                f"{bob.name!r} is the ground end of the free-space link links[{i}]: give its location "
                "{latitude_deg, longitude_deg, altitude_m}",
            )

    def _check_clock(self) -> None:
        """Satellites need one network clock: ``speed: max`` has none."""
        satellites = [i for i, node in enumerate(self.nodes) if node.is_satellite]
        if satellites and self.emulation.is_max:
            raise _Invalid(
                "emulation.speed",
                f"'max' cannot run a topology with satellites (nodes[{satellites[0]}].satellite): passes "
                "follow one network clock, and 'max' has none; give emulated seconds per wall second, e.g. speed: 60",
            )

    def _check_interworking(self) -> None:
        """Interworking sites name nodes of this network; remote SAE IDs are not local names."""
        if not isinstance(self.interworking, tuple) or not all(isinstance(x, InterworkingConfig) for x in self.interworking):
            raise _Invalid("interworking", f"must be a tuple of InterworkingConfig, got {_describe(self.interworking)}")
        names = [node.name for node in self.nodes]
        local = {sae for node in self.nodes for sae in node.saes} | set(names)
        listens: dict[str, int] = {}
        remote: dict[str, int] = {}
        for i, site in enumerate(self.interworking):
            if site.node not in names:
                raise _Invalid(f"interworking[{i}].node", f"unknown node {site.node!r}{_suggest(site.node, names)} (nodes: {', '.join(names)})")
            if site.listen in listens:
                raise _Invalid(f"interworking[{i}].listen", f"{site.listen} is also interworking[{listens[site.listen]}].listen")
            listens[site.listen] = i
            for j, sae in enumerate(site.peer.saes):
                where = f"interworking[{i}].peer.saes[{j}]"
                if sae in local:
                    raise _Invalid(where, f"{sae!r} is a node or SAE of this network: SAE IDs are unique across connected networks")
                if sae in remote:
                    raise _Invalid(where, f"{sae!r} is also served through interworking[{remote[sae]}]")
                remote[sae] = i

    def interworking_for(self, sae_id: str) -> InterworkingConfig | None:
        """The interworking site through which the other network's SAE ``sae_id`` is reached, or None."""
        for site in self.interworking:
            if sae_id in site.peer.saes:
                return site
        return None

    def knows_sae(self, sae_id: str) -> bool:
        """Whether ``sae_id`` is an SAE of this network or of a network it interworks with."""
        return self.has_sae(sae_id) or self.interworking_for(sae_id) is not None

    def sae_site(self, sae_id: str) -> str | None:
        """The node that serves ``sae_id`` here: its own node, or the interworking node for another network's SAE; None if unknown."""
        for node in self.nodes:
            if sae_id in node.saes:
                return node.name
        site = self.interworking_for(sae_id)
        return site.node if site is not None else None

    @property
    def has_satellites(self) -> bool:
        """Whether any node is a satellite."""
        return any(node.is_satellite for node in self.nodes)

    @classmethod
    def from_mapping(cls, data: object, path: str = "") -> Self:
        """Builds a topology from the parsed YAML document.

        Args:
            data: The document (a mapping).
            path: Prefix for error paths; ``""`` for a whole file.

        Returns:
            The validated topology.

        Raises:
            ConfigError: The message names the offending field's path.
        """
        raw = _mapping(data, path)
        _check_keys(raw, (f.name for f in dataclasses.fields(cls)), path)
        if "name" not in raw:
            raise ConfigError(f"{_join(path, 'name')}: required field is missing")
        if "nodes" not in raw:
            raise ConfigError(f"{_join(path, 'nodes')}: required field is missing")
        defaults_path = _join(path, "defaults")
        defaults_raw = _mapping(raw.get("defaults"), defaults_path)
        defaults = LinkSettings.from_mapping(defaults_raw, defaults_path)
        emulation = EmulationConfig.from_mapping(raw.get("emulation"), _join(path, "emulation"))
        relay = RelayConfig.from_mapping(raw.get("relay"), _join(path, "relay"))
        kme = KmeConfig.from_mapping(raw.get("kme"), _join(path, "kme"))
        nodes_path = _join(path, "nodes")
        nodes = tuple(
            NodeConfig.from_mapping(item, f"{nodes_path}[{i}]")
            for i, item in enumerate(_sequence(raw["nodes"], nodes_path))
        )
        links_path = _join(path, "links")
        satellites = {node.name for node in nodes if node.is_satellite}
        links = tuple(
            LinkConfig.from_mapping(item, f"{links_path}[{i}]", defaults_raw, satellites)
            for i, item in enumerate(_sequence(raw.get("links"), links_path))
        )
        interfaces = InterfacesConfig.from_mapping(raw.get("interfaces"), _join(path, "interfaces"))
        interworking = _interworking(raw.get("interworking"), _join(path, "interworking"))
        with _at(path):
            return cls(
                name=raw["name"],  # type: ignore[arg-type]  # validated in __post_init__
                defaults=defaults,
                emulation=emulation,
                relay=relay,
                kme=kme,
                nodes=nodes,
                links=links,
                interfaces=interfaces,
                interworking=interworking,
            )

    # Queries ---------------------------------------------------------------

    def has_node(self, name: str) -> bool:
        """Whether a node called ``name`` exists."""
        return any(node.name == name for node in self.nodes)

    def has_sae(self, sae_id: str) -> bool:
        """Whether an SAE with this ID is attached to any node."""
        return any(sae_id in node.saes for node in self.nodes)

    def node(self, name: str) -> NodeConfig:
        """The node called ``name``.

        Raises:
            ConfigError: No such node (e.g. a wrong ``--name``).
        """
        for node in self.nodes:
            if node.name == name:
                return node
        names = [node.name for node in self.nodes]
        raise ConfigError(
            f"unknown node {name!r}{_suggest(name, names)} "
            f"(topology {self.name!r} has: {', '.join(names)})"
        )

    def link(self, link_id: str) -> LinkConfig:
        """The link with ID ``link_id`` (``"alice-bob"``).

        Raises:
            ConfigError: No such link; the message lists the topology's links.
        """
        for link in self.links:
            if link.link_id == link_id:
                return link
        raise ConfigError(f"no link {link_id!r} (links: {', '.join(sorted(link.link_id for link in self.links))})")

    def links_of(self, name: str) -> tuple[LinkConfig, ...]:
        """The links with node ``name`` at either end, in file order.

        Raises:
            ConfigError: No such node.
        """
        self.node(name)
        return tuple(link for link in self.links if name in link.between)

    def neighbours(self, name: str) -> tuple[str, ...]:
        """The nodes linked to ``name``, in file order of the links.

        Raises:
            ConfigError: No such node.
        """
        return tuple(link.bob if link.alice == name else link.alice for link in self.links_of(name))

    def sae_node(self, sae_id: str) -> NodeConfig:
        """The node whose KME serves the SAE ``sae_id``.

        Raises:
            ConfigError: No node serves that SAE (check with :meth:`has_sae`
                first when the ID comes from a request).
        """
        for node in self.nodes:
            if sae_id in node.saes:
                return node
        raise ConfigError(f"unknown SAE ID {sae_id!r}: no node of topology {self.name!r} serves it")


# --------------------------------------------------------------------------
# YAML


# libyaml's parser where PyYAML has it (its wheels do): a node parses the whole topology at
# start-up, which the pure-Python parser made a third of a starting node's CPU in a
# 100-node cluster (0.38 s of parsing for 0.12 s).
_SafeLoader: Any = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader


class _Loader(_SafeLoader):  # type: ignore[misc]  # PyYAML ships no type stubs
    """SafeLoader that reads ``1e9``/``1.0e-6`` as floats and rejects duplicate keys."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1's float pattern plus exponents without a dot or without a sign.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
            |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_topology(text: str, source: str = "<string>") -> Topology:
    """Parses and validates a topology from YAML text.

    Args:
        text: The YAML document.
        source: Name of where the text came from, used in error messages.

    Returns:
        The validated topology.

    Raises:
        ConfigError: Invalid YAML, a document that is not a mapping, or an
            invalid topology. The message starts with ``source``, then the
            field path (``demo.yaml: links[1].detector.efficiency: ...``).
    """
    stream = io.StringIO(text)
    stream.name = source  # PyYAML puts the stream's name in its error marks
    try:
        data = yaml.load(stream, Loader=_Loader)  # noqa: S506  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: a topology file must be a YAML mapping (name, nodes, links, ...), "
            f"got {_describe(data)}"
        )
    try:
        return Topology.from_mapping(data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


#: Topologies parsed ahead by :func:`preload_topology`, by file name and text.
_preparsed: dict[tuple[str, str], Topology] = {}


def preload_topology(path: str | os.PathLike[str]) -> bool:
    """Parses a topology file now, for processes forked after this that load it unchanged.

    A fork server (the cluster's zygote) calls it before it forks its
    nodes: each would otherwise parse the same file again as it starts,
    which in a 100-node cluster is a large part of a starting node's CPU.
    :func:`load_topology` uses the kept parse only for the same file name
    *and* the same text, so an edited file is parsed afresh; the files it
    names (traces, CAs) are resolved at every load.

    Returns:
        Whether the file could be read and parsed (if not, nothing is kept
        and each load reports the problem itself).
    """
    _preparsed.clear()
    name = os.fspath(path)
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
        _preparsed[(name, text)] = parse_topology(text, name)
    except (OSError, UnicodeDecodeError, ConfigError):
        return False
    return True


def load_topology(path: str | os.PathLike[str]) -> Topology:
    """Reads, parses and validates a topology file.

    Args:
        path: The YAML file.

    Returns:
        The validated topology.

    Raises:
        ConfigError: The file cannot be read or is invalid; the message names
            the file and the offending field.
    """
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{os.fspath(path)}: cannot read topology file: {exc}") from None
    base_dir = pathlib.Path(path).resolve().parent
    name = os.fspath(path)
    parsed = _preparsed.get((name, text)) or parse_topology(text, name)
    return _resolve_peer_cas(_resolve_traces(parsed, base_dir, name), base_dir)


def _resolve_peer_cas(topology: Topology, base_dir: pathlib.Path) -> Topology:
    """Makes every ``interworking[i].peer.ca`` absolute (relative to the topology file).

    The file is not read here: ``qcinode certs`` and ``qcinode up`` of one
    network must work before the other operator's CA exists.
    """
    sites = []
    for site in topology.interworking:
        ca = pathlib.Path(site.peer.ca)
        if not ca.is_absolute():
            site = dataclasses.replace(site, peer=dataclasses.replace(site.peer, ca=str(base_dir / ca)))
        sites.append(site)
    return topology if tuple(sites) == topology.interworking else dataclasses.replace(topology, interworking=tuple(sites))


def _resolve_traces(topology: Topology, base_dir: pathlib.Path, source: str) -> Topology:
    """Makes every free-space ``loss_trace`` path absolute (relative to the topology file) and checks it exists."""
    links = list(topology.links)
    for i, link in enumerate(links):
        trace = link.free_space.loss_trace if link.free_space is not None else None
        if trace is None or trace in BUILTIN_TRACES:
            continue
        path = pathlib.Path(trace)
        if not path.is_absolute():
            path = base_dir / path
        if not path.is_file():
            raise ConfigError(
                f"{source}: links[{i}].free_space.loss_trace: no file {str(path)!r} "
                f"(a CSV path, relative to the topology file, or one of: {', '.join(BUILTIN_TRACES)})"
            )
        assert link.free_space is not None
        links[i] = dataclasses.replace(link, free_space=dataclasses.replace(link.free_space, loss_trace=str(path)))
    return topology if links == list(topology.links) else dataclasses.replace(topology, links=tuple(links))


def with_clock_anchor(topology: Topology, wall_utc: float) -> Topology:
    """``topology`` with ``emulation.wall_start`` set to ``wall_utc`` if it has none (and a clock).

    ``qcinode up`` and ``qcinode deploy k8s`` give the nodes such a file, so
    that all of them — restarted ones included — share one network clock.
    """
    emulation = topology.emulation
    if emulation.is_max or emulation.wall_start is not None:
        return topology
    return dataclasses.replace(topology, emulation=dataclasses.replace(emulation, wall_start=format_utc(wall_utc)))


def example_topology_path(name: str) -> pathlib.Path:
    """A shipped example topology (``qcinode up --example NAME``)."""
    path = pathlib.Path(__file__).with_name("cluster") / "examples" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"--example: no example {name!r}")
    return path


def builtin_topology_path() -> pathlib.Path:
    """The topology ``qcinode up`` runs when given none."""
    return pathlib.Path(__file__).with_name("cluster") / "builtin.yaml"


def topology_to_mapping(topology: Topology) -> dict[str, Any]:
    """The topology as plain YAML/JSON data, with every link fully merged.

    Every field is written out, so the result does not depend on the
    defaults of this version, and ``parse_topology(yaml.safe_dump(m))``
    gives back an equal topology. Links without an eavesdropper or a fault
    omit the key.
    """

    def plain(value: object) -> Any:
        if isinstance(value, dict):
            # An unset optional field is left out rather than written as null
            # (an honest link has no `eavesdropper: null`, a fibre link no
            # `free_space: null`, which would make it a free-space link).
            return {k: plain(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    result: dict[str, Any] = plain(dataclasses.asdict(topology))
    return result
