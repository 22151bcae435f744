"""The topology model: parsing, merging, round-trips and every rejection."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from qcinode.errors import ConfigError
from qcinode.topology import (
    EAVESDROPPER_ATTACKS,
    DetectorConfig,
    EavesdropperConfig,
    EmulationConfig,
    LinkConfig,
    SourceConfig,
    Topology,
    builtin_topology_path,
    load_topology,
    parse_topology,
    topology_to_mapping,
)

# A topology in the style of the contract (docs/design.md §2): an 80 % signal source, every section.
DESIGN_EXAMPLE = """\
name: demo
defaults:                       # any link setting, applied to every link
  source: {rate_hz: 1.0e9, intensities: {signal: 0.5, decoy: 0.1, vacuum: 0.0},
           probabilities: {signal: 0.8, decoy: 0.1, vacuum: 0.1}}
  fibre: {attenuation_db_per_km: 0.2}
  detector: {efficiency: 0.1,               # η_Bob: Bob's optics × detector efficiency
             dark_count_probability: 1.0e-6, # Y0: background click probability per pulse slot
             misalignment_error: 0.01}       # e_detector: a photon hits the wrong detector
  postprocessing: {block_bits: 100000, security_epsilon: 1.0e-10}
emulation: {speed: 1.0}         # emulated seconds per wall second; "max" = as fast as the CPU allows
nodes:
  - name: alpha
    saes: [alpha-app]           # SAE IDs attached to this node's KME
  - name: beta
  - name: gamma
    saes: [gamma-app]
links:
  - between: [alpha, beta]      # first is the transmitter (Alice)
    length_km: 40
  - between: [beta, gamma]
    length_km: 60
    detector: {efficiency: 0.2} # per-link override of any default
    eavesdropper: {attack: intercept-resend, fraction: 0.3}
