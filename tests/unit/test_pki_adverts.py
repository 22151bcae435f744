"""The real advert signer and verifier: ECDSA P-256 with node certificates of the cluster CA."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from qcinode import pki
from qcinode.core.routing import (
    AdvertRejected,
    LinkAdvert,
    LinkStateAdvert,
    LinkStateDatabase,
    RejectReason,
    advert_bytes,
)
from qcinode.errors import ConfigError
from qcinode.pki import (
    CertBundle,
    CertPlan,
    NodeAdvertSigner,
    NodeCertificateVerifier,
    make_certificates,
    read_bytes,
)

PLAN = CertPlan(cluster_name="t", nodes=("alpha", "beta", "gamma"), saes=("alpha-app",), links=(("alpha", "beta"),))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> CertBundle:
    return make_certificates(PLAN, tmp_path_factory.mktemp("certs"), bootstrap_key_bytes=32)


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory: pytest.TempPathFactory) -> CertBundle:
    return make_certificates(PLAN, tmp_path_factory.mktemp("other"), bootstrap_key_bytes=32)


def _signed(signer: NodeAdvertSigner, advert: LinkStateAdvert) -> LinkStateAdvert:
    return dataclasses.replace(advert, signature=signer.sign(advert_bytes(advert)), certificate=signer.certificate)


def _raw_signer(key_path: Path, cert_path: Path) -> NodeAdvertSigner:
    """A signer over any key and certificate (SAE, admin, CA): what a thief of those could do."""
    key = serialization.load_pem_private_key(read_bytes(key_path), password=None)
    cert = x509.load_pem_x509_certificate(read_bytes(cert_path))
    signer = object.__new__(NodeAdvertSigner)
    object.__setattr__(signer, "_key", key)
    object.__setattr__(signer, "_certificate", cert.public_bytes(serialization.Encoding.DER))
    return signer


def test_a_node_signs_and_every_node_verifies(bundle: CertBundle) -> None:
    signer = NodeAdvertSigner.from_bundle(bundle, "alpha")
    verifier = NodeCertificateVerifier(read_bytes(bundle.ca_cert))
    advert = _signed(signer, LinkStateAdvert("alpha", 1, (LinkAdvert("alpha-beta", "beta", True, 10),)))
    assert verifier.verify("alpha", advert_bytes(advert), advert.signature, advert.certificate) is None
    assert "key" not in repr(signer).replace("node key", "")


def test_forgeries_get_their_reason(bundle: CertBundle, other_bundle: CertBundle) -> None:
    verifier = NodeCertificateVerifier(read_bytes(bundle.ca_cert))
    alpha = NodeAdvertSigner.from_bundle(bundle, "alpha")
    beta = NodeAdvertSigner.from_bundle(bundle, "beta")
    advert = LinkStateAdvert("alpha", 5, (LinkAdvert("alpha-beta", "beta", True, 10),))
    payload = advert_bytes(advert)

    def check(signer: NodeAdvertSigner, origin: str = "alpha", data: bytes = payload) -> RejectReason | None:
        return verifier.verify(origin, data, signer.sign(payload), signer.certificate)

    assert check(alpha) is None
    assert check(beta) is RejectReason.WRONG_ORIGIN  # beta's key, beta's certificate, alpha's name
    assert check(alpha, data=advert_bytes(dataclasses.replace(advert, sequence=6))) is RejectReason.BAD_SIGNATURE
    # beta's signature presented with alpha's certificate.
    assert verifier.verify("alpha", payload, beta.sign(payload), alpha.certificate) is RejectReason.BAD_SIGNATURE
    assert verifier.verify("alpha", payload, b"\x30\x00", alpha.certificate) is RejectReason.BAD_SIGNATURE
    # Certificates of the cluster that are not node certificates.
    sae = _raw_signer(bundle.sae_key("alpha-app"), bundle.sae_cert("alpha-app"))
    admin = _raw_signer(bundle.admin_key, bundle.admin_cert)
    ca = _raw_signer(bundle.ca_key, bundle.ca_cert)
    assert check(sae, origin="alpha-app") is RejectReason.NOT_A_NODE_CERTIFICATE
    assert check(admin, origin="qcinode-admin") is RejectReason.NOT_A_NODE_CERTIFICATE
    assert check(ca, origin="qcinode t CA") is RejectReason.NOT_A_NODE_CERTIFICATE
    # Another cluster's CA issued it, or it is not a certificate at all.
    foreign = NodeAdvertSigner.from_bundle(other_bundle, "alpha")
    assert check(foreign) is RejectReason.UNTRUSTED_CERTIFICATE
    assert verifier.verify("alpha", payload, alpha.sign(payload), b"not DER") is RejectReason.UNTRUSTED_CERTIFICATE


def test_validity_is_checked_on_every_use(bundle: CertBundle) -> None:
    now = [dt.datetime.now(dt.UTC).timestamp()]
    verifier = NodeCertificateVerifier(read_bytes(bundle.ca_cert), clock=lambda: now[0])
    alpha = NodeAdvertSigner.from_bundle(bundle, "alpha")
    payload = advert_bytes(LinkStateAdvert("alpha", 5, ()))
    assert verifier.verify("alpha", payload, alpha.sign(payload), alpha.certificate) is None
    now[0] += 400 * 86_400  # past the certificate's validity: cached, but expired
    assert verifier.verify("alpha", payload, alpha.sign(payload), alpha.certificate) is RejectReason.UNTRUSTED_CERTIFICATE
    fresh = NodeCertificateVerifier(read_bytes(bundle.ca_cert), clock=lambda: now[0])
    assert fresh.verify("alpha", payload, alpha.sign(payload), alpha.certificate) is RejectReason.UNTRUSTED_CERTIFICATE
    assert fresh.cached == 0


def _count_chain_checks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The certificates whose chain verifiers check from now on (the list grows as they do)."""
    chain_checks: list[bytes] = []
    real = NodeCertificateVerifier._check

    def counting(self: NodeCertificateVerifier, der: bytes) -> object:
        chain_checks.append(der)
        return real(self, der)

    monkeypatch.setattr(NodeCertificateVerifier, "_check", counting)
    return chain_checks


