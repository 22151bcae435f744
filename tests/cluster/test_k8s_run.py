"""The rendered Kubernetes manifests really run (docs/kubernetes.md), network-namespace fallback.

``qcinode deploy k8s`` renders an overlay for a 3-node chain; the rendered
objects (``kubectl kustomize`` output when kubectl is installed, else the
Python assembly of tests/unit/test_k8s.py) go to
:class:`tests.support.kubelet.NetnsKubelet`, which runs each pod of the
StatefulSet as a process in its own network namespace (see that module for
exactly what is and is not emulated: paths are rewritten instead of mounted,
the memory limit is an RLIMIT_AS, the user is the manifest's only if it can
run the interpreter). Then: the manifest's gRPC readiness probe must answer
SERVING on every pod, every link must grow key, one ETSI 014
enc_keys/dec_keys exchange must succeed between SAEs on different pods, and
a pod killed with SIGKILL and restarted under the same name on the same data
directory must rejoin.

Skipped (with the reason) when not root, when ``ip netns add`` fails, or
when neither the manifest's user nor uid 0 without capabilities can run the
pod command (tried for real; an interpreter under a 0700 home stops the
manifest's uid, and the pods then run as uid 0 without capabilities).
"""

from __future__ import annotations

import base64
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qcinode.cluster import k8s
from tests.support.kubelet import RUNTIME, ClientAgent, NetnsKubelet, netns_unavailable_reason, wait_until
from tests.unit.test_k8s import KUBECTL, _compose, kustomize

NAMESPACE = "qkd-run"
CHAIN3 = """
name: chain3
defaults:
  postprocessing: {block_bits: 50000}
emulation: {speed: max}
nodes:
  - {name: alpha, saes: [alpha-app]}
  - {name: bravo}
  - {name: charlie, saes: [charlie-app]}
links:
  - {between: [alpha, bravo], length_km: 10}
  - {between: [bravo, charlie], length_km: 10}
"""
START_TIMEOUT_S = 30.0
KEY_TIMEOUT_S = 60.0  # a restarted pod must start Python, load its state and reconnect; slow CI machines need the margin


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700, which a pod running as the manifest's uid could not traverse.
    path = Path(tempfile.mkdtemp(prefix="qcinode-k8s-run-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=[pytest.param("kubectl", marks=pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed")), "composed"])
def kubelet(request: pytest.FixtureRequest, workdir: Path) -> Iterator[tuple[NetnsKubelet, list[dict[str, Any]], Path, str]]:
    reason = netns_unavailable_reason()
    if reason is not None:
        print(f"\nSKIP: {reason}")
        pytest.skip(reason)
    topology = workdir / "chain3.yaml"
    topology.write_text(CHAIN3)
    overlay = k8s.render_overlay(topology, workdir / "overlay", namespace=NAMESPACE, image="qcinode:test")
    if request.param == "kubectl":
        docs, source = kustomize(overlay.directory), "kubectl kustomize"
    else:
        docs, source = _compose(overlay.directory), "python assembly of tests/unit/test_k8s.py"
    runner = NetnsKubelet(docs, workdir / "run")
    request.addfinalizer(runner.close)  # also if the body's finally never runs
    if runner.unusable is not None:
        print(f"\nSKIP: {runner.unusable}")
        pytest.skip(runner.unusable)
    try:
        yield runner, docs, overlay.certs, source
    finally:
        runner.close()
        assert runner.leftovers() == [], f"namespaces left behind: {runner.leftovers()}"


def _statuses(agent: ClientAgent, runner: NetnsKubelet, port: int, service: str) -> dict[str, str]:
    return {p.name: agent.call(op="probe", target=f"{p.ip}:{port}", service=service, timeout=2.0) for p in runner.pods}


def _secret_bits(agent: ClientAgent, runner: NetnsKubelet, certs: Path, nodes: list[str], grpc_port: int) -> dict[tuple[str, str], int]:
    """(node, peer) -> secret_bits of that link end, for every pod that answers."""
    out: dict[tuple[str, str], int] = {}
    for pod, node in zip(runner.pods, nodes):
        try:
            status = agent.call(op="status", target=f"{pod.ip}:{grpc_port}", server_name=node, certs=str(certs))
        except RuntimeError:
            continue
        for link in status.get("links", []):
            out[(node, link["peer"])] = int(link.get("secret_bits", 0))
    return out


