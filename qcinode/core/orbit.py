"""Orbits, ground stations, look angles, passes and the Sun: the geometry of the space segment.

Theory of operation
-------------------
Rules this module keeps:

1. **Time** is emulated UTC as float seconds since the Unix epoch (POSIX time:
   every day has 86 400 s, leap seconds do not exist). :func:`parse_utc` and
   :func:`format_utc` convert to and from ISO 8601 (``2016-12-19T16:52:00Z``).
   UT1 is taken equal to UTC: |UT1 − UTC| < 0.9 s turns the Earth by less
   than 14 arcsec, which moves a satellite at 7000 km radius by < 0.45 km in
   the Earth-fixed frame (< 0.04° seen from a station 650 km away).
2. **Frames.** A :class:`Satellite` gives its position in the Earth-fixed
   frame (ECEF, km). SGP4 (:class:`TleSatellite`) works in TEME (true
   equator, mean equinox); TEME goes to the pseudo Earth-fixed frame by one
   rotation about z by the Greenwich mean sidereal time, IAU 1982 (Vallado,
   Crawford, Hujsak, Kelso, "Revisiting Spacetrack Report #3", AIAA
   2006-6753, Sec. "TEME"; GMST from Vallado, *Fundamentals of Astrodynamics
   and Applications*, 4th ed. (2013), Eq. 3-47). Because TEME's x axis is
   the *mean* equinox, the equation of the equinoxes does not enter. Polar
   motion (< 0.6 arcsec, < 20 m at orbit radius) is neglected.
3. **Circular orbits** (:class:`CircularOrbit`) are Keplerian circles in a
   mean-of-date inertial frame turned into ECEF by the same GMST rotation,
   with the secular J2 drifts of the node and of the argument of latitude
   (Vallado 2013, Sec. 9.6, Eq. 9-41). A sun-synchronous orbit's node then
   follows the mean Sun, so its local time of ascending node stays put.
4. **Ground stations** are geodetic points on the WGS84 ellipsoid (NIMA
   TR8350.2, 3rd ed., Eq. 4-14); look angles are topocentric
   east-north-up with the *geodetic* normal as "up"; no refraction.
5. **Passes** (:func:`find_passes`) are found by a vectorised coarse scan of
   the elevation every ``step_s`` and refined by bisection (rise, set: to
   0.01 s) and golden-section search (culmination, minimum range: to 0.01 s).
   Local maxima of the coarse scan that lie just below the mask are refined
   too, so a grazing pass shorter than ``step_s`` is not lost. A pass cut by
   the search window is reported with the window's edge as its rise or set
   and flagged (:attr:`Pass.rise_clipped`, :attr:`Pass.set_clipped`).
6. **The Sun** (:func:`sun_elevation_deg`) comes from the low-precision
   solar coordinates of the Astronomical Almanac (Sec. C, "low precision
   formulas for the Sun", 0.01° between 1950 and 2050; the same algorithm as
   Michalsky, Solar Energy 40, 227 (1988)). Elevations are geometric (no
   refraction); :func:`sky_condition` uses the almanac's thresholds, so
   "day" starts at −0.833° (upper limb on the horizon with standard
   refraction).
7. **Closed forms** for tests and docs (:func:`slant_range_km`,
   :func:`overhead_pass_duration_s`, :func:`orbital_period_s`) use a
   spherical Earth of radius 6371 km and GM = 398 600.4418 km³/s²,
   with the Earth's rotation ignored.

Positions where SGP4 fails (decayed orbit, elements far from their epoch)
are NaN; NaN elevations count as below any mask. Nothing here does I/O or
draws random numbers.
"""

from __future__ import annotations

import datetime as _dt
import enum
import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol, overload, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from sgp4.api import SGP4_ERRORS, WGS72, Satrec

from qcinode.errors import ConfigError

__all__ = [
    "EARTH_GM_KM3_S2",
    "MEAN_EARTH_RADIUS_KM",
    "WGS84_EQUATORIAL_RADIUS_KM",
    "CircularOrbit",
    "GroundStation",
    "Pass",
    "Satellite",
    "SkyCondition",
    "TleSatellite",
    "elevation_from_slant_range_deg",
    "find_passes",
    "format_utc",
    "gmst_rad",
    "look_angles",
    "next_pass",
    "orbital_period_s",
    "overhead_pass_duration_s",
    "parse_utc",
    "sky_condition",
    "slant_range_km",
    "sun_elevation_deg",
    "sun_synchronous_inclination_deg",
    "teme_to_ecef_km",
]

FloatArray = NDArray[np.float64]

EARTH_GM_KM3_S2: Final = 398600.4418
"""Earth's gravitational parameter (WGS84/EGM96), km³/s²."""
MEAN_EARTH_RADIUS_KM: Final = 6371.0
"""Radius of the spherical Earth of the closed forms, km."""
WGS84_EQUATORIAL_RADIUS_KM: Final = 6378.137
"""WGS84 semi-major axis, km (also the reference radius of J2)."""
_WGS84_FLATTENING: Final = 1.0 / 298.257223563
_WGS84_E2: Final = _WGS84_FLATTENING * (2.0 - _WGS84_FLATTENING)
_J2: Final = 1.08262668e-3
"""Earth's second zonal harmonic (EGM96, unnormalised)."""
_TROPICAL_YEAR_S: Final = 365.2421897 * 86400.0
_SUN_MEAN_MOTION_RAD_S: Final = 2.0 * math.pi / _TROPICAL_YEAR_S
"""Mean motion of the mean Sun in right ascension: what a sun-synchronous node must match."""

_DAY_S: Final = 86400.0
_UNIX_EPOCH_JD: Final = 2440587.5
_J2000_UNIX: Final = 946728000.0
"""2000-01-01T12:00:00 UTC (JD 2451545.0) in Unix seconds."""
_DEG: Final = math.pi / 180.0

_ROOT_TOLERANCE_S: Final = 0.01
_GOLDEN: Final = (math.sqrt(5.0) - 1.0) / 2.0
_SCAN_CHUNK: Final = 50_000


# --------------------------------------------------------------------------- time


