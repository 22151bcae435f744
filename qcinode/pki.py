"""Identity for the whole cluster: certificates, common names, bootstrap keys.

Every layer that needs to know who someone is imports this module, and it
imports nothing of theirs (only :mod:`qcinode.topology` and
:mod:`qcinode.errors`): the node authenticates peers and adverts with it, the
KME maps client certificates to SAE IDs with it, and the cluster launcher,
``qcinode certs`` and the Kubernetes renderer issue files with it.

Theory of operation
-------------------
``make_certificates`` turns a :class:`CertPlan` into files on disk::

    out_dir/ca.pem, ca.key                 cluster CA (EC P-256, self-signed)
    out_dir/nodes/{node}.pem, .key         node: serverAuth + clientAuth
    out_dir/saes/{sae_id}.pem, .key        SAE client certificate (CN = SAE ID)
    out_dir/admin.pem, admin.key           admin client certificate (CN = qcinode-admin)
    out_dir/links/{alice}-{bob}.key        raw bootstrap authentication key

Rules:

1. Identity is the subject common name. Nodes authenticate peers by CN, the
   KME maps a client certificate's CN to an SAE ID. So node names, SAE IDs and
   ``qcinode-admin`` must be pairwise distinct: otherwise a node's certificate
   (which also carries clientAuth) would be accepted as an SAE's. Client
   certificates also carry a URI SAN ``urn:qcinode:{sae|admin}:{cn}``, so that
   verifiers that insist on a SAN accept them.
2. Re-running is idempotent. An existing CA is reused unless ``force``. An
   existing leaf is kept when it is still the one we would issue (same
   subject, SANs and EKU, signed by the current CA, key matches, currently
   valid); otherwise it is re-issued. Running nodes therefore keep working.
3. A bootstrap link key is never overwritten unless ``force``: both ends of a
   link read the same file, and replacing it under one of them would make
   every authentication tag of the first blocks fail.
4. Files are written atomically (temporary file + ``os.replace``) with an
   explicit mode: 0600 for private and bootstrap keys, 0644 for certificates,
   whatever the umask. A crash never leaves a half-written key behind.
5. Leaf validity never extends past the CA's.
6. A node certificate is the only one that may speak for a node in routing:
   :class:`NodeCertificateVerifier` accepts an advert's certificate only if
   the cluster CA issued it, it is valid now, it is an end-entity
   certificate with both serverAuth and clientAuth (SAE and admin
   certificates carry clientAuth only), its SANs name its common name, and
   its key is EC P-256; then the common name must be the advert's origin and
   the ECDSA P-256 / SHA-256 signature must verify. A certificate that
   passed is cached by its SHA-256 fingerprint (its validity dates are
   re-checked on every use), so a steady flood costs one signature check per
   advert, not a chain validation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qcinode.core.routing import RejectReason
from qcinode.errors import ConfigError
from qcinode.topology import DNS_LABEL, SAE_ID, Topology

__all__ = [
    "ADMIN_COMMON_NAME",
    "CertBundle",
    "CertPlan",
    "NodeAdvertSigner",
    "NodeCertificateVerifier",
    "preverify_node_certificates",
    "cert_plan",
    "common_name_of",
    "load_bundle",
    "make_certificates",
    "node_bundle",
    "read_bytes",
    "server_credentials_material",
]

ADMIN_COMMON_NAME = "qcinode-admin"

_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644
# Tolerate small clock differences between the machine issuing and the one verifying.
_BACKDATE = dt.timedelta(minutes=5)
# One Poly1305 one-time key is 32 bytes; a smaller bootstrap key authenticates nothing.
_MIN_BOOTSTRAP_KEY_BYTES = 32
# X.509 upper bound for a common name (RFC 5280 ub-common-name).
_MAX_CN_CHARS = 64



def _ca_common_name(cluster_name: str) -> str:
    return f"qcinode {cluster_name} CA"


@dataclass(frozen=True, slots=True)
class CertPlan:
    """What to issue for one cluster.

    Sequences given as lists are stored as tuples.

    Attributes:
        cluster_name: Shown in the CA's common name.
        nodes: Node names (DNS-1123 labels); each gets a server+client certificate.
        saes: SAE IDs; each gets a client certificate whose CN is the ID.
        links: ``(alice, bob)`` node pairs; each gets a bootstrap authentication key.
        extra_dns: DNS suffixes; node ``n`` also gets the SAN ``n.{suffix}``
            (e.g. a Kubernetes headless service ``qcinode.ns.svc.cluster.local``).

    Raises:
        ConfigError: A name is malformed, duplicated, or collides with another
            identity; a link names an unknown node or joins a node to itself.
    """

    cluster_name: str
    nodes: tuple[str, ...]
    saes: tuple[str, ...]
    links: tuple[tuple[str, str], ...]
    extra_dns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "saes", tuple(self.saes))
        object.__setattr__(self, "links", tuple(tuple(link) for link in self.links))
        object.__setattr__(self, "extra_dns", tuple(self.extra_dns))
        self._validate()

    def _validate(self) -> None:
        name = self.cluster_name
        if not isinstance(name, str) or not name or not name.isprintable():
            raise ConfigError(f"cluster_name: must be a non-empty printable string, got {name!r}")
        if len(_ca_common_name(name)) > _MAX_CN_CHARS:
            raise ConfigError(
                f"cluster_name: too long for a certificate common name ({len(name)} chars)"
            )

        nodes: set[str] = set()
        for i, node in enumerate(self.nodes):
            if not isinstance(node, str) or not DNS_LABEL.fullmatch(node):
                raise ConfigError(f"nodes[{i}]: {node!r} is not a DNS-1123 label")
            if node in nodes:
                raise ConfigError(f"nodes[{i}]: duplicate node name {node!r}")
            if node == ADMIN_COMMON_NAME:
                raise ConfigError(f"nodes[{i}]: {node!r} is reserved for the admin certificate")
            nodes.add(node)

        sae_keys: set[str] = set()
        for i, sae in enumerate(self.saes):
            if not isinstance(sae, str) or not SAE_ID.fullmatch(sae):
                raise ConfigError(
                    f"saes[{i}]: {sae!r} must be 1-63 characters of [A-Za-z0-9._-], "
                    "starting with a letter or digit"
                )
            # Case-folded: saes/Foo.pem and saes/foo.pem are one file on some file systems.
            if sae.casefold() in sae_keys:
                raise ConfigError(f"saes[{i}]: duplicate SAE ID {sae!r}")
            if sae in nodes or sae == ADMIN_COMMON_NAME:
                # Identity is the CN: a node's certificate would pass as this SAE's.
                raise ConfigError(f"saes[{i}]: SAE ID {sae!r} collides with a node or admin name")
            sae_keys.add(sae.casefold())

        pairs: set[frozenset[str]] = set()
        files: set[str] = set()
        for i, link in enumerate(self.links):
            if len(link) != 2:
                raise ConfigError(f"links[{i}]: expected an (alice, bob) pair, got {link!r}")
            alice, bob = link
            for end in (alice, bob):
                if end not in nodes:
                    raise ConfigError(f"links[{i}]: unknown node {end!r}")
            if alice == bob:
                raise ConfigError(f"links[{i}]: a link joins two different nodes, got {alice!r} twice")
            pair = frozenset(link)
            if pair in pairs:
                raise ConfigError(f"links[{i}]: duplicate link between {alice!r} and {bob!r}")
            # Node names contain '-', so "a-b"+"c" and "a"+"b-c" would share a key file.
            file_name = _link_file_name(alice, bob)
            if file_name in files:
                raise ConfigError(f"links[{i}]: key file name {file_name!r} is ambiguous")
            pairs.add(pair)
            files.add(file_name)

        for i, suffix in enumerate(self.extra_dns):
            labels = suffix.split(".") if isinstance(suffix, str) else [""]
            if not all(DNS_LABEL.fullmatch(label) for label in labels):
                raise ConfigError(f"extra_dns[{i}]: {suffix!r} is not a DNS-1123 subdomain")
            longest = max((len(n) for n in nodes), default=0)
            if longest + 1 + len(suffix) > 253:
                raise ConfigError(f"extra_dns[{i}]: {suffix!r} makes node DNS names too long")


def _link_file_name(alice: str, bob: str) -> str:
    return f"{alice}-{bob}.key"


@dataclass(frozen=True, slots=True)
class CertBundle:
    """Paths of every file made for a plan.

    Attributes:
        directory: The output directory.
        plan: The plan the files were made for; lookups of unknown names fail.
    """

    directory: Path
    plan: CertPlan

    @property
    def ca_cert(self) -> Path:
        """The cluster CA certificate (PEM)."""
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        """The cluster CA private key (PEM, PKCS#8, unencrypted)."""
        return self.directory / "ca.key"

    @property
    def admin_cert(self) -> Path:
        """The admin client certificate (PEM)."""
        return self.directory / "admin.pem"

    @property
    def admin_key(self) -> Path:
        """The admin client private key (PEM)."""
        return self.directory / "admin.key"

    def node_cert(self, name: str) -> Path:
        """The certificate of node ``name``.

        Raises:
            ConfigError: ``name`` is not a node of the plan.
        """
        return self.directory / "nodes" / f"{self._node(name)}.pem"

    def node_key(self, name: str) -> Path:
        """The private key of node ``name``.

        Raises:
            ConfigError: ``name`` is not a node of the plan.
        """
        return self.directory / "nodes" / f"{self._node(name)}.key"

    def sae_cert(self, sae_id: str) -> Path:
        """The client certificate of SAE ``sae_id``.

        Raises:
            ConfigError: ``sae_id`` is not an SAE of the plan.
        """
        return self.directory / "saes" / f"{self._sae(sae_id)}.pem"

    def sae_key(self, sae_id: str) -> Path:
        """The private key of SAE ``sae_id``.

        Raises:
            ConfigError: ``sae_id`` is not an SAE of the plan.
        """
        return self.directory / "saes" / f"{self._sae(sae_id)}.key"

    def link_key(self, alice: str, bob: str) -> Path:
        """The bootstrap authentication key of the link between two nodes.

        Either order of the two ends finds the link, so each end can ask with
        ``(local_node_id, peer_id)``; the file is named after the plan's order.

        Raises:
            ConfigError: The plan has no link between ``alice`` and ``bob``.
        """
        if (alice, bob) in self.plan.links:
            return self.directory / "links" / _link_file_name(alice, bob)
        if (bob, alice) in self.plan.links:
            return self.directory / "links" / _link_file_name(bob, alice)
        raise ConfigError(f"no link between {alice!r} and {bob!r} in the certificate plan")

    def all_files(self) -> tuple[Path, ...]:
        """Every file of the bundle, CA first."""
        paths = [self.ca_cert, self.ca_key, self.admin_cert, self.admin_key]
        for node in self.plan.nodes:
            paths += [self.node_cert(node), self.node_key(node)]
        for sae in self.plan.saes:
            paths += [self.sae_cert(sae), self.sae_key(sae)]
        paths += [self.link_key(alice, bob) for alice, bob in self.plan.links]
        return tuple(paths)

    def _node(self, name: str) -> str:
        if name not in self.plan.nodes:
            raise ConfigError(f"unknown node {name!r} in the certificate plan")
        return name

    def _sae(self, sae_id: str) -> str:
        if sae_id not in self.plan.saes:
            raise ConfigError(f"unknown SAE ID {sae_id!r} in the certificate plan")
        return sae_id


@dataclass(frozen=True, slots=True)
class _LeafSpec:
    """What a leaf certificate must say; compared against existing files on re-runs."""

    common_name: str
    sans: tuple[x509.GeneralName, ...]
    usages: tuple[x509.ObjectIdentifier, ...]

    @property
    def subject(self) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.common_name)])


