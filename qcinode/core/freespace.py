"""The free-space downlink: transmittance and sky background of a satellite-to-ground channel.

Theory of operation
-------------------
The channel of one instant is the product of independent factors
(each cited where it is computed)::

    η = η_geo(L) · η_point · η_atm(ε) · η_turb · η_rx          (detector efficiency excluded)

Rules this module keeps:

1. **Geometry** (:func:`geometric_efficiency`): a Gaussian beam whose 1/e²
   intensity radius at range L is w(L) = √(w₀² + (θL)²), θ the far-field
   half-angle divergence at 1/e² and w₀ = D_T/2 the waist at the
   transmitter. Without a given θ the beam is diffraction-limited,
   θ = λ/(π w₀). The power a centred receiver of radius a = D_R/2 collects is
   1 − exp(−2a²/w²). The "top-hat" form (D_R/(D_T + 2θL))² used by some
   link-budget tools is about half of that at long range (−3 dB):
   :func:`top_hat_geometric_efficiency` is there to compare.
2. **Pointing** (:func:`pointing_efficiency`): a jitter of σ rad rms per
   axis moves the beam centre by ρ with ρ²/σ² ~ χ²₂; the received intensity
   falls as exp(−2ρ²/θ²) (receiver small against the beam), whose mean is
   1/(1 + 4σ²/θ²). With an rng, one offset per call is sampled instead
   (fading frame by frame).
3. **Atmosphere**: η_atm = T_zen^{AM(ε)} with the Kasten–Young air mass;
   zero at or below the horizon.
4. **Turbulence** (optional): a lognormal intensity factor of unit mean
   whose variance σ_I² is the zenith scintillation index scaled by
   AM(ε)^{11/6} (the sec^{11/6} ζ growth of the Rytov variance). Without an
   rng its mean, 1, is used.
5. **Background** (:func:`background_photon_rate`): sky radiance L_sky in
   W m⁻² sr⁻¹ nm⁻¹ through the receiver's étendue (A_R Ω_FOV, or λ² for a
   single-mode receiver) and filter, times η_rx, in photons/s at the
   detectors; over a gate of τ the mean is N_b τ and a detector of
   efficiency η_d clicks with probability 1 − exp(−η_d N_b τ).
6. **Below the elevation mask** the telescope does not track: transmittance
   is 0 (the background is still reported).
7. **A loss trace** (:class:`LossTrace`) may replace rules 1–4 and η_rx: the
   loss in dB is interpolated linearly in time or slant range; outside the
   trace there is no transmission.

Everything is pure: random draws come from an injected
:class:`numpy.random.Generator`; the only I/O is :meth:`LossTrace.from_csv`
reading a file it is pointed at.
"""

from __future__ import annotations

import bisect
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Final, Literal, NamedTuple

import numpy as np

from qcinode.core.orbit import (
    GroundStation,
    Pass,
    Satellite,
    SkyCondition,
    check_finite,
    find_passes,
    look_angles,
    sky_condition,
    sun_elevation_deg,
)
from qcinode.errors import ConfigError

__all__ = [
    "SKY_RADIANCE_850NM",
    "SKY_RADIANCE_1550NM",
    "ChannelState",
    "FreeSpaceLink",
    "FreeSpaceOptics",
    "LossTrace",
    "MiciusData",
    "SkyRadiance",
    "air_mass",
    "atmospheric_transmittance",
    "background_photon_rate",
    "beam_radius_m",
    "channel_state",
    "diffraction_limited_divergence_urad",
    "geometric_efficiency",
    "micius_2017_paths",
    "pointing_efficiency",
    "top_hat_geometric_efficiency",
]

PLANCK_J_S: Final = 6.62607015e-34
LIGHT_SPEED_M_S: Final = 299_792_458.0


# --------------------------------------------------------------------------- sky radiance