_UTC_PATTERN: Final = re.compile(
    r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})[Tt ]"
    r"(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<fraction>\.\d+)?)?"
    r"(?P<zone>[Zz]|[+-]\d{2}:?\d{2})"
)


def parse_utc(text: str) -> float:
    """Reads an ISO 8601 date-time with an explicit UTC offset as Unix seconds.

    ``2016-12-19T16:52:00Z``, ``2016-12-19T16:52:00.25Z``, ``2016-12-19 16:52Z``
    and ``2016-12-19T17:52:00+01:00`` are accepted; a time without a zone is
    refused rather than guessed.

    Args:
        text: The date-time.

    Returns:
        Seconds since 1970-01-01T00:00:00Z, leap seconds ignored (POSIX).

    Raises:
        ConfigError: Not a string, wrong format, no zone, impossible date or a
            leap second (``:60``).
    """
    if not isinstance(text, str):
        raise ConfigError(
            f"expected an ISO 8601 UTC time such as '2016-12-19T16:52:00Z', got {type(text).__name__} {text!r}"
        )
    match = _UTC_PATTERN.fullmatch(text.strip())
    if match is None:
        hint = " (add 'Z' for UTC)" if re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt ][\d:.]+", text.strip()) else ""
        raise ConfigError(
            f"{text!r} is not an ISO 8601 UTC time such as '2016-12-19T16:52:00Z'{hint}"
        )
    second = int(match["second"] or 0)
    if second == 60:
        raise ConfigError(f"{text!r}: leap seconds are not represented (POSIX time); use :59.999 or :00")
    try:
        moment = _dt.datetime(
            int(match["year"]), int(match["month"]), int(match["day"]),
            int(match["hour"]), int(match["minute"]), second, tzinfo=_dt.UTC,
        )
    except ValueError as exc:
        raise ConfigError(f"{text!r}: {exc}") from None
    zone = match["zone"]
    offset_s = 0
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 23 or minutes > 59:
            raise ConfigError(f"{text!r}: UTC offset {zone} is out of range")
        offset_s = sign * (hours * 3600 + minutes * 60)
    whole = (moment - _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)) // _dt.timedelta(seconds=1)
    fraction = float(match["fraction"]) if match["fraction"] else 0.0
    return float(whole - offset_s) + fraction


def format_utc(t: float) -> str:
    """Writes Unix seconds as ISO 8601 UTC: whole seconds, or up to 6 decimals.

    ``format_utc(1482166320.0) == "2016-12-19T16:52:00Z"`` and
    ``format_utc(1482166320.25) == "2016-12-19T16:52:00.25Z"``.

    Raises:
        ConfigError: ``t`` is not a finite number or outside years 1–9999.
    """
    if not isinstance(t, numbers.Real) or isinstance(t, bool) or not math.isfinite(t):
        raise ConfigError(f"expected finite Unix seconds, got {t!r}")
    micros = round(float(t) * 1_000_000)
    days, rest = divmod(micros, 86_400_000_000)
    try:
        date = _dt.date(1970, 1, 1) + _dt.timedelta(days=days)
    except OverflowError:
        raise ConfigError(f"Unix seconds {t!r} fall outside years 1-9999") from None
    seconds, micro = divmod(rest, 1_000_000)
    hour, seconds = divmod(seconds, 3600)
    minute, second = divmod(seconds, 60)
    text = f"{date.isoformat()}T{hour:02d}:{minute:02d}:{second:02d}"
    if micro:
        text += f".{micro:06d}".rstrip("0")
    return text + "Z"