@dataclass(frozen=True, slots=True)
class _Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def make_certificates(
    plan: CertPlan,
    out_dir: Path,
    *,
    bootstrap_key_bytes: int = 65536,
    days: int = 365,
    force: bool = False,
) -> CertBundle:
    """Make (or complete) the CA, leaf certificates and link keys of ``plan``.

    Args:
        plan: What to issue.
        out_dir: Output directory; created if missing.
        bootstrap_key_bytes: Size of each new link bootstrap key (at least 32).
        days: Validity of a new CA and of new leaf certificates (a leaf never
            outlives its CA).
        force: Make a new CA, re-issue every leaf and replace every link key.

    Returns:
        The paths of the files.

    Raises:
        ConfigError: Bad arguments, an unusable existing CA (half present,
            unreadable, key not matching, expired), or a file system error.
    """
    if isinstance(bootstrap_key_bytes, bool) or not isinstance(bootstrap_key_bytes, int):
        raise ConfigError("bootstrap_key_bytes: must be an integer")
    if bootstrap_key_bytes < _MIN_BOOTSTRAP_KEY_BYTES:
        raise ConfigError(
            f"bootstrap_key_bytes: must be at least {_MIN_BOOTSTRAP_KEY_BYTES}, "
            f"got {bootstrap_key_bytes}"
        )
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError(f"days: must be a positive integer, got {days!r}")

    bundle = CertBundle(directory=Path(out_dir), plan=plan)
    now = dt.datetime.now(dt.UTC)
    try:
        for sub in (bundle.directory, bundle.directory / "nodes", bundle.directory / "saes",
                    bundle.directory / "links"):
            sub.mkdir(mode=0o700, parents=True, exist_ok=True)  # private keys live here

        authority = _ensure_ca(bundle, plan, now=now, days=days, force=force)

        for node in plan.nodes:
            _ensure_leaf(
                bundle.node_cert(node), bundle.node_key(node), _node_spec(node, plan.extra_dns),
                authority, now=now, days=days, force=force,
            )
        for sae in plan.saes:
            _ensure_leaf(
                bundle.sae_cert(sae), bundle.sae_key(sae), _client_spec(sae, "sae"),
                authority, now=now, days=days, force=force,
            )
        _ensure_leaf(
            bundle.admin_cert, bundle.admin_key, _client_spec(ADMIN_COMMON_NAME, "admin"),
            authority, now=now, days=days, force=force,
        )

        for alice, bob in plan.links:
            path = bundle.link_key(alice, bob)
            if force or not path.exists():
                _write_atomic(path, os.urandom(bootstrap_key_bytes), _PRIVATE_MODE)
    except OSError as exc:
        raise ConfigError(f"cannot write certificates under {bundle.directory}: {exc}") from exc
    return bundle