@dataclass(frozen=True, slots=True, kw_only=True)
class SkyRadiance:
    """Spectral radiance of the sky behind the satellite, W m⁻² sr⁻¹ nm⁻¹, by sky condition.

    Attributes:
        day: Sun above −0.833°.
        civil_twilight: Sun in (−6°, −0.833°].
        nautical_twilight: Sun in (−12°, −6°].
        astronomical_twilight: Sun in (−18°, −12°].
        night: Sun at or below −18° (moonless; a full Moon brightens the
            near-infrared sky by roughly ten to a hundred times).
    """

    day: float
    civil_twilight: float
    nautical_twilight: float
    astronomical_twilight: float
    night: float

    def __post_init__(self) -> None:
        for name in ("day", "civil_twilight", "nautical_twilight", "astronomical_twilight", "night"):
            check_finite(f"sky_radiance.{name}", getattr(self, name), 0.0)

    @classmethod
    def from_day_and_night(cls, *, day: float, night: float) -> SkyRadiance:
        """Twilight values between a day and a night radiance.

        A twilight sky is the night sky plus sunlight scattered at a fraction
        f of its daytime level: f = 4e−3 (civil), 2e−5 (nautical), 1e−7
        (astronomical), the middle of each band on a log scale of the
        horizontal illuminance commonly quoted for the twilight sky (about
        400 lux at sunset, 3 lux at −6°, 0.01 lux at −12°) against about
        10⁴ lux for the diffuse daylight sky. Order of magnitude only:
        override with site measurements where they exist.
        """
        return cls(
            day=day,
            civil_twilight=night + 4e-3 * day,
            nautical_twilight=night + 2e-5 * day,
            astronomical_twilight=night + 1e-7 * day,
            night=night,
        )

    def for_condition(self, condition: SkyCondition) -> float:
        """The radiance for ``condition``, W m⁻² sr⁻¹ nm⁻¹."""
        return {
            SkyCondition.DAY: self.day,
            SkyCondition.CIVIL_TWILIGHT: self.civil_twilight,
            SkyCondition.NAUTICAL_TWILIGHT: self.nautical_twilight,
            SkyCondition.ASTRONOMICAL_TWILIGHT: self.astronomical_twilight,
            SkyCondition.NIGHT: self.night,
        }[condition]


SKY_RADIANCE_850NM: Final = SkyRadiance.from_day_and_night(day=1.0e-2, night=4.8e-9)
"""Default sky at 780–1000 nm.

Night: a dark site's I-band sky, ≈ 20 mag/arcsec² (La Palma: Benn & Ellison,
New Astron. Rev. 42, 503 (1998)), with the I-band zero point 1.13e−11
W m⁻² nm⁻¹ (Bessell, Castelli & Plez, A&A 333, 231 (1998), Table A2):
1.13e−11 · 10^(−8) / 2.35e−11 sr = 4.8e−9. Day: clear sky away from the Sun;
the horizon sky at noon peaks near 5e−2 in the visible (Applied Optics 6,
2105 (1967)) and the zenith sky in the near infrared is several times
darker, so 1e−2 (an estimate good to a factor of a few).
"""

SKY_RADIANCE_1550NM: Final = SkyRadiance.from_day_and_night(day=3.0e-3, night=1.2e-7)
"""Default sky at 1450–1650 nm.

Night: the H-band sky, ≈ 14 mag/arcsec², dominated by OH airglow (ESO Paranal
sky model), zero point 1.14e−12 W m⁻² nm⁻¹ (Bessell et al. 1998):
1.2e−7. Day: the 850 nm value scaled by the solar spectrum (≈ 0.27 of its
850 nm irradiance) and by aerosol scattering (Ångström exponent ≈ 1.3:
≈ 0.46) and a little Rayleigh: ≈ 3e−3 (estimate, factor of a few).
"""

_DEFAULTS_BY_BAND: Final[tuple[tuple[float, float, float, SkyRadiance], ...]] = (
    # (lowest nm, highest nm, zenith transmittance, sky)
    (780.0, 1000.0, 0.895, SKY_RADIANCE_850NM),
    (1450.0, 1650.0, 0.95, SKY_RADIANCE_1550NM),
)
"""Zenith transmittance of a clear sea-level atmosphere: 0.895 at 850 nm (MODTRAN-class
models agree within 0.01); at 1550 nm, 0.95 from the 850 nm optical depth with its
aerosol part scaled by λ^−1.3 and its Rayleigh part by λ^−4 (estimate)."""


# --------------------------------------------------------------------------- optics


def diffraction_limited_divergence_urad(wavelength_nm: float, transmitter_aperture_m: float) -> float:
    """Far-field 1/e² half-angle θ = λ/(π w₀) of a Gaussian beam with waist w₀ = D_T/2, µrad.

    Saleh & Teich, *Fundamentals of Photonics*, 2nd ed. (2007), Sec. 3.1
    (divergence of a Gaussian beam). 1.80 µrad for 850 nm from 0.3 m.
    """
    return wavelength_nm * 1e-9 / (math.pi * transmitter_aperture_m / 2.0) * 1e6


