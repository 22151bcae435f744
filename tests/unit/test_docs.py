"""Every example in the docs runs: YAML topologies validate, the full example has the real defaults and makes key.

A fenced ```yaml block in README.md or docs/*.md is a whole topology unless
its first line says otherwise: ``# topology fragment`` (validated after the
missing ``name`` and ``nodes`` are filled in) or ``# not a topology`` (for
example a Kubernetes manifest; only parsed as YAML).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from qcinode.core.pair import make_pair, pump
from qcinode.core.pipeline import BlockAccepted
from qcinode.node.runtime import frame_slots, protocol_config
from qcinode.topology import EmulationConfig, RelayConfig, Topology, parse_topology

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FRAGMENT = "# topology fragment"
NOT_A_TOPOLOGY = "# not a topology"


def yaml_blocks() -> list[tuple[str, str]]:
    """(where, text) of every fenced yaml block of the docs."""
    out = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"^```yaml\n(.*?)^```", text, re.S | re.M):
            line = text[: match.start()].count("\n") + 1
            out.append((f"{path.relative_to(ROOT)}:{line}", match.group(1)))
    return out


def complete(fragment: str) -> str:
    """A fragment with a name and every node its links name."""
    data = yaml.safe_load(fragment) or {}
    data.setdefault("name", "fragment")
    if "nodes" not in data:
        names = sorted({name for link in data.get("links") or [] for name in link.get("between", [])}) or ["a"]
        data["nodes"] = [{"name": name} for name in names]
    return yaml.safe_dump(data, sort_keys=False)


BLOCKS = yaml_blocks()


def test_the_docs_have_yaml_examples() -> None:
    whole = [where for where, text in BLOCKS if not text.startswith("#")]
    assert len(whole) >= 2, BLOCKS


@pytest.mark.parametrize(("where", "text"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_every_yaml_example_validates(where: str, text: str) -> None:
    if text.startswith(NOT_A_TOPOLOGY):
        yaml.safe_load(text)
    elif text.startswith(FRAGMENT):
        parse_topology(complete(text), where)
    else:
        assert not text.startswith("#"), f"{where}: a comment first line must be {FRAGMENT!r} or {NOT_A_TOPOLOGY!r}"
        parse_topology(text, where)


def full_example_text() -> str:
    text = (ROOT / "docs" / "topology.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(.*?)```", text[text.index("## A full example") :], re.S)
    assert block is not None, "docs/topology.md has no full example"
    return block.group(1)


def full_example() -> Topology:
    return parse_topology(full_example_text(), "docs/topology.md (full example)")


def test_the_full_example_shows_the_real_defaults() -> None:
    example = full_example()
    bare = parse_topology("name: x\nnodes: [{name: a}, {name: b}]\nlinks: [{between: [a, b], length_km: 40}]\n")
    # Its first link overrides nothing: every setting it inherits is written in `defaults`.
    first, default = example.links[0], bare.links[0]
    for section in ("source", "fibre", "detector", "postprocessing"):
        assert getattr(first, section) == getattr(default, section), section
    assert example.emulation == EmulationConfig() and example.relay == RelayConfig()
    written = yaml.safe_load(full_example_text())
    assert set(written["defaults"]) == {"source", "fibre", "detector", "postprocessing"}
    assert set(written["defaults"]["source"]) == {f for f in first.source.__dataclass_fields__ if not f.startswith("_")}


@pytest.mark.slow
@pytest.mark.parametrize("index", range(3))
def test_every_link_of_the_full_example_makes_key(index: int) -> None:
    link = full_example().links[index]
    config = protocol_config(link)
    alice, bob = make_pair(config, np.random.default_rng(index).bytes(65536), seed=100 + index)
    result = pump(alice, bob, frame_slots=frame_slots(config, link.source.rate_hz, None), blocks=1)
    (event,) = result.alice_events
    assert isinstance(event, BlockAccepted), f"{link.link_id}: {getattr(event, 'reason', event)}"
    assert len(event.key) > 0
    (bob_event,) = result.bob_events
    assert isinstance(bob_event, BlockAccepted) and bob_event.key == event.key


def test_ci_runs_the_readme_commands() -> None:
    """.ci/run installs with the README's first command (without its `&& ... qcinode up`) and tests with its second."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Two commands.*?```sh\n(.*?)```", readme, re.S)
    assert block is not None
    install, test = (line.split("  #")[0].strip() for line in block.group(1).strip().splitlines())
    install_part = install.rsplit(" && ", 1)[0]
    assert install.endswith("qcinode up") and install_part.startswith("python3 -m venv .venv && ")
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install_part in ci and test in ci
    assert ci.index(install_part) < ci.index(test)


# Pointers outside the repository: design notes, physics notes and style notes
# that only the developers had, and issue numbers. Built from pieces so this
# file does not match itself.
OUTSIDE = re.compile("|".join([r"DESIGN\.md", r"PHYSICS\.md", r"STYLE\.md", r"\.\./" + "shared", "issue" + r" [0-9]"]))
SKIP_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".hypothesis", ".pytest_cache", ".mypy_cache", ".qcinode"}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".proto", ".sh", ".json", ".txt", ".csv", ".pyi", ".svg", ""}


def repository_files() -> list[Path]:
    out = []
    for path in ROOT.rglob("*"):
        parts = set(path.relative_to(ROOT).parts)
        if path.is_file() and not parts & SKIP_DIRS and not any(p.endswith(".egg-info") for p in parts) and path.suffix in TEXT_SUFFIXES:
            out.append(path)
    return out


def test_nothing_in_the_repository_points_outside_it() -> None:
    offenders = []
    for path in repository_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def test_links_between_the_docs_resolve() -> None:
    broken = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
                continue
            if anchor and linked.suffix == ".md":
                headings = {_slug(h) for h in re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)}
                if anchor not in headings:
                    broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


def test_the_readme_reads_in_five_minutes() -> None:
    # What it is, the two commands, a picture, the demos, troubleshooting; the rest lives in docs/.
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert re.search(r"!\[[^\]]+\]\(docs/[^)]+\.(png|svg)\)", text)
