"""The topology model: nodes, links and their physical settings, from YAML.

Theory of operation
-------------------
A topology file (DESIGN.md §2, docs/topology.md) is a user-facing contract:
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
import difflib
import io
import math
import numbers
import os
import pathlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, Self

import yaml

from qcinode.core.estimation import NO_DECOY_BOUNDS, NO_DECOY_GLLP, NO_DECOY_SINGLE_PHOTON
from qcinode.core.finite_key import DEFAULT_FINITE_KEY, FINITE_KEY_ANALYSES
from qcinode.core.reconciliation import (
    DEFAULT_ERROR_CORRECTION,
    ERROR_CORRECTION_LDPC,
    ERROR_CORRECTION_METHODS,
    LDPC_EXTRA_HINT,
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
    "Intensities",
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
]

EAVESDROPPER_ATTACKS: Final[tuple[str, ...]] = ("none", "intercept-resend", "photon-number-splitting")
"""Every attack an ``eavesdropper.attack`` may name. New attacks go here."""

FAULT_KINDS: Final[tuple[str, ...]] = ("none", "flip", "drop", "delay", "reorder", "replay", "partition")
"""Every classical-channel fault a ``fault.kind`` may name (see :mod:`qcinode.node.faults`)."""

FAULT_CHANNELS: Final[tuple[str, ...]] = ("all", "postprocessing", "relay")
"""The messages a ``fault.channel`` may restrict a fault to."""

MAX_FAULT_DELAY_MS: Final = 60_000.0

PROBABILITY_SUM_TOLERANCE: Final = 1e-9
"""How far a set of probabilities may sum from 1 (float rounding in YAML)."""

_DNS_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SAE_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


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
    if not _DNS_LABEL.match(text):
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
        finite_key: The finite-key analysis of a decoy-state block, one of
            :data:`FINITE_KEY_ANALYSES` (:func:`qcinode.core.finite_key.decoy_key_length`):
            ``chernoff`` (per-class Chernoff bounds, the default) or ``lim2014``.
        error_correction: The reconciliation method, one of
            :data:`ERROR_CORRECTION_METHODS`: ``cascade`` (interactive, the
            default) or ``ldpc`` (one-way syndrome decoding; needs the
            ``ldpc`` extra).
    """

    block_bits: int = 100_000
    security_epsilon: float = 1.0e-10
    verification_tag_bits: int = 64
    cascade_max_passes: int = 6
    finite_key: str = DEFAULT_FINITE_KEY
    error_correction: str = DEFAULT_ERROR_CORRECTION

    def __post_init__(self) -> None:
        _integer(self, "block_bits", 1_000, 10_000_000)
        _real(self, "security_epsilon", _Range(0.0, 1.0e-3, low_open=True))
        _integer(self, "verification_tag_bits", 32, 256)
        _integer(self, "cascade_max_passes", 1, 64)
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
        fraction: Fraction of pulses attacked, in [0, 1].
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

    def __post_init__(self) -> None:
        for name, cls in _SETTINGS_TYPES.items():
            _instance(self, name, cls)


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
    """One QKD link: a fibre between two nodes, with its merged settings.

    Attributes:
        between: ``(alice, bob)``: the transmitting node, then the receiving node.
        length_km: Fibre length in km (>= 0).
        source: Alice's source.
        fibre: The fibre.
        detector: Bob's detector.
        postprocessing: Post-processing settings.
        eavesdropper: An emulated attacker, or ``None`` for an honest channel.
        fault: A classical-channel fault applied at both ends from start-up,
            or ``None``.
    """

    between: tuple[str, str] = field(metadata=_parser(_sequence))
    length_km: float
    source: SourceConfig = _section(SourceConfig)
    fibre: FibreConfig = _section(FibreConfig)
    detector: DetectorConfig = _section(DetectorConfig)
    postprocessing: PostprocessingConfig = _section(PostprocessingConfig)
    eavesdropper: EavesdropperConfig | None = field(
        default=None, metadata=_parser(_optional(EavesdropperConfig.from_mapping))
    )
    fault: FaultConfig | None = field(default=None, metadata=_parser(_optional(FaultConfig.from_mapping)))

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
        _real(self, "length_km", _Range(0.0))
        for name, cls in _SETTINGS_TYPES.items():
            _instance(self, name, cls)
        if self.eavesdropper is not None:
            _instance(self, "eavesdropper", EavesdropperConfig)
        if self.fault is not None:
            _instance(self, "fault", FaultConfig)

    @classmethod
    def from_mapping(
        cls, data: object, path: str, defaults: Mapping[str, object] | None = None
    ) -> Self:
        """Builds a link from YAML data, merged over the raw ``defaults:`` mapping.

        Args:
            data: The link's YAML mapping.
            path: Its path, e.g. ``links[1]``.
            defaults: The raw ``defaults:`` mapping (already validated on its
                own); each of its sections is deep-merged under the link's.

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
        """η_channel = 10^(−α L / 10), the fibre's transmittance (MQZL Sec. II)."""
        return math.pow(10.0, -self.fibre.attenuation_db_per_km * self.length_km / 10.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig(_Section):
    """A site: one node process with its KME.

    Attributes:
        name: DNS-1123 label (lowercase letters, digits, '-'; at most 63).
        saes: IDs of the SAEs (applications) attached to this node's KME.
    """

    name: str
    saes: tuple[str, ...] = field(default=(), metadata=_parser(_sequence))

    def __post_init__(self) -> None:
        _dns_label(self.name, "name", "node name")
        if not isinstance(self.saes, tuple):
            raise _Invalid("saes", f"must be a list of SAE IDs, got {_describe(self.saes)}")
        for i, sae_id in enumerate(self.saes):
            text = _string(sae_id, f"saes[{i}]", "SAE ID")
            if not _SAE_ID.match(text):
                raise _Invalid(
                    f"saes[{i}]",
                    f"{text!r} is not a valid SAE ID: 1-63 characters of letters, digits, "
                    "'.', '_' and '-', starting with a letter or digit",
                )


@dataclass(frozen=True, slots=True, kw_only=True)
class EmulationConfig(_Section):
    """How emulated time relates to wall-clock time.

    Attributes:
        speed: Emulated seconds per wall-clock second (> 0), or ``"max"`` to
            run as fast as the CPU allows.
    """

    speed: float | Literal["max"] = 1.0

    def __post_init__(self) -> None:
        if self.speed == "max":
            return
        if isinstance(self.speed, bool) or not isinstance(self.speed, numbers.Real):
            raise _Invalid("speed", f'must be a number > 0 or "max", got {_describe(self.speed)}')
        _real(self, "speed", _Range(0.0, low_open=True))

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
class Topology(_Section):
    """A whole network: nodes, links, shared defaults and emulation settings.

    Attributes:
        name: DNS-1123 label naming the network.
        defaults: The link settings every link starts from.
        emulation: Emulation speed.
        relay: Single-path or multi-path (XOR secret sharing) key relay.
        nodes: At least one node; names unique.
        links: Links between distinct, known nodes; at most one per pair of
            nodes (in either direction).

    SAE IDs are unique across all nodes.
    """

    name: str
    defaults: LinkSettings = _section(LinkSettings)
    emulation: EmulationConfig = _section(EmulationConfig)
    relay: RelayConfig = _section(RelayConfig)
    nodes: tuple[NodeConfig, ...]
    links: tuple[LinkConfig, ...] = ()

    def __post_init__(self) -> None:
        _dns_label(self.name, "name", "topology name")
        _instance(self, "defaults", LinkSettings)
        _instance(self, "emulation", EmulationConfig)
        _instance(self, "relay", RelayConfig)
        for name, cls in (("nodes", NodeConfig), ("links", LinkConfig)):
            items = getattr(self, name)
            if not isinstance(items, tuple) or not all(isinstance(x, cls) for x in items):
                raise _Invalid(name, f"must be a tuple of {cls.__name__}, got {_describe(items)}")
        if not self.nodes:
            raise _Invalid("nodes", "a topology needs at least one node")
        self._check_nodes()
        self._check_links()

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
        nodes_path = _join(path, "nodes")
        nodes = tuple(
            NodeConfig.from_mapping(item, f"{nodes_path}[{i}]")
            for i, item in enumerate(_sequence(raw["nodes"], nodes_path))
        )
        links_path = _join(path, "links")
        links = tuple(
            LinkConfig.from_mapping(item, f"{links_path}[{i}]", defaults_raw)
            for i, item in enumerate(_sequence(raw.get("links"), links_path))
        )
        with _at(path):
            return cls(
                name=raw["name"],  # type: ignore[arg-type]  # validated in __post_init__
                defaults=defaults,
                emulation=emulation,
                relay=relay,
                nodes=nodes,
                links=links,
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


class _Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type stubs
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
    return parse_topology(text, os.fspath(path))


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
            # An honest link omits the key rather than writing `eavesdropper: null`.
            return {
                k: plain(v) for k, v in value.items() if not (k in ("eavesdropper", "fault") and v is None)
            }
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    result: dict[str, Any] = plain(dataclasses.asdict(topology))
    return result