@dataclass(frozen=True, slots=True, kw_only=True)
class FreeSpaceOptics:
    """Parameters of a satellite-to-ground free-space link (every unit in the name).

    The defaults describe a Micius-class 850 nm downlink (Liao et al.,
    Nature 549, 43 (2017)) except the beam, which is diffraction-limited
    unless ``beam_divergence_urad`` is given; :meth:`micius_2017` gives the
    measured Micius beam.

    Attributes:
        wavelength_nm: Signal wavelength, nm.
        transmitter_aperture_m: Transmit telescope diameter D_T, m; the beam
            waist is D_T/2.
        beam_divergence_urad: Far-field half-angle at 1/e² intensity, µrad;
            None = diffraction-limited (λ/(π D_T/2)). May not be below that.
        receiver_aperture_m: Receive telescope diameter D_R, m.
        pointing_jitter_urad: Pointing error, rms per axis, µrad.
        zenith_transmittance: Atmospheric transmittance towards the zenith;
            None = 0.895 at 780–1000 nm, 0.95 at 1450–1650 nm.
        receiver_optics_efficiency: η_rx, from the telescope aperture to the
            detectors (the detector efficiency is applied by the detector model).
        receiver_fov_urad: Full-angle field of view of a multimode receiver, µrad.
        filter_bandwidth_nm: Spectral filter width Δλ, nm.
        single_mode: Single-mode receiver: étendue λ² instead of A_R Ω_FOV.
        gate_width_ns: Detection window per pulse slot, ns (background per slot).
        sky_radiance: Sky radiance by condition; None = the default for the
            wavelength's band (:data:`SKY_RADIANCE_850NM`, :data:`SKY_RADIANCE_1550NM`).
        scintillation_index: σ_I² at zenith (aperture-averaged); 0 = no
            turbulence. In weak turbulence it equals the Rytov variance.
        elevation_mask_deg: Lowest elevation the station tracks at, degrees.

    Raises:
        ConfigError: An impossible value; the message starts with the field name.
    """

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
    sky_radiance: SkyRadiance | None = None
    scintillation_index: float = 0.0
    elevation_mask_deg: float = 10.0
    _divergence_rad: float = field(init=False, repr=False, compare=False)
    _waist_m: float = field(init=False, repr=False, compare=False)
    _zenith: float = field(init=False, repr=False, compare=False)
    _sky: SkyRadiance = field(init=False, repr=False, compare=False)
    _background_per_radiance: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        wavelength = check_finite("wavelength_nm", self.wavelength_nm, 200.0, 20_000.0)
        tx = check_finite("transmitter_aperture_m", self.transmitter_aperture_m, 0.0, 100.0, open_low=True)
        check_finite("receiver_aperture_m", self.receiver_aperture_m, 0.0, 100.0, open_low=True)
        check_finite("pointing_jitter_urad", self.pointing_jitter_urad, 0.0, 1e6)
        check_finite("receiver_optics_efficiency", self.receiver_optics_efficiency, 0.0, 1.0, open_low=True)
        fov = check_finite("receiver_fov_urad", self.receiver_fov_urad, 0.0, 1e6, open_low=True)
        bandwidth = check_finite("filter_bandwidth_nm", self.filter_bandwidth_nm, 0.0, 1e4, open_low=True)
        check_finite("gate_width_ns", self.gate_width_ns, 0.0, 1e9, open_low=True)
        check_finite("scintillation_index", self.scintillation_index, 0.0, 10.0)
        check_finite("elevation_mask_deg", self.elevation_mask_deg, 0.0, 89.0)
        if not isinstance(self.single_mode, bool):
            raise ConfigError(f"single_mode: expected true or false, got {self.single_mode!r}")
        limit = diffraction_limited_divergence_urad(wavelength, tx)
        if self.beam_divergence_urad is None:
            divergence = limit
        else:
            divergence = check_finite("beam_divergence_urad", self.beam_divergence_urad, 0.0, 1e6, open_low=True)
            if divergence < limit * (1.0 - 1e-9):
                raise ConfigError(
                    f"beam_divergence_urad: {divergence:g} is below the diffraction limit {limit:.3g} µrad "
                    f"of a {tx:g} m aperture at {wavelength:g} nm"
                )
        band = next((b for b in _DEFAULTS_BY_BAND if b[0] <= wavelength <= b[1]), None)
        if self.zenith_transmittance is not None:
            zenith = check_finite("zenith_transmittance", self.zenith_transmittance, 0.0, 1.0, open_low=True)
        elif band is not None:
            zenith = band[2]
        else:
            raise ConfigError(
                f"zenith_transmittance: no default at {wavelength:g} nm (defaults exist for 780-1000 nm "
                "and 1450-1650 nm); give it"
            )
        if self.sky_radiance is not None:
            if not isinstance(self.sky_radiance, SkyRadiance):
                raise ConfigError(f"sky_radiance: expected a SkyRadiance, got {self.sky_radiance!r}")
            sky = self.sky_radiance
        elif band is not None:
            sky = band[3]
        else:
            raise ConfigError(
                f"sky_radiance: no default at {wavelength:g} nm (defaults exist for 780-1000 nm "
                "and 1450-1650 nm); give it"
            )
        lam_m = wavelength * 1e-9
        if self.single_mode:
            etendue = lam_m**2  # antenna theorem: a single spatial mode has A·Ω ≈ λ²
        else:
            area = math.pi * (self.receiver_aperture_m / 2.0) ** 2
            solid_angle = 2.0 * math.pi * (1.0 - math.cos(fov * 1e-6 / 2.0))
            etendue = area * solid_angle
        photon_energy = PLANCK_J_S * LIGHT_SPEED_M_S / lam_m
        object.__setattr__(self, "_divergence_rad", divergence * 1e-6)
        object.__setattr__(self, "_waist_m", tx / 2.0)
        object.__setattr__(self, "_zenith", zenith)
        object.__setattr__(self, "_sky", sky)
        object.__setattr__(
            self, "_background_per_radiance",
            etendue * bandwidth * self.receiver_optics_efficiency / photon_energy,
        )

    @classmethod
    def micius_2017(cls) -> FreeSpaceOptics:
        """The Micius downlink to Xinglong (Liao et al., Nature 549, 43 (2017)).

        850 nm; 0.3 m transmitter with a ≈ 10 µrad full-angle beam (5 µrad
        half-angle); 1.0 m receiver; pointing jitter 2 µrad rms per axis
        (the paper's tracking figures span ≈ 1.2–2.5 µrad); receive optics
        0.16; clear-sky zenith transmittance 0.895.
        """
        return cls(beam_divergence_urad=5.0, pointing_jitter_urad=2.0, receiver_optics_efficiency=0.16)

    @property
    def resolved_beam_divergence_urad(self) -> float:
        """The 1/e² half-angle divergence in use, µrad (given or diffraction-limited)."""
        return self._divergence_rad * 1e6

    @property
    def resolved_zenith_transmittance(self) -> float:
        """The zenith transmittance in use (given or the band's default)."""
        return self._zenith

    @property
    def resolved_sky_radiance(self) -> SkyRadiance:
        """The sky radiances in use (given or the band's default)."""
        return self._sky