"""


def base_mapping() -> dict[str, Any]:
    """The DESIGN example as plain data, for tests that change one thing."""
    return {
        "name": "demo",
        "defaults": {
            "source": {
                "rate_hz": 1.0e9,
                "intensities": {"signal": 0.5, "decoy": 0.1, "vacuum": 0.0},
                "probabilities": {"signal": 0.8, "decoy": 0.1, "vacuum": 0.1},
            },
            "fibre": {"attenuation_db_per_km": 0.2},
            "detector": {
                "efficiency": 0.1,
                "dark_count_probability": 1.0e-6,
                "misalignment_error": 0.01,
            },
            "postprocessing": {"block_bits": 100000, "security_epsilon": 1.0e-10},
        },
        "emulation": {"speed": 1.0},
        "nodes": [
            {"name": "alpha", "saes": ["alpha-app"]},
            {"name": "beta"},
            {"name": "gamma", "saes": ["gamma-app"]},
        ],
        "links": [
            {"between": ["alpha", "beta"], "length_km": 40},
            {
                "between": ["beta", "gamma"],
                "length_km": 60,
                "detector": {"efficiency": 0.2},
                "eavesdropper": {"attack": "intercept-resend", "fraction": 0.3},
            },
        ],
    }


def parse_mapping(data: dict[str, Any]) -> Topology:
    return parse_topology(yaml.safe_dump(data), "test.yaml")


# --------------------------------------------------------------------------
# The DESIGN example


def test_design_example_parses_with_merged_values() -> None:
    topo = parse_topology(DESIGN_EXAMPLE, "demo.yaml")

    assert topo.name == "demo"
    assert [n.name for n in topo.nodes] == ["alpha", "beta", "gamma"]
    assert topo.node("alpha").saes == ("alpha-app",)
    assert topo.node("beta").saes == ()
    assert topo.emulation == EmulationConfig(speed=1.0)
    assert not topo.emulation.is_max

    # YAML 1.1 would read "1.0e9" as a string; the loader reads a float.
    assert topo.defaults.source.rate_hz == 1.0e9
    assert topo.defaults.detector.dark_count_probability == 1.0e-6

    first, second = topo.links
    assert first.between == ("alpha", "beta")
    assert (first.alice, first.bob, first.link_id) == ("alpha", "beta", "alpha-beta")
    assert first.length_km == 40.0 and isinstance(first.length_km, float)
    assert first.detector == topo.defaults.detector
    assert first.source == topo.defaults.source
    assert first.eavesdropper is None
    assert first.fibre_transmittance == pytest.approx(10 ** (-0.8))

    # The override replaces one field and keeps the other defaults.
    assert second.detector.efficiency == 0.2
    assert second.detector.dark_count_probability == 1.0e-6
    assert second.detector.misalignment_error == 0.01
    assert second.postprocessing == topo.defaults.postprocessing
    assert second.eavesdropper == EavesdropperConfig(attack="intercept-resend", fraction=0.3)

    # Fields the example leaves out take their documented defaults.
    source = topo.defaults.source
    assert (source.basis_probabilities.z, source.basis_probabilities.x) == (0.6, 0.4)
    assert source.decoy_states is True
    assert topo.defaults.postprocessing.verification_tag_bits == 64
    assert topo.defaults.postprocessing.cascade_max_passes == 6


def test_queries() -> None:
    topo = parse_topology(DESIGN_EXAMPLE)
    assert [link.link_id for link in topo.links_of("beta")] == ["alpha-beta", "beta-gamma"]
    assert topo.neighbours("beta") == ("alpha", "gamma")
    assert topo.neighbours("alpha") == ("beta",)
    assert topo.sae_node("gamma-app").name == "gamma"
    assert topo.has_node("gamma") and not topo.has_node("delta")
    assert topo.has_sae("alpha-app") and not topo.has_sae("beta-app")
    with pytest.raises(ConfigError, match="unknown node 'gama'; did you mean 'gamma'"):
        topo.node("gama")
    with pytest.raises(ConfigError, match="unknown SAE ID 'nobody'"):
        topo.sae_node("nobody")


def test_deep_merge_reaches_nested_source_fields() -> None:
    data = base_mapping()
    data["links"][0]["source"] = {"intensities": {"decoy": 0.2}, "rate_hz": 5e8}
    link = parse_mapping(data).links[0]
    assert link.source.intensities.decoy == 0.2
    assert link.source.intensities.signal == 0.5
    assert link.source.rate_hz == 5e8
    assert link.source.probabilities.signal == 0.8


def test_empty_sections_mean_defaults() -> None:
    topo = parse_topology("name: solo\ndefaults:\nemulation:\nnodes:\n  - name: only\nlinks:\n")
    assert topo.links == ()
    assert topo.defaults.detector == DetectorConfig()
    assert topo.emulation.speed == 1.0


def test_speed_max() -> None:
    data = base_mapping()
    data["emulation"]["speed"] = "max"
    assert parse_mapping(data).emulation.is_max


def test_no_decoy_source() -> None:
    data = base_mapping()
    data["links"][0]["source"] = {
        "decoy_states": False,
        "intensities": {"signal": 0.01},  # below decoy: allowed when decoys are off
        "probabilities": {"signal": 1.0, "decoy": 0.0, "vacuum": 0.0},
    }
    source = parse_mapping(data).links[0].source
    assert source.decoy_states is False
    assert source.intensities.signal == 0.01
    assert source.no_decoy_bound == "gllp"  # the secure bound unless asked otherwise


def test_no_decoy_bound_round_trips() -> None:
    data = base_mapping()
    data["links"][0]["source"] = {
        "decoy_states": False,
        "no_decoy_bound": "single-photon",
        "intensities": {"signal": 0.48},
        "probabilities": {"signal": 1.0, "decoy": 0.0, "vacuum": 0.0},
    }
    topo = parse_mapping(data)
    assert topo.links[0].source.no_decoy_bound == "single-photon"
    assert topo.links[1].source.no_decoy_bound == "gllp"
    mapping = topology_to_mapping(topo)
    assert mapping["links"][0]["source"]["no_decoy_bound"] == "single-photon"
    assert mapping["links"][1]["source"]["no_decoy_bound"] == "gllp"  # written out explicitly
    assert parse_topology(yaml.safe_dump(mapping)) == topo


def test_integral_float_block_bits_is_an_int() -> None:
    data = base_mapping()
    data["defaults"]["postprocessing"]["block_bits"] = 1e5
    block_bits = parse_mapping(data).defaults.postprocessing.block_bits
    assert block_bits == 100_000 and isinstance(block_bits, int)


# --------------------------------------------------------------------------
# Built-in topology, files, round-trips


def test_builtin_topology_loads() -> None:
    path = builtin_topology_path()
    assert path.is_file()
    topo = load_topology(path)
    assert 4 <= len(topo.nodes) <= 5
    assert all(0 < link.length_km <= 100 for link in topo.links)
    assert topo.emulation.speed == 1.0
    assert len([sae for node in topo.nodes for sae in node.saes]) >= 3
    # Connected: every node reachable from the first.
    seen, todo = set(), [topo.nodes[0].name]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(topo.neighbours(name))
    assert seen == {node.name for node in topo.nodes}
    # Plain PyYAML (YAML 1.1) reads the file the same way, so tools that
    # rewrite it with yaml.safe_load/safe_dump keep its numbers as numbers.
    plain = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert parse_topology(yaml.safe_dump(plain)) == topo


@pytest.mark.parametrize(
    "text", [DESIGN_EXAMPLE, builtin_topology_path().read_text()], ids=["design", "builtin"]
)
def test_round_trip(text: str) -> None:
    topo = parse_topology(text)
    mapping = topology_to_mapping(topo)
    assert parse_topology(yaml.safe_dump(mapping)) == topo
    # JSON is YAML, and the mapping is plain data.
    assert parse_topology(json.dumps(mapping)) == topo
    assert topology_to_mapping(parse_topology(yaml.safe_dump(mapping))) == mapping


def test_round_trip_is_fully_merged() -> None:
    mapping = topology_to_mapping(parse_topology(DESIGN_EXAMPLE))
    link = mapping["links"][1]
    assert link["detector"] == {
        "efficiency": 0.2,
        "dark_count_probability": 1.0e-6,
        "misalignment_error": 0.01,
    }
    assert link["source"]["basis_probabilities"] == {"z": 0.6, "x": 0.4}
    assert "eavesdropper" not in mapping["links"][0]
    assert mapping["nodes"][1] == {"name": "beta", "saes": []}


def test_examples_in_the_docs_parse() -> None:
    docs = pathlib.Path(__file__).parents[2] / "docs" / "topology.md"
    blocks = re.findall(r"```yaml\n(.*?)```", docs.read_text(encoding="utf-8"), re.S)
    files = [block for block in blocks if block.startswith("name:")]
    assert len(files) >= 2
    for block in files:
        topo = parse_topology(block, "docs/topology.md")
        assert parse_topology(yaml.safe_dump(topology_to_mapping(topo))) == topo


def test_load_topology_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "demo.yaml"
    path.write_text(DESIGN_EXAMPLE, encoding="utf-8")
    assert load_topology(path) == parse_topology(DESIGN_EXAMPLE)
    assert load_topology(str(path)).name == "demo"


def test_missing_file_names_it(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_topology(path)


def test_yaml_syntax_error_names_file_and_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_topology("name: demo\nnodes: [{name: a}\n", "broken.yaml")
    message = str(info.value)
    assert message.startswith("broken.yaml: invalid YAML")
    assert 'in "broken.yaml", line' in message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", ""])
def test_non_mapping_document(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^doc\.yaml: a topology file must be a YAML mapping"):
        parse_topology(text, "doc.yaml")


def test_duplicate_yaml_key() -> None:
    with pytest.raises(ConfigError, match="duplicate key 'length_km'"):
        parse_topology(
            "name: d\nnodes: [{name: a}, {name: b}]\n"
            "links:\n  - between: [a, b]\n    length_km: 1\n    length_km: 2\n",
            "dup.yaml",
        )


def test_field_errors_name_the_source_file() -> None:
    data = base_mapping()
    data["links"][0]["length_km"] = -1
    with pytest.raises(ConfigError, match=r"^test\.yaml: links\[0\]\.length_km: "):
        parse_mapping(data)


# --------------------------------------------------------------------------
# Rejections: each names the exact field path


Mutation = Callable[[dict[str, Any]], None]


def _set(*keys: str | int, value: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for key in keys[:-1]:
            if isinstance(key, str) and key not in target:
                target[key] = {}
            target = target[key]
        target[keys[-1]] = value

    return mutate


def _delete(*keys: str | int) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return mutate


def _append(key: str, item: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data[key].append(item)

    return mutate


REJECTIONS: list[tuple[str, Mutation, str, str]] = [
    # (id, mutation,
    #  exact field path, another fragment of the message)
    ("unknown-top-key", _set("nodez", value=[]),
     "nodez", "did you mean 'nodes'?"),
    ("kme-max-connections-zero", _set("kme", value={"max_connections": 0}),
     "kme.max_connections", "1"),
    ("kme-max-connections-real", _set("kme", value={"max_connections": 2.5}),
     "kme.max_connections", "integer"),
    ("unknown-link-key", _set("links", 1, "detector", "efficency", value=0.2),
     "links[1].detector.efficency", "did you mean 'efficiency'?"),
    ("unknown-defaults-key", _set("defaults", "fiber", value={}),
     "defaults.fiber", "did you mean 'fibre'?"),
    ("eavesdropper-in-defaults", _set("defaults", "eavesdropper", value={"attack": "none"}),
     "defaults.eavesdropper", "set per link"),
    ("unknown-source-key", _set("defaults", "source", "intensities", "signl", value=0.4),
     "defaults.source.intensities.signl", "did you mean 'signal'?"),
    ("unknown-node-key", _set("nodes", 0, "sae", value=["x"]),
     "nodes[0].sae", "did you mean 'saes'?"),
    ("unknown-finite-key", _set("links", 0, "postprocessing", "finite_key", value="lim2015"),
     "links[0].postprocessing.finite_key", "did you mean 'lim2014'?"),
    ("unknown-error-correction", _set("defaults", "postprocessing", "error_correction", value="cascad"),
     "defaults.postprocessing.error_correction", "did you mean 'cascade'?"),
    ("unknown-ldpc-profile", _set("defaults", "postprocessing", "ldpc_profile", value="fastest"),
     "defaults.postprocessing.ldpc_profile", "did you mean 'fast'?"),
    ("negative-length", _set("links", 0, "length_km", value=-5),
     "links[0].length_km", ">= 0"),
    ("length-not-number", _set("links", 0, "length_km", value="40 km"),
     "links[0].length_km", "must be a number"),
    ("missing-length", _delete("links", 0, "length_km"),
     "links[0].length_km", "required"),
    ("missing-between", _delete("links", 0, "between"),
     "links[0].between", "required"),
    ("missing-name", _delete("name"),
     "name", "required"),
    ("no-nodes", _set("nodes", value=[]),
     "nodes", "at least one node"),
    ("probabilities-sum-defaults", _set("defaults", "source", "probabilities", "vacuum", value=0.2),
     "defaults.source.probabilities", "sum to 1"),
    ("probabilities-sum-link", _set("links", 1, "source", "probabilities", value={"signal": 0.7}),
     "links[1].source.probabilities", "sum to 1"),
    ("probability-negative", _set("links", 0, "source", "probabilities", "decoy", value=-0.1),
     "links[0].source.probabilities.decoy", "[0, 1]"),
    ("basis-sum", _set("links", 0, "source", "basis_probabilities", value={"z": 0.9}),
     "links[0].source.basis_probabilities", "sum to 1"),
    ("basis-zero", _set("links", 0, "source", "basis_probabilities", value={"z": 1.0, "x": 0.0}),
     "links[0].source.basis_probabilities.z", "(0, 1)"),
    ("intensities-order-decoy", _set("links", 0, "source", "intensities", "decoy", value=0.6),
     "links[0].source.intensities", "signal > decoy + vacuum"),
    ("intensities-order-vacuum",
     _set("defaults", "source", "intensities", value={"decoy": 0.1, "vacuum": 0.2}),
     "defaults.source.intensities", "decoy > vacuum"),
    ("intensity-negative", _set("links", 0, "source", "intensities", "vacuum", value=-0.01),
     "links[0].source.intensities.vacuum", ">= 0"),
    ("decoys-off-with-decoy-pulses", _set("links", 0, "source", "decoy_states", value=False),
     "links[0].source.probabilities", "decoy_states: false"),
    ("decoys-on-without-vacuum",
     _set("links", 0, "source", "probabilities", value={"signal": 0.9, "decoy": 0.1, "vacuum": 0.0}),
     "links[0].source.probabilities", "must be > 0"),
    ("decoy-states-not-bool", _set("links", 0, "source", "decoy_states", value="sometimes"),
     "links[0].source.decoy_states", "true or false"),
    ("no-decoy-bound-unknown", _set("links", 0, "source", "no_decoy_bound", value="glp"),
     "links[0].source.no_decoy_bound", "did you mean 'gllp'?"),
    ("no-decoy-bound-not-string", _set("links", 0, "source", "no_decoy_bound", value=True),
     "links[0].source.no_decoy_bound", "quote it"),
    ("single-photon-with-decoys", _set("links", 0, "source", "no_decoy_bound", value="single-photon"),
     "links[0].source.no_decoy_bound", "only to a link without decoy states"),
    ("single-photon-with-decoys-defaults",
     _set("defaults", "source", "no_decoy_bound", value="single-photon"),
     "defaults.source.no_decoy_bound", "decoy_states: false"),
    ("rate-zero", _set("defaults", "source", "rate_hz", value=0),
     "defaults.source.rate_hz", "> 0"),
    ("rate-string", _set("defaults", "source", "rate_hz", value="fast"),
     "defaults.source.rate_hz", "must be a number"),
    ("defaults-efficiency", _set("defaults", "detector", "efficiency", value=1.5),
     "defaults.detector.efficiency", "(0, 1]"),
    ("link-efficiency", _set("links", 1, "detector", "efficiency", value=0.0),
     "links[1].detector.efficiency", "(0, 1]"),
    ("dark-count", _set("links", 1, "detector", "dark_count_probability", value=1.0),
     "links[1].detector.dark_count_probability", "[0, 1)"),
    ("misalignment", _set("links", 0, "detector", "misalignment_error", value=0.5),
     "links[0].detector.misalignment_error", "[0, 0.5)"),
    ("attenuation", _set("links", 0, "fibre", "attenuation_db_per_km", value=-0.2),
     "links[0].fibre.attenuation_db_per_km", ">= 0"),
    ("section-not-mapping", _set("links", 0, "detector", value=0.2),
     "links[0].detector", "must be a mapping"),
    ("block-bits-small", _set("links", 0, "postprocessing", "block_bits", value=999),
     "links[0].postprocessing.block_bits", "[1000, 10000000]"),
    ("block-bits-fraction", _set("links", 0, "postprocessing", "block_bits", value=1500.5),
     "links[0].postprocessing.block_bits", "integer"),
    ("epsilon", _set("defaults", "postprocessing", "security_epsilon", value=0.01),
     "defaults.postprocessing.security_epsilon", "(0, 0.001]"),
    ("tag-bits", _set("defaults", "postprocessing", "verification_tag_bits", value=16),
     "defaults.postprocessing.verification_tag_bits", "[32, 256]"),
    ("cascade-passes", _set("defaults", "postprocessing", "cascade_max_passes", value=0),
     "defaults.postprocessing.cascade_max_passes", "[1, 64]"),
    ("cascade-lookahead", _set("links", 0, "postprocessing", "cascade_lookahead", value=9),
     "links[0].postprocessing.cascade_lookahead", "[1, 8]"),
    ("unknown-node", _set("links", 1, "between", value=["beta", "gama"]),
     "links[1].between[1]", "unknown node 'gama'; did you mean 'gamma'?"),
    ("between-one-node", _set("links", 0, "between", value=["alpha"]),
     "links[0].between", "two node names"),
    ("between-string", _set("links", 0, "between", value="alpha-beta"),
     "links[0].between", "must be a list"),
    ("self-link", _set("links", 0, "between", value=["alpha", "alpha"]),
     "links[0].between", "two different nodes"),
    ("duplicate-link-reversed", _append("links", {"between": ["gamma", "beta"], "length_km": 10}),
     "links[2].between", "duplicate link"),
    ("duplicate-node", _append("nodes", {"name": "beta"}),
     "nodes[3].name", "duplicate node name 'beta'"),
    ("duplicate-sae", _set("nodes", 1, "saes", value=["gamma-app"]),
     "nodes[2].saes[0]", "duplicate SAE ID 'gamma-app'"),
    ("duplicate-sae-same-node", _set("nodes", 0, "saes", value=["a", "a"]),
     "nodes[0].saes[1]", "duplicate SAE ID"),
    ("bad-node-name", _set("nodes", 0, "name", value="Alpha"),
     "nodes[0].name", "DNS-1123"),
    ("node-name-bool", _set("nodes", 0, "name", value=False),
     "nodes[0].name", "quote it"),
    ("bad-sae-id", _set("nodes", 0, "saes", value=["-app"]),
     "nodes[0].saes[0]", "not a valid SAE ID"),
    ("bad-topology-name", _set("name", value="Demo Net"),
     "name", "DNS-1123"),
    ("speed-zero", _set("emulation", "speed", value=0),
     "emulation.speed", "> 0"),
    ("speed-negative", _set("emulation", "speed", value=-2.0),
     "emulation.speed", "> 0"),
    ("speed-word", _set("emulation", "speed", value="fast"),
     "emulation.speed", '"max"'),
    ("speed-bool", _set("emulation", "speed", value=True),
     "emulation.speed", '"max"'),
    ("speed-inf", _set("emulation", "speed", value=math.inf),
     "emulation.speed", "> 0"),
    ("bad-attack", _set("links", 1, "eavesdropper", "attack", value="intercept_resend"),
     "links[1].eavesdropper.attack", "did you mean 'intercept-resend'?"),
    ("missing-attack", _set("links", 1, "eavesdropper", value={"fraction": 0.5}),
     "links[1].eavesdropper.attack", "required"),
    ("bad-fraction", _set("links", 1, "eavesdropper", "fraction", value=1.5),
     "links[1].eavesdropper.fraction", "[0, 1]"),
]


@pytest.mark.parametrize(
    ("mutate", "field_path", "fragment"),
    [pytest.param(m, p, f, id=i) for i, m, p, f in REJECTIONS],
)
def test_rejection_names_the_field(mutate: Mutation, field_path: str, fragment: str) -> None:
    data = base_mapping()
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse_mapping(data)
    message = str(info.value)
    assert f"test.yaml: {field_path}: " in message
    assert fragment in message


def test_unknown_key_lists_allowed_keys() -> None:
    data = base_mapping()
    data["links"][0]["lenght_km"] = 40
    with pytest.raises(ConfigError) as info:
        parse_mapping(data)
    message = str(info.value)
    assert "links[0].lenght_km: unknown field; did you mean 'length_km'?" in message
    assert "allowed here: between, length_km" in message


def test_ambiguous_link_ids_rejected() -> None:
    text = """\
