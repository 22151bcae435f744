"""The space segment's model against the Micius pass of 19 December 2016 (prints; asserts nothing).

Run: ``python bench/space_model.py``

1. The pass predicted from the TLE of 18 December 2016 over Xinglong (rise,
   culmination, set, maximum elevation, minimum range).
2. The predicted slant range against the range digitised from Liao et al.,
   Nature 549, 43 (2017), aligned at closest approach.
3. Channel loss against range: the free-space model with the Micius
   parameters (:meth:`FreeSpaceOptics.micius_2017`) and the measured loss,
   with each model factor; the elevation for each range is taken from the
   predicted pass (rising side).
4. The cost of the calls a running link makes per frame.
"""

from __future__ import annotations

import csv
import math
import time

import numpy as np

from qcinode.core.freespace import (
    FreeSpaceOptics,
    LossTrace,
    background_photon_rate,
    channel_state,
    micius_2017_paths,
)
from qcinode.core.orbit import (
    GroundStation,
    SkyCondition,
    TleSatellite,
    find_passes,
    format_utc,
    look_angles,
    parse_utc,
    sun_elevation_deg,
)

MICIUS_TLE = (
    "1 41731U 16051A   16353.90152003  .00000364  00000-0  17957-4 0  9993",
    "2 41731  97.3699 267.4500 0013200 178.5836 246.0824 15.23915303 19063",
)
XINGLONG = GroundStation(40.396, 117.577, 893.0)


