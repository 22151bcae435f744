"""Kubernetes deployment: render a kustomize overlay for a topology.

Theory of operation
-------------------
``deploy/k8s/base`` describes one qcinode node as a StatefulSet pod, with its
governing headless Service, NetworkPolicy and PodDisruptionBudget. What
depends on the topology is rendered by :func:`render_overlay` into a
self-contained directory (``kubectl apply -k DIR`` needs nothing else)::

    DIR/kustomization.yaml       namespace, replicas = number of nodes, image,
                                 ConfigMap and Secret generators, patches
    DIR/base/                    a copy of deploy/k8s/base
    DIR/namespace.yaml           the Namespace (Pod Security "restricted")
    DIR/services.yaml            one headless Service per node, named after it
    DIR/statefulset-patch.yaml   the certificate volume's file list, node order
    DIR/topology.yaml            the topology, every link fully merged
    DIR/certs/                   `qcinode certs` output; holds the CA key
    DIR/certs/storage/NODE.key   each node's storage key (encrypts its data volume)

Rules:

1. Pod ``qcinode-N`` runs the topology's N-th node: ``qcinode node
   --name-from-ordinal`` calls :func:`node_for_pod`. The order is the order
   of ``nodes:`` in ``topology.yaml``; the StatefulSet's annotation
   ``qcinode.io/nodes`` spells it out.
2. Peers and SAEs reach a node by its name: a headless Service named after
   the node selects its pod (``statefulset.kubernetes.io/pod-name``). So node
   names must be DNS-1035 labels (start with a letter) and must not be
   ``qcinode``, the governing Service.
3. Node certificates carry the SANs ``NODE``, ``NODE.NS.svc`` and
   ``NODE.NS.svc.CLUSTER_DOMAIN``, which SAE clients verify. Between nodes,
   gRPC checks the peer's node name whatever address it dialled.
4. No pod gets the CA key, the admin credentials or SAE keys. Every pod gets
   ``ca.pem``, every node's certificate and key and every link's bootstrap
   key: a StatefulSet has one pod template, so all pods mount the same
   volumes. Each link key is its own Secret (64 KiB each would overflow the
   1 MiB limit of one Secret on a large topology).
5. Re-running on the same directory keeps the CA, the certificates and the
   link keys (``make_certificates`` is idempotent) and rewrites everything
   else; a directory that this function did not make is refused.
6. Each node's storage key (which encrypts the link pools and waiting SAE
   keys on its data volume) lives in the Secret ``qcinode-storage-keys``,
   mounted read-only at ``/etc/qcinode/storage`` and named by
   ``QCINODE_STORAGE_KEY_FILE``, never on the data volume: a copy of the
   volume alone reveals nothing. It is made once (32 random bytes, 0600)
   and kept on re-runs, like the link keys: a new one could not read the
   volume any more.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..errors import ConfigError
from ..keys.linkstore import STORAGE_KEY_BYTES
from ..pki import cert_plan, make_certificates
from ..topology import DNS_LABEL, Topology, load_topology, topology_to_mapping, with_clock_anchor

__all__ = [
    "GRPC_PORT",
    "HEALTH_PORT",
    "ETSI014_PORT",
    "METRICS_PORT",
    "STATEFULSET",
    "Overlay",
    "default_base_dir",
    "link_secret_name",
    "node_for_pod",
    "render_overlay",
    "sae_secret_name",
]

STATEFULSET = "qcinode"  # also the governing headless Service and the pods' name prefix
GRPC_PORT = 50051
HEALTH_PORT = 50052
ETSI014_PORT = 8443
METRICS_PORT = 9464
NODE_CERTS_SECRET = "qcinode-node-certs"
STORAGE_KEYS_SECRET = "qcinode-storage-keys"
TOPOLOGY_CONFIGMAP = "qcinode-topology"
SELECTOR = {"app.kubernetes.io/name": "qcinode", "app.kubernetes.io/component": "node"}

_MARKER = "# Made by `qcinode deploy k8s`"
#: The image an overlay runs unless ``--image`` names another: the tag
#: ``deploy/build-image.sh`` builds (push it, or any other build, and pass ``--image``).
DEFAULT_IMAGE = f"localhost/qcinode:{__version__}"
_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
# The repository part of an image reference (distribution/reference grammar, simplified).
_IMAGE_NAME = re.compile(r"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*")
_ORDINAL = re.compile(r"(?P<set>.+)-(?P<ordinal>0|[1-9][0-9]*)")


@dataclass(frozen=True, slots=True)
class Overlay:
    """What :func:`render_overlay` made.

    Attributes:
        directory: The overlay directory (``kubectl apply -k`` it).
        namespace: Namespace of every object.
        image: The container image.
        nodes: Node names in pod-ordinal order: ``nodes[N]`` runs in ``qcinode-N``.
        certs: The certificate directory (holds the CA key).
    """

    directory: Path
    namespace: str
    image: str
    nodes: tuple[str, ...]
    certs: Path


def node_for_pod(topology: Topology, pod_name: str) -> str:
    """The node a StatefulSet pod runs: the topology's N-th node for pod ``NAME-N``.

    Args:
        topology: The topology (its ``nodes`` order is the ordinal order).
        pod_name: The pod name or hostname; a domain part is ignored.

    Raises:
        ConfigError: The name has no ordinal suffix, or the ordinal is past
            the last node (more replicas than nodes).
    """
    short = pod_name.split(".", 1)[0]
    match = _ORDINAL.fullmatch(short)
    if match is None:
        raise ConfigError(f"--name-from-ordinal: pod name {pod_name!r} does not end in -ORDINAL (a StatefulSet pod name)")
    ordinal = int(match["ordinal"])
    count = len(topology.nodes)
    if ordinal >= count:
        raise ConfigError(
            f"--name-from-ordinal: pod {short!r} has ordinal {ordinal}, but topology {topology.name!r} "
            f"has {count} node(s) (ordinals 0-{count - 1}); set the StatefulSet's replicas to {count}"
        )
    return topology.nodes[ordinal].name


def link_secret_name(alice: str, bob: str) -> str:
    """The Secret holding the bootstrap key of link ``alice``-``bob``."""
    return f"qcinode-link-{alice}-{bob}"


def sae_secret_name(sae_id: str) -> str:
    """The ``kubernetes.io/tls`` Secret with an SAE's client certificate.

    SAE IDs allow upper case, ``_`` and ``.``; the name keeps lower-cased
    letters and digits and turns every other run of characters into one ``-``.
    """
    cleaned = re.sub(r"[^a-z0-9]+", "-", sae_id.lower()).strip("-")
    return f"qcinode-sae-{cleaned}"


def default_base_dir() -> Path:
    """``deploy/k8s/base`` of the source tree this package was imported from."""
    return Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base"


def render_overlay(
    topology_path: Path,
    out_dir: Path,
    *,
    namespace: str = "qcinode",
    image: str | None = None,
    cluster_domain: str = "cluster.local",
    base_dir: Path | None = None,
) -> Overlay:
    """Render a self-contained kustomize overlay running ``topology_path``.

    Args:
        topology_path: The topology YAML.
        out_dir: Output directory; created if missing. Must be empty, or an
            overlay made by this function (then updated in place).
        namespace: Namespace of every object (a DNS-1123 label).
        image: Container image ``NAME[:TAG]`` or ``NAME@DIGEST``; default
            :data:`DEFAULT_IMAGE`, what ``deploy/build-image.sh`` tags.
        cluster_domain: The cluster's DNS domain, for certificate SANs.
        base_dir: The kustomize base to copy; default :func:`default_base_dir`.

    Returns:
        What was made.

    Raises:
        ConfigError: Invalid topology, a node name that cannot name a
            Service, a bad namespace, image or domain, a missing base, or an
            output directory that is not an overlay of ours.
    """
    # The pods' network clock starts at render time (re-render for a fresh one).
    topology = with_clock_anchor(load_topology(topology_path), time.time())
    _check_names(topology, namespace, cluster_domain)
    image = image or DEFAULT_IMAGE
    image_entry = _image_entry(image)
    base = Path(base_dir) if base_dir is not None else default_base_dir()
    if not (base / "kustomization.yaml").is_file():
        raise ConfigError(
            f"--base: no kustomize base at {base} (kustomization.yaml missing); "
            "run from a qcinode source checkout or pass --base deploy/k8s/base"
        )
    out = Path(out_dir)
    _check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)

    suffixes = (f"{namespace}.svc", f"{namespace}.svc.{cluster_domain}")
    plan = dataclasses.replace(cert_plan(topology), extra_dns=suffixes)
    make_certificates(plan, out / "certs")
    _make_storage_keys(out / "certs" / "storage", [node.name for node in topology.nodes])

    nodes = tuple(node.name for node in topology.nodes)
    copied = out / "base"
    if copied.exists():
        shutil.rmtree(copied)
    shutil.copytree(base, copied)

    _write(out / "topology.yaml", topology_to_mapping(topology), f"Topology {topology.name!r}; pod qcinode-N runs nodes[N].")
    _write(out / "namespace.yaml", _namespace(namespace), "The namespace; Pod Security Admission enforces the restricted profile.")
    _write_all(out / "services.yaml", [_node_service(name, i) for i, name in enumerate(nodes)],
               "One headless Service per node, named after it: peers dial NODE.NAMESPACE.svc:50051, SAEs https://NODE.NAMESPACE.svc:8443.")
    _write(out / "statefulset-patch.yaml", _statefulset_patch(topology), "Certificate volume file list and node order for the base StatefulSet.")
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        "resources": ["namespace.yaml", "base", "services.yaml"],
        "labels": [{"pairs": {"app.kubernetes.io/part-of": topology.name}, "includeSelectors": False}],
        "replicas": [{"name": STATEFULSET, "count": len(nodes)}],
        "images": [image_entry],
        "configMapGenerator": [{"name": TOPOLOGY_CONFIGMAP, "files": ["topology.yaml"]}],
        "secretGenerator": _secret_generators(topology),
        "patches": [{"path": "statefulset-patch.yaml"}],
    }
    _write(
        out / "kustomization.yaml",
        kustomization,
        f"{_MARKER[2:]} for topology {topology.name!r}: re-run it to update this directory, do not edit.\n"
        "certs/ holds the cluster CA key and every private key: keep this directory private.",
    )
    return Overlay(directory=out, namespace=namespace, image=image, nodes=nodes, certs=out / "certs")


# --------------------------------------------------------------------------
# Checks


def _check_names(topology: Topology, namespace: str, cluster_domain: str) -> None:
    if not isinstance(namespace, str) or not DNS_LABEL.fullmatch(namespace):
        raise ConfigError(f"--namespace: {namespace!r} is not a DNS-1123 label (lower case letters, digits, '-', at most 63)")
    labels = cluster_domain.split(".") if isinstance(cluster_domain, str) else [""]
    if not all(DNS_LABEL.fullmatch(label) for label in labels):
        raise ConfigError(f"--cluster-domain: {cluster_domain!r} is not a DNS name")
    for i, node in enumerate(topology.nodes):
        if not _DNS_1035.fullmatch(node.name):
            raise ConfigError(
                f"nodes[{i}].name: {node.name!r} names the node's Kubernetes Service, "
                "so it must start with a letter (DNS-1035 label)"
            )
        if node.name == STATEFULSET:
            raise ConfigError(f"nodes[{i}].name: {node.name!r} is the StatefulSet's governing Service; rename the node")
    seen: dict[str, str] = {}
    for sae in (s for node in topology.nodes for s in node.saes):
        name = sae_secret_name(sae)
        if name in seen:
            raise ConfigError(f"SAE IDs {seen[name]!r} and {sae!r} both map to the Secret name {name!r}; rename one")
        seen[name] = sae


def _check_out_dir(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out: {out} is not a directory")
    kustomization = out / "kustomization.yaml"
    if kustomization.is_file():
        if _MARKER not in kustomization.read_text(encoding="utf-8", errors="replace"):
            raise ConfigError(f"--out: {kustomization} was not made by `qcinode deploy k8s`; choose an empty directory")
        return
    others = sorted(p.name for p in out.iterdir() if p.name != "certs")
    if others:
        raise ConfigError(f"--out: {out} is not empty ({', '.join(others[:5])}); choose an empty directory")


def _image_entry(image: str) -> dict[str, str]:
    """A kustomize ``images:`` entry setting the base's ``qcinode`` image to ``image``."""
    if not image or any(c.isspace() for c in image):
        raise ConfigError(f"--image: {image!r} is not an image reference")
    entry = {"name": "qcinode"}
    name, at, digest = image.partition("@")
    if at:
        if not re.fullmatch(r"[a-z0-9]+:[0-9a-f]{32,}", digest) or not _IMAGE_NAME.fullmatch(name):
            raise ConfigError(f"--image: {image!r}: expected NAME@ALGORITHM:HEX")
        entry.update(newName=name, digest=digest)
        return entry
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:  # a ':' after the last '/' starts the tag (before it: a registry port)
        name, tag = name[:colon], name[colon + 1 :]
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag):
            raise ConfigError(f"--image: {image!r}: invalid tag {tag!r}")
        entry.update(newName=name, newTag=tag)
    else:
        entry.update(newName=name)
    if not _IMAGE_NAME.fullmatch(name):
        raise ConfigError(f"--image: {image!r}: invalid repository name {name!r}")
    return entry