name: ids
nodes: [{name: a-b}, {name: c}, {name: a}, {name: b-c}]
links:
  - {between: [a-b, c], length_km: 1}
  - {between: [a, b-c], length_km: 1}
"""
    with pytest.raises(ConfigError, match=r"links\[1\]\.between: link ID 'a-b-c' is ambiguous"):
        parse_topology(text)


def test_attack_set_is_one_constant() -> None:
    for attack in EAVESDROPPER_ATTACKS:
        assert EavesdropperConfig(attack=attack).attack == attack


def test_direct_construction_validates() -> None:
    with pytest.raises(ConfigError, match=r"^efficiency: must be in \(0, 1\], got 2\.0"):
        DetectorConfig(efficiency=2)
    with pytest.raises(ConfigError, match="^length_km: "):
        LinkConfig(between=("a", "b"), length_km=-1)
    with pytest.raises(ConfigError, match="^intensities: "):
        SourceConfig(intensities=dataclasses.replace(SourceConfig().intensities, decoy=0.5))
    assert DetectorConfig(efficiency=1).efficiency == 1.0
    assert isinstance(DetectorConfig(efficiency=1).efficiency, float)


# --------------------------------------------------------------------------
# Properties


@settings(max_examples=50, deadline=None)
@given(
    efficiency=st.floats(min_value=1e-6, max_value=1.0),
    length_km=st.floats(min_value=0.0, max_value=500.0),
    signal=st.floats(min_value=0.3, max_value=1.0),
    decoy=st.floats(min_value=0.01, max_value=0.15),
    p_decoy=st.floats(min_value=0.01, max_value=0.3),
    p_vacuum=st.floats(min_value=0.01, max_value=0.3),
    attack=st.sampled_from(EAVESDROPPER_ATTACKS),
)
def test_valid_overrides_round_trip(
    efficiency: float,
    length_km: float,
    signal: float,
    decoy: float,
    p_decoy: float,
    p_vacuum: float,
    attack: str,
) -> None:
    data = base_mapping()
    link = data["links"][0]
    link["length_km"] = length_km
    link["detector"] = {"efficiency": efficiency}
    link["source"] = {
        "intensities": {"signal": signal, "decoy": decoy, "vacuum": 0.0},
        "probabilities": {"signal": 1.0 - p_decoy - p_vacuum, "decoy": p_decoy, "vacuum": p_vacuum},
    }
    link["eavesdropper"] = {"attack": attack}
    topo = parse_mapping(data)
    merged = topo.links[0]
    assert merged.detector.efficiency == efficiency
    assert merged.detector.dark_count_probability == 1.0e-6
    assert merged.length_km == length_km
    assert parse_topology(yaml.safe_dump(topology_to_mapping(topo))) == topo


@settings(max_examples=50, deadline=None)
@given(
    st.one_of(
        st.floats(max_value=0.0), st.floats(min_value=1.0, exclude_min=True), st.just(math.nan)
    )
)
def test_out_of_range_efficiency_rejected_at_its_path(efficiency: float) -> None:
    data = base_mapping()
    data["links"][1]["detector"]["efficiency"] = efficiency
    with pytest.raises(ConfigError, match=r"links\[1\]\.detector\.efficiency: "):
        Topology.from_mapping(data)


def test_link_fault_is_parsed_validated_and_round_tripped() -> None:
    from qcinode.topology import FaultConfig, parse_topology, topology_to_mapping

    text = """
