"""The rendered Kubernetes manifests really run (docs/kubernetes.md), podman path.

``qcinode deploy k8s`` renders an overlay for a 3-node chain; the rendered
objects (``kubectl kustomize`` output when kubectl is installed, else the
Python assembly of tests/unit/test_k8s.py) go to
:class:`tests.support.kubelet.PodmanKubelet`, which runs each pod of the
StatefulSet as a container of the image deploy/build-image.sh built: the
manifest's name, command, args, env, read-only ConfigMap/Secret mounts, data
volume, user, memory limit, read-only root, no capabilities, on a podman
network made for the test where every pod answers to its headless-Service
names. A helper container on the same network (the same image, running
:class:`tests.support.kubelet.PodmanClientAgent`) runs the manifest's gRPC
readiness probe against every pod IP, reads link status over mTLS with the
rendered admin certificate, and makes one ETSI 014 enc_keys/dec_keys exchange
between SAEs on different pods by Service DNS name. Then a pod is killed
(``podman kill -s KILL``), started again under the same name on the same data
directory, and must rejoin.

Skipped (with the reason) when build/image-status is not ``built ...`` or
podman cannot run the image.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qcinode.cluster import k8s
from tests.cluster.test_k8s_run import CHAIN3, KEY_TIMEOUT_S, NAMESPACE, START_TIMEOUT_S
from tests.support.kubelet import PODMAN_RUNTIME, PodmanClientAgent, PodmanKubelet, podman_unavailable_reason, wait_until
from tests.unit.test_k8s import KUBECTL, _compose, kustomize

ROOT = Path(__file__).resolve().parents[2]
STATUS = ROOT / "build" / "image-status"
ENC_RETRY_S = 20.0


def _skip(reason: str) -> None:
    print(f"\nSKIP: {reason}")
    pytest.skip(reason)


def _image() -> str:
    if not STATUS.exists():
        _skip("no image built: run deploy/build-image.sh (.ci/run does)")
    status = STATUS.read_text().strip()
    if not status.startswith("built "):
        _skip(f"no usable image: build/image-status says {status!r}")
    image = status.split(" ", 1)[1]
    reason = podman_unavailable_reason(image)
    if reason is not None:
        _skip(reason)
    return image


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="qcinode-k8s-podman-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def kubelet(request: pytest.FixtureRequest, workdir: Path) -> Iterator[tuple[PodmanKubelet, Path, str]]:
    image = _image()
    topology = workdir / "chain3.yaml"
    topology.write_text(CHAIN3)
    overlay = k8s.render_overlay(topology, workdir / "overlay", namespace=NAMESPACE, image="qcinode:test")
    if KUBECTL is not None:
        docs, source = kustomize(overlay.directory), "kubectl kustomize"
    else:
        docs, source = _compose(overlay.directory), "python assembly of tests/unit/test_k8s.py"
    runner = PodmanKubelet(docs, workdir / "run", image)
    request.addfinalizer(runner.close)  # also if the body's finally never runs
    try:
        yield runner, overlay.certs, source
    finally:
        runner.close()
        assert runner.leftovers() == [], f"left behind: {runner.leftovers()}"


def _statuses(agent: PodmanClientAgent, runner: PodmanKubelet, port: int, service: str) -> dict[str, str]:
    return {p.name: agent.call(op="probe", target=f"{p.ip}:{port}", service=service, timeout=2.0) for p in runner.pods}


def _secret_bits(agent: PodmanClientAgent, runner: PodmanKubelet, nodes: list[str], grpc_port: int) -> dict[tuple[str, str], int]:
    """(node, peer) -> secret_bits of that link end, for every pod that answers (asked by pod DNS name)."""
    out: dict[tuple[str, str], int] = {}
    governing = runner.sts["spec"]["serviceName"]
    for pod, node in zip(runner.pods, nodes):
        try:
            status = agent.call(op="status", target=f"{pod.name}.{governing}.{NAMESPACE}.svc:{grpc_port}", server_name=node,
                                certs="/client/certs")
        except RuntimeError:
            continue
        for link in status.get("links", []):
            out[(node, link["peer"])] = int(link.get("secret_bits", 0))
    return out


def test_rendered_statefulset_runs_in_podman(kubelet: tuple[PodmanKubelet, Path, str]) -> None:
    runner, certs, source = kubelet
    started = time.monotonic()
    nodes = runner.sts["metadata"]["annotations"]["qcinode.io/nodes"].split()
    nodes = [entry.partition("=")[2] for entry in sorted(nodes, key=lambda e: int(e.partition("=")[0]))]
    assert len(nodes) == runner.replicas == 3
    probe_port, probe_service = runner.probe_port("readinessProbe")
    grpc_port = next(p["containerPort"] for p in runner.container["ports"] if p["name"] == "grpc")
    links = [tuple(sorted(pair)) for pair in (("alpha", "bravo"), ("bravo", "charlie"))]

    # The rendered SAE Secrets, for the client container.
    secrets_ = runner.objects("Secret")
    sae_dir = runner.workdir / "saes"
    sae_dir.mkdir(parents=True)
    creds: dict[str, dict[str, str]] = {}
    for sae in ("alpha-app", "charlie-app"):
        secret = secrets_[k8s.sae_secret_name(sae)]
        assert secret["type"] == "kubernetes.io/tls"
        for key in ("tls.crt", "tls.key", "ca.crt"):
            path = sae_dir / f"{sae}.{key}"
            path.write_bytes(base64.b64decode(secret["data"][key]))
            path.chmod(0o600)
        creds[sae] = {"ca": f"/client/saes/{sae}.ca.crt", "cert": f"/client/saes/{sae}.tls.crt", "key": f"/client/saes/{sae}.tls.key"}

    runner.setup_network()
    names = "podman DNS (aardvark-dns, --network-alias)" if runner.use_dns else "--add-host entries (the network has no DNS)"
    print(f"\nruntime: {PODMAN_RUNTIME}; image {runner.image}; manifests from {source}; {runner.replicas} pods on network "
          f"{runner.network} ({runner.subnet}.0/24); names via {names}; user {runner.run_as}; memory limit {runner.memory_limit}")
    agent = PodmanClientAgent(runner, {certs: "/client/certs", sae_dir: "/client/saes"})
    try:
        for pod in runner.pods:
            runner.start_pod(pod.ordinal)

        def all_serving() -> bool:
            for pod in runner.pods:
                assert runner.running(pod.ordinal), f"{pod.name} is not running:\n{runner.log_tail(pod.ordinal)}"
            return set(_statuses(agent, runner, probe_port, probe_service).values()) == {"SERVING"}

        wait_until(all_serving, START_TIMEOUT_S, "every pod's readiness probe SERVING")
        for pod in runner.pods:  # what the container really got
            info = runner.state(pod.ordinal)
            host = info["HostConfig"]
            assert info["Name"] == pod.name and info["Config"]["Hostname"] == pod.name
            assert host["ReadonlyRootfs"] is True and host["Memory"] == runner.memory_limit
            assert info["Config"]["User"] == f"{runner.run_as[0]}:{runner.run_as[1]}"  # type: ignore[index]
            env = dict(e.split("=", 1) for e in info["Config"]["Env"])
            assert env["QCINODE_POD_NAME"] == pod.name and env["POD_NAMESPACE"] == NAMESPACE
            assert env["QCINODE_PEER_TEMPLATE"] == f"{{name}}.{NAMESPACE}.svc:50051"
            mounts = {m["Destination"]: m for m in info["Mounts"]}
            for mount in runner.container["volumeMounts"]:
                if mount.get("readOnly"):
                    assert mounts[mount["mountPath"]]["RW"] is False, mount
            proc = Path(f"/proc/{info['State']['Pid']}/status")
            status = dict(line.split(":", 1) for line in proc.read_text().splitlines())
            assert int(status["CapEff"].strip(), 16) == 0 and status["NoNewPrivs"].strip() == "1"
            assert status["Uid"].split()[0] == str(runner.run_as[0])  # type: ignore[index]
        print(f"all {runner.replicas} pods SERVING after {time.monotonic() - started:.1f} s")

        def every_link_grows(baseline: dict[tuple[str, str], int]) -> dict[tuple[str, str], int] | None:
            bits = _secret_bits(agent, runner, nodes, grpc_port)
            ends = [(a, b) for a, b in links] + [(b, a) for a, b in links]
            return bits if all(bits.get(end, 0) > baseline.get(end, 0) for end in ends) else None

        def links_grow(baseline: dict[tuple[str, str], int], what: str) -> dict[tuple[str, str], int]:
            try:
                return wait_until(lambda: every_link_grows(baseline), KEY_TIMEOUT_S, what)  # type: ignore[no-any-return]
            except TimeoutError as exc:  # say which end is stuck and what its pod logged
                logs = "\n".join(f"--- {pod.name}:\n{runner.log_tail(pod.ordinal, 15)}" for pod in runner.pods)
                raise TimeoutError(f"{exc}; link ends answering: {_secret_bits(agent, runner, nodes, grpc_port)}\n{logs}") from None

        grown = links_grow({}, "every link end has secret bits")
        print(f"every link grew key after {time.monotonic() - started:.1f} s: {grown}")

        # ETSI 014 across pods by Service DNS name: alpha-app (pod of alpha) -> charlie-app (pod of charlie).
        alpha_url = f"https://alpha.{NAMESPACE}.svc:{runner.service_port('alpha', 'etsi014')}"
        charlie_url = f"https://charlie.{NAMESPACE}.svc:{runner.service_port('charlie', 'etsi014')}"

        def pair_has_key() -> bool:
            status, body = agent.call(op="etsi", method="GET", url=f"{alpha_url}/api/v1/keys/charlie-app/status", **creds["alpha-app"])
            return bool(status == 200 and body.get("stored_key_count", 0) > 0)

        wait_until(pair_has_key, KEY_TIMEOUT_S, "ETSI status stored_key_count > 0 for alpha-app -> charlie-app")
        # 503 is ETSI 014's "try again": a relay hop whose gRPC channel is still in reconnect backoff from
        # before its peer container existed answers it (containers start one after another). Retry, and say so.
        refusals: list[Any] = []

        def enc_keys() -> Any:
            status, body = agent.call(op="etsi", method="POST", url=f"{alpha_url}/api/v1/keys/charlie-app/enc_keys",
                                      body={"number": 1, "size": 256}, **creds["alpha-app"])
            assert status in (200, 503), (status, body)
            if status == 503:
                refusals.append(body.get("message"))
            return body if status == 200 else None

        enc = wait_until(enc_keys, ENC_RETRY_S, "ETSI 014 enc_keys answers 200", interval_s=0.5)
        if refusals:
            print(f"enc_keys answered 503 {len(refusals)} time(s) before 200; first: {refusals[0]}")
        ids = [k["key_ID"] for k in enc["keys"]]
        status, dec = agent.call(op="etsi", method="POST", url=f"{charlie_url}/api/v1/keys/alpha-app/dec_keys",
                                 body={"key_IDs": [{"key_ID": i} for i in ids]}, **creds["charlie-app"])
        assert status == 200, dec
        assert [k["key"] for k in dec["keys"]] == [k["key"] for k in enc["keys"]]
        print(f"ETSI 014 enc_keys at alpha / dec_keys at charlie matched after {time.monotonic() - started:.1f} s")

        # Kill the middle pod (both links go down); start it again under the same name on the same data directory.
        victim = nodes.index("bravo")
        pvc_before = sorted(p.name for p in runner.pods[victim].pvc.rglob("*"))
        assert pvc_before, "the data directory was empty before the kill"
        runner.kill_pod(victim)
        assert not runner.running(victim)
        baseline = _secret_bits(agent, runner, nodes, grpc_port)
        runner.start_pod(victim)
        wait_until(all_serving, START_TIMEOUT_S, f"{runner.pods[victim].name} SERVING again after SIGKILL")
        baseline = {end: (0 if end[0] == "bravo" else bits) for end, bits in baseline.items()}
        grown = links_grow(baseline, "every link grows key after the restart")
        assert (runner.pods[victim].pvc / "bravo").is_dir(), "the restarted node did not use its data directory"
        print(f"{runner.pods[victim].name} rejoined; links grew again after {time.monotonic() - started:.1f} s: {grown}")
    finally:
        agent.close()
        runner.close()