def load_bundle(out_dir: Path, plan: CertPlan) -> CertBundle:
    """Find the files ``make_certificates`` made for ``plan``.

    Only existence is checked; contents are read by whoever uses them.

    Raises:
        ConfigError: A file is missing; the message names every missing path.
    """
    bundle = CertBundle(directory=Path(out_dir), plan=plan)
    missing = [str(path) for path in bundle.all_files() if not path.is_file()]
    if missing:
        raise ConfigError(f"missing certificate file(s): {', '.join(missing)}")
    return bundle


def cert_plan(topology: Topology) -> CertPlan:
    """What ``qcinode certs`` issues for a topology: every node, every SAE, every link."""
    return CertPlan(
        cluster_name=topology.name,
        nodes=tuple(n.name for n in topology.nodes),
        saes=tuple(s for n in topology.nodes for s in n.saes),
        links=tuple((link.alice, link.bob) for link in topology.links),
    )


def node_bundle(certs_dir: Path, topology: Topology, name: str) -> CertBundle:
    """The certificate files of ``qcinode certs``, checking only those node ``name`` reads.

    A node reads ca.pem, its own certificate and key, and its links' bootstrap
    keys; a pod is not given the CA key, the admin or the SAE credentials.

    Raises:
        ConfigError: A file this node needs is missing; the message names each.
    """
    bundle = CertBundle(directory=Path(certs_dir), plan=cert_plan(topology))
    needed = [bundle.ca_cert, bundle.node_cert(name), bundle.node_key(name)]
    needed += [bundle.link_key(link.alice, link.bob) for link in topology.links_of(name)]
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        raise ConfigError(f"missing certificate file(s): {', '.join(missing)}")
    return bundle