# --------------------------------------------------------------------------- the factors


def beam_radius_m(range_km: float, optics: FreeSpaceOptics) -> float:
    """1/e² intensity radius at range L: w(L) = √(w₀² + (θ L)²), m.

    Gaussian-beam propagation (Saleh & Teich 2007, Sec. 3.1:
    W(z) = W₀ √(1 + (z/z₀)²) with θ = W₀/z₀), written with the far-field
    angle so that a beam of quality M² > 1 keeps the same form.
    """
    spread = optics._divergence_rad * range_km * 1e3
    return math.sqrt(optics._waist_m**2 + spread * spread)


def geometric_efficiency(receiver_aperture_m: float, beam_radius: float) -> float:
    """Fraction of a Gaussian beam's power inside a centred circular aperture: 1 − exp(−2a²/w²).

    a = D_R/2 (Saleh & Teich 2007, Sec. 3.1, power in a circle of radius ρ₀).
    For a ≪ w it is 2a²/w².
    """
    radius = receiver_aperture_m / 2.0
    return -math.expm1(-2.0 * radius * radius / (beam_radius * beam_radius))


def top_hat_geometric_efficiency(receiver_aperture_m: float, transmitter_aperture_m: float,
                                 divergence_urad: float, range_km: float) -> float:
    """The "top-hat" estimate (D_R / (D_T + 2θL))², capped at 1, for comparison only.

    A uniform disc of diameter D_T + θ_full·L: at long range it is half the
    Gaussian value of :func:`geometric_efficiency` (−3 dB) for the same θ.
    """
    spot = transmitter_aperture_m + 2.0 * divergence_urad * 1e-6 * range_km * 1e3
    return min(1.0, (receiver_aperture_m / spot) ** 2)