def test_a_verified_certificate_is_checked_once(bundle: CertBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = NodeCertificateVerifier(read_bytes(bundle.ca_cert), cache_size=2)
    chain_checks = _count_chain_checks(monkeypatch)
    signers = [NodeAdvertSigner.from_bundle(bundle, name) for name in ("alpha", "beta", "gamma")]
    for _ in range(5):
        for signer, name in zip(signers[:2], ("alpha", "beta")):
            payload = advert_bytes(LinkStateAdvert(name, 5, ()))
            assert verifier.verify(name, payload, signer.sign(payload), signer.certificate) is None
    assert len(chain_checks) == 2 and verifier.cached == 2
    payload = advert_bytes(LinkStateAdvert("gamma", 5, ()))
    assert verifier.verify("gamma", payload, signers[2].sign(payload), signers[2].certificate) is None
    assert verifier.cached == 2  # bounded: the oldest was forgotten


def test_the_signer_refuses_a_key_that_is_not_its_certificates(bundle: CertBundle) -> None:
    with pytest.raises(ConfigError, match="does not match"):
        NodeAdvertSigner(read_bytes(bundle.node_key("alpha")), read_bytes(bundle.node_cert("beta")))
    rsa_like = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ConfigError, match="P-256"):
        NodeAdvertSigner(rsa_like, read_bytes(bundle.node_cert("alpha")))
    with pytest.raises(ConfigError):
        NodeCertificateVerifier(b"not a certificate")