def read_bytes(path: Path) -> bytes:
    """Read a whole file.

    Raises:
        ConfigError: The file cannot be read; the message names it.
    """
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc


def server_credentials_material(bundle: CertBundle, node: str) -> tuple[bytes, bytes, bytes]:
    """What a node needs for TLS, as server and as client.

    Args:
        bundle: The cluster's files.
        node: The node name.

    Returns:
        ``(private_key_pem, certificate_chain_pem, root_ca_pem)``, in the shape
        ``grpc.ssl_server_credentials([(key, chain)], root, True)`` and
        ``grpc.ssl_channel_credentials(root, key, chain)`` take. The chain is
        the node's certificate alone: every peer already trusts the root.

    Raises:
        ConfigError: Unknown node or unreadable file.
    """
    return (
        read_bytes(bundle.node_key(node)),
        read_bytes(bundle.node_cert(node)),
        read_bytes(bundle.ca_cert),
    )


def common_name_of(cert_pem: bytes) -> str:
    """The subject common name of a certificate.

    Args:
        cert_pem: A PEM certificate (the first one is used if several), or
            DER bytes as ``ssl.SSLObject.getpeercert(binary_form=True)`` gives.

    Raises:
        ConfigError: Not a certificate, or not exactly one common name.
    """
    try:
        if cert_pem.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(cert_pem)
        else:
            cert = x509.load_der_x509_certificate(cert_pem)
    except ValueError as exc:
        raise ConfigError(f"not a certificate: {exc}") from exc
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise ConfigError(f"certificate has {len(names)} common names, expected 1")
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