def _julian_split(t: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Unix seconds as (whole Julian date ending in .5, day fraction) for SGP4."""
    days = t / _DAY_S
    whole = np.floor(days)
    return _UNIX_EPOCH_JD + whole, days - whole


@overload
def gmst_rad(t: float) -> float: ...
@overload
def gmst_rad(t: FloatArray) -> FloatArray: ...
def gmst_rad(t: float | FloatArray) -> float | FloatArray:
    """Greenwich mean sidereal time, IAU 1982, in radians in [0, 2π).

    Vallado (2013) Eq. 3-47::

        θ = 67310.54841 s + (876600 h + 8640184.812866 s) T + 0.093104 s T² − 6.2e−6 s T³

    with T in Julian centuries of UT1 from J2000 (UT1 = UTC here, rule 1).
    876600 h·T is exactly the UT seconds elapsed since J2000, so that term
    is reduced modulo one day before adding, which keeps full precision.

    Args:
        t: Unix seconds (scalar or array).
    """
    if isinstance(t, (float, int)):  # the per-frame path: plain floats are several times faster
        elapsed_s = float(t) - _J2000_UNIX
        c = elapsed_s / (_DAY_S * 36525.0)
        seconds_f = 67310.54841 + math.fmod(elapsed_s, _DAY_S) + c * (8640184.812866 + c * (0.093104 - 6.2e-6 * c))
        return (seconds_f % _DAY_S) * (2.0 * math.pi / _DAY_S)
    elapsed = np.asarray(t, dtype=np.float64) - _J2000_UNIX
    centuries = elapsed / (_DAY_S * 36525.0)
    seconds = (
        67310.54841
        + np.mod(elapsed, _DAY_S)
        + centuries * (8640184.812866 + centuries * (0.093104 - 6.2e-6 * centuries))
    )
    angle = np.mod(seconds, _DAY_S) * (2.0 * math.pi / _DAY_S)
    if np.ndim(angle) == 0:
        return float(angle)
    return angle


def teme_to_ecef_km(position_teme_km: FloatArray, t: float | FloatArray) -> FloatArray:
    """TEME → Earth-fixed: r_ECEF = R3(θ_GMST) r_TEME (module rule 2).

    Args:
        position_teme_km: (3,) or (n, 3) TEME positions, km.
        t: Unix seconds (scalar, or one per row).
    """
    angle = gmst_rad(float(t)) if np.ndim(t) == 0 else gmst_rad(np.asarray(t, dtype=np.float64).ravel())
    return _rotate_z(np.asarray(position_teme_km, dtype=np.float64), angle)


def _rotate_z(vectors: FloatArray, angle: float | FloatArray) -> FloatArray:
    """Rotates inertial vectors (…, 3) into the frame turned by ``angle`` about z (R3)."""
    cos_a, sin_a = np.cos(angle), np.sin(angle)
    x, y = vectors[..., 0], vectors[..., 1]
    out = np.empty_like(vectors)
    out[..., 0] = cos_a * x + sin_a * y
    out[..., 1] = -sin_a * x + cos_a * y
    out[..., 2] = vectors[..., 2]
    return out


# --------------------------------------------------------------------------- satellites


@runtime_checkable
class Satellite(Protocol):
    """Anything with an Earth-fixed position as a function of UTC."""

    def position_ecef_km(self, t: float | FloatArray) -> FloatArray:
        """Earth-fixed (ECEF) position, km: shape (3,) for a scalar ``t``, (n, 3) for n times."""
        ...


def _tle_checksum(line: str) -> int:
    return sum(int(c) if c.isdigit() else (1 if c == "-" else 0) for c in line[:68]) % 10


def _check_tle_line(line: object, number: int) -> str:
    where = f"TLE line {number}"
    if not isinstance(line, str):
        raise ConfigError(f"{where}: expected a string, got {type(line).__name__} {line!r}")
    text = line.rstrip()
    if len(text) != 69:
        raise ConfigError(f"{where}: must be 69 characters, got {len(text)}: {text!r}")
    if not text.startswith(f"{number} "):
        raise ConfigError(f"{where}: must start with '{number} ', got {text[:2]!r}")
    if not text[68].isdigit():
        raise ConfigError(f"{where}: the last character must be the checksum digit, got {text[68]!r}")
    expected = _tle_checksum(text)
    if int(text[68]) != expected:
        raise ConfigError(
            f"{where}: checksum digit is {text[68]} but the line sums to {expected} (mod 10): "
            "the line is corrupt or mistyped"
        )
    return text


class TleSatellite:
    """A satellite propagated by SGP4 from two-line elements.

    The :class:`sgp4.api.Satrec` is built once; scalar times use its scalar
    call and arrays its vectorised ``sgp4_array``. The WGS72 constants are
    used, as the elements were fitted with them (Vallado et al. 2006).

    Attributes:
        line1: First TLE line (validated, trailing blanks removed).
        line2: Second TLE line.
        catalog_number: The NORAD catalogue number (columns 3–7).
        epoch_utc: The elements' epoch, Unix seconds.
    """

    __slots__ = ("_satrec", "catalog_number", "epoch_utc", "line1", "line2")

    def __init__(self, line1: str, line2: str) -> None:
        """Validates and parses the elements.

        Raises:
            ConfigError: A line of the wrong length, a wrong line number, a bad
                checksum, catalogue numbers that differ, unparsable fields, or
                elements SGP4 cannot propagate; the message names the line.
        """
        self.line1 = _check_tle_line(line1, 1)
        self.line2 = _check_tle_line(line2, 2)
        if self.line1[2:7] != self.line2[2:7]:
            raise ConfigError(
                f"TLE line 2: catalogue number {self.line2[2:7].strip()!r} differs from "
                f"line 1's {self.line1[2:7].strip()!r}"
            )
        try:
            satrec = Satrec.twoline2rv(self.line1, self.line2, WGS72)
        except (ValueError, IndexError) as exc:
            raise ConfigError(f"TLE: SGP4 cannot parse the elements: {exc}") from None
        error, _, _ = satrec.sgp4(satrec.jdsatepoch, satrec.jdsatepochF)
        if error != 0:
            raise ConfigError(f"TLE: SGP4 cannot propagate these elements: {SGP4_ERRORS.get(error, error)}")
        self._satrec = satrec
        self.catalog_number = self.line1[2:7].strip()
        self.epoch_utc = ((satrec.jdsatepoch - _UNIX_EPOCH_JD) + satrec.jdsatepochF) * _DAY_S

    def __repr__(self) -> str:
        return f"TleSatellite(catalog_number={self.catalog_number!r}, epoch_utc={format_utc(self.epoch_utc)!r})"

    def position_teme_km(self, t: float | FloatArray) -> FloatArray:
        """TEME position, km: shape (3,) for a scalar ``t``, (n, 3) for an array; NaN where SGP4 fails."""
        if np.ndim(t) == 0:
            days = float(t) / _DAY_S
            whole = math.floor(days)
            error, position, _ = self._satrec.sgp4(_UNIX_EPOCH_JD + whole, days - whole)
            if error != 0:
                return np.full(3, np.nan)
            return np.array(position, dtype=np.float64)
        times = np.asarray(t, dtype=np.float64).ravel()
        jd, fraction = _julian_split(times)
        errors, positions, _ = self._satrec.sgp4_array(jd, fraction)
        positions = np.asarray(positions, dtype=np.float64)
        positions[np.asarray(errors) != 0] = np.nan
        return positions

    def position_ecef_km(self, t: float | FloatArray) -> FloatArray:
        """Earth-fixed position, km (TEME rotated by GMST; rule 2)."""
        if np.ndim(t) == 0:
            moment = float(t)
            days = moment / _DAY_S
            whole = math.floor(days)
            error, (x, y, z), _ = self._satrec.sgp4(_UNIX_EPOCH_JD + whole, days - whole)
            if error != 0:
                return np.full(3, np.nan)
            theta = gmst_rad(moment)
            cos_t, sin_t = math.cos(theta), math.sin(theta)
            return np.array((cos_t * x + sin_t * y, -sin_t * x + cos_t * y, z))
        times = np.asarray(t, dtype=np.float64).ravel()
        return teme_to_ecef_km(self.position_teme_km(times), times)


def sun_synchronous_inclination_deg(altitude_km: float) -> float:
    """Inclination of the circular sun-synchronous orbit at ``altitude_km`` (above the WGS84 equator).

    The J2 nodal drift Ω̇ = −(3/2) n J2 (R/a)² cos i (Vallado 2013, Eq. 9-41,
    e = 0) equals the mean Sun's 2π per tropical year, so
    ``cos i = −2 Ω̇_sun a^{7/2} / (3 J2 R² √GM)`` (Vallado 2013, Sec. 11.4).
    ≈ 97.40° at 500 km, 97.52° at 525 km.

    Raises:
        ConfigError: Altitude not positive, or too high for any sun-synchronous orbit.
    """
    check_finite("altitude_km", altitude_km, low=0.0, open_low=True)
    a = WGS84_EQUATORIAL_RADIUS_KM + altitude_km
    cos_i = -2.0 * _SUN_MEAN_MOTION_RAD_S * a**3.5 / (3.0 * _J2 * WGS84_EQUATORIAL_RADIUS_KM**2 * math.sqrt(EARTH_GM_KM3_S2))
    if cos_i < -1.0:
        raise ConfigError(f"altitude_km: no circular sun-synchronous orbit exists at {altitude_km} km")
    return math.degrees(math.acos(cos_i))


def _parse_ltan(value: object) -> float:
    """``"10:30"`` (or hours as a number) → hours in [0, 24)."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*", value)
        if match is None:
            raise ConfigError(f"ltan: expected a local time such as '10:30', got {value!r}")
        hours, minutes, seconds = int(match[1]), int(match[2]), int(match[3] or 0)
        if hours > 23 or minutes > 59 or seconds > 59:
            raise ConfigError(f"ltan: {value!r} is not a time of day")
        return hours + minutes / 60.0 + seconds / 3600.0
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and 0.0 <= float(value) < 24.0:
        return float(value)
    raise ConfigError(f"ltan: expected a local time such as '10:30' or hours in [0, 24), got {value!r}")


