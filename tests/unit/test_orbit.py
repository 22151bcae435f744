"""Orbits, stations, look angles, passes and the Sun against closed forms and published figures."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from sgp4.propagation import gstime

from qcinode.core.freespace import micius_2017_paths
from qcinode.core.orbit import (
    MEAN_EARTH_RADIUS_KM,
    WGS84_EQUATORIAL_RADIUS_KM,
    CircularOrbit,
    GroundStation,
    Pass,
    Satellite,
    SkyCondition,
    TleSatellite,
    elevation_from_slant_range_deg,
    find_passes,
    format_utc,
    gmst_rad,
    look_angles,
    next_pass,
    orbital_period_s,
    overhead_pass_duration_s,
    parse_utc,
    sky_condition,
    slant_range_km,
    sun_elevation_deg,
    sun_synchronous_inclination_deg,
    teme_to_ecef_km,
)
from qcinode.errors import ConfigError

MICIUS_LINE1 = "1 41731U 16051A   16353.90152003  .00000364  00000-0  17957-4 0  9993"
MICIUS_LINE2 = "2 41731  97.3699 267.4500 0013200 178.5836 246.0824 15.23915303 19063"
XINGLONG = GroundStation(40.396, 117.577, 893.0)
SLANT_RANGES_500_KM = {10.0: 1695.0, 20.0: 1193.0, 30.0: 909.0, 45.0: 683.0, 90.0: 500.0}


@pytest.fixture(scope="module")
def micius() -> TleSatellite:
    return TleSatellite(MICIUS_LINE1, MICIUS_LINE2)


def _overhead_orbit() -> CircularOrbit:
    """500 km polar circle over (0°, 0°) a quarter period after the epoch; the Earth does not turn."""
    return CircularOrbit(altitude_km=500.0, inclination_deg=90.0, raan_deg=0.0, argument_of_latitude_deg=-90.0,
                         epoch_utc=0.0, j2=False, rotating_earth=False)


class _FixedSatellite:
    """A Satellite at a fixed Earth-fixed point (for look-angle conventions)."""

    def __init__(self, position_km: tuple[float, float, float]) -> None:
        self._position = np.array(position_km, dtype=np.float64)

    def position_ecef_km(self, t: float | np.ndarray) -> np.ndarray:
        if np.ndim(t) == 0:
            return self._position.copy()
        return np.tile(self._position, (np.size(t), 1))


# --------------------------------------------------------------------------- time


def test_parse_utc_reads_iso_8601_with_a_zone() -> None:
    assert parse_utc("2016-12-19T16:52:00Z") == 1482166320.0
    assert parse_utc("1970-01-01T00:00:00Z") == 0.0
    assert parse_utc("2016-12-19T16:52:00.25Z") == 1482166320.25
    assert parse_utc("2016-12-19 16:52Z") == 1482166320.0
    assert parse_utc("2016-12-19T17:52:00+01:00") == 1482166320.0
    assert parse_utc("2016-12-19T11:22:00-0530") == 1482166320.0


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("2016-12-19T16:52:00", "add 'Z' for UTC"),
        ("2016-13-19T16:52:00Z", "month must be in 1..12"),
        ("2016-02-30T00:00:00Z", "day is out of range"),
        ("2016-12-31T23:59:60Z", "leap seconds"),
        ("yesterday", "is not an ISO 8601 UTC time"),
        ("2016-12-19T16:52:00+25:00", "out of range"),
    ],
)
def test_parse_utc_refuses_bad_strings(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_utc(text)


def test_parse_utc_refuses_non_strings() -> None:
    with pytest.raises(ConfigError, match="got int 5"):
        parse_utc(5)  # type: ignore[arg-type]


def test_format_utc_round_trips() -> None:
    assert format_utc(1482166320.0) == "2016-12-19T16:52:00Z"
    assert format_utc(1482166320.25) == "2016-12-19T16:52:00.25Z"
    assert format_utc(-1.5) == "1969-12-31T23:59:58.5Z"
    for t in (0.0, 1e9 + 0.125, 1482166320.000001, 4102444799.0):
        assert parse_utc(format_utc(t)) == pytest.approx(t, abs=1e-6)
    with pytest.raises(ConfigError, match="finite"):
        format_utc(math.nan)


# --------------------------------------------------------------------------- frames


def test_gmst_matches_vallado_example_3_5_and_sgp4() -> None:
    # Vallado (2013) Example 3-5: 1992 August 20, 12:14 UT1 -> GMST 152.578787886°.
    assert math.degrees(gmst_rad(parse_utc("1992-08-20T12:14:00Z"))) == pytest.approx(152.578787886, abs=1e-6)
    times = np.array([0.0, 9.5e8, 1.482166320e9, 1.7e9, 4.1e9])
    ours = gmst_rad(times)
    for t, value in zip(times, ours, strict=True):
        assert value == pytest.approx(gstime(2440587.5 + t / 86400.0), abs=1e-9)
        assert gmst_rad(float(t)) == pytest.approx(value, abs=1e-12)


def test_teme_to_earth_fixed_matches_vallado_2006() -> None:
    # Vallado et al., AIAA 2006-6753: r_TEME at 2004-04-06 07:51:28.386009 UTC, UT1 − UTC = −0.4399619 s;
    # r_PEF = (−1033.47503130, 7901.30558560, 6380.34453270) km, r_ITRF = (−1033.4793830, 7901.2952754, 6380.3565958).
    teme = np.array([5094.18016210, 6127.64465950, 6380.34453270])
    t_utc = parse_utc("2004-04-06T07:51:28.386009Z")
    pef = teme_to_ecef_km(teme, t_utc - 0.4399619)
    assert pef == pytest.approx([-1033.47503130, 7901.30558560, 6380.34453270], abs=1e-3)
    # Neglecting UT1 − UTC and polar motion (module rule 2) stays inside the documented 0.45 km.
    ecef = teme_to_ecef_km(teme, t_utc)
    assert np.linalg.norm(ecef - np.array([-1033.4793830, 7901.2952754, 6380.3565958])) < 0.45


def test_ground_station_on_wgs84() -> None:
    assert GroundStation(0.0, 0.0).position_ecef_km == pytest.approx([WGS84_EQUATORIAL_RADIUS_KM, 0.0, 0.0])
    assert GroundStation(90.0, 0.0).position_ecef_km == pytest.approx([0.0, 0.0, 6356.752314245], abs=1e-6)
    east = GroundStation(0.0, 90.0, 1000.0).position_ecef_km
    assert east == pytest.approx([0.0, WGS84_EQUATORIAL_RADIUS_KM + 1.0, 0.0], abs=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"latitude_deg": 91.0, "longitude_deg": 0.0}, "latitude_deg: must be <= 90"),
        ({"latitude_deg": 0.0, "longitude_deg": math.nan}, "longitude_deg: must be finite"),
        ({"latitude_deg": 0.0, "longitude_deg": 0.0, "altitude_m": "high"}, "altitude_m: expected a number"),
    ],
)
def test_ground_station_rejects_bad_fields(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        GroundStation(**kwargs)  # type: ignore[arg-type]


def test_look_angle_conventions() -> None:
    station = GroundStation(45.0, 10.0, 0.0)
    east, north, up = station.enu_basis
    base = station.position_ecef_km
    overhead = _FixedSatellite(tuple(base + 600.0 * up))
    elevation, _, distance = look_angles(overhead, station, 0.0)
    assert elevation == pytest.approx(90.0)
    assert distance == pytest.approx(600.0)
    for direction, azimuth in ((north, 0.0), (east, 90.0), (-north, 180.0), (-east, 270.0)):
        sat = _FixedSatellite(tuple(base + 1000.0 * direction + 1000.0 * up))
        elevation, found_azimuth, distance = look_angles(sat, station, 0.0)
        assert elevation == pytest.approx(45.0)
        assert 0.0 <= found_azimuth < 360.0
        assert (found_azimuth - azimuth + 180.0) % 360.0 - 180.0 == pytest.approx(0.0, abs=1e-9)
        assert distance == pytest.approx(1000.0 * math.sqrt(2.0))


def test_scalar_and_vector_look_angles_agree(micius: TleSatellite) -> None:
    times = parse_utc("2016-12-19T16:50:00Z") + np.arange(0.0, 300.0, 37.0)
    elevation, azimuth, distance = look_angles(micius, XINGLONG, times)
    for i, t in enumerate(times):
        scalar = look_angles(micius, XINGLONG, float(t))
        assert scalar == pytest.approx((elevation[i], azimuth[i], distance[i]), abs=1e-9)
    assert isinstance(micius, Satellite)
    assert micius.position_ecef_km(times).shape == (times.size, 3)


# --------------------------------------------------------------------------- two-line elements


def test_tle_epoch_and_propagation(micius: TleSatellite) -> None:
    assert micius.catalog_number == "41731"
    assert format_utc(round(micius.epoch_utc, 3)) == "2016-12-18T21:38:11.331Z"
    # At the epoch the orbit radius is that of a ~495 km orbit (mean motion 15.239 rev/day).
    radius = np.linalg.norm(micius.position_teme_km(micius.epoch_utc))
    assert 6840.0 < radius < 6900.0
    # Far beyond what SGP4 can propagate, positions are NaN, not an exception.
    assert np.isnan(micius.position_ecef_km(micius.epoch_utc + 400 * 365 * 86400.0)).all()


def _corrupt(line: str, column: int, char: str) -> str:
    return line[:column] + char + line[column + 1:]


@pytest.mark.parametrize(
    ("line1", "line2", "fragment"),
    [
        (_corrupt(MICIUS_LINE1, 20, "4"), MICIUS_LINE2, "TLE line 1: checksum digit is 3 but the line sums to 4"),
        (MICIUS_LINE1, _corrupt(MICIUS_LINE2, 68, "0"), "TLE line 2: checksum digit is 0 but the line sums to 3"),
        (MICIUS_LINE1[:-1], MICIUS_LINE2, "TLE line 1: must be 69 characters, got 68"),
        (MICIUS_LINE2, MICIUS_LINE1, "TLE line 1: must start with '1 '"),
        (MICIUS_LINE1, 42, "TLE line 2: expected a string"),
        (MICIUS_LINE1, _corrupt(_corrupt(MICIUS_LINE2, 6, "2"), 68, "4"), "catalogue number '41732' differs"),
    ],
)
def test_tle_validation_names_the_line(line1: str, line2: object, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        TleSatellite(line1, line2)  # type: ignore[arg-type]


def test_tle_accepts_trailing_blanks() -> None:
    assert TleSatellite(MICIUS_LINE1 + "  \n", MICIUS_LINE2 + "\r\n").line1 == MICIUS_LINE1


# --------------------------------------------------------------------------- the Micius pass


def test_micius_pass_of_19_december_2016(micius: TleSatellite) -> None:
    # Liao et al., Nature 549, 43 (2017): the pass culminates near 16:52 UTC at about 48° and 645 km.
    # This propagation: culmination 16:52:13.5 UTC, 47.83°, 645.4 km; above 10° from 16:48:43.7 to 16:55:40.9.
    passes = find_passes(micius, XINGLONG, parse_utc("2016-12-19T16:00:00Z"), parse_utc("2016-12-19T18:00:00Z"), 10.0)
    assert len(passes) == 1
    (found,) = passes
    assert found.culmination_utc == pytest.approx(parse_utc("2016-12-19T16:52:00Z"), abs=120.0)
    assert found.max_elevation_deg == pytest.approx(48.0, abs=3.0)
    assert found.min_range_km == pytest.approx(645.0, rel=0.03)
    assert not found.is_clipped
    assert found.rise_utc < found.culmination_utc < found.set_utc
    # Rise and set are refined to well under 0.5 s: the mask is crossed within ±0.25 s of them.
    for edge, sign in ((found.rise_utc, 1.0), (found.set_utc, -1.0)):
        assert look_angles(micius, XINGLONG, edge - 0.25 * sign)[0] < 10.0 < look_angles(micius, XINGLONG, edge + 0.25 * sign)[0]
    # The culmination is a maximum: nothing within a second of it is higher.
    around = look_angles(micius, XINGLONG, found.culmination_utc + np.linspace(-1.0, 1.0, 41))[0]
    assert around.max() <= found.max_elevation_deg + 1e-6
    assert found.to_mapping()["culmination_utc"] == format_utc(round(found.culmination_utc, 3))


def test_micius_range_matches_the_published_track(micius: TleSatellite) -> None:
    """The TLE prediction agrees with the slant range digitised from Liao et al. 2017 to 1.5 %."""
    with micius_2017_paths().pass_track.open() as handle:
        rows = [(float(r["time_s"]), float(r["slant_range_km"])) for r in csv.DictReader(handle)]
    track_t = np.array([r[0] for r in rows])
    track_r = np.array([r[1] for r in rows])
    (found,) = find_passes(micius, XINGLONG, parse_utc("2016-12-19T16:40:00Z"), parse_utc("2016-12-19T17:05:00Z"), 10.0)
    near = track_t[track_r <= track_r.min() + 1.0]  # the digitised minimum is flat: take its middle
    start = found.culmination_utc - 0.5 * (near.min() + near.max())
    _, _, predicted = look_angles(micius, XINGLONG, start + track_t)
    assert np.max(np.abs(predicted - track_r) / track_r) < 0.015
    # The published track lasts 274 s from 1196 km down to 645 km and back out to 1189 km.
    assert track_t[-1] == pytest.approx(274.0)


def test_clipped_passes_and_next_pass(micius: TleSatellite) -> None:
    culmination = parse_utc("2016-12-19T16:52:13Z")
    (head,) = find_passes(micius, XINGLONG, culmination - 3600.0, culmination, 10.0)
    assert head.set_clipped and not head.rise_clipped and head.set_utc == culmination
    (tail,) = find_passes(micius, XINGLONG, culmination, culmination + 3600.0, 10.0)
    assert tail.rise_clipped and tail.rise_utc == culmination
    upcoming = next_pass(micius, XINGLONG, culmination - 3600.0, 10.0)
    assert upcoming is not None and not upcoming.is_clipped
    assert upcoming.culmination_utc == pytest.approx(culmination, abs=1.0)
    ongoing = next_pass(micius, XINGLONG, culmination, 10.0)
    assert ongoing is not None and ongoing.rise_clipped and ongoing.set_utc == pytest.approx(tail.set_utc)
    later = next_pass(micius, XINGLONG, upcoming.set_utc + 1.0, 10.0)
    assert later is not None and later.rise_utc > upcoming.set_utc + 3000.0


def test_next_pass_is_none_when_the_satellite_never_rises() -> None:
    equatorial = CircularOrbit(altitude_km=500.0, inclination_deg=0.0, raan_deg=0.0, epoch_utc=0.0)
    assert next_pass(equatorial, GroundStation(80.0, 0.0, 0.0), 0.0, 10.0, search_s=3 * 86400.0) is None


def test_find_passes_rejects_bad_windows(micius: TleSatellite) -> None:
    with pytest.raises(ConfigError, match="end_utc: must be after start_utc"):
        find_passes(micius, XINGLONG, 10.0, 10.0)
    with pytest.raises(ConfigError, match="step_s: must be > 0"):
        find_passes(micius, XINGLONG, 0.0, 10.0, step_s=0.0)
    with pytest.raises(ConfigError, match="elevation_mask_deg: must be < 90"):
        find_passes(micius, XINGLONG, 0.0, 10.0, 90.0)


# --------------------------------------------------------------------------- circular orbits and closed forms


def test_closed_form_slant_range_and_pass_duration() -> None:
    for elevation, expected in SLANT_RANGES_500_KM.items():
        assert slant_range_km(elevation, 500.0) == pytest.approx(expected, rel=0.01)
        assert elevation_from_slant_range_deg(slant_range_km(elevation, 500.0), 500.0) == pytest.approx(elevation)
    assert slant_range_km(np.array([90.0]), 500.0, 1.0) == pytest.approx([499.0])
    assert overhead_pass_duration_s(500.0, 10.0) == pytest.approx(443.0, rel=0.03)
    assert overhead_pass_duration_s(500.0, 15.0) == pytest.approx(359.0, rel=0.03)
    assert overhead_pass_duration_s(600.0, 10.0) == pytest.approx(510.0, rel=0.03)
    assert orbital_period_s(500.0) / 60.0 == pytest.approx(94.5, abs=0.05)
    with pytest.raises(ConfigError, match="not a possible slant range"):
        elevation_from_slant_range_deg(100.0, 500.0)


def test_circular_orbit_reproduces_the_slant_ranges() -> None:
    """CircularOrbit + look_angles over an equatorial station give the spherical closed form within 1 %.

    The station's WGS84 radius at the equator (6378.137 km) and the orbit radius
    (6378.137 + 500 km) differ from the closed form's 6371/6871 km by the same
    7 km, which changes the ranges by < 0.05 %.
    """
    orbit = _overhead_orbit()
    station = GroundStation(0.0, 0.0, 0.0)
    times = np.linspace(0.0, orbit.period_s / 4.0, 20001)  # from the pole down to the zenith
    elevation, _, distance = look_angles(orbit, station, times)
    rising = elevation > -5.0
    for target, expected in SLANT_RANGES_500_KM.items():
        assert float(np.interp(target, elevation[rising], distance[rising])) == pytest.approx(expected, rel=0.01)


def test_overhead_pass_duration_by_find_passes() -> None:
    """An overhead 500 km pass above 10° lasts 443 s (±3 %) with the Earth's rotation switched off.

    With the Earth turning, the station moves by up to 0.46 km/s across the
    track: the pass is no longer overhead and its length changes by several
    per cent, so the closed form is checked on a non-rotating Earth.
    """
    orbit = _overhead_orbit()
    (found,) = find_passes(orbit, GroundStation(0.0, 0.0, 0.0), 0.0, orbit.period_s / 2.0, 10.0)
    assert found.duration_s == pytest.approx(overhead_pass_duration_s(500.0, 10.0), rel=0.002)
    assert found.duration_s == pytest.approx(443.0, rel=0.03)
    assert found.max_elevation_deg == pytest.approx(90.0, abs=0.01)
    assert found.min_range_km == pytest.approx(500.0, abs=0.01)
    assert found.culmination_utc == pytest.approx(orbit.period_s / 4.0, abs=0.05)


def test_grazing_pass_shorter_than_the_scan_step_is_found() -> None:
    orbit = _overhead_orbit()
    a = orbit.semi_major_axis_km
    # Offset the station so that the highest elevation is 10.3°: central angle arccos(R cos ε / a) − ε.
    epsilon = math.radians(10.3)
    offset = math.degrees(math.acos(WGS84_EQUATORIAL_RADIUS_KM * math.cos(epsilon) / a) - epsilon)
    station = GroundStation(0.0, offset, 0.0)
    fine = find_passes(orbit, station, 0.0, orbit.period_s / 2.0, 10.0, step_s=1.0)
    coarse = find_passes(orbit, station, 0.0, orbit.period_s / 2.0, 10.0, step_s=120.0)
    assert len(fine) == len(coarse) == 1
    assert fine[0].max_elevation_deg == pytest.approx(10.3, abs=0.01)
    assert fine[0].duration_s < 120.0
    assert coarse[0].rise_utc == pytest.approx(fine[0].rise_utc, abs=0.05)
    assert coarse[0].set_utc == pytest.approx(fine[0].set_utc, abs=0.05)


def test_sun_synchronous_inclination() -> None:
    assert sun_synchronous_inclination_deg(500.0) == pytest.approx(97.40, abs=0.02)
    assert sun_synchronous_inclination_deg(525.0) == pytest.approx(97.50, abs=0.02)
    # Vallado (2013) Example 11-2: 800 km circular sun-synchronous orbit at 98.6°.
    assert sun_synchronous_inclination_deg(800.0) == pytest.approx(98.6, abs=0.01)
    with pytest.raises(ConfigError, match="no circular sun-synchronous orbit"):
        sun_synchronous_inclination_deg(7000.0)


def _local_time_of_ascending_node_h(orbit: CircularOrbit, after: float) -> float:
    """LTAN measured geometrically: UT of the first northward equator crossing + its longitude / 15°."""
    times = after + np.arange(0.0, orbit.period_s * 1.1, 1.0)
    z = orbit.position_ecef_km(times)[:, 2]
    k = int(np.flatnonzero((z[:-1] < 0.0) & (z[1:] >= 0.0))[0])
    crossing = float(times[k] - z[k] / (z[k + 1] - z[k]))
    x, y, _ = orbit.position_ecef_km(crossing)
    return ((crossing % 86400.0) / 3600.0 + math.degrees(math.atan2(y, x)) / 15.0) % 24.0


def test_eagle_like_orbit_stays_sun_synchronous() -> None:
    epoch = parse_utc("2027-03-21T00:00:00Z")
    eagle = CircularOrbit.sun_synchronous(altitude_km=525.0, ltan="10:30", epoch_utc=epoch)
    assert eagle.inclination_deg == pytest.approx(97.50, abs=0.02)
    for days in (0.0, 91.0, 182.0, 365.0):
        assert _local_time_of_ascending_node_h(eagle, epoch + days * 86400.0) == pytest.approx(10.5, abs=1.0 / 60.0)
    # A polar orbit has no nodal drift, so its LTAN falls behind the mean Sun by 24 h a year.
    polar = CircularOrbit(altitude_km=525.0, inclination_deg=90.0, ltan="10:30", epoch_utc=epoch)
    quarter = 365.2422 / 4.0
    assert _local_time_of_ascending_node_h(polar, epoch + quarter * 86400.0) == pytest.approx(4.5, abs=2.0 / 60.0)


def test_circular_orbit_period_and_j2_drift() -> None:
    plain = CircularOrbit(altitude_km=500.0, inclination_deg=51.6, raan_deg=10.0, epoch_utc=0.0, j2=False)
    a = WGS84_EQUATORIAL_RADIUS_KM + 500.0
    assert plain.period_s == pytest.approx(2 * math.pi * math.sqrt(a**3 / 398600.4418))
    iss = CircularOrbit(altitude_km=420.0, inclination_deg=51.6, raan_deg=10.0, epoch_utc=0.0)
    drift_deg_per_day = math.degrees(iss.raan_rad(86400.0) - iss.raan_rad(0.0))
    assert drift_deg_per_day == pytest.approx(-5.0, abs=0.1)  # the ISS's node regresses about 5° a day
    assert np.linalg.norm(plain.position_ecef_km(1234.0)) == pytest.approx(a)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"altitude_km": -1.0, "inclination_deg": 97.0, "raan_deg": 0.0, "epoch_utc": 0.0}, "altitude_km: must be > 0, got -1"),
        ({"altitude_km": 500.0, "inclination_deg": 181.0, "raan_deg": 0.0, "epoch_utc": 0.0}, "inclination_deg: must be <= 180"),
        ({"altitude_km": 500.0, "inclination_deg": 97.0, "epoch_utc": 0.0}, "give exactly one of them"),
        ({"altitude_km": 500.0, "inclination_deg": 97.0, "raan_deg": 0.0, "ltan": "10:30", "epoch_utc": 0.0},
         "exactly one"),
        ({"altitude_km": 500.0, "inclination_deg": 97.0, "ltan": "25:00", "epoch_utc": 0.0},
         "ltan: '25:00' is not a time of day"),
        ({"altitude_km": 500.0, "inclination_deg": 97.0, "ltan": "half past ten", "epoch_utc": 0.0},
         "ltan: expected a local time"),
        ({"altitude_km": 500.0, "inclination_deg": 97.0, "ltan": "10:30", "epoch_utc": "2027-01-01"},
         "epoch_utc: expected a number"),
    ],
)
def test_circular_orbit_rejects_bad_elements(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        CircularOrbit(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the Sun


def test_sun_declination_at_equinox_and_solstice() -> None:
    pole = GroundStation(90.0, 0.0, 0.0)
    # At the geographic pole the Sun's elevation is its declination. Published instants (USNO):
    # March equinox 2024-03-20 03:06 UTC (δ = 0), June solstice 2024-06-20 20:51 UTC (δ = ε ≈ 23.44°).
    assert sun_elevation_deg(pole, parse_utc("2024-03-20T03:06:00Z")) == pytest.approx(0.0, abs=0.02)
    assert sun_elevation_deg(pole, parse_utc("2024-06-20T20:51:00Z")) == pytest.approx(23.44, abs=0.02)
    assert sun_elevation_deg(pole, parse_utc("2024-12-21T09:20:00Z")) == pytest.approx(-23.44, abs=0.02)


def test_sun_at_local_noon_on_the_equinox() -> None:
    times = parse_utc("2024-03-20T00:00:00Z") + np.arange(0.0, 86400.0, 10.0)
    elevations = sun_elevation_deg(XINGLONG, times)
    # At noon on the equinox the Sun stands at 90° − latitude (plus the ~0.02° it rose since 03:06 UTC).
    assert elevations.max() == pytest.approx(90.0 - XINGLONG.latitude_deg, abs=0.05)
    # Xinglong lies 117.6° east: local noon is near 12:00 − 7.84 h UTC (equation of time −7.5 min).
    noon = times[np.argmax(elevations)]
    assert (noon % 86400.0) / 3600.0 == pytest.approx(12.0 - 117.577 / 15.0 + 7.5 / 60.0, abs=0.02)


def test_equation_of_time_near_its_november_maximum() -> None:
    # The Sun is fast by about 16.4 min in early November: at Greenwich it culminates near 11:43:36 UTC.
    station = GroundStation(51.4769, 0.0, 0.0)
    times = parse_utc("2024-11-03T11:00:00Z") + np.arange(0.0, 7200.0, 1.0)
    noon = times[np.argmax(sun_elevation_deg(station, times))]
    assert noon == pytest.approx(parse_utc("2024-11-03T11:43:36Z"), abs=45.0)


@pytest.mark.parametrize(
    ("sun", "condition"),
    [
        (45.0, SkyCondition.DAY),
        (-0.5, SkyCondition.DAY),
        (-0.833, SkyCondition.CIVIL_TWILIGHT),
        (-5.9, SkyCondition.CIVIL_TWILIGHT),
        (-6.0, SkyCondition.NAUTICAL_TWILIGHT),
        (-12.0, SkyCondition.ASTRONOMICAL_TWILIGHT),
        (-17.99, SkyCondition.ASTRONOMICAL_TWILIGHT),
        (-18.0, SkyCondition.NIGHT),
        (-70.0, SkyCondition.NIGHT),
    ],
)
def test_sky_condition_thresholds(sun: float, condition: SkyCondition) -> None:
    assert sky_condition(sun) is condition


def test_sky_condition_rejects_nonsense_and_micius_flew_at_night(micius: TleSatellite) -> None:
    with pytest.raises(ConfigError, match="sun_elevation_deg: must be <= 90"):
        sky_condition(91.0)
    culmination = parse_utc("2016-12-19T16:52:13Z")
    assert sky_condition(sun_elevation_deg(XINGLONG, culmination)) is SkyCondition.NIGHT


def test_pass_is_a_value() -> None:
    one = Pass(0.0, 10.0, 20.0, 45.0, 700.0)
    assert one == Pass(0.0, 10.0, 20.0, 45.0, 700.0)
    assert one.duration_s == 20.0 and not one.is_clipped
    assert MEAN_EARTH_RADIUS_KM == 6371.0
