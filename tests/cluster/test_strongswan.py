"""A real consumer: strongSwan IKEv2 with RFC 8784 post-quantum preshared keys fetched from qcinode over SKIP.

Two network namespaces joined by a veth pair, one charon daemon in each
(its own strongswan.conf, vici socket and /run), the PPK of each side
fetched by examples/strongswan/ppk.py from its own node. The IKE SA must come
up with the PPK mixed in, and must not come up when one side holds another
PPK. Needs root, ``ip`` and Debian's strongswan-charon and
strongswan-swanctl; skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

CHARON = Path("/usr/lib/ipsec/charon")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "strongswan" / "ppk.py"
ADDRESSES = {"a": "10.231.0.1", "b": "10.231.0.2"}  # inside our own namespaces only


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, IKE on port 500)"
    for tool in ("ip", "swanctl", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iproute2 strongswan-swanctl strongswan-charon)"
    if not CHARON.exists():
        return "strongSwan's charon is not installed (apt-get install strongswan-charon strongswan-swanctl)"
    probe = subprocess.run(["ip", "netns", "add", f"qci-probe-{os.getpid()}"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"network namespaces are not available here: {probe.stderr.strip()[:200]}"
    subprocess.run(["ip", "netns", "del", f"qci-probe-{os.getpid()}"], check=False)
    return None


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=60)


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("qcinode_strongswan_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STRONGSWAN_CONF = """charon {{
  load_modular = yes
  install_routes = no
  plugins {{
    include /etc/strongswan.d/charon/*.conf
    vici {{
      socket = unix://{vici}
    }}
  }}
}}
"""

SWANCTL_CONF = """connections {{
  qkd {{
    version = 2
    local_addrs = {me}
    remote_addrs = {peer}
    ppk_id = {ppk_id}
    ppk_required = yes
    local {{
      auth = psk
      id = {my_id}
    }}
    remote {{
      auth = psk
      id = {peer_id}
    }}
    children {{
      host {{
        local_ts = {me}/32
        remote_ts = {peer}/32
        mode = transport
      }}
    }}
  }}
}}
secrets {{
  ike-qkd {{
    id-1 = a
    id-2 = b
    secret = "a classical PSK: the PPK is what makes it quantum-safe"
  }}
}}
"""


@pytest.fixture
def namespaces(tmp_path: Path) -> Iterator[dict[str, Any]]:
    reason = _missing()
    if reason is not None:
        pytest.skip(reason)
    tag = f"qci{os.getpid() % 100000}"
    names = {side: f"{tag}{side}" for side in ("a", "b")}
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        for ns in names.values():
            run("ip", "netns", "add", ns)
        run("ip", "link", "add", f"{tag}va", "type", "veth", "peer", "name", f"{tag}vb")
        for side, ns in names.items():
            run("ip", "link", "set", f"{tag}v{side}", "netns", ns)
            run("ip", "-n", ns, "addr", "add", f"{ADDRESSES[side]}/24", "dev", f"{tag}v{side}")
            run("ip", "-n", ns, "link", "set", f"{tag}v{side}", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            conf = tmp_path / side / "strongswan.conf"
            conf.parent.mkdir()
            vici = tmp_path / side / "charon.vici"
            conf.write_text(STRONGSWAN_CONF.format(vici=vici))
            # Each charon gets its own /run (its pid file) in its own mount namespace.
            daemons.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", ns, "unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs /run && exec {CHARON}"],
                    env={**os.environ, "STRONGSWAN_CONF": str(conf)},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        for side in names:
            deadline = time.monotonic() + 20
            while not (tmp_path / side / "charon.vici").exists():
                assert time.monotonic() < deadline, f"charon {side} did not start"
                time.sleep(0.1)
        yield {"dir": tmp_path, "ns": names}
    finally:
        for daemon in daemons:
            try:
                os.killpg(daemon.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
        for ns in names.values():
            run("ip", "netns", "del", ns, check=False)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Path]:
    from tests.support.topologies import TWO_NODES

    topology = tmp_path / "pair.yaml"
    topology.write_text(TWO_NODES)
    state = tmp_path / "state"
    up = subprocess.run(
        [sys.executable, "-m", "qcinode", "up", str(topology), "--state-dir", str(state), "--detach", "--timeout", "120"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    try:
        yield state
    finally:
        subprocess.run([sys.executable, "-m", "qcinode", "down", "--state-dir", str(state)], capture_output=True, check=False, timeout=60)


def configure(work: Path, side: str, ppk_id: str, secret_section: str) -> None:
    me, peer = (ADDRESSES["a"], ADDRESSES["b"]) if side == "a" else (ADDRESSES["b"], ADDRESSES["a"])
    my_id, peer_id = (side, "b" if side == "a" else "a")
    path = work / side / "swanctl.conf"
    path.write_text(SWANCTL_CONF.format(me=me, peer=peer, ppk_id=ppk_id, my_id=my_id, peer_id=peer_id) + secret_section)
    loaded = run("swanctl", "--load-all", "--clear", "--file", str(path), "--uri", f"unix://{work / side / 'charon.vici'}", check=False)
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr


def initiate(work: Path) -> subprocess.CompletedProcess[str]:
    return run("swanctl", "--initiate", "--ike", "qkd", "--child", "host", "--timeout", "20", "--uri", f"unix://{work / 'a' / 'charon.vici'}", check=False)


def test_strongswan_ikev2_with_a_ppk_from_qcinode(namespaces: dict[str, Any], cluster: Path) -> None:
    example = load_example()
    work = namespaces["dir"]
    ppk_id, key_a = example.fetch_ppk(cluster, "alpha-app", "beta-app")
    same_id, key_b = example.fetch_ppk(cluster, "beta-app", "alpha-app", key_id=ppk_id)
    assert same_id == ppk_id and key_a == key_b and len(bytes.fromhex(key_a)) == 32
    configure(work, "a", ppk_id, example.ppk_secret(ppk_id, key_a))
    configure(work, "b", ppk_id, example.ppk_secret(ppk_id, key_b))

    result = initiate(work)
    assert f"using PPK for PPK_ID '{ppk_id}'" in result.stdout, result.stdout
    assert "IKE_SA qkd[1] established" in result.stdout, result.stdout
    sas = run("swanctl", "--list-sas", "--ike", "qkd", "--uri", f"unix://{work / 'a' / 'charon.vici'}").stdout
    assert "ESTABLISHED" in sas and "/PPK" in sas, sas

    # The PPK matters: with another PPK at b (a key qcinode never shared) the IKE SA does not come up.
    run("swanctl", "--terminate", "--ike", "qkd", "--timeout", "10", "--uri", f"unix://{work / 'a' / 'charon.vici'}", check=False)
    configure(work, "b", ppk_id, example.ppk_secret(ppk_id, "00" * 32))
    failed = initiate(work)
    assert failed.returncode != 0 and "established between" not in failed.stdout, failed.stdout