def check_finite(name: str, value: object, low: float = -math.inf, high: float = math.inf,
                 *, open_low: bool = False, open_high: bool = False) -> float:
    """``value`` as a float if it is a finite real number within the bounds; else ConfigError naming ``name``."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ConfigError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{name}: must be finite, got {value!r}")
    if number < low or (open_low and number == low):
        raise ConfigError(f"{name}: must be {'>' if open_low else '>='} {low:g}, got {value!r}")
    if number > high or (open_high and number == high):
        raise ConfigError(f"{name}: must be {'<' if open_high else '<='} {high:g}, got {value!r}")
    return number


def _mean_sun_right_ascension_rad(t: float) -> float:
    """Right ascension of the mean Sun: its Greenwich hour angle is UT − 12 h by definition of mean time."""
    ut_rad = math.fmod(t, _DAY_S) * (2.0 * math.pi / _DAY_S)
    return math.fmod(gmst_rad(t) - ut_rad + math.pi, 2.0 * math.pi)


@dataclass(frozen=True, slots=True, kw_only=True)
class CircularOrbit:
    """A circular orbit with optional secular J2 drift, for planned satellites (e.g. an EAGLE-1-like SSO).

    Give the node either as ``raan_deg`` (right ascension of the ascending
    node at the epoch, mean-of-date frame) or as ``ltan`` (local mean time of
    the ascending node, ``"10:30"``): RAAN = α_mean_sun + 15°/h·(LTAN − 12 h).

    With ``j2`` (Vallado 2013, Sec. 9.6, Eq. 9-41, e = 0, p = a):
    Ω̇ = −(3/2) n J2 (R/a)² cos i; ω̇ = (3/4) n J2 (R/a)² (4 − 5 sin² i);
    Ṁ = n [1 + (3/4) J2 (R/a)² (2 − 3 sin² i)]; the argument of latitude
    advances at u̇ = Ṁ + ω̇. R is the WGS84 equatorial radius and
    a = R + ``altitude_km``.

    Attributes:
        altitude_km: Orbit radius minus the WGS84 equatorial radius, km (> 0).
        inclination_deg: In [0, 180].
        raan_deg: RAAN at the epoch, degrees, or None when ``ltan`` is given.
        ltan: Local mean time of the ascending node ("HH:MM" or hours), or None.
        epoch_utc: Unix seconds at which the angles hold.
        argument_of_latitude_deg: Angle from the ascending node at the epoch.
        j2: Apply the secular J2 drift.
        rotating_earth: False makes the "Earth-fixed" frame inertial (no GMST
            rotation): for closed-form checks only.
    """

    altitude_km: float
    inclination_deg: float
    raan_deg: float | None = None
    ltan: str | float | None = None
    epoch_utc: float
    argument_of_latitude_deg: float = 0.0
    j2: bool = True
    rotating_earth: bool = True
    _semi_major_axis_km: float = field(init=False, repr=False, compare=False)
    _raan0_rad: float = field(init=False, repr=False, compare=False)
    _raan_rate: float = field(init=False, repr=False, compare=False)
    _u_rate: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        altitude = check_finite("altitude_km", self.altitude_km, low=0.0, open_low=True)
        inclination = check_finite("inclination_deg", self.inclination_deg, 0.0, 180.0)
        check_finite("argument_of_latitude_deg", self.argument_of_latitude_deg)
        epoch = check_finite("epoch_utc", self.epoch_utc)
        if (self.raan_deg is None) == (self.ltan is None):
            raise ConfigError("raan_deg, ltan: give exactly one of them")
        if self.raan_deg is not None:
            raan0 = check_finite("raan_deg", self.raan_deg) * _DEG
        else:
            ltan_hours = _parse_ltan(self.ltan)
            raan0 = _mean_sun_right_ascension_rad(epoch) + (ltan_hours - 12.0) * (math.pi / 12.0)
        a = WGS84_EQUATORIAL_RADIUS_KM + altitude
        n = math.sqrt(EARTH_GM_KM3_S2 / a**3)
        raan_rate, u_rate = 0.0, n
        if self.j2:
            k = _J2 * (WGS84_EQUATORIAL_RADIUS_KM / a) ** 2
            sin2 = math.sin(inclination * _DEG) ** 2
            raan_rate = -1.5 * n * k * math.cos(inclination * _DEG)
            perigee_rate = 0.75 * n * k * (4.0 - 5.0 * sin2)
            u_rate = n * (1.0 + 0.75 * k * (2.0 - 3.0 * sin2)) + perigee_rate
        object.__setattr__(self, "_semi_major_axis_km", a)
        object.__setattr__(self, "_raan0_rad", math.fmod(raan0, 2.0 * math.pi))
        object.__setattr__(self, "_raan_rate", raan_rate)
        object.__setattr__(self, "_u_rate", u_rate)

    @classmethod
    def sun_synchronous(cls, *, altitude_km: float, ltan: str | float, epoch_utc: float,
                        argument_of_latitude_deg: float = 0.0) -> CircularOrbit:
        """A circular sun-synchronous orbit (J2 on) at the inclination of :func:`sun_synchronous_inclination_deg`."""
        return cls(altitude_km=altitude_km, inclination_deg=sun_synchronous_inclination_deg(altitude_km),
                   ltan=ltan, argument_of_latitude_deg=argument_of_latitude_deg, epoch_utc=epoch_utc)

    @property
    def period_s(self) -> float:
        """Time between ascending-node crossings (nodal period), s."""
        return 2.0 * math.pi / self._u_rate

    @property
    def semi_major_axis_km(self) -> float:
        """Orbit radius, km."""
        return self._semi_major_axis_km

    def raan_rad(self, t: float) -> float:
        """Right ascension of the ascending node at ``t`` (mean-of-date), radians."""
        return self._raan0_rad + self._raan_rate * (t - self.epoch_utc)

    def position_inertial_km(self, t: float | FloatArray) -> FloatArray:
        """Position in the mean-of-date inertial frame, km: (3,) or (n, 3)."""
        scalar = np.ndim(t) == 0
        dt = np.atleast_1d(np.asarray(t, dtype=np.float64)).ravel() - self.epoch_utc
        u = self.argument_of_latitude_deg * _DEG + self._u_rate * dt
        raan = self._raan0_rad + self._raan_rate * dt
        inclination = self.inclination_deg * _DEG
        cos_u, sin_u = np.cos(u), np.sin(u)
        cos_o, sin_o = np.cos(raan), np.sin(raan)
        a = self._semi_major_axis_km
        out = np.empty((dt.size, 3))
        out[:, 0] = a * (cos_o * cos_u - sin_o * sin_u * math.cos(inclination))
        out[:, 1] = a * (sin_o * cos_u + cos_o * sin_u * math.cos(inclination))
        out[:, 2] = a * sin_u * math.sin(inclination)
        return out[0] if scalar else out

    def position_ecef_km(self, t: float | FloatArray) -> FloatArray:
        """Earth-fixed position, km (inertial rotated by GMST unless ``rotating_earth`` is off)."""
        inertial = self.position_inertial_km(t)
        if not self.rotating_earth:
            return inertial
        angle = gmst_rad(float(t)) if np.ndim(t) == 0 else gmst_rad(np.asarray(t, dtype=np.float64).ravel())
        return _rotate_z(inertial, angle)


# --------------------------------------------------------------------------- ground stations


@dataclass(frozen=True, slots=True)
class GroundStation:
    """A geodetic point on the WGS84 ellipsoid.

    Attributes:
        latitude_deg: Geodetic latitude, degrees north, in [−90, 90].
        longitude_deg: Degrees east, in [−180, 360).
        altitude_m: Height above the ellipsoid, m (> −500, < 10 000).
    """

    latitude_deg: float
    longitude_deg: float
    altitude_m: float = 0.0
    _ecef_km: tuple[float, float, float] = field(init=False, repr=False, compare=False)
    _enu: tuple[tuple[float, float, float], ...] = field(init=False, repr=False, compare=False)
    _ecef_array: FloatArray = field(init=False, repr=False, compare=False)
    _enu_array: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        latitude = check_finite("latitude_deg", self.latitude_deg, -90.0, 90.0)
        longitude = check_finite("longitude_deg", self.longitude_deg, -180.0, 360.0, open_high=True)
        height_km = check_finite("altitude_m", self.altitude_m, -500.0, 10_000.0) / 1000.0
        phi, lam = latitude * _DEG, longitude * _DEG
        sin_phi, cos_phi = math.sin(phi), math.cos(phi)
        sin_lam, cos_lam = math.sin(lam), math.cos(lam)
        # Prime-vertical radius of curvature (NIMA TR8350.2 Eq. 4-15) and the geodetic-to-ECEF map (Eq. 4-14).
        normal = WGS84_EQUATORIAL_RADIUS_KM / math.sqrt(1.0 - _WGS84_E2 * sin_phi**2)
        ecef = (
            (normal + height_km) * cos_phi * cos_lam,
            (normal + height_km) * cos_phi * sin_lam,
            (normal * (1.0 - _WGS84_E2) + height_km) * sin_phi,
        )
        enu = (
            (-sin_lam, cos_lam, 0.0),
            (-sin_phi * cos_lam, -sin_phi * sin_lam, cos_phi),
            (cos_phi * cos_lam, cos_phi * sin_lam, sin_phi),
        )
        object.__setattr__(self, "_ecef_km", ecef)
        object.__setattr__(self, "_enu", enu)
        object.__setattr__(self, "_ecef_array", np.array(ecef))
        object.__setattr__(self, "_enu_array", np.array(enu))

    @property
    def position_ecef_km(self) -> FloatArray:
        """The station's Earth-fixed position, km."""
        return self._ecef_array.copy()

    @property
    def enu_basis(self) -> FloatArray:
        """Rows: the local east, north and up (geodetic normal) unit vectors in ECEF."""
        return self._enu_array.copy()