# --- issuing ---------------------------------------------------------------


def _node_spec(node: str, extra_dns: Iterable[str]) -> _LeafSpec:
    sans: list[x509.GeneralName] = [
        x509.DNSName(node),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        x509.IPAddress(ipaddress.IPv6Address("::1")),
    ]
    sans += [x509.DNSName(f"{node}.{suffix}") for suffix in extra_dns]
    return _LeafSpec(
        common_name=node,
        sans=tuple(sans),
        usages=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
    )


def _client_spec(common_name: str, role: str) -> _LeafSpec:
    # Identity is the CN. The URI SAN is there because RFC 5280 profiles (and
    # cryptography's client verifier) want a SAN on every end-entity certificate;
    # it also tells a reader which kind of client this is.
    return _LeafSpec(
        common_name=common_name,
        sans=(x509.UniformResourceIdentifier(f"urn:qcinode:{role}:{common_name}"),),
        usages=(ExtendedKeyUsageOID.CLIENT_AUTH,),
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ensure_ca(
    bundle: CertBundle, plan: CertPlan, *, now: dt.datetime, days: int, force: bool
) -> _Authority:
    cert_path, key_path = bundle.ca_cert, bundle.ca_key
    if not force and (cert_path.exists() or key_path.exists()):
        return _load_ca(cert_path, key_path, now)

    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _ca_common_name(plan.cluster_name))])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    # Key first: a cert without its key is the state _load_ca refuses.
    _write_atomic(key_path, _key_pem(key), _PRIVATE_MODE)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), _PUBLIC_MODE)
    return _Authority(cert=cert, key=key)


def _load_ca(cert_path: Path, key_path: Path, now: dt.datetime) -> _Authority:
    for path in (cert_path, key_path):
        if not path.is_file():
            raise ConfigError(f"incomplete CA: {path} is missing (re-run with force to replace the CA)")
    try:
        cert = x509.load_pem_x509_certificate(read_bytes(cert_path))
    except ValueError as exc:
        raise ConfigError(f"{cert_path}: not a PEM certificate: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(read_bytes(key_path), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{key_path}: not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path}: expected an EC private key")
    if key.public_key() != cert.public_key():
        raise ConfigError(f"{key_path} does not match {cert_path}")
    if cert.not_valid_after_utc <= now:
        raise ConfigError(f"{cert_path}: the CA expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    return _Authority(cert=cert, key=key)


def _ensure_leaf(
    cert_path: Path,
    key_path: Path,
    spec: _LeafSpec,
    authority: _Authority,
    *,
    now: dt.datetime,
    days: int,
    force: bool,
) -> None:
    if not force and _is_current_leaf(cert_path, key_path, spec, authority, now):
        return
    key = _new_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(spec.subject)
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + dt.timedelta(days=days), authority.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(spec.usages)), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
    )
    if spec.sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(spec.sans)), critical=False)
    cert = builder.sign(authority.key, hashes.SHA256())
    _write_atomic(key_path, _key_pem(key), _PRIVATE_MODE)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), _PUBLIC_MODE)


