"""Draws docs/pass.png: one satellite pass through the protocol stack, against time.

Needs the ``plots`` extra (``pip install -e ".[plots]"``). Run from the
repository root::

    python docs/pass_figure.py

The pass is Micius over Xinglong on 19 December 2016, run twice through the
whole protocol stack in this process (:func:`qcinode.core.passrun.run_pass`,
i.e. :func:`qcinode.core.pair.pump_timeline`, seeded), with the Micius source
and receiver (:func:`qcinode.core.replay.micius_2017_physics`) and blocks of
3·10⁵ key-basis bits (with this source, blocks of the topology's default
10⁵ bits are too small for Lim et al.'s finite-size bounds: docs/space.md):

* **replay**: the measured loss, replayed along the published track
  (:func:`qcinode.core.replay.micius_2017_channel`);
* **model**: SGP4 on the elements of 18 December 2016 and the free-space
  model with the Micius telescope (:meth:`FreeSpaceOptics.micius_2017`)
  through :class:`qcinode.core.downlink.DownlinkChannel`, over the same
  274 s.

Four panels share the time axis: the satellite's elevation (SGP4), the
channel loss of each frame (detector excluded), the detection rate of each
frame, and the secret key accumulated as blocks finish. The PNG carries no
date or software stamp, so it changes in git only when what it shows changes.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from qcinode.core.channel import QuantumChannelModel  # noqa: E402
from qcinode.core.downlink import DownlinkChannel  # noqa: E402
from qcinode.core.freespace import FreeSpaceLink, FreeSpaceOptics  # noqa: E402
from qcinode.core.orbit import GroundStation, TleSatellite, format_utc, look_angles  # noqa: E402
from qcinode.core.passrun import PassRun, run_pass  # noqa: E402
from qcinode.core.pipeline import LinkProtocolConfig  # noqa: E402
from qcinode.core.replay import (  # noqa: E402
    MICIUS_2017_PUBLISHED,
    MICIUS_2017_RATE_HZ,
    MICIUS_2017_TRACK_START_UTC,
    micius_2017_channel,
    micius_2017_physics,
)

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
OUTPUT = DOCS / "pass.png"
MICIUS_TLE = (
    "1 41731U 16051A   16353.90152003  .00000364  00000-0  17957-4 0  9993",
    "2 41731  97.3699 267.4500 0013200 178.5836 246.0824 15.23915303 19063",
)
XINGLONG = GroundStation(40.396, 117.577, 893.0)
START = MICIUS_2017_TRACK_START_UTC
BLOCK_BITS = 300_000

matplotlib.rcParams.update({"font.size": 9})


def _run(channel: QuantumChannelModel, start_utc: float, end_utc: float, seed: int) -> PassRun:
    config = LinkProtocolConfig("micius-xinglong", micius_2017_physics(), block_bits=BLOCK_BITS, channel=channel)
    run = run_pass(config, rate_hz=MICIUS_2017_RATE_HZ, start_utc=start_utc, end_utc=end_utc,
                   frame_slots=10**9, seed=seed)
    if not run.keys_match:
        raise RuntimeError("the two ends disagree: the figure would show a broken run")
    return run


def _runs() -> tuple[PassRun, PassRun]:
    replay_channel = micius_2017_channel(START)
    rise, set_ = replay_channel.window_utc
    replay = _run(replay_channel, rise - 5.0, set_ + 5.0, seed=2017)
    satellite = TleSatellite(*MICIUS_TLE)
    mask = float(look_angles(satellite, XINGLONG, START)[0])  # where the published track starts
    optics = dataclasses.replace(FreeSpaceOptics.micius_2017(), elevation_mask_deg=mask)
    model_channel = DownlinkChannel(FreeSpaceLink(satellite, XINGLONG, optics),
                                    detector_efficiency=micius_2017_physics().detector_efficiency)
    (found,) = model_channel.passes(START - 600.0, START + 600.0)
    model = _run(model_channel, found.rise_utc - 5.0, found.set_utc + 5.0, seed=2016)
    return replay, model


def _steps(run: PassRun) -> tuple[np.ndarray, np.ndarray]:
    """Accumulated secret key (kbit) against time (s from the track's start), as a staircase."""
    times = [run.frames[0].start_utc - START]
    total = [0.0]
    for block in run.blocks:
        times.append(block.closed_utc - START)
        total.append(total[-1] + block.secret_bits / 1e3)
    times.append(run.frames[-1].end_utc - START)
    total.append(total[-1])
    return np.array(times), np.array(total)


def pass_figure() -> Path:
    replay, model = _runs()
    colours = {"replay": "#c0392b", "model": "#3b6ea5"}
    fig, axes = plt.subplots(4, 1, figsize=(6.4, 7.6), sharex=True)
    elevation_ax, loss_ax, rate_ax, key_ax = axes

    t = np.linspace(replay.frames[0].start_utc, replay.frames[-1].end_utc, 300)
    elevation, _, distance = look_angles(TleSatellite(*MICIUS_TLE), XINGLONG, t)
    elevation_ax.plot(t - START, elevation, color="black")
    elevation_ax.set_ylabel("elevation (°)")
    range_ax = elevation_ax.twinx()
    range_ax.plot(t - START, distance, color="grey", ls=":")
    range_ax.set_ylabel("range (km)", color="grey")
    range_ax.tick_params(axis="y", colors="grey")

    for label, run in (("replay: measured loss", replay), ("model: TLE + Micius optics", model)):
        colour = colours[label.split(":")[0]]
        mid = np.array([f.at_utc - START for f in run.frames])
        loss_ax.step(mid, [f.conditions.loss_db for f in run.frames], where="mid", color=colour, label=label)
        rate = np.array([f.detections / f.duration_s / 1e3 for f in run.frames])
        rate_ax.step(mid, rate, where="mid", color=colour)
        times, total = _steps(run)
        key_ax.step(times, total, where="post", color=colour,
                    label=f"{label.split(':')[0]}: {run.secret_bits / 1e3:.0f} kbit in {sum(1 for b in run.blocks if b.secret_bits)} blocks")
    published = MICIUS_2017_PUBLISHED["secret_bits"][0] / 1e3
    key_ax.axhline(published, color="grey", ls="--", lw=0.8)
    key_ax.text(2.0, published, f"published, whole pass: ≈ {published:.0f} kbit", va="bottom", fontsize=8, color="grey")

    loss_ax.set_ylabel("channel loss (dB)\n(axis inverted)")
    loss_ax.invert_yaxis()
    loss_ax.legend(loc="lower center", fontsize=8, frameon=False)
    rate_ax.set_ylabel("detections (k/s)")
    key_ax.set_ylabel("secret key (kbit)")
    key_ax.set_xlabel(f"time (s) from {format_utc(START)}")
    key_ax.legend(loc="upper left", fontsize=8, frameon=False)
    for ax in axes:
        ax.grid(alpha=0.3)
    elevation_ax.set_title("Micius → Xinglong, 19 Dec 2016: one pass through qcinode's protocol stack\n"
                           f"(in-process, 100 MHz decoy BB84, blocks of {BLOCK_BITS:,} key bits)", fontsize=9)
    fig.tight_layout()
    fig.savefig(OUTPUT, dpi=110, metadata={"Software": None})
    plt.close(fig)
    print(f"wrote {OUTPUT.relative_to(ROOT)}: replay {replay.detections} detections, {replay.secret_bits} secret bits; "
          f"model {model.detections} detections, {model.secret_bits} secret bits")
    return OUTPUT


def main(argv: list[str]) -> int:
    if argv:
        print(__doc__)
        return 2
    pass_figure()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