# --------------------------------------------------------------------------- look angles


@overload
def look_angles(sat: Satellite, station: GroundStation, t: float) -> tuple[float, float, float]: ...
@overload
def look_angles(
    sat: Satellite, station: GroundStation, t: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]: ...
def look_angles(
    sat: Satellite, station: GroundStation, t: float | FloatArray
) -> tuple[float, float, float] | tuple[FloatArray, FloatArray, FloatArray]:
    """Elevation, azimuth and range of the satellite seen from the station.

    Topocentric east-north-up with the geodetic normal as up: elevation =
    atan2(u, √(e² + n²)), azimuth = atan2(e, n) from north through east in
    [0, 360). Geometric (no refraction, no light time).

    Args:
        sat: The satellite.
        station: The ground station.
        t: Unix seconds, scalar or array.

    Returns:
        ``(elevation_deg, azimuth_deg, range_km)``: floats for a scalar ``t``,
        arrays for an array (NaN where the satellite's position is unknown).
    """
    if np.ndim(t) == 0:
        x, y, z = sat.position_ecef_km(float(t)).tolist()
        sx, sy, sz = station._ecef_km
        dx, dy, dz = x - sx, y - sy, z - sz
        (e0, e1, _), (n0, n1, n2), (u0, u1, u2) = station._enu
        east = e0 * dx + e1 * dy
        north = n0 * dx + n1 * dy + n2 * dz
        up = u0 * dx + u1 * dy + u2 * dz
        elevation = math.degrees(math.atan2(up, math.hypot(east, north)))
        azimuth = math.degrees(math.atan2(east, north)) % 360.0
        return elevation, azimuth, math.sqrt(dx * dx + dy * dy + dz * dz)
    times = np.asarray(t, dtype=np.float64)
    delta = sat.position_ecef_km(times.ravel()) - station._ecef_array
    enu = delta @ station._enu_array.T
    horizontal = np.hypot(enu[:, 0], enu[:, 1])
    elevation_arr = np.degrees(np.arctan2(enu[:, 2], horizontal)).reshape(times.shape)
    azimuth_arr = np.mod(np.degrees(np.arctan2(enu[:, 0], enu[:, 1])), 360.0).reshape(times.shape)
    range_arr = np.linalg.norm(delta, axis=1).reshape(times.shape)
    return elevation_arr, azimuth_arr, range_arr