def _is_current_leaf(
    cert_path: Path, key_path: Path, spec: _LeafSpec, authority: _Authority, now: dt.datetime
) -> bool:
    """Whether the files on disk are exactly what we would issue now (rule 2)."""
    if not (cert_path.is_file() and key_path.is_file()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert.verify_directly_issued_by(authority.cert)
    except (OSError, ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        # Unreadable, foreign or forged: re-issue rather than fail.
        return False
    if key.public_key() != cert.public_key():
        return False
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        return False
    if cert.subject != spec.subject:
        return False
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    if list(usages) != list(spec.usages):
        return False
    try:
        sans = tuple(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = ()
    return sans == spec.sans


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` in one step, with exactly ``mode`` (rule 4)."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            # mkstemp creates 0600; fchmod sets the final mode regardless of umask.
            os.fchmod(tmp.fileno(), mode)
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Cleanup only: never leave a stray temporary key file; then re-raise.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


# --- signing and verifying adverts (rule 6) ------------------------------------

_SIGNATURE = ec.ECDSA(hashes.SHA256())
_NODE_USAGES = frozenset({ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH})


class NodeAdvertSigner:
    """Signs the local node's routing adverts with its node certificate's key.

    Satisfies :class:`qcinode.core.routing.AdvertSigner`.
    """

    __slots__ = ("_key", "_certificate")

    def __init__(self, key_pem: bytes, cert_pem: bytes) -> None:
        """Load the node's key and certificate.

        Raises:
            ConfigError: Not a PEM EC P-256 key, not a certificate, or the
                key does not match the certificate.
        """
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
            cert = x509.load_pem_x509_certificate(cert_pem)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"cannot load the node key and certificate for signing adverts: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ConfigError("the node key must be an EC P-256 key to sign adverts")
        if key.public_key() != cert.public_key():
            raise ConfigError("the node key does not match the node certificate")
        self._key = key
        self._certificate = cert.public_bytes(serialization.Encoding.DER)

    @classmethod
    def from_bundle(cls, bundle: CertBundle, node: str) -> NodeAdvertSigner:
        """The signer of node ``node`` from its ``qcinode certs`` files.

        Raises:
            ConfigError: Unknown node, unreadable or unusable files.
        """
        return cls(read_bytes(bundle.node_key(node)), read_bytes(bundle.node_cert(node)))

    @property
    def certificate(self) -> bytes:
        """The node certificate, DER-encoded, as carried in every advert."""
        return self._certificate

    def sign(self, payload: bytes) -> bytes:
        """An ECDSA P-256 / SHA-256 signature (DER) of ``payload``."""
        return self._key.sign(payload, _SIGNATURE)

    def __repr__(self) -> str:
        return "NodeAdvertSigner(<node key>)"  # never show key material


@dataclass(frozen=True, slots=True)
class _TrustedNode:
    common_name: str
    public_key: ec.EllipticCurvePublicKey
    not_before: float
    not_after: float


#: Node certificates checked before this process forked its nodes (:func:`preverify_node_certificates`):
#: (SHA-256 of the CA's DER, SHA-256 of the certificate's DER) -> what the check found.
_preverified: dict[tuple[bytes, bytes], _TrustedNode] = {}


def preverify_node_certificates(certs_dir: str | os.PathLike[str]) -> int:
    """Checks every node certificate under ``certs_dir`` now, for verifiers created after this (or in forked children).

    A fork server (the cluster's zygote) calls it before it forks its nodes:
    each node would otherwise check every other node's certificate chain as
    its first advert arrives, a hundred checks of about a millisecond each
    per node in a 100-node cluster, while all of them start. A verifier
    trusting the same CA starts with these results; each advert is still
    checked against the certificate's validity period, its origin's name
    and its signature, as always. A certificate that fails the check is not
    kept (adverts carrying it are refused as they arrive).

    Returns:
        How many certificates passed (0 if the directory has no CA or nodes).
    """
    _preverified.clear()
    directory = Path(certs_dir)
    try:
        ca_pem = (directory / "ca.pem").read_bytes()
        verifier = NodeCertificateVerifier(ca_pem)
        paths = sorted((directory / "nodes").glob("*.pem"))
    except (OSError, ConfigError):
        return 0
    for path in paths:
        try:
            der = x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)
        except (OSError, ValueError):
            continue
        checked = verifier._check(der)
        if not isinstance(checked, RejectReason):
            _preverified[(verifier._ca_fingerprint, hashlib.sha256(der).digest())] = checked
    return len(_preverified)


class NodeCertificateVerifier:
    """Checks that an advert was signed by a node certificate of this cluster naming its origin.

    Satisfies :class:`qcinode.core.routing.AdvertVerifier` (rule 6 above).
    Certificates :func:`preverify_node_certificates` checked for the same CA
    start in its cache.
    """

    __slots__ = ("_ca", "_ca_fingerprint", "_clock", "_cache", "_cache_size")

    def __init__(self, ca_pem: bytes, *, clock: Callable[[], float] = time.time, cache_size: int = 1024) -> None:
        """Trust certificates issued by the CA in ``ca_pem``.

        Args:
            ca_pem: The cluster CA certificate (PEM).
            clock: Wall-clock seconds, for certificate validity.
            cache_size: Most certificates remembered as verified (the oldest
                is forgotten first).

        Raises:
            ConfigError: ``ca_pem`` is not a certificate.
        """
        try:
            self._ca = x509.load_pem_x509_certificate(ca_pem)
        except ValueError as exc:
            raise ConfigError(f"the CA certificate does not parse: {exc}") from None
        self._ca_fingerprint = hashlib.sha256(self._ca.public_bytes(serialization.Encoding.DER)).digest()
        self._clock = clock
        self._cache_size = max(1, int(cache_size))
        preverified = [(cert, node) for (ca, cert), node in _preverified.items() if ca == self._ca_fingerprint]
        self._cache: dict[bytes, _TrustedNode] = dict(preverified[: self._cache_size])

    @property
    def cached(self) -> int:
        """How many verified certificates are remembered."""
        return len(self._cache)

    def verify(self, origin: str, payload: bytes, signature: bytes, certificate: bytes) -> RejectReason | None:
        """None if ``signature`` over ``payload`` was made by node ``origin``; otherwise why not."""
        fingerprint = hashlib.sha256(certificate).digest()
        trusted = self._cache.get(fingerprint)
        if trusted is None:
            checked = self._check(certificate)
            if isinstance(checked, RejectReason):
                return checked
            trusted = checked
            if len(self._cache) >= self._cache_size:
                del self._cache[next(iter(self._cache))]
            self._cache[fingerprint] = trusted
        now = self._clock()
        if not trusted.not_before <= now < trusted.not_after:
            return RejectReason.UNTRUSTED_CERTIFICATE
        if trusted.common_name != origin:
            return RejectReason.WRONG_ORIGIN
        try:
            trusted.public_key.verify(signature, payload, _SIGNATURE)
        except (InvalidSignature, ValueError):
            return RejectReason.BAD_SIGNATURE
        return None

    def _check(self, der: bytes) -> _TrustedNode | RejectReason:
        """Chain, validity, node profile; the certificate's identity if it passes."""
        try:
            cert = x509.load_der_x509_certificate(der)
            cert.verify_directly_issued_by(self._ca)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            return RejectReason.UNTRUSTED_CERTIFICATE
        now = self._clock()
        not_before = cert.not_valid_before_utc.timestamp()
        not_after = cert.not_valid_after_utc.timestamp()
        if not not_before <= now < not_after:
            return RejectReason.UNTRUSTED_CERTIFICATE
        public_key = cert.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
            return RejectReason.UNTRUSTED_CERTIFICATE
        try:
            common_name = common_name_of(der)
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ConfigError, x509.ExtensionNotFound, ValueError):
            return RejectReason.NOT_A_NODE_CERTIFICATE
        if constraints.ca or not _NODE_USAGES <= usages or common_name == ADMIN_COMMON_NAME:
            return RejectReason.NOT_A_NODE_CERTIFICATE
        if common_name not in sans.get_values_for_type(x509.DNSName):
            return RejectReason.NOT_A_NODE_CERTIFICATE
        return _TrustedNode(common_name, public_key, not_before, not_after)