name: f
nodes: [{name: a}, {name: b}]
links:
  - {between: [a, b], length_km: 10, fault: {kind: delay, delay_ms: 25, channel: postprocessing}}
"""
    topology = parse_topology(text)
    assert topology.links[0].fault == FaultConfig(kind="delay", delay_ms=25.0, channel="postprocessing")
    assert parse_topology(yaml.safe_dump(topology_to_mapping(topology))) == topology
    for fault, message in [
        ("{kind: flp}", "links[0].fault.kind: unknown fault 'flp'; did you mean 'flip'?"),
        ("{kind: delay}", "links[0].fault.delay_ms: a delay fault needs delay_ms > 0"),
        ("{kind: drop, probability: 2}", "links[0].fault.probability"),
        ("{probability: 0.5}", "links[0].fault.kind: required field is missing"),
        ("{kind: drop, channel: quantum}", "links[0].fault.channel: unknown channel 'quantum'"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_topology(text.replace("{kind: delay, delay_ms: 25, channel: postprocessing}", fault))
    with pytest.raises(ConfigError, match=re.escape("defaults.fault: unknown field; it is set per link")):
        parse_topology(text + "defaults: {fault: {kind: drop}}\n")


def test_relay_key_ttl_default_validation_and_round_trip() -> None:
    from qcinode.topology import parse_topology, topology_to_mapping

    text = """