def pointing_efficiency(jitter_urad: float, divergence_urad: float) -> float:
    """Mean pointing loss of a Gaussian beam: 1 / (1 + 4σ²/θ²).

    With the beam centre offset by ρ, ρ² = σ²(X² + Y²), X, Y ~ N(0, 1), the
    on-axis intensity falls as exp(−2ρ²/θ²); E[exp(−s χ²₂)] = 1/(1 + 2s)
    with s = 2σ²/θ² gives the result (the χ² moment-generating function).
    """
    ratio = jitter_urad / divergence_urad
    return 1.0 / (1.0 + 4.0 * ratio * ratio)


def air_mass(elevation_deg: float) -> float:
    """Relative optical air mass, Kasten & Young, Appl. Opt. 28, 4735 (1989), Eq. (3).

    AM = 1 / (sin ε + 0.50572 (ε + 6.07995°)^−1.6364), ε the elevation in
    degrees; 1 at the zenith, 5.59 at 10°, 38 at the horizon.

    Raises:
        ConfigError: ε outside [0, 90].
    """
    if not 0.0 <= elevation_deg <= 90.0:
        raise ConfigError(f"elevation_deg: air mass needs an elevation in [0, 90], got {elevation_deg!r}")
    return 1.0 / (math.sin(math.radians(elevation_deg)) + 0.50572 * math.pow(elevation_deg + 6.07995, -1.6364))


def atmospheric_transmittance(elevation_deg: float, zenith_transmittance: float) -> float:
    """η_atm = T_zen^AM(ε) (Beer–Lambert along the slant path); 0 at or below the horizon."""
    if elevation_deg <= 0.0:
        return 0.0
    return math.pow(zenith_transmittance, air_mass(min(elevation_deg, 90.0)))


def background_photon_rate(radiance: float, optics: FreeSpaceOptics) -> float:
    """Sky photons per second reaching the detectors: N_b = L · A_R Ω_FOV · Δλ · η_rx / (h c / λ).

    Radiometry of an extended source through a receiver of étendue
    A_R Ω_FOV (Er-Long Miao et al., "Background noise of satellite-to-ground
    quantum key distribution", New J. Phys. 7, 215 (2005)); a single-mode
    receiver has étendue λ² (Siegman, "The antenna properties of optical
    heterodyne receivers", Appl. Opt. 5, 1588 (1966)). Ω_FOV = 2π(1 − cos(FOV/2)).

    Args:
        radiance: Sky spectral radiance, W m⁻² sr⁻¹ nm⁻¹.
        optics: The receiver.
    """
    return radiance * optics._background_per_radiance


# --------------------------------------------------------------------------- loss traces


