"""Draws the figures under docs/ (needs the ``plots`` extra: ``pip install -e ".[plots]"``).

* ``docs/network.svg``: the built-in topology (``qcinode up`` with no
  file): sites, fibre lengths, which end transmits, which SAEs attach where.
* ``docs/keyrate.svg``: secret bits per pulse against fibre length on the
  GYS link: what the protocol stack measured (``docs/data/keyrate-measured.csv``,
  written by ``python bench/keyrate.py --csv docs/data/keyrate-measured.csv``)
  next to the formulas that bench prints: Lim et al.'s finite-size key length
  for the same block size and measured Cascade f, its infinite-block limit,
  the textbook infinite-decoy curve (MQZL, q = 1/2, f = 1.22) and the PLOB
  bound. docs/physics.md §7 explains the gaps between the curves.

Run from the repository root::

    python docs/figures.py            # both figures
    python docs/figures.py network    # one of them

The output is deterministic (fixed SVG ids, no date), so a figure changes in
git only when what it shows changes.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

from qcinode.topology import Topology, builtin_topology_path, load_topology  # noqa: E402

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
MEASURED = DOCS / "data" / "keyrate-measured.csv"

#: Approximate positions (longitude, latitude in degrees) of the built-in sites, for the map only.
SITES = {"brussels": (4.352, 50.847), "antwerp": (4.402, 51.219), "ghent": (3.722, 51.054), "rotterdam": (4.479, 51.924)}

matplotlib.rcParams.update({"svg.hashsalt": "qcinode", "svg.fonttype": "none", "font.size": 10})


def _save(fig: Any, name: str) -> Path:
    path = DOCS / name
    fig.savefig(path, format="svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def _positions(topology: Topology) -> dict[str, tuple[float, float]]:
    """Known sites where they are; any other node on a circle."""
    names = [node.name for node in topology.nodes]
    if all(name in SITES for name in names):
        # Longitude shrinks with latitude: scale it so the map is not stretched.
        scale = math.cos(math.radians(51.3))
        return {name: (SITES[name][0] * scale, SITES[name][1]) for name in names}
    step = 2 * math.pi / max(1, len(names))
    return {name: (math.cos(i * step), math.sin(i * step)) for i, name in enumerate(names)}


def network_figure(topology: Topology | None = None) -> Path:
    topology = topology or load_topology(builtin_topology_path())
    where = _positions(topology)
    fig, ax = plt.subplots(figsize=(5.6, 5.6))
    for link in topology.links:
        (x0, y0), (x1, y1) = where[link.alice], where[link.bob]
        ax.annotate(
            "", xy=(x1, y1), xytext=(x0, y0),
            arrowprops={"arrowstyle": "-|>", "color": "#3b6ea5", "lw": 2, "shrinkA": 9, "shrinkB": 9, "mutation_scale": 14},
        )  # fmt: skip
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, f"{link.length_km:g} km", ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "#3b6ea5", "lw": 0.8})  # fmt: skip
    middle = sum(x for x, _ in where.values()) / len(where)
    for node in topology.nodes:
        x, y = where[node.name]
        left = x < middle - 1e-9  # labels point away from the middle, off the links
        relay_only = not node.saes
        ax.scatter([x], [y], s=260, zorder=3, color="#f2f2f2" if relay_only else "#ffd866", edgecolors="#333333", linewidths=1.2)
        label = "trusted relay, no SAE" if relay_only else "SAE " + ", ".join(node.saes)
        ax.annotate(f"{node.name}\n{label}", (x, y), xytext=(-12 if left else 12, 0), textcoords="offset points",
                    ha="right" if left else "left", va="center",
                    fontsize=9, zorder=4, linespacing=1.3)  # fmt: skip
    xs, ys = zip(*where.values())
    span = max(max(xs) - min(xs), max(ys) - min(ys))
    ax.set_xlim(min(xs) - 0.45 * span, max(xs) + 0.45 * span)
    ax.set_ylim(min(ys) - 0.1 * span, max(ys) + 0.1 * span)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(
        f"The built-in network '{topology.name}' (qcinode up)\n"
        "arrows: transmitter (Alice) → receiver (Bob) of each BB84 link",
        fontsize=10,
    )
    return _save(fig, "network.svg")


def _bench_keyrate() -> ModuleType:
    """bench/keyrate.py, whose formula columns the figure plots (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_keyrate", ROOT / "bench" / "keyrate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _measured() -> list[dict[str, str]]:
    with MEASURED.open(newline="") as rows:
        return list(csv.DictReader(rows))


def keyrate_figure() -> Path:
    bench = _bench_keyrate()
    rows = _measured()
    pz = float(rows[0]["pz"])
    block = round(sum(int(r["block_key_bits"]) for r in rows) / len(rows))
    measured_f = [float(r["f_ec"]) for r in rows if r["f_ec"]]
    f_ec = sum(measured_f) / len(measured_f) if measured_f else bench.DEFAULT_F_EC
    km = [float(x) for x in range(0, 161, 2)]
    curves = {
        f"finite-size formula, {block / 1e6:.2f}·10⁶-bit blocks, f {f_ec:.2f} (Lim et al. 2014)": [bench.finite_rate(d, pz, block, f_ec) for d in km],
        "the same formula for infinite blocks": [bench.lim_asymptotic_rate(d, pz, f_ec) for d in km],
        "textbook: infinite decoys, q = 1/2, μ optimised, f 1.22 (MQZL)": [bench.mqzl_rate(d)[1] for d in km],
        "PLOB bound, no repeater can beat it": [bench.plob_bound(bench.gys_physics(d, pz).eta) for d in km],
    }
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    for (label, values), style in zip(curves.items(), styles):
        points = [(d, v) for d, v in zip(km, values) if v > 0]
        ax.plot([d for d, _ in points], [v for _, v in points], style, lw=1.6, label=label)
    with_key = [(float(r["length_km"]), float(r["measured_bits_per_pulse"])) for r in rows if float(r["measured_bits_per_pulse"]) > 0]
    ax.plot(*zip(*with_key), "o", color="black", ms=6, label="measured: the protocol stack (bench/keyrate.py)", zorder=5)
    for r in rows:
        if float(r["measured_bits_per_pulse"]) == 0:
            ax.annotate("no key", (float(r["length_km"]), 1e-7), ha="center", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(1e-7, 1e-1)
    ax.set_xlim(0, 160)
    ax.set_xlabel("fibre length (km), GYS link: 0.21 dB/km, η_Bob 4.5 %, Y0 1.7e-6, e_det 3.3 %")
    ax.set_ylabel("secret bits per pulse")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(f"Secret key rate against distance: source μ 0.48/0.2/0, p 0.4/0.3/0.3, p_Z {pz:g}", fontsize=10)
    return _save(fig, "keyrate.svg")


def main(argv: list[str]) -> int:
    wanted = set(argv) or {"network", "keyrate"}
    unknown = wanted - {"network", "keyrate"}
    if unknown:
        print(f"figures.py: unknown figure {', '.join(sorted(unknown))} (network, keyrate)", file=sys.stderr)
        return 2
    if "network" in wanted:
        network_figure()
    if "keyrate" in wanted:
        keyrate_figure()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
