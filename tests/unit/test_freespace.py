"""The free-space downlink against closed forms, seeded statistics and the Micius measurement."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from qcinode.core.freespace import (
    LIGHT_SPEED_M_S,
    PLANCK_J_S,
    SKY_RADIANCE_850NM,
    SKY_RADIANCE_1550NM,
    FreeSpaceLink,
    FreeSpaceOptics,
    LossTrace,
    SkyRadiance,
    air_mass,
    atmospheric_transmittance,
    background_photon_rate,
    beam_radius_m,
    channel_state,
    diffraction_limited_divergence_urad,
    geometric_efficiency,
    micius_2017_paths,
    pointing_efficiency,
    top_hat_geometric_efficiency,
)
from qcinode.core.orbit import GroundStation, SkyCondition, TleSatellite, find_passes, look_angles, parse_utc
from qcinode.errors import ConfigError

MICIUS_TLE = (
    "1 41731U 16051A   16353.90152003  .00000364  00000-0  17957-4 0  9993",
    "2 41731  97.3699 267.4500 0013200 178.5836 246.0824 15.23915303 19063",
)


# --------------------------------------------------------------------------- atmosphere


@pytest.mark.parametrize(("elevation", "expected"), [(10.0, 0.54), (20.0, 0.73), (30.0, 0.80)])
def test_kasten_young_atmosphere(elevation: float, expected: float) -> None:
    assert atmospheric_transmittance(elevation, 0.895) == pytest.approx(expected, abs=0.01)


def test_air_mass_limits() -> None:
    assert air_mass(90.0) == pytest.approx(1.0, abs=1e-3)
    assert air_mass(30.0) == pytest.approx(1.0 / math.sin(math.radians(30.0)), rel=0.005)  # plane-parallel above 15°
    assert air_mass(0.0) == pytest.approx(37.92, abs=0.05)  # Kasten & Young's horizon value ≈ 38
    assert atmospheric_transmittance(0.0, 0.895) == 0.0
    assert atmospheric_transmittance(-3.0, 0.895) == 0.0
    with pytest.raises(ConfigError, match="elevation_deg: air mass needs an elevation in"):
        air_mass(-1.0)


# --------------------------------------------------------------------------- geometry and pointing


def test_gaussian_truncation_limits() -> None:
    w = 2.0
    small = 0.02  # diameter; a/w = 0.005
    assert geometric_efficiency(small, w) == pytest.approx(2.0 * (small / 2.0) ** 2 / w**2, rel=1e-4)
    assert geometric_efficiency(2.0 * w, w) == pytest.approx(1.0 - math.exp(-2.0))  # a = w
    assert geometric_efficiency(40.0, w) == pytest.approx(1.0, abs=1e-12)


def test_beam_radius_follows_gaussian_propagation() -> None:
    optics = FreeSpaceOptics()  # diffraction-limited: θ = λ/(π w₀)
    w0 = 0.15
    rayleigh_m = math.pi * w0**2 / 850e-9
    for range_km in (0.0, 50.0, 500.0, 1200.0):
        expected = w0 * math.sqrt(1.0 + (range_km * 1e3 / rayleigh_m) ** 2)
        assert beam_radius_m(range_km, optics) == pytest.approx(expected, rel=1e-9)
    assert optics.resolved_beam_divergence_urad == pytest.approx(diffraction_limited_divergence_urad(850.0, 0.3))
    assert diffraction_limited_divergence_urad(850.0, 0.3) == pytest.approx(1.804, abs=1e-3)


def test_top_hat_form_is_3_db_below_the_gaussian_at_long_range() -> None:
    optics = FreeSpaceOptics.micius_2017()

    def ratio_db(range_km: float) -> float:
        gaussian = geometric_efficiency(1.0, beam_radius_m(range_km, optics))
        return 10.0 * math.log10(gaussian / top_hat_geometric_efficiency(1.0, 0.3, 5.0, range_km))

    # Far field: 2a²/(θL)² against a²/(θL)²: exactly 10 log₁₀ 2.
    assert ratio_db(1e6) == pytest.approx(10.0 * math.log10(2.0), abs=0.01)
    # At Micius ranges the transmitter's own diameter in the top-hat spot adds a few tenths of a dB.
    for range_km in (645.0, 1000.0, 1200.0):
        assert ratio_db(range_km) == pytest.approx(3.0, abs=0.5)


def test_pointing_loss_formula() -> None:
    assert pointing_efficiency(0.0, 5.0) == 1.0
    assert pointing_efficiency(2.5, 5.0) == pytest.approx(0.5)  # 4σ²/θ² = 1
    assert pointing_efficiency(5.0, 5.0) == pytest.approx(0.2)


def test_sampled_pointing_fading_has_the_closed_form_mean() -> None:
    """Mean of exp(−2ρ²/θ²) over Gaussian jitter is 1/(1 + 4σ²/θ²); second moment 1/(1 + 8σ²/θ²)."""
    optics = FreeSpaceOptics(beam_divergence_urad=5.0, pointing_jitter_urad=3.0)
    rng = np.random.default_rng(20161219)
    n = 20_000
    samples = np.array([channel_state(45.0, 700.0, -30.0, optics, rng).pointing_efficiency for _ in range(n)])
    r2 = (3.0 / 5.0) ** 2
    mean = 1.0 / (1.0 + 4.0 * r2)
    variance = 1.0 / (1.0 + 8.0 * r2) - mean**2
    assert samples.mean() == pytest.approx(mean, abs=5.0 * math.sqrt(variance / n))
    # Same seed, same frames: the fading is reproducible.
    again = np.random.default_rng(20161219)
    assert channel_state(45.0, 700.0, -30.0, optics, again).pointing_efficiency == samples[0]


def test_sampled_scintillation_is_lognormal_with_unit_mean() -> None:
    optics = FreeSpaceOptics(beam_divergence_urad=5.0, scintillation_index=0.05)
    elevation = 30.0
    sigma2 = 0.05 * air_mass(elevation) ** (11.0 / 6.0)  # σ_I² grows as AM^{11/6}
    rng = np.random.default_rng(7)
    n = 20_000
    samples = np.array([channel_state(elevation, 900.0, -30.0, optics, rng).turbulence_efficiency for _ in range(n)])
    assert samples.mean() == pytest.approx(1.0, abs=5.0 * math.sqrt(sigma2 / n))
    # Lognormal of unit mean: E[I^k] = (1 + σ_I²)^{k(k−1)/2}; the sample variance's spread follows.
    m = [(1.0 + sigma2) ** (k * (k - 1) / 2.0) for k in range(5)]
    fourth_central = m[4] - 4 * m[3] + 6 * m[2] - 3.0
    assert samples.var() == pytest.approx(sigma2, abs=5.0 * math.sqrt((fourth_central - sigma2**2) / n))
    # Without an rng the mean (1) is used.
    assert channel_state(elevation, 900.0, -30.0, optics).turbulence_efficiency == 1.0


# --------------------------------------------------------------------------- background


def test_background_follows_the_radiometric_formula() -> None:
    optics = FreeSpaceOptics(receiver_optics_efficiency=0.08)  # 850 nm, D_R 1 m, FOV 100 µrad, 1 nm
    photon_j = PLANCK_J_S * LIGHT_SPEED_M_S / 850e-9
    etendue = math.pi * 0.5**2 * 2.0 * math.pi * (1.0 - math.cos(50e-6))
    assert background_photon_rate(1.0, optics) == pytest.approx(etendue * 1.0 * 0.08 / photon_j, rel=1e-12)
    single = FreeSpaceOptics(wavelength_nm=1550.0, single_mode=True, filter_bandwidth_nm=0.1,
                             receiver_optics_efficiency=0.5)
    photon_j = PLANCK_J_S * LIGHT_SPEED_M_S / 1550e-9
    assert background_photon_rate(1.0, single) == pytest.approx((1550e-9) ** 2 * 0.1 * 0.5 / photon_j, rel=1e-12)


def test_background_orders_of_magnitude() -> None:
    """850 nm, D_R 1 m, FOV 100 µrad, 1 nm, η_rx 0.08: night ≈ 10/s, day ≈ 2·10⁷/s; 1550 nm single-mode day ≈ 3·10³/s.

    The night value comes from a dark site's I-band sky (≈ 20 mag/arcsec²); a
    night estimate of ≈ 2/s corresponds to a sky 5 times darker, so the check
    is on the order of magnitude.
    """
    optics = FreeSpaceOptics(receiver_optics_efficiency=0.08)
    night = background_photon_rate(SKY_RADIANCE_850NM.night, optics)
    day = background_photon_rate(SKY_RADIANCE_850NM.day, optics)
    assert 0.2 < night < 20.0
    assert day == pytest.approx(2e7, rel=0.5)
    single = FreeSpaceOptics(wavelength_nm=1550.0, single_mode=True, filter_bandwidth_nm=0.1,
                             receiver_optics_efficiency=0.5)
    assert background_photon_rate(SKY_RADIANCE_1550NM.day, single) == pytest.approx(3e3, rel=0.5)
    # Twilight lies between, darkening as the Sun sinks.
    sky = SKY_RADIANCE_850NM
    assert sky.day > sky.civil_twilight > sky.nautical_twilight > sky.astronomical_twilight > sky.night


def test_background_probability_per_slot() -> None:
    optics = FreeSpaceOptics(gate_width_ns=2.0)
    day = channel_state(45.0, 700.0, 30.0, optics, detector_efficiency=0.5)
    assert day.sky is SkyCondition.DAY
    expected_photons = background_photon_rate(SKY_RADIANCE_850NM.day, optics) * 2e-9
    assert day.background_photons_per_slot == pytest.approx(expected_photons)
    assert day.background_probability_per_slot == pytest.approx(1.0 - math.exp(-0.5 * expected_photons))
    night = channel_state(45.0, 700.0, -40.0, optics)
    assert night.sky is SkyCondition.NIGHT
    assert night.background_photons_per_s == pytest.approx(background_photon_rate(SKY_RADIANCE_850NM.night, optics))
    twilight = channel_state(45.0, 700.0, -8.0, optics)
    assert twilight.sky is SkyCondition.NAUTICAL_TWILIGHT
    assert night.background_photons_per_s < twilight.background_photons_per_s < day.background_photons_per_s


# --------------------------------------------------------------------------- the channel state


def test_channel_state_is_the_product_of_its_parts() -> None:
    optics = FreeSpaceOptics.micius_2017()
    state = channel_state(47.8, 645.0, -70.0, optics)
    parts = (state.geometric_efficiency * state.pointing_efficiency * state.atmospheric_transmittance
             * state.turbulence_efficiency * state.receiver_efficiency)
    assert state.in_view and state.source == "model"
    assert state.transmittance == pytest.approx(parts)
    assert state.loss_db == pytest.approx(-10.0 * math.log10(parts))
    assert state.pointing_efficiency == pytest.approx(pointing_efficiency(2.0, 5.0))
    assert state.receiver_efficiency == 0.16


def test_below_the_mask_nothing_gets_through() -> None:
    optics = FreeSpaceOptics(elevation_mask_deg=15.0)
    low = channel_state(14.9, 1400.0, -30.0, optics)
    assert not low.in_view and low.transmittance == 0.0 and low.loss_db == math.inf
    assert low.background_photons_per_s > 0.0
    assert channel_state(15.0, 1400.0, -30.0, optics).in_view
    with pytest.raises(ConfigError, match="range_km: must be > 0"):
        channel_state(45.0, 0.0, -30.0, optics)
    with pytest.raises(ConfigError, match="elevation_deg"):
        channel_state(math.nan, 700.0, -30.0, optics)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"receiver_aperture_m": -1}, "receiver_aperture_m: must be > 0, got -1"),
        ({"beam_divergence_urad": 1.0}, "beam_divergence_urad: 1 is below the diffraction limit 1.8 µrad"),
        ({"receiver_optics_efficiency": 1.5}, "receiver_optics_efficiency: must be <= 1"),
        ({"pointing_jitter_urad": math.inf}, "pointing_jitter_urad: must be finite"),
        ({"wavelength_nm": 532.0}, "zenith_transmittance: no default at 532 nm"),
        ({"wavelength_nm": 532.0, "zenith_transmittance": 0.8}, "sky_radiance: no default at 532 nm"),
        ({"single_mode": "yes"}, "single_mode: expected true or false"),
        ({"gate_width_ns": 0.0}, "gate_width_ns: must be > 0"),
    ],
)
def test_optics_validation_names_the_field(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        FreeSpaceOptics(**kwargs)  # type: ignore[arg-type]


def test_optics_defaults_by_band_and_overrides() -> None:
    assert FreeSpaceOptics().resolved_zenith_transmittance == 0.895
    assert FreeSpaceOptics(wavelength_nm=1550.0).resolved_sky_radiance == SKY_RADIANCE_1550NM
    green = SkyRadiance(day=0.05, civil_twilight=1e-4, nautical_twilight=1e-6, astronomical_twilight=1e-8,
                        night=1e-9)
    custom = FreeSpaceOptics(wavelength_nm=532.0, zenith_transmittance=0.8, sky_radiance=green)
    assert custom.resolved_sky_radiance.for_condition(SkyCondition.NIGHT) == 1e-9
    with pytest.raises(ConfigError, match="sky_radiance.night: must be >= 0"):
        SkyRadiance(day=1.0, civil_twilight=1.0, nautical_twilight=1.0, astronomical_twilight=1.0, night=-1.0)


# --------------------------------------------------------------------------- loss traces


def test_loss_trace_interpolates_in_db() -> None:
    trace = LossTrace.parse_csv("# a pass\nslant_range_km,loss_db\n600,30\n\n800,34\n1000,40\n")
    assert trace.variable == "slant_range_km" and trace.span == (600.0, 1000.0)
    assert trace.loss_db_at(700.0) == pytest.approx(32.0)
    assert trace.loss_db_at(1000.0) == 40.0
    assert trace.transmittance_at(700.0) == pytest.approx(10 ** -3.2)
    assert trace.loss_db_at(599.9) == math.inf and trace.transmittance_at(1000.1) == 0.0
    timed = LossTrace.parse_csv("time_s,loss_db\n0,35\n10,30\n")
    state = channel_state(40.0, 800.0, -30.0, FreeSpaceOptics(), loss_trace=timed, trace_time_s=5.0)
    assert state.source == "trace" and state.loss_db == pytest.approx(32.5)
    assert math.isnan(state.geometric_efficiency)
    outside = channel_state(40.0, 800.0, -30.0, FreeSpaceOptics(), loss_trace=timed, trace_time_s=11.0)
    assert not outside.in_view and outside.transmittance == 0.0
    with pytest.raises(ConfigError, match="trace_time_s"):
        channel_state(40.0, 800.0, -30.0, FreeSpaceOptics(), loss_trace=timed)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("range,loss_db\n1,2\n", "line 1: the header must be 'time_s,loss_db' or 'slant_range_km,loss_db'"),
        ("time_s,loss_db\n0,30\n1,31,5\n", "line 3: expected 2 values, got 3"),
        ("time_s,loss_db\n0,30\n# note\n1,abc\n", "line 4: not a number"),
        ("time_s,loss_db\n0,30\n5,31\n5,32\n", "line 4: time_s must increase, got 5 after 5"),
        ("time_s,loss_db\n0,30\n1,-2\n", "line 3: loss_db must be >= 0"),
        ("time_s,loss_db\n0,nan\n", "line 2: values must be finite"),
        ("# nothing\n", "empty"),
        ("time_s,loss_db\n0,30\n", "at least two data lines, got 1"),
    ],
)
def test_loss_trace_errors_name_the_line(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        LossTrace.parse_csv(text)


def test_loss_trace_from_file(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text("time_s,loss_db\n0,40\n100,30\n")
    assert LossTrace.from_csv(path).loss_db_at(50.0) == pytest.approx(35.0)
    assert LossTrace.from_csv(str(path)).variable == "time_s"
    with pytest.raises(ConfigError, match="cannot read"):
        LossTrace.from_csv(tmp_path / "missing.csv")
    path.write_text("time_s,loss_db\n0,40\n0,30\n")
    with pytest.raises(ConfigError, match=r"trace\.csv line 3"):
        LossTrace.from_csv(path)


# --------------------------------------------------------------------------- Micius 2017


def test_micius_data_is_packaged() -> None:
    paths = micius_2017_paths()
    assert paths.pass_track.is_file() and paths.link_loss.is_file() and paths.readme.is_file()
    measured = LossTrace.from_csv(paths.link_loss)
    assert measured.span == (645.0, 1200.0) and len(measured.points) == 112
    assert measured.loss_db_at(645.0) == pytest.approx(29.75)
    assert measured.loss_db_at(1200.0) == pytest.approx(40.34)


def test_micius_model_reproduces_the_shape_of_the_measured_loss() -> None:
    """The simple model against Liao et al. 2017 along the real pass geometry.

    Measured 645 → 1200 km: 8.7 dB between the means of the 645–670 and
    1175–1200 km points (10.6 dB between the two end points, the last one a
    1.4 dB jump). The model's free-space spreading (20 log₁₀ of the range
    ratio, 5.4 dB) plus the longer air path gives 5.8 dB; the rest is loss
    that grows towards the horizon and that the model leaves out
    (turbulence-induced beam spreading and wander). A model without the
    1/L² law would miss by more than 5 dB. And since the model only omits
    losses, it must be optimistic everywhere (by 5–9 dB with the receive
    optics' 8 dB included; by 13–17 dB without them).
    """
    satellite = TleSatellite(*MICIUS_TLE)
    station = GroundStation(40.396, 117.577, 893.0)
    (found,) = find_passes(satellite, station, parse_utc("2016-12-19T16:40:00Z"), parse_utc("2016-12-19T17:05:00Z"))
    times = np.arange(found.rise_utc, found.culmination_utc, 1.0)  # rising side
    elevation, _, distance = look_angles(satellite, station, times)
    measured = LossTrace.from_csv(micius_2017_paths().link_loss)
    optics = FreeSpaceOptics.micius_2017()
    ranges = np.array(measured.points)
    model = np.array([
        channel_state(float(np.interp(r, distance[::-1], elevation[::-1])), float(r), -70.0, optics).loss_db
        for r in ranges
    ])
    data = np.array(measured.loss_db)
    near, far = ranges <= 670.0, ranges >= 1175.0
    model_rise = model[far].mean() - model[near].mean()
    measured_rise = data[far].mean() - data[near].mean()
    assert measured_rise == pytest.approx(8.7, abs=0.1)
    assert model_rise == pytest.approx(measured_rise, abs=4.0)
    assert model_rise > 20.0 * math.log10(1190.0 / 655.0)  # at least the spreading law
    excess = data - model
    assert np.all(excess > 3.0)
    assert np.mean(excess[ranges <= 1000.0]) == pytest.approx(5.5, abs=1.0)


def test_free_space_link_composes_geometry_sun_and_channel() -> None:
    satellite = TleSatellite(*MICIUS_TLE)
    station = GroundStation(40.396, 117.577, 893.0)
    link = FreeSpaceLink(satellite, station, FreeSpaceOptics.micius_2017())
    culmination = parse_utc("2016-12-19T16:52:13Z")
    state = link.state_at(culmination)
    elevation, _, distance = look_angles(satellite, station, culmination)
    assert state == channel_state(elevation, distance, state.sun_elevation_deg, link.optics)
    assert state.in_view and state.sky is SkyCondition.NIGHT
    assert state.loss_db == pytest.approx(24.0, abs=0.5)
    hidden = link.state_at(culmination + 3600.0)  # the satellite is on the other side of the Earth
    assert hidden.elevation_deg < 0.0 and not hidden.in_view and hidden.transmittance == 0.0
    (found,) = link.passes(culmination - 1800.0, culmination + 1800.0)
    assert found.rise_utc == pytest.approx(parse_utc("2016-12-19T16:48:43.7Z"), abs=0.5)
    timed = LossTrace.parse_csv("time_s,loss_db\n0,35\n600,35\n")
    with pytest.raises(ConfigError, match="trace_start_utc"):
        FreeSpaceLink(satellite, station, link.optics, timed)
    traced = FreeSpaceLink(satellite, station, link.optics, timed, trace_start_utc=culmination - 300.0)
    assert traced.state_at(culmination).loss_db == pytest.approx(35.0)
    assert traced.state_at(culmination + 301.0).transmittance == 0.0
