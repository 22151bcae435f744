"""The container image that deploy/build-image.sh built (in .ci/run) runs as the manifests expect."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STATUS = ROOT / "build" / "image-status"


def _image() -> str:
    if not STATUS.exists():
        pytest.skip("no image built: run deploy/build-image.sh (.ci/run does)")
    status = STATUS.read_text().strip()
    if status.startswith("unavailable"):
        print(f"SKIP: container runtime: {status}")
        pytest.skip(f"podman cannot build or run images here ({status})")
    assert status.startswith("built "), f"the image build broke: {status}"
    return status.split(" ", 1)[1]


def podman(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CONTAINERS_CONF=str(ROOT / "deploy" / "podman" / "containers.conf"))
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120, env=env, check=False)


def test_image_runs_qcinode_as_non_root_on_a_read_only_root() -> None:
    image = _image()
    print("runtime: podman")
    version = podman("run", "--rm", "--read-only", "--network", "none", image, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("qcinode ")
    identity = podman("run", "--rm", "--read-only", "--network", "none", "--entrypoint", "id", image, "-u")
    assert identity.stdout.strip() == "10001"
    # Nothing outside the data volume is writable.
    probe = podman(
        "run", "--rm", "--read-only", "--network", "none", "--entrypoint", "python3", image,
        "-c", "import pathlib; pathlib.Path('/opt/qcinode/x').write_text('x')",
    )  # fmt: skip
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr


def test_image_makes_certificates_and_renders_manifests(tmp_path: Path) -> None:
    image = _image()
    topology = ROOT / "qcinode" / "cluster" / "builtin.yaml"
    out = tmp_path / "certs"
    out.mkdir()
    result = podman(
        "run", "--rm", "--read-only", "--network", "none", "--userns", "keep-id" if os.geteuid() else "host",
        "-v", f"{topology}:/etc/qcinode/topology.yaml:ro", "-v", f"{out}:/out", "--user", "0",
        image, "certs", "--topology", "/etc/qcinode/topology.yaml", "--out", "/out",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (out / "ca.pem").exists() and (out / "nodes" / "brussels.pem").exists()