# --------------------------------------------------------------------------- passes


@dataclass(frozen=True, slots=True)
class Pass:
    """One pass of a satellite above a station's elevation mask.

    Attributes:
        rise_utc: When the elevation crosses the mask upwards (or the window's
            start if :attr:`rise_clipped`), Unix seconds.
        culmination_utc: When the elevation is highest (within the window).
        set_utc: When the elevation crosses the mask downwards (or the window's end).
        max_elevation_deg: The elevation at culmination, degrees.
        min_range_km: The smallest slant range during the pass (within the window), km.
        rise_clipped: The pass was already under way when the window opened.
        set_clipped: The pass was still under way when the window closed.
    """

    rise_utc: float
    culmination_utc: float
    set_utc: float
    max_elevation_deg: float
    min_range_km: float
    rise_clipped: bool = False
    set_clipped: bool = False

    @property
    def duration_s(self) -> float:
        """Time above the mask (within the window), s."""
        return self.set_utc - self.rise_utc

    @property
    def is_clipped(self) -> bool:
        """The window cut the pass at either end."""
        return self.rise_clipped or self.set_clipped

    def to_mapping(self) -> dict[str, object]:
        """Plain data with ISO 8601 times (the ``qcinode passes --json`` fields)."""
        return {
            "rise_utc": format_utc(round(self.rise_utc, 3)),
            "culmination_utc": format_utc(round(self.culmination_utc, 3)),
            "set_utc": format_utc(round(self.set_utc, 3)),
            "max_elevation_deg": round(self.max_elevation_deg, 3),
            "min_range_km": round(self.min_range_km, 3),
            "rise_clipped": self.rise_clipped,
            "set_clipped": self.set_clipped,
        }