def micius_pass_geometry(step_s: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Times, elevations and ranges of the 19 Dec 2016 pass above 10°, and the culmination time."""
    satellite = TleSatellite(*MICIUS_TLE)
    (found,) = find_passes(satellite, XINGLONG, parse_utc("2016-12-19T16:30:00Z"),
                           parse_utc("2016-12-19T17:15:00Z"), 10.0)
    times = np.arange(found.rise_utc, found.set_utc, step_s)
    elevation, _, distance = look_angles(satellite, XINGLONG, times)
    return times, elevation, distance, found.culmination_utc


def _print_pass() -> None:
    satellite = TleSatellite(*MICIUS_TLE)
    print("Micius over Xinglong (40.396 N, 117.577 E, 893 m), TLE epoch", format_utc(satellite.epoch_utc))
    for mask in (0.0, 10.0, 15.0):
        (found,) = find_passes(satellite, XINGLONG, parse_utc("2016-12-19T16:30:00Z"),
                               parse_utc("2016-12-19T17:15:00Z"), mask)
        print(f"  mask {mask:4.1f} deg: rise {format_utc(round(found.rise_utc, 1))}  culmination "
              f"{format_utc(round(found.culmination_utc, 1))}  set {format_utc(round(found.set_utc, 1))}  "
              f"max {found.max_elevation_deg:.2f} deg  min range {found.min_range_km:.1f} km  "
              f"{found.duration_s:.0f} s")
    sun = sun_elevation_deg(XINGLONG, parse_utc("2016-12-19T16:52:00Z"))
    print(f"  Sun at culmination: {sun:.1f} deg")


def _print_track() -> None:
    times, _, distance, culmination = micius_pass_geometry()
    with micius_2017_paths().pass_track.open() as handle:
        rows = [(float(r["time_s"]), float(r["slant_range_km"])) for r in csv.DictReader(handle)]
    track_t = np.array([r[0] for r in rows])
    track_r = np.array([r[1] for r in rows])
    # Align at closest approach: the digitised track's minimum is a flat stretch, so use
    # the midpoint of the samples within 1 km of it.
    near = track_t[track_r <= track_r.min() + 1.0]
    offset = culmination - 0.5 * (near.min() + near.max())
    predicted = np.interp(track_t + offset, times, distance)
    print("\nSlant range: TLE prediction vs digitised track (aligned at closest approach)")
    print("  t (s)  track km  TLE km  diff %")
    for t, r, p in zip(track_t[::30], track_r[::30], predicted[::30], strict=True):
        print(f"  {t:5.0f}  {r:8.1f}  {p:6.1f}  {100 * (p - r) / r:+6.2f}")
    worst = np.max(np.abs(predicted - track_r) / track_r)
    print(f"  largest difference over the {len(track_t)} points: {100 * worst:.2f} %; the track starts "
          f"{format_utc(round(offset, 1))}")


def _print_loss() -> None:
    _, elevation, distance, _ = micius_pass_geometry()
    rising = slice(0, int(np.argmin(distance)) + 1)
    optics = FreeSpaceOptics.micius_2017()
    measured = LossTrace.from_csv(micius_2017_paths().link_loss)
    print("\nChannel loss (detector excluded): model with the Micius parameters vs measured")
    print("  range km  elev deg  geo dB  point dB  atm dB  rx dB  model dB  measured dB  excess dB")
    rows = []
    for range_km in measured.points:
        el = float(np.interp(range_km, distance[rising][::-1], elevation[rising][::-1]))
        state = channel_state(el, range_km, -40.0, optics)
        parts = [-10 * math.log10(x) for x in (state.geometric_efficiency, state.pointing_efficiency,
                                                state.atmospheric_transmittance, state.receiver_efficiency)]
        loss = measured.loss_db_at(range_km)
        rows.append((range_km, el, state.loss_db, loss))
        if range_km % 50 == 45 or range_km == measured.points[-1]:
            print(f"  {range_km:8.0f}  {el:8.1f}  {parts[0]:6.2f}  {parts[1]:8.2f}  {parts[2]:6.2f}  "
                  f"{parts[3]:5.2f}  {state.loss_db:8.2f}  {loss:11.2f}  {loss - state.loss_db:9.2f}")
    table = np.array(rows)
    near, far = table[table[:, 0] <= 670], table[table[:, 0] >= 1175]
    print(f"  mean excess 645-1000 km: {np.mean((table[:, 3] - table[:, 2])[table[:, 0] <= 1000]):.1f} dB "
          f"(receive optics 0.16 = {-10 * math.log10(0.16):.1f} dB of the model are included; without them "
          f"the model is {np.mean((table[:, 3] - table[:, 2])[table[:, 0] <= 1000]) - 10 * math.log10(0.16):.1f}"
          " dB optimistic)")
    print(f"  645 -> 1200 km, means of the 645-670 and 1175-1200 km points: model "
          f"{far[:, 2].mean() - near[:, 2].mean():.1f} dB, measured {far[:, 3].mean() - near[:, 3].mean():.1f} dB; "
          f"end points: model {table[-1, 2] - table[0, 2]:.1f} dB, measured {table[-1, 3] - table[0, 3]:.1f} dB")


def _print_background() -> None:
    print("\nSky background at the detectors (photons/s)")
    cases = {
        "850 nm, D_R 1 m, FOV 100 urad, 1 nm, eta_rx 0.08": FreeSpaceOptics(receiver_optics_efficiency=0.08),
        "1550 nm single-mode, 0.1 nm, eta_rx 0.5": FreeSpaceOptics(
            wavelength_nm=1550.0, single_mode=True, filter_bandwidth_nm=0.1, receiver_optics_efficiency=0.5),
    }
    for label, optics in cases.items():
        rates = "  ".join(f"{c.value} {background_photon_rate(optics.resolved_sky_radiance.for_condition(c), optics):.2g}"
                          for c in SkyCondition)
        print(f"  {label}: {rates}")


def _print_costs() -> None:
    satellite = TleSatellite(*MICIUS_TLE)
    optics = FreeSpaceOptics.micius_2017()
    rng = np.random.default_rng(1)
    t0 = parse_utc("2016-12-19T16:50:00Z")
    calls = 20_000
    print("\nCost per call (this machine, now)")
    for label, call in (
        ("look_angles (TLE, scalar t)", lambda i: look_angles(satellite, XINGLONG, t0 + i)),
        ("sun_elevation_deg (scalar t)", lambda i: sun_elevation_deg(XINGLONG, t0 + i)),
        ("channel_state (mean)", lambda i: channel_state(30.0, 900.0, -30.0, optics)),
        ("channel_state (sampled fading)", lambda i: channel_state(30.0, 900.0, -30.0, optics, rng)),
    ):
        start = time.perf_counter()
        for i in range(calls):
            call(i)
        print(f"  {label}: {(time.perf_counter() - start) / calls * 1e6:.1f} us")
    start = time.perf_counter()
    passes = find_passes(satellite, XINGLONG, t0, t0 + 7 * 86400.0, 10.0)
    print(f"  find_passes over 7 days (10 s scan): {1e3 * (time.perf_counter() - start):.0f} ms, {len(passes)} passes")


def main() -> None:
    _print_pass()
    _print_track()
    _print_loss()
    _print_background()
    _print_costs()


if __name__ == "__main__":
    main()