class LossTrace:
    """A measured or simulated loss curve: loss in dB against time or slant range.

    The CSV has a header naming its columns, either ``time_s,loss_db`` or
    ``slant_range_km,loss_db``; lines starting with ``#`` and blank lines are
    skipped. The first column must increase strictly. The loss is
    interpolated linearly in dB; outside the trace there is no transmission
    (infinite loss). The loss replaces everything but the detector efficiency.

    Attributes:
        variable: ``"time_s"`` or ``"slant_range_km"``.
        points: The first column.
        loss_db: The second column.
    """

    __slots__ = ("_points", "_values", "loss_db", "points", "variable")

    VARIABLES: Final = ("time_s", "slant_range_km")

    def __init__(self, variable: Literal["time_s", "slant_range_km"], points: list[float] | tuple[float, ...],
                 loss_db: list[float] | tuple[float, ...]) -> None:
        """Builds a trace from its two columns.

        Raises:
            ConfigError: Unknown variable, fewer than two points, columns of
                different length, a non-increasing first column, or a loss that
                is negative or not finite.
        """
        if variable not in self.VARIABLES:
            raise ConfigError(f"loss trace: the first column must be time_s or slant_range_km, got {variable!r}")
        if len(points) != len(loss_db):
            raise ConfigError(f"loss trace: {len(points)} {variable} values but {len(loss_db)} loss_db values")
        if len(points) < 2:
            raise ConfigError(f"loss trace: needs at least two points, got {len(points)}")
        for i, (x, loss) in enumerate(zip(points, loss_db, strict=True)):
            if not math.isfinite(x) or not math.isfinite(loss) or loss < 0.0:
                raise ConfigError(f"loss trace: point {i} ({x!r}, {loss!r}) must be finite with loss_db >= 0")
            if i and x <= points[i - 1]:
                raise ConfigError(f"loss trace: {variable} must increase, got {x!r} after {points[i - 1]!r}")
        self.variable = variable
        self.points = tuple(float(x) for x in points)
        self.loss_db = tuple(float(v) for v in loss_db)
        self._points = list(self.points)
        self._values = list(self.loss_db)

    def __repr__(self) -> str:
        return (f"LossTrace({self.variable!r}, {len(self.points)} points, "
                f"{self.points[0]:g}..{self.points[-1]:g})")

    @classmethod
    def from_csv(cls, source: str | os.PathLike[str]) -> LossTrace:
        """Reads a trace from a file path, or from CSV text if ``source`` is a string with a newline.

        Raises:
            ConfigError: Unreadable file, or bad content (the message names the line).
        """
        if isinstance(source, str) and "\n" in source:
            return cls.parse_csv(source)
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"loss trace {str(path)!r}: cannot read: {exc.strerror or exc}") from None
        return cls.parse_csv(text, name=str(path))

    @classmethod
    def parse_csv(cls, text: str, *, name: str = "loss trace") -> LossTrace:
        """Parses CSV text (see the class docstring).

        Raises:
            ConfigError: ``"<name> line N: ..."`` for the first bad line.
        """
        header: list[str] | None = None
        points: list[float] = []
        values: list[float] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            cells = [cell.strip() for cell in line.split(",")]
            if header is None:
                header = [cell.lower() for cell in cells]
                if len(header) != 2 or header[1] != "loss_db" or header[0] not in cls.VARIABLES:
                    raise ConfigError(
                        f"{name} line {number}: the header must be 'time_s,loss_db' or "
                        f"'slant_range_km,loss_db', got {line!r}"
                    )
                continue
            if len(cells) != 2:
                raise ConfigError(f"{name} line {number}: expected 2 values, got {len(cells)}: {line!r}")
            try:
                x, loss = float(cells[0]), float(cells[1])
            except ValueError:
                raise ConfigError(f"{name} line {number}: not a number in {line!r}") from None
            if not math.isfinite(x) or not math.isfinite(loss):
                raise ConfigError(f"{name} line {number}: values must be finite, got {line!r}")
            if loss < 0.0:
                raise ConfigError(f"{name} line {number}: loss_db must be >= 0, got {cells[1]}")
            if points and x <= points[-1]:
                raise ConfigError(
                    f"{name} line {number}: {header[0]} must increase, got {cells[0]} after {points[-1]:g}"
                )
            points.append(x)
            values.append(loss)
        if header is None:
            raise ConfigError(f"{name}: empty; expected a header 'time_s,loss_db' or 'slant_range_km,loss_db'")
        if len(points) < 2:
            raise ConfigError(f"{name}: needs at least two data lines, got {len(points)}")
        variable: Literal["time_s", "slant_range_km"] = "time_s" if header[0] == "time_s" else "slant_range_km"
        return cls(variable, points, values)

    @property
    def span(self) -> tuple[float, float]:
        """The first and last point of the trace."""
        return self.points[0], self.points[-1]

    def loss_db_at(self, x: float) -> float:
        """Loss at ``x`` (seconds or km, per :attr:`variable`), dB; ``inf`` outside the trace."""
        points = self._points
        if not points[0] <= x <= points[-1]:
            return math.inf
        i = bisect.bisect_right(points, x)
        if i >= len(points):
            return self._values[-1]
        x0, x1 = points[i - 1], points[i]
        y0, y1 = self._values[i - 1], self._values[i]
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)

    def transmittance_at(self, x: float) -> float:
        """10^(−loss/10) at ``x``; 0 outside the trace."""
        loss = self.loss_db_at(x)
        return 0.0 if math.isinf(loss) else 10.0 ** (-loss / 10.0)