def test_databases_with_real_keys_flood_and_refuse(bundle: CertBundle) -> None:
    ca = read_bytes(bundle.ca_cert)
    now = dt.datetime.now(dt.UTC).timestamp()
    dbs = {
        name: LinkStateDatabase(name, signer=NodeAdvertSigner.from_bundle(bundle, name), verifier=NodeCertificateVerifier(ca))
        for name in ("alpha", "beta")
    }
    advert = dbs["alpha"].originate([LinkAdvert("alpha-beta", "beta", True, 64)], now)
    assert dbs["beta"].receive(advert, now) is True
    back = dbs["beta"].originate([LinkAdvert("alpha-beta", "alpha", True, 64)], now)
    assert dbs["alpha"].receive(back, now) is True
    assert dbs["alpha"].paths("alpha", "beta", 64) == [["alpha", "beta"]]
    # beta, holding its own key, tries to speak for alpha.
    beta_signer = NodeAdvertSigner.from_bundle(bundle, "beta")
    forged = _signed(beta_signer, LinkStateAdvert("alpha", advert.sequence + 1, ()))
    with pytest.raises(AdvertRejected) as refused:
        dbs["alpha"].receive(forged, now)
    assert refused.value.reason is RejectReason.WRONG_ORIGIN


def test_certificates_checked_before_the_nodes_fork_start_in_every_verifier(
    bundle: CertBundle, other_bundle: CertBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pki, "_preverified", {})  # this process's, left as it was after the test
    assert pki.preverify_node_certificates(bundle.directory) == 3
    now = [dt.datetime.now(dt.UTC).timestamp()]
    verifier = NodeCertificateVerifier(read_bytes(bundle.ca_cert), clock=lambda: now[0])
    assert verifier.cached == 3
    chain_checks = _count_chain_checks(monkeypatch)
    alpha, beta = (NodeAdvertSigner.from_bundle(bundle, name) for name in ("alpha", "beta"))
    payload = advert_bytes(LinkStateAdvert("alpha", 5, ()))
    assert verifier.verify("alpha", payload, alpha.sign(payload), alpha.certificate) is None
    assert chain_checks == []  # checked before the fork, not again
    # Everything else is still checked on every advert: origin, signature, validity.
    assert verifier.verify("alpha", payload, beta.sign(payload), beta.certificate) is RejectReason.WRONG_ORIGIN
    assert verifier.verify("alpha", payload, beta.sign(payload), alpha.certificate) is RejectReason.BAD_SIGNATURE
    now[0] += 400 * 86_400
    assert verifier.verify("alpha", payload, alpha.sign(payload), alpha.certificate) is RejectReason.UNTRUSTED_CERTIFICATE
    # Another CA's verifier starts with none of them, and another CA's node is checked (and refused) as before.
    assert NodeCertificateVerifier(read_bytes(other_bundle.ca_cert)).cached == 0
    now[0] -= 400 * 86_400
    foreign = NodeAdvertSigner.from_bundle(other_bundle, "alpha")
    assert verifier.verify("alpha", payload, foreign.sign(payload), foreign.certificate) is RejectReason.UNTRUSTED_CERTIFICATE
    assert chain_checks == [foreign.certificate]
    # A certificate in the directory that the CA did not issue is not kept; no directory keeps nothing.
    forged = tmp_path / "certs"
    (forged / "nodes").mkdir(parents=True)
    (forged / "ca.pem").write_bytes(read_bytes(bundle.ca_cert))
    for name in ("alpha", "beta"):
        (forged / "nodes" / f"{name}.pem").write_bytes(read_bytes(bundle.node_cert(name)))
    (forged / "nodes" / "gamma.pem").write_bytes(read_bytes(other_bundle.node_cert("gamma")))
    assert pki.preverify_node_certificates(forged) == 2
    assert pki.preverify_node_certificates(tmp_path / "missing") == 0
    assert NodeCertificateVerifier(read_bytes(bundle.ca_cert)).cached == 0