def _elevation_and_range(sat: Satellite, station: GroundStation, times: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Vectorised look angles over a long time grid, in chunks to bound memory; NaN elevation → −90°."""
    elevations = np.empty(times.size)
    ranges = np.empty(times.size)
    for start in range(0, times.size, _SCAN_CHUNK):
        chunk = times[start:start + _SCAN_CHUNK]
        elevation, _, distance = look_angles(sat, station, chunk)
        elevations[start:start + chunk.size] = elevation
        ranges[start:start + chunk.size] = distance
    missing = ~np.isfinite(elevations)
    elevations[missing] = -90.0
    ranges[missing] = np.inf
    return elevations, ranges


def _bisect(above: Callable[[float], bool], t_below: float, t_above: float) -> float:
    """The crossing between a time below the mask and one above it, to :data:`_ROOT_TOLERANCE_S`."""
    while abs(t_above - t_below) > _ROOT_TOLERANCE_S:
        middle = 0.5 * (t_below + t_above)
        if above(middle):
            t_above = middle
        else:
            t_below = middle
    return 0.5 * (t_below + t_above)


def _golden_max(f: Callable[[float], float], low: float, high: float) -> tuple[float, float]:
    """Golden-section search for the maximum of a unimodal ``f`` on [low, high]: (argmax, max)."""
    a, b = low, high
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    while b - a > _ROOT_TOLERANCE_S:
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = f(d)
    best = [(fc, c), (fd, d), (f(low), low), (f(high), high)]
    value, where = max(best)
    return where, value


def _scalar_elevation(sat: Satellite, station: GroundStation, t: float) -> float:
    elevation = look_angles(sat, station, t)[0]
    return elevation if math.isfinite(elevation) else -90.0


def _scalar_range(sat: Satellite, station: GroundStation, t: float) -> float:
    distance = look_angles(sat, station, t)[2]
    return distance if math.isfinite(distance) else math.inf


def find_passes(
    sat: Satellite,
    station: GroundStation,
    start_utc: float,
    end_utc: float,
    elevation_mask_deg: float = 10.0,
    step_s: float = 10.0,
) -> list[Pass]:
    """Every pass of ``sat`` above ``elevation_mask_deg`` at ``station`` in [start_utc, end_utc].

    Coarse scan every ``step_s`` (vectorised), then rise and set by bisection
    and culmination and minimum range by golden-section search, all to 0.01 s.
    Sampled local maxima up to ``1° + 1°/s · step_s`` below the mask are
    refined as well: the sample nearest a peak is within step_s/2 of it and
    a satellite above 250 km changes elevation by less than 2°/s (0.9°/s
    overhead at 500 km), so a grazing pass is found even when no sample lies
    above the mask.

    Args:
        sat: The satellite.
        station: The ground station.
        start_utc: Window start, Unix seconds.
        end_utc: Window end, Unix seconds (> start).
        elevation_mask_deg: Minimum elevation, degrees, in [−90, 90).
        step_s: Coarse scan step, s, in (0, 600].

    Returns:
        The passes in time order; passes cut by the window are clipped and flagged.

    Raises:
        ConfigError: An invalid window, mask or step.
    """
    start = check_finite("start_utc", start_utc)
    end = check_finite("end_utc", end_utc)
    if end <= start:
        raise ConfigError(f"end_utc: must be after start_utc, got {format_utc(end)} <= {format_utc(start)}")
    mask = check_finite("elevation_mask_deg", elevation_mask_deg, -90.0, 90.0, open_high=True)
    step = check_finite("step_s", step_s, 0.0, 600.0, open_low=True)

    count = int(math.ceil((end - start) / step)) + 1
    times = np.minimum(start + step * np.arange(count), end)
    elevations, ranges = _elevation_and_range(sat, station, times)

    def elevation(t: float) -> float:
        return _scalar_elevation(sat, station, t)

    def is_above(t: float) -> bool:
        return elevation(t) > mask

    def min_range(low: float, high: float) -> float:
        return -_golden_max(lambda t: -_scalar_range(sat, station, t), low, high)[1]

    passes: list[Pass] = []
    # Runs of samples above the mask, as (first, last) index pairs.
    above = elevations > mask
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    starts = (edges[~above[edges]] + 1).tolist()
    ends = edges[above[edges]].tolist()
    if above[0]:
        starts.insert(0, 0)
    if above[-1]:
        ends.append(count - 1)
    for first, last in zip(starts, ends, strict=True):
        rise_clipped = first == 0
        set_clipped = last == count - 1
        rise = start if rise_clipped else _bisect(is_above, float(times[first - 1]), float(times[first]))
        set_ = end if set_clipped else _bisect(is_above, float(times[last + 1]), float(times[last]))
        k = first + int(np.argmax(elevations[first:last + 1]))
        culmination, max_elevation = _golden_max(
            elevation, max(rise, float(times[k]) - step), min(set_, float(times[k]) + step)
        )
        j = first + int(np.argmin(ranges[first:last + 1]))
        closest = min_range(max(rise, float(times[j]) - step), min(set_, float(times[j]) + step))
        passes.append(Pass(rise, culmination, set_, max_elevation, closest, rise_clipped, set_clipped))

    # Grazing passes: sampled local maxima just below the mask whose true peak may clear it.
    margin = 1.0 + step
    interior = np.arange(1, count - 1)
    peaks = interior[
        (elevations[interior] >= elevations[interior - 1])
        & (elevations[interior] >= elevations[interior + 1])
        & (elevations[interior] <= mask)
        & (elevations[interior] > mask - margin)
    ]
    for k in peaks.tolist():
        low, high = float(times[k - 1]), float(times[k + 1])
        culmination, max_elevation = _golden_max(elevation, low, high)
        if max_elevation > mask:
            rise = _bisect(is_above, low, culmination)
            set_ = _bisect(is_above, high, culmination)
            passes.append(Pass(rise, culmination, set_, max_elevation, min_range(rise, set_)))
    passes.sort(key=lambda p: p.rise_utc)
    return passes


def next_pass(
    sat: Satellite,
    station: GroundStation,
    after_utc: float,
    elevation_mask_deg: float = 10.0,
    search_s: float = 2 * 86400.0,
    step_s: float = 10.0,
) -> Pass | None:
    """The first pass that has not set at ``after_utc``, searched up to ``search_s`` ahead.

    A pass under way at ``after_utc`` is returned clipped (``rise_clipped``,
    rise = ``after_utc``). The window grows a day at a time, so a pass in the
    next hours costs one day's scan.

    Returns:
        The pass, or None if there is none in the search horizon.
    """
    start = check_finite("after_utc", after_utc)
    horizon = start + check_finite("search_s", search_s, 0.0, open_low=True)
    end = start
    while end < horizon:
        end = min(end + 86400.0, horizon)
        passes = find_passes(sat, station, start, end, elevation_mask_deg, step_s)
        # A pass cut by this window's end (not the horizon's) may go on: widen and look again.
        if passes and (not passes[0].set_clipped or end >= horizon):
            return passes[0]
    return None


# --------------------------------------------------------------------------- the Sun


class SkyCondition(enum.Enum):
    """Daylight at a station from the Sun's geometric elevation (Astronomical Almanac thresholds)."""

    DAY = "day"
    """Sun above −0.833° (sunrise to sunset: upper limb above the horizon with refraction)."""
    CIVIL_TWILIGHT = "civil-twilight"
    """−6° < Sun ≤ −0.833°."""
    NAUTICAL_TWILIGHT = "nautical-twilight"
    """−12° < Sun ≤ −6°."""
    ASTRONOMICAL_TWILIGHT = "astronomical-twilight"
    """−18° < Sun ≤ −12°."""
    NIGHT = "night"
    """Sun at or below −18°."""


SUNRISE_ELEVATION_DEG: Final = -0.833
"""Geometric elevation of the Sun's centre at sunrise and sunset (34′ refraction + 16′ semi-diameter)."""


def sky_condition(sun_elevation_deg: float) -> SkyCondition:
    """The sky condition for a geometric solar elevation (see :class:`SkyCondition`).

    Raises:
        ConfigError: Not a number in [−90, 90].
    """
    elevation = check_finite("sun_elevation_deg", sun_elevation_deg, -90.0, 90.0)
    if elevation > SUNRISE_ELEVATION_DEG:
        return SkyCondition.DAY
    if elevation > -6.0:
        return SkyCondition.CIVIL_TWILIGHT
    if elevation > -12.0:
        return SkyCondition.NAUTICAL_TWILIGHT
    if elevation > -18.0:
        return SkyCondition.ASTRONOMICAL_TWILIGHT
    return SkyCondition.NIGHT


@overload
def sun_elevation_deg(station: GroundStation, t: float) -> float: ...
@overload
def sun_elevation_deg(station: GroundStation, t: FloatArray) -> FloatArray: ...
def sun_elevation_deg(station: GroundStation, t: float | FloatArray) -> float | FloatArray:
    """Geometric elevation of the Sun's centre at the station, degrees (no refraction).

    Astronomical Almanac low-precision solar coordinates (Michalsky 1988),
    with n = JD − 2451545.0::

        L = 280.460° + 0.9856474° n        (mean longitude)
        g = 357.528° + 0.9856003° n        (mean anomaly)
        λ = L + 1.915° sin g + 0.020° sin 2g
        ε = 23.439° − 0.0000004° n
        α = atan2(cos ε sin λ, cos λ),  δ = asin(sin ε sin λ)

    then the hour angle H = GMST + longitude − α and
    sin h = sin φ sin δ + cos φ cos δ cos H (φ geodetic: the zenith of a
    direction at infinity is the ellipsoid normal). Accuracy 0.01° in 1950–2050.
    """
    times = np.asarray(t, dtype=np.float64)
    n = (times - _J2000_UNIX) / _DAY_S
    mean_longitude = np.radians(np.mod(280.460 + 0.9856474 * n, 360.0))
    mean_anomaly = np.radians(np.mod(357.528 + 0.9856003 * n, 360.0))
    ecliptic_longitude = mean_longitude + np.radians(1.915 * np.sin(mean_anomaly) + 0.020 * np.sin(2.0 * mean_anomaly))
    obliquity = np.radians(23.439 - 0.0000004 * n)
    sin_lambda = np.sin(ecliptic_longitude)
    right_ascension = np.arctan2(np.cos(obliquity) * sin_lambda, np.cos(ecliptic_longitude))
    declination = np.arcsin(np.sin(obliquity) * sin_lambda)
    hour_angle = gmst_rad(times) + station.longitude_deg * _DEG - right_ascension
    phi = station.latitude_deg * _DEG
    sin_h = math.sin(phi) * np.sin(declination) + math.cos(phi) * np.cos(declination) * np.cos(hour_angle)
    elevation: FloatArray = np.degrees(np.arcsin(np.clip(sin_h, -1.0, 1.0)))
    if np.ndim(elevation) == 0:
        return float(elevation)
    return elevation


# --------------------------------------------------------------------------- closed forms


def orbital_period_s(altitude_km: float) -> float:
    """Period of a circular orbit, T = 2π √((R_E + h)³ / GM), R_E = 6371 km; 94.5 min at 500 km.

    Kepler's third law (Vallado 2013, Eq. 1-27).
    """
    altitude = check_finite("altitude_km", altitude_km, low=0.0, open_low=True)
    return 2.0 * math.pi * math.sqrt((MEAN_EARTH_RADIUS_KM + altitude) ** 3 / EARTH_GM_KM3_S2)


@overload
def slant_range_km(elevation_deg: float, altitude_km: float, station_altitude_km: float = 0.0) -> float: ...
@overload
def slant_range_km(
    elevation_deg: FloatArray, altitude_km: float, station_altitude_km: float = 0.0
) -> FloatArray: ...
def slant_range_km(
    elevation_deg: float | FloatArray, altitude_km: float, station_altitude_km: float = 0.0
) -> float | FloatArray:
    """Station-to-satellite distance at elevation ε on a spherical Earth (R_E = 6371 km).

    From the triangle Earth centre–station–satellite (law of cosines), with
    R = R_E + h₀ the station's radius::

        L(ε) = √((R_E + h)² − (R cos ε)²) − R sin ε

    1695 / 1193 / 909 / 683 / 500 km at 10 / 20 / 30 / 45 / 90° for h = 500 km.
    """
    altitude = check_finite("altitude_km", altitude_km, low=0.0, open_low=True)
    station = check_finite("station_altitude_km", station_altitude_km, -0.5, altitude, open_high=True)
    radius = MEAN_EARTH_RADIUS_KM + station
    orbit = MEAN_EARTH_RADIUS_KM + altitude
    angle = np.radians(np.asarray(elevation_deg, dtype=np.float64))
    distance = np.sqrt(orbit**2 - (radius * np.cos(angle)) ** 2) - radius * np.sin(angle)
    if np.ndim(distance) == 0:
        return float(distance)
    return distance


def elevation_from_slant_range_deg(range_km: float, altitude_km: float, station_altitude_km: float = 0.0) -> float:
    """Inverse of :func:`slant_range_km`: sin ε = ((R_E + h)² − R² − L²) / (2 R L)."""
    altitude = check_finite("altitude_km", altitude_km, low=0.0, open_low=True)
    distance = check_finite("range_km", range_km, low=0.0, open_low=True)
    radius = MEAN_EARTH_RADIUS_KM + check_finite("station_altitude_km", station_altitude_km, -0.5, altitude)
    orbit = MEAN_EARTH_RADIUS_KM + altitude
    sine = (orbit**2 - radius**2 - distance**2) / (2.0 * radius * distance)
    if not -1.0 <= sine <= 1.0:
        raise ConfigError(f"range_km: {range_km} km is not a possible slant range to an orbit at {altitude} km")
    return math.degrees(math.asin(sine))


def overhead_pass_duration_s(altitude_km: float, mask_deg: float) -> float:
    """Time above ``mask_deg`` of a pass through the zenith, Earth's rotation ignored.

    The visible cap has Earth-central half-angle ψ = arccos(R_E cos ε / (R_E + h)) − ε;
    the satellite crosses 2ψ at the orbital rate 2π/T, so the duration is
    2ψ T / (2π) (R_E = 6371 km). 443 s at 500 km above 10°.
    """
    altitude = check_finite("altitude_km", altitude_km, low=0.0, open_low=True)
    mask = check_finite("mask_deg", mask_deg, 0.0, 90.0, open_high=True)
    epsilon = mask * _DEG
    psi = math.acos(MEAN_EARTH_RADIUS_KM * math.cos(epsilon) / (MEAN_EARTH_RADIUS_KM + altitude)) - epsilon
    return 2.0 * psi / (2.0 * math.pi) * orbital_period_s(altitude)