# --------------------------------------------------------------------------- the channel state


@dataclass(frozen=True, slots=True)
class ChannelState:
    """The downlink at one instant.

    Attributes:
        elevation_deg: Satellite elevation at the station.
        range_km: Slant range.
        sun_elevation_deg: The Sun's geometric elevation at the station.
        sky: The sky condition it implies.
        in_view: Above the elevation mask (and inside the trace, for a trace).
        transmittance: η, photons at the detectors per photon sent (detector
            efficiency excluded); 0 when not in view.
        geometric_efficiency: η_geo (NaN for a trace).
        pointing_efficiency: η_point, mean or sampled (NaN for a trace).
        atmospheric_transmittance: η_atm (NaN for a trace).
        turbulence_efficiency: η_turb, 1 or sampled (NaN for a trace).
        receiver_efficiency: η_rx (NaN for a trace).
        background_photons_per_s: Sky photons per second at the detectors.
        background_photons_per_slot: The same over one gate.
        background_probability_per_slot: Probability of at least one
            background click per slot with the ``detector_efficiency`` given
            to :func:`channel_state` (1 by default: a photon at the detectors).
        source: ``"model"`` or ``"trace"``.
    """

    elevation_deg: float
    range_km: float
    sun_elevation_deg: float
    sky: SkyCondition
    in_view: bool
    transmittance: float
    geometric_efficiency: float
    pointing_efficiency: float
    atmospheric_transmittance: float
    turbulence_efficiency: float
    receiver_efficiency: float
    background_photons_per_s: float
    background_photons_per_slot: float
    background_probability_per_slot: float
    source: Literal["model", "trace"] = "model"

    @property
    def loss_db(self) -> float:
        """−10 log₁₀ η; ``inf`` when nothing gets through."""
        return math.inf if self.transmittance <= 0.0 else -10.0 * math.log10(self.transmittance)


def channel_state(
    elevation_deg: float,
    range_km: float,
    sun_elevation_deg: float,
    optics: FreeSpaceOptics,
    rng: np.random.Generator | None = None,
    *,
    detector_efficiency: float = 1.0,
    loss_trace: LossTrace | None = None,
    trace_time_s: float | None = None,
) -> ChannelState:
    """The downlink's transmittance and background at one instant (module rules 1–7).

    Args:
        elevation_deg: Satellite elevation at the station, degrees.
        range_km: Slant range, km (> 0).
        sun_elevation_deg: The Sun's elevation at the station, degrees.
        optics: The link's parameters.
        rng: When given, pointing offset and scintillation are sampled (one
            draw each per call: a frame's realisation) instead of averaged.
        detector_efficiency: Used only for :attr:`ChannelState.background_probability_per_slot`.
        loss_trace: Take the transmittance from this trace instead of the model.
        trace_time_s: The trace's time coordinate, for a ``time_s`` trace.

    Raises:
        ConfigError: A non-finite or impossible input.
    """
    if not (math.isfinite(elevation_deg) and -90.0 <= elevation_deg <= 90.0):
        raise ConfigError(f"elevation_deg: must lie in [-90, 90], got {elevation_deg!r}")
    if not (math.isfinite(range_km) and range_km > 0.0):
        raise ConfigError(f"range_km: must be > 0, got {range_km!r}")
    if not 0.0 <= detector_efficiency <= 1.0:
        raise ConfigError(f"detector_efficiency: must lie in [0, 1], got {detector_efficiency!r}")
    sky = sky_condition(sun_elevation_deg)
    background = background_photon_rate(optics._sky.for_condition(sky), optics)
    per_slot = background * optics.gate_width_ns * 1e-9
    probability = -math.expm1(-detector_efficiency * per_slot)
    in_view = elevation_deg >= optics.elevation_mask_deg

    if loss_trace is not None:
        if loss_trace.variable == "time_s":
            if trace_time_s is None:
                raise ConfigError("trace_time_s: a time_s loss trace needs the time into the trace")
            coordinate = trace_time_s
        else:
            coordinate = range_km
        through = loss_trace.transmittance_at(coordinate)
        in_view = in_view and through > 0.0
        nan = math.nan
        return ChannelState(
            elevation_deg, range_km, sun_elevation_deg, sky, in_view, through if in_view else 0.0,
            nan, nan, nan, nan, nan, background, per_slot, probability, "trace",
        )

    geometric = geometric_efficiency(optics.receiver_aperture_m, beam_radius_m(range_km, optics))
    ratio = optics.pointing_jitter_urad * 1e-6 / optics._divergence_rad
    if rng is None:
        pointing = 1.0 / (1.0 + 4.0 * ratio * ratio)
    else:
        # ρ²/σ² ~ χ²₂, i.e. exponential with mean 2.
        pointing = math.exp(-2.0 * ratio * ratio * float(rng.exponential(2.0)))
    atmosphere = atmospheric_transmittance(elevation_deg, optics._zenith)
    turbulence = 1.0
    if rng is not None and optics.scintillation_index > 0.0 and elevation_deg > 0.0:
        # Lognormal irradiance of unit mean: ln I ~ N(−s²/2, s²), s² = ln(1 + σ_I²)
        # (Andrews & Phillips, Laser Beam Propagation through Random Media, 2nd ed. (2005), Sec. 5.1.2).
        variance = optics.scintillation_index * air_mass(min(elevation_deg, 90.0)) ** (11.0 / 6.0)
        log_variance = math.log1p(variance)
        turbulence = math.exp(float(rng.normal(-0.5 * log_variance, math.sqrt(log_variance))))
    receiver = optics.receiver_optics_efficiency
    total = geometric * pointing * atmosphere * turbulence * receiver if in_view else 0.0
    return ChannelState(
        elevation_deg, range_km, sun_elevation_deg, sky, in_view, min(total, 1.0),
        geometric, pointing, atmosphere, turbulence, receiver, background, per_slot, probability,
    )