name: r
nodes: [{name: a}, {name: b}]
links: [{between: [a, b], length_km: 10}]
"""
    assert parse_topology(text).relay.key_ttl_s == 86_400.0
    topology = parse_topology(text + "relay: {key_ttl_s: 30}\n")
    assert topology.relay.key_ttl_s == 30.0
    assert parse_topology(yaml.safe_dump(topology_to_mapping(topology))) == topology
    with pytest.raises(ConfigError, match=re.escape("relay.key_ttl_s")):
        parse_topology(text + "relay: {key_ttl_s: 0.5}\n")


def test_link_by_id_names_the_links_when_unknown() -> None:
    from qcinode.topology import parse_topology

    topology = parse_topology("""
name: l
nodes: [{name: a}, {name: b}, {name: c}]
links: [{between: [a, b], length_km: 10}, {between: [c, b], length_km: 5}]
""")
    assert topology.link("c-b").length_km == 5.0
    with pytest.raises(ConfigError, match=re.escape("no link 'b-c' (links: a-b, c-b)")):
        topology.link("b-c")


def test_cluster_ports_are_distinct() -> None:
    """The launcher picks every gRPC, KME and metrics port of a cluster at once: no two may collide."""
    from qcinode.cluster.launcher import free_ports

    for _ in range(50):
        ports = free_ports(3 * 8)
        assert len(set(ports)) == len(ports)


# --------------------------------------------------------------------------
# Finite-key analysis and reconciliation method


def test_finite_key_and_error_correction_default_and_round_trip() -> None:
    topo = parse_topology(DESIGN_EXAMPLE)
    pp = topo.defaults.postprocessing
    assert (pp.finite_key, pp.error_correction) == ("chernoff", "cascade")
    data = yaml.safe_load(DESIGN_EXAMPLE)
    assert pp.ldpc_profile == "efficient"
    data["defaults"]["postprocessing"] = {"finite_key": "yin2020", "error_correction": "ldpc", "ldpc_profile": "fast"}
    link = parse_mapping(data).links[0]
    assert (link.postprocessing.finite_key, link.postprocessing.error_correction) == ("yin2020", "ldpc")
    from qcinode.node.runtime import protocol_config

    config = protocol_config(link)
    assert (config.finite_key, config.error_correction, config.ldpc_profile) == ("yin2020", "ldpc", "fast")


def test_ldpc_without_the_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import qcinode.topology as topology_module

    monkeypatch.setattr(topology_module, "ldpc_available", lambda: False)
    data = yaml.safe_load(DESIGN_EXAMPLE)
    data["links"][0]["postprocessing"] = {"error_correction": "ldpc"}
    with pytest.raises(ConfigError, match=r"links\[0\]\.postprocessing\.error_correction: .*qcinode\[ldpc\]"):
        parse_mapping(data)


def test_a_preloaded_topology_is_reused_only_for_the_same_file_and_text(tmp_path: pathlib.Path) -> None:
    from qcinode.topology import load_topology, preload_topology
    from tests.support.topologies import TWO_NODES

    path = tmp_path / "topology.yaml"
    path.write_text(TWO_NODES)
    try:
        assert preload_topology(path)
        first, again = load_topology(path), load_topology(path)
        assert first.nodes is again.nodes, "the kept parse, not a new one"
        copy = tmp_path / "copy.yaml"
        copy.write_text(TWO_NODES)
        assert load_topology(copy).nodes is not first.nodes, "another file is parsed afresh"
        path.write_text(TWO_NODES.replace("length_km: 20", "length_km: 30"))
        edited = load_topology(path)
        assert edited.nodes is not first.nodes and edited.links[0].length_km == 30, "an edited file is parsed afresh"
        path.write_text("name: [")
        assert not preload_topology(path), "a broken file is not kept"
        with pytest.raises(ConfigError, match="invalid YAML"):
            load_topology(path)
    finally:
        preload_topology(tmp_path / "missing.yaml")  # clears what was kept