def test_rendered_statefulset_runs_in_network_namespaces(kubelet: tuple[NetnsKubelet, list[dict[str, Any]], Path, str]) -> None:
    runner, docs, certs, source = kubelet
    started = time.monotonic()
    user = f"uid {runner.run_as[0]}" if runner.run_as else f"uid 0 without capabilities ({runner.user_note or 'the manifest sets no user'})"
    print(f"\nruntime: {RUNTIME}; manifests from {source}; {runner.replicas} pods as {user}; "
          f"memory limit {runner.memory_limit} bytes as RLIMIT_AS")
    nodes = runner.sts["metadata"]["annotations"]["qcinode.io/nodes"].split()
    nodes = [entry.partition("=")[2] for entry in sorted(nodes, key=lambda e: int(e.partition("=")[0]))]
    assert len(nodes) == runner.replicas == 3
    probe_port, probe_service = runner.probe_port("readinessProbe")
    grpc_port = next(p["containerPort"] for p in runner.container["ports"] if p["name"] == "grpc")
    links = [tuple(sorted(pair)) for pair in (("alpha", "bravo"), ("bravo", "charlie"))]

    runner.setup_network()
    agent = ClientAgent(runner.client_ns)
    try:
        for pod in runner.pods:
            runner.start_pod(pod.ordinal)

        def all_serving() -> bool:
            for pod in runner.pods:
                assert pod.process is not None and pod.process.poll() is None, f"{pod.name} exited:\n{runner.log_tail(pod.ordinal)}"
            return set(_statuses(agent, runner, probe_port, probe_service).values()) == {"SERVING"}

        wait_until(all_serving, START_TIMEOUT_S, "every pod's readiness probe SERVING")
        for pod in runner.pods:  # what the "container" really got
            assert pod.process is not None
            proc = Path(f"/proc/{pod.process.pid}")
            assert proc.joinpath("ns/net").resolve() != Path("/proc/self/ns/net").resolve()
            status = dict(line.split(":", 1) for line in proc.joinpath("status").read_text().splitlines())
            assert int(status["CapEff"].strip(), 16) == 0 and status["NoNewPrivs"].strip() == "1"
            if runner.run_as is not None:
                assert status["Uid"].split()[0] == str(runner.run_as[0])
            limits = proc.joinpath("limits").read_text()
            assert re.search(rf"Max address space\s+{runner.memory_limit}\s", limits), limits
        print(f"all {runner.replicas} pods SERVING after {time.monotonic() - started:.1f} s")

        def every_link_grows(baseline: dict[tuple[str, str], int]) -> dict[tuple[str, str], int] | None:
            bits = _secret_bits(agent, runner, certs, nodes, grpc_port)
            ends = [(a, b) for a, b in links] + [(b, a) for a, b in links]
            return bits if all(bits.get(end, 0) > baseline.get(end, 0) for end in ends) else None

        grown = wait_until(lambda: every_link_grows({}), KEY_TIMEOUT_S, "every link end has secret bits")
        print(f"every link grew key after {time.monotonic() - started:.1f} s: {grown}")

        # ETSI 014 across pods: alpha-app (pod of alpha) -> charlie-app (pod of charlie), with the rendered SAE Secrets.
        secrets_ = runner.objects("Secret")
        sae_dir = runner.workdir / "saes"
        sae_dir.mkdir()
        creds: dict[str, dict[str, str]] = {}
        for sae in ("alpha-app", "charlie-app"):
            secret = secrets_[k8s.sae_secret_name(sae)]
            assert secret["type"] == "kubernetes.io/tls"
            files = {}
            for key in ("tls.crt", "tls.key", "ca.crt"):
                path = sae_dir / f"{sae}.{key}"
                path.write_bytes(base64.b64decode(secret["data"][key]))
                path.chmod(0o600)
                files[key] = str(path)
            creds[sae] = {"ca": files["ca.crt"], "cert": files["tls.crt"], "key": files["tls.key"]}
        kme_port = runner.service_port("alpha", "etsi014")
        alpha_url = f"https://alpha.{NAMESPACE}.svc:{kme_port}"
        charlie_url = f"https://charlie.{NAMESPACE}.svc:{runner.service_port('charlie', 'etsi014')}"

        def pair_has_key() -> bool:
            status, body = agent.call(op="etsi", method="GET", url=f"{alpha_url}/api/v1/keys/charlie-app/status", **creds["alpha-app"])
            return bool(status == 200 and body.get("stored_key_count", 0) > 0)

        wait_until(pair_has_key, KEY_TIMEOUT_S, "ETSI status stored_key_count > 0 for alpha-app -> charlie-app")
        status, enc = agent.call(op="etsi", method="POST", url=f"{alpha_url}/api/v1/keys/charlie-app/enc_keys",
                                 body={"number": 1, "size": 256}, **creds["alpha-app"])
        assert status == 200, enc
        ids = [k["key_ID"] for k in enc["keys"]]
        status, dec = agent.call(op="etsi", method="POST", url=f"{charlie_url}/api/v1/keys/alpha-app/dec_keys",
                                 body={"key_IDs": [{"key_ID": i} for i in ids]}, **creds["charlie-app"])
        assert status == 200, dec
        assert [k["key"] for k in dec["keys"]] == [k["key"] for k in enc["keys"]]
        print(f"ETSI 014 enc_keys at alpha / dec_keys at charlie matched after {time.monotonic() - started:.1f} s")

        # Kill the middle pod (both links go down) and restart it under the same name on the same PVC.
        victim = nodes.index("bravo")
        pvc_before = sorted(p.name for p in runner.pods[victim].pvc.rglob("*"))
        runner.kill_pod(victim)
        assert pvc_before, "the PVC directory was empty before the kill"
        baseline = _secret_bits(agent, runner, certs, nodes, grpc_port)
        runner.start_pod(victim)
        wait_until(all_serving, START_TIMEOUT_S, f"{runner.pods[victim].name} SERVING again after SIGKILL")
        # The restarted process counts from 0; its neighbours must count past their pre-restart values.
        baseline = {end: (0 if end[0] == "bravo" else bits) for end, bits in baseline.items()}
        grown = wait_until(lambda: every_link_grows(baseline), KEY_TIMEOUT_S, "every link grows key after the restart")
        assert (runner.pods[victim].pvc / "bravo").is_dir(), "the restarted node did not use its PVC"
        print(f"{runner.pods[victim].name} rejoined; links grew again after {time.monotonic() - started:.1f} s: {grown}")
    finally:
        agent.close()
        runner.close()