@dataclass(frozen=True, slots=True)
class FreeSpaceLink:
    """A satellite, a station and the optics between them: the channel as a function of UTC.

    Attributes:
        satellite: The transmitter.
        station: The receiver.
        optics: The link's parameters (its ``elevation_mask_deg`` is the pass mask).
        loss_trace: Optional measured or simulated loss replacing the model.
        trace_start_utc: For a ``time_s`` trace, the UTC of its t = 0.
    """

    satellite: Satellite
    station: GroundStation
    optics: FreeSpaceOptics
    loss_trace: LossTrace | None = None
    trace_start_utc: float | None = None

    def __post_init__(self) -> None:
        if self.loss_trace is not None and self.loss_trace.variable == "time_s" and self.trace_start_utc is None:
            raise ConfigError("trace_start_utc: a time_s loss trace needs the UTC its time 0 stands for")

    def state_at(self, t: float, rng: np.random.Generator | None = None, *,
                 detector_efficiency: float = 1.0) -> ChannelState:
        """The channel at Unix time ``t``: look angles, the Sun, then :func:`channel_state`.

        Below the horizon the range is still the true distance (nothing gets through).
        """
        elevation, _, distance = look_angles(self.satellite, self.station, t)
        if not (math.isfinite(elevation) and math.isfinite(distance)):
            elevation, distance = -90.0, 1e9  # SGP4 gave up on these elements: out of view
        sun = sun_elevation_deg(self.station, t)
        trace_time = None if self.trace_start_utc is None else t - self.trace_start_utc
        return channel_state(elevation, distance, sun, self.optics, rng, detector_efficiency=detector_efficiency,
                             loss_trace=self.loss_trace, trace_time_s=trace_time)

    def passes(self, start_utc: float, end_utc: float, step_s: float = 10.0) -> list[Pass]:
        """The passes above the optics' elevation mask in [start_utc, end_utc] (:func:`find_passes`)."""
        return find_passes(self.satellite, self.station, start_utc, end_utc, self.optics.elevation_mask_deg, step_s)


# --------------------------------------------------------------------------- reference data


class MiciusData(NamedTuple):
    """Files of the Micius pass of 19 December 2016 shipped with qcinode."""

    pass_track: Path
    """``time_s,slant_range_km``: the satellite-station range through the pass."""
    link_loss: Path
    """``slant_range_km,loss_db``: the measured channel loss (a :class:`LossTrace`)."""
    readme: Path
    """Source and published figures."""


def micius_2017_paths() -> MiciusData:
    """Where the packaged Micius 2017 reference data lie (see its README.md)."""
    root = Path(str(resources.files("qcinode").joinpath("data", "micius-2017")))
    return MiciusData(root / "pass_track.csv", root / "link_loss.csv", root / "README.md")
