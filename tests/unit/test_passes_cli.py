"""``qcinode passes``: the pass of Micius over Xinglong of 19 December 2016, from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qcinode.cli import main
from qcinode.core.orbit import parse_utc

MICIUS = """
name: micius
emulation: {speed: 10}
nodes:
  - {name: xinglong, location: {latitude_deg: 40.396, longitude_deg: 117.577, altitude_m: 893}}
  - name: micius
    satellite:
      tle:
        - "1 41731U 16051A   16353.90152003  .00000364  00000-0  17957-4 0  9993"
        - "2 41731  97.3699 267.4500 0013200 178.5836 246.0824 15.23915303 19063"
links:
  - between: [micius, xinglong]
    free_space: {elevation_mask_deg: 10}
"""


def test_passes_json_finds_the_pass_of_liao_et_al(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topology = tmp_path / "micius.yaml"
    topology.write_text(MICIUS)
    assert main(["passes", str(topology), "--start", "2016-12-19T12:00:00Z", "--hours", "12", "--json"]) == 0
    passes = json.loads(capsys.readouterr().out)
    assert passes and {p["link"] for p in passes} == {"micius-xinglong"}
    assert {"link", "satellite", "station", "rise_utc", "culmination_utc", "set_utc", "max_elevation_deg", "min_range_km"} <= set(passes[0])
    assert all(p["satellite"] == "micius" and p["station"] == "xinglong" for p in passes)
    closest = min(passes, key=lambda p: abs(parse_utc(p["culmination_utc"]) - parse_utc("2016-12-19T16:52:00Z")))
    assert abs(parse_utc(closest["culmination_utc"]) - parse_utc("2016-12-19T16:52:00Z")) < 120
    assert closest["max_elevation_deg"] == pytest.approx(48.0, abs=3.0)
    assert closest["min_range_km"] == pytest.approx(645.0, rel=0.03)
    assert parse_utc(closest["rise_utc"]) < parse_utc(closest["culmination_utc"]) < parse_utc(closest["set_utc"])


def test_passes_table_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topology = tmp_path / "micius.yaml"
    topology.write_text(MICIUS)
    assert main(["passes", str(topology), "--start", "2016-12-19T16:00:00Z", "--hours", "2"]) == 0
    out = capsys.readouterr().out
    assert "micius-xinglong" in out and "2016-12-19T16:48" in out
    assert main(["passes", str(topology), "--start", "yesterday"]) == 2
    assert "--start" in capsys.readouterr().err
    assert main(["passes", "--hours", "2"]) == 2  # the built-in topology has no satellite
    assert "no satellite-to-ground" in capsys.readouterr().err