# --------------------------------------------------------------------------
# Objects


def _namespace(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": namespace,
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/warn": "restricted",
                "pod-security.kubernetes.io/audit": "restricted",
            },
        },
    }


def _node_service(node: str, ordinal: int) -> dict[str, Any]:
    pod = f"{STATEFULSET}-{ordinal}"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": node,
            "labels": {**SELECTOR, "qcinode.io/node": node},
            "annotations": {"qcinode.io/pod": pod},
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {**SELECTOR, "statefulset.kubernetes.io/pod-name": pod},
            "ports": [
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "etsi014", "port": ETSI014_PORT, "targetPort": "etsi014", "protocol": "TCP"},
            ],
        },
    }


def _make_storage_keys(directory: Path, nodes: list[str]) -> None:
    """One 32-byte storage key per node (0600, directory 0700), made once and kept (rule 6)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for node in nodes:
        path = directory / f"{node}.key"
        if path.exists():
            continue
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, os.urandom(STORAGE_KEY_BYTES))
        finally:
            os.close(fd)


def _secret_generators(topology: Topology) -> list[dict[str, Any]]:
    node_files = ["ca.pem=certs/ca.pem"]
    for node in topology.nodes:
        node_files += [f"node.{node.name}.pem=certs/nodes/{node.name}.pem", f"node.{node.name}.key=certs/nodes/{node.name}.key"]
    generators: list[dict[str, Any]] = [{"name": NODE_CERTS_SECRET, "files": node_files}]
    generators.append({"name": STORAGE_KEYS_SECRET, "files": [f"{node.name}.key=certs/storage/{node.name}.key" for node in topology.nodes]})
    for link in topology.links:
        generators.append({"name": link_secret_name(link.alice, link.bob), "files": [f"bootstrap.key=certs/links/{link.alice}-{link.bob}.key"]})
    for sae in (s for node in topology.nodes for s in node.saes):
        generators.append(
            {
                "name": sae_secret_name(sae),
                "type": "kubernetes.io/tls",
                "files": [f"tls.crt=certs/saes/{sae}.pem", f"tls.key=certs/saes/{sae}.key", "ca.crt=certs/ca.pem"],
                # SAE applications outside this overlay mount it by this name.
                "options": {"disableNameSuffixHash": True, "labels": {"qcinode.io/sae-id": _label_value(sae)}},
            }
        )
    return generators


def _label_value(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9._-]", "-", text)[:63]
    return value.strip("-._") or "sae"


def _statefulset_patch(topology: Topology) -> dict[str, Any]:
    items = [{"key": "ca.pem", "path": "ca.pem"}]
    for node in topology.nodes:
        items += [
            {"key": f"node.{node.name}.pem", "path": f"nodes/{node.name}.pem"},
            {"key": f"node.{node.name}.key", "path": f"nodes/{node.name}.key"},
        ]
    sources: list[dict[str, Any]] = [{"secret": {"name": NODE_CERTS_SECRET, "items": items}}]
    for link in topology.links:
        path = f"links/{link.alice}-{link.bob}.key"
        sources.append({"secret": {"name": link_secret_name(link.alice, link.bob), "items": [{"key": "bootstrap.key", "path": path}]}})
    order = " ".join(f"{i}={node.name}" for i, node in enumerate(topology.nodes))
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": STATEFULSET,
            "annotations": {"qcinode.io/topology": topology.name, "qcinode.io/nodes": order},
        },
        "spec": {
            "template": {
                "spec": {
                    "volumes": [{"name": "certs", "projected": {"defaultMode": 0o440, "sources": sources}}],
                }
            }
        },
    }


# --------------------------------------------------------------------------
# Files


def _header(comment: str) -> str:
    return "".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines())


def _write(path: Path, document: Any, comment: str) -> None:
    path.write_text(_header(comment) + yaml.safe_dump(document, sort_keys=False, default_flow_style=False), encoding="utf-8")


def _write_all(path: Path, documents: list[Any], comment: str) -> None:
    body = yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False, explicit_start=True)
    path.write_text(_header(comment) + body, encoding="utf-8")
