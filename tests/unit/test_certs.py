"""Certificate tooling: what is issued, where, with which modes, and that TLS accepts it.

The TLS checks run the stdlib ``ssl`` state machines over ``MemoryBIO`` pairs,
so no socket is opened (unit tests stay socket-free).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from qcinode.errors import ConfigError
from qcinode.pki import (
    ADMIN_COMMON_NAME,
    CertBundle,
    CertPlan,
    common_name_of,
    load_bundle,
    make_certificates,
    read_bytes,
    server_credentials_material,
)

KEY_BYTES = 96


def _plan(**overrides: object) -> CertPlan:
    fields: dict[str, object] = {
        "cluster_name": "demo",
        "nodes": ("alice", "bob", "charlie"),
        "saes": ("sae-alice", "SAE_Bob.1"),
        "links": (("alice", "bob"), ("bob", "charlie")),
        "extra_dns": ("qcinode.default.svc.cluster.local",),
    }
    fields.update(overrides)
    return CertPlan(**fields)  # type: ignore[arg-type]


@pytest.fixture
def plan() -> CertPlan:
    return _plan()


@pytest.fixture
def bundle(plan: CertPlan, tmp_path: Path) -> CertBundle:
    return make_certificates(plan, tmp_path / "certs", bootstrap_key_bytes=KEY_BYTES)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _policy(bundle: CertBundle) -> PolicyBuilder:
    return PolicyBuilder().store(Store([_cert(bundle.ca_cert)]))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- what is issued --------------------------------------------------------


def test_ca_is_a_signing_only_authority(bundle: CertBundle) -> None:
    ca = _cert(bundle.ca_cert)

    assert common_name_of(bundle.ca_cert.read_bytes()) == "qcinode demo CA"
    assert ca.subject == ca.issuer
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    ca.verify_directly_issued_by(ca)


@pytest.mark.parametrize(
    "subject",
    [
        DNSName("alice"),
        DNSName("localhost"),
        DNSName("alice.qcinode.default.svc.cluster.local"),
        IPAddress(ipaddress.ip_address("127.0.0.1")),
        IPAddress(ipaddress.ip_address("::1")),
    ],
)
def test_node_cert_chains_to_ca_as_server(bundle: CertBundle, subject: DNSName | IPAddress) -> None:
    verifier = _policy(bundle).build_server_verifier(subject)

    chain = verifier.verify(_cert(bundle.node_cert("alice")), [])

    assert [c.subject for c in chain] == [
        _cert(bundle.node_cert("alice")).subject,
        _cert(bundle.ca_cert).subject,
    ]


def test_node_cert_is_not_valid_for_another_name(bundle: CertBundle) -> None:
    verifier = _policy(bundle).build_server_verifier(DNSName("bob"))

    with pytest.raises(VerificationError):
        verifier.verify(_cert(bundle.node_cert("alice")), [])


def test_node_cert_sans_and_ekus(bundle: CertBundle) -> None:
    cert = _cert(bundle.node_cert("bob"))

    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(sans) == [
        x509.DNSName("bob"),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        x509.IPAddress(ipaddress.IPv6Address("::1")),
        x509.DNSName("bob.qcinode.default.svc.cluster.local"),
    ]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert common_name_of(bundle.node_cert("bob").read_bytes()) == "bob"


def test_node_cert_also_verifies_as_client(bundle: CertBundle) -> None:
    # Nodes dial each other over gRPC with the same certificate.
    _policy(bundle).build_client_verifier().verify(_cert(bundle.node_cert("charlie")), [])


@pytest.mark.parametrize("sae_id", ["sae-alice", "SAE_Bob.1"])
def test_sae_cert_is_a_client_cert_named_after_the_sae(bundle: CertBundle, sae_id: str) -> None:
    cert = _cert(bundle.sae_cert(sae_id))

    assert common_name_of(bundle.sae_cert(sae_id).read_bytes()) == sae_id
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    _policy(bundle).build_client_verifier().verify(cert, [])
    # Without serverAuth it cannot pose as a node.
    with pytest.raises(VerificationError):
        _policy(bundle).build_server_verifier(DNSName("localhost")).verify(cert, [])


def test_admin_cert_is_a_client_cert(bundle: CertBundle) -> None:
    cert = _cert(bundle.admin_cert)

    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == ADMIN_COMMON_NAME
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    _policy(bundle).build_client_verifier().verify(cert, [])


def test_file_modes_hold_under_a_strict_umask(plan: CertPlan, tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        bundle = make_certificates(plan, tmp_path / "certs", bootstrap_key_bytes=KEY_BYTES)
    finally:
        os.umask(old)

    for path in bundle.all_files():
        expected = 0o644 if path.suffix == ".pem" else 0o600
        assert _mode(path) == expected, path
    assert not list(bundle.directory.rglob("*.tmp"))


def test_private_keys_are_0600(bundle: CertBundle) -> None:
    keys = [bundle.ca_key, bundle.admin_key, bundle.node_key("alice"), bundle.sae_key("sae-alice")]
    keys += [bundle.link_key("alice", "bob")]

    assert {_mode(path) for path in keys} == {0o600}
    assert _mode(bundle.ca_cert) == 0o644


def test_link_keys_have_the_requested_size_and_differ(bundle: CertBundle) -> None:
    first = bundle.link_key("alice", "bob").read_bytes()
    second = bundle.link_key("bob", "charlie").read_bytes()

    assert len(first) == len(second) == KEY_BYTES
    assert first != second


def test_link_key_is_found_from_either_end(bundle: CertBundle) -> None:
    assert bundle.link_key("bob", "alice") == bundle.link_key("alice", "bob")
    assert bundle.link_key("alice", "bob").name == "alice-bob.key"
    with pytest.raises(ConfigError, match="no link"):
        bundle.link_key("alice", "charlie")


def test_unknown_names_are_config_errors(bundle: CertBundle) -> None:
    with pytest.raises(ConfigError, match="dave"):
        bundle.node_cert("dave")
    with pytest.raises(ConfigError, match="sae-dave"):
        bundle.sae_key("sae-dave")


def test_server_credentials_material(bundle: CertBundle) -> None:
    key, chain, root = server_credentials_material(bundle, "alice")

    assert key == bundle.node_key("alice").read_bytes()
    assert chain == bundle.node_cert("alice").read_bytes()
    assert root == bundle.ca_cert.read_bytes()
    assert key.startswith(b"-----BEGIN PRIVATE KEY-----")


# --- re-runs ---------------------------------------------------------------


def test_rerun_reuses_ca_and_keeps_everything(plan: CertPlan, bundle: CertBundle) -> None:
    before = {path: path.read_bytes() for path in bundle.all_files()}

    again = make_certificates(plan, bundle.directory, bootstrap_key_bytes=KEY_BYTES)

    assert {path: path.read_bytes() for path in again.all_files()} == before


def test_rerun_signs_new_leaves_with_the_existing_ca(bundle: CertBundle) -> None:
    ca_pem = bundle.ca_cert.read_bytes()
    link_key = bundle.link_key("alice", "bob").read_bytes()
    bigger = _plan(
        nodes=("alice", "bob", "charlie", "dave"),
        saes=("sae-alice", "SAE_Bob.1", "sae-dave"),
        links=(("alice", "bob"), ("bob", "charlie"), ("charlie", "dave")),
    )

    again = make_certificates(bigger, bundle.directory, bootstrap_key_bytes=KEY_BYTES)

    assert again.ca_cert.read_bytes() == ca_pem
    assert again.link_key("alice", "bob").read_bytes() == link_key
    ca = _cert(again.ca_cert)
    _cert(again.node_cert("dave")).verify_directly_issued_by(ca)
    _cert(again.sae_cert("sae-dave")).verify_directly_issued_by(ca)
    assert len(again.link_key("charlie", "dave").read_bytes()) == KEY_BYTES


def test_rerun_reissues_a_node_cert_whose_names_changed(bundle: CertBundle) -> None:
    old_node = bundle.node_cert("alice").read_bytes()
    old_sae = bundle.sae_cert("sae-alice").read_bytes()

    again = make_certificates(_plan(extra_dns=("qcinode.prod.svc",)), bundle.directory)

    assert again.node_cert("alice").read_bytes() != old_node
    assert again.sae_cert("sae-alice").read_bytes() == old_sae
    _policy(again).build_server_verifier(DNSName("alice.qcinode.prod.svc")).verify(
        _cert(again.node_cert("alice")), []
    )


def test_rerun_never_overwrites_link_keys_even_with_another_size(bundle: CertBundle) -> None:
    link_key = bundle.link_key("alice", "bob").read_bytes()

    again = make_certificates(_plan(), bundle.directory, bootstrap_key_bytes=2 * KEY_BYTES)

    assert again.link_key("alice", "bob").read_bytes() == link_key


def test_force_replaces_ca_and_link_keys(bundle: CertBundle) -> None:
    before = {path: path.read_bytes() for path in bundle.all_files()}

    again = make_certificates(_plan(), bundle.directory, bootstrap_key_bytes=KEY_BYTES, force=True)

    assert all(path.read_bytes() != before[path] for path in again.all_files())
    _cert(again.node_cert("alice")).verify_directly_issued_by(_cert(again.ca_cert))


def test_half_present_ca_is_refused(bundle: CertBundle) -> None:
    bundle.ca_key.unlink()

    with pytest.raises(ConfigError, match="ca.key"):
        make_certificates(_plan(), bundle.directory)


def test_ca_key_not_matching_its_cert_is_refused(bundle: CertBundle, tmp_path: Path) -> None:
    other = make_certificates(_plan(), tmp_path / "other")
    bundle.ca_key.write_bytes(other.ca_key.read_bytes())

    with pytest.raises(ConfigError, match="does not match"):
        make_certificates(_plan(), bundle.directory)


# --- loading ---------------------------------------------------------------


def test_load_bundle_finds_every_file(plan: CertPlan, bundle: CertBundle) -> None:
    loaded = load_bundle(bundle.directory, plan)

    assert loaded.all_files() == bundle.all_files()


@pytest.mark.parametrize(
    "victim",
    [
        lambda b: b.ca_cert,
        lambda b: b.node_key("bob"),
        lambda b: b.sae_cert("SAE_Bob.1"),
        lambda b: b.admin_key,
        lambda b: b.link_key("bob", "charlie"),
    ],
    ids=["ca", "node-key", "sae-cert", "admin-key", "link-key"],
)
def test_load_bundle_names_the_missing_file(
    plan: CertPlan, bundle: CertBundle, victim: Callable[[CertBundle], Path]
) -> None:
    missing = victim(bundle)
    missing.unlink()

    with pytest.raises(ConfigError) as excinfo:
        load_bundle(bundle.directory, plan)

    assert str(missing) in str(excinfo.value)


def test_read_bytes_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.pem"):
        read_bytes(tmp_path / "nope.pem")


def test_common_name_of_rejects_garbage() -> None:
    with pytest.raises(ConfigError):
        common_name_of(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError):
        common_name_of(b"\x30\x03\x02\x01\x00")


# --- plan validation -------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"nodes": ("Alice",)}, "nodes[0]"),
        ({"nodes": ("alice", "alice")}, "nodes[1]"),
        ({"nodes": ("qcinode-admin",), "links": ()}, "nodes[0]"),
        ({"saes": ("../etc",)}, "saes[0]"),
        ({"saes": ("bob",)}, "saes[0]"),
        ({"saes": ("qcinode-admin",)}, "saes[0]"),
        ({"saes": ("sae", "SAE")}, "saes[1]"),
        ({"links": (("alice", "dave"),)}, "links[0]"),
        ({"links": (("alice", "alice"),)}, "links[0]"),
        ({"links": (("alice", "bob"), ("bob", "alice"))}, "links[1]"),
        (
            {"nodes": ("a-b", "c", "a", "b-c"), "links": (("a-b", "c"), ("a", "b-c"))},
            "links[1]",
        ),
        ({"extra_dns": (".svc",)}, "extra_dns[0]"),
        ({"cluster_name": ""}, "cluster_name"),
        ({"cluster_name": "x" * 60}, "cluster_name"),
    ],
)
def test_bad_plans_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        _plan(**overrides)

    assert str(excinfo.value).startswith(field)


def test_plan_accepts_lists() -> None:
    plan = _plan(nodes=["alice", "bob", "charlie"], links=[["alice", "bob"]])

    assert plan.nodes == ("alice", "bob", "charlie")
    assert plan.links == (("alice", "bob"),)


@pytest.mark.parametrize(("kwargs"), [{"bootstrap_key_bytes": 16}, {"days": 0}])
def test_bad_arguments_are_config_errors(plan: CertPlan, tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        make_certificates(plan, tmp_path, **kwargs)  # type: ignore[arg-type]


# --- TLS over memory BIOs --------------------------------------------------


class HandshakeFailed(Exception):
    def __init__(self, side: str, error: ssl.SSLError) -> None:
        super().__init__(f"{side}: {error}")
        self.side = side
        self.error = error


def _handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run both ends of a TLS handshake in memory; return (server, client)."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, obj in (("client", client), ("server", server)):
            if done[side]:
                continue
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                raise HandshakeFailed(side, exc) from exc
            else:
                done[side] = True
        to_server, to_client = c_out.read(), s_out.read()
        s_in.write(to_server)
        c_in.write(to_client)
        if all(done.values()) and not to_server and not to_client:
            return server, client
    raise AssertionError(f"handshake did not finish: {done}")


def _server_ctx(cert: Path, key: Path, ca: Path, max_version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = max_version
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=ca)
    return ctx


def _client_ctx(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=ca)
    return ctx


@pytest.fixture
def tls_server(bundle: CertBundle) -> Iterator[ssl.SSLContext]:
    yield _server_ctx(
        bundle.node_cert("alice"), bundle.node_key("alice"), bundle.ca_cert, ssl.TLSVersion.TLSv1_3
    )


@pytest.mark.parametrize("max_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("hostname", ["alice", "localhost", "127.0.0.1"])
def test_sae_completes_mutual_tls_with_its_node(
    bundle: CertBundle, max_version: ssl.TLSVersion, hostname: str
) -> None:
    server_ctx = _server_ctx(
        bundle.node_cert("alice"), bundle.node_key("alice"), bundle.ca_cert, max_version
    )
    client_ctx = _client_ctx(bundle.sae_cert("sae-alice"), bundle.sae_key("sae-alice"), bundle.ca_cert)

    server, client = _handshake(server_ctx, client_ctx, server_hostname=hostname)

    expected_version = {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}
    assert server.version() == expected_version[max_version]
    peer_der = server.getpeercert(binary_form=True)
    assert peer_der is not None
    assert common_name_of(peer_der) == "sae-alice"
    assert common_name_of(client.getpeercert(binary_form=True) or b"") == "alice"


def test_nodes_complete_mutual_tls_with_each_other(bundle: CertBundle, tls_server: ssl.SSLContext) -> None:
    client_ctx = _client_ctx(bundle.node_cert("bob"), bundle.node_key("bob"), bundle.ca_cert)

    server, _ = _handshake(tls_server, client_ctx, server_hostname="alice")

    assert common_name_of(server.getpeercert(binary_form=True) or b"") == "bob"


def test_client_cert_from_another_ca_is_rejected(
    bundle: CertBundle, tls_server: ssl.SSLContext, tmp_path: Path
) -> None:
    rogue = make_certificates(_plan(cluster_name="rogue"), tmp_path / "rogue")
    # The rogue client trusts our CA, so only the server's check can stop it.
    client_ctx = _client_ctx(rogue.sae_cert("sae-alice"), rogue.sae_key("sae-alice"), bundle.ca_cert)

    with pytest.raises(HandshakeFailed) as excinfo:
        _handshake(tls_server, client_ctx, server_hostname="alice")

    assert excinfo.value.side == "server"
    assert excinfo.value.error.reason == "CERTIFICATE_VERIFY_FAILED"
    assert "issuer" in str(excinfo.value.error)


def test_sae_cert_cannot_serve(bundle: CertBundle) -> None:
    server_ctx = _server_ctx(
        bundle.sae_cert("sae-alice"), bundle.sae_key("sae-alice"), bundle.ca_cert, ssl.TLSVersion.TLSv1_3
    )
    client_ctx = _client_ctx(bundle.node_cert("bob"), bundle.node_key("bob"), bundle.ca_cert)
    client_ctx.check_hostname = False  # so that only the purpose (EKU) check can fail

    with pytest.raises(HandshakeFailed) as excinfo:
        _handshake(server_ctx, client_ctx, server_hostname="sae-alice")

    assert excinfo.value.side == "client"
    assert "purpose" in str(excinfo.value.error)
