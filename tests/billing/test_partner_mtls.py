"""The partner API over mutual TLS: each partner's client certificate is bound to that
partner, so a leaked API key alone opens nothing and one partner's certificate cannot be
used with another partner's key; production refuses to serve it without mutual TLS.

A throwaway CA signs the server certificate (127.0.0.1, localhost) and the partners'
client certificates; a second, unknown CA signs a rogue one. The partner API runs with
mTLS beside the plaintext one of the `env` fixture, on the same database (SQLite and
PostgreSQL)."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError
from secondopinion.billing.v1 import billing_pb2 as pb
from secondopinion.partner.v1 import partner_pb2 as ppb
from secondopinion.partner.v1 import partner_pb2_grpc as ppb_grpc

from services.billing.app import partner_server_credentials, running_all, running_partner_api
from services.billing.settings import BillingSettings
from services.shared.settings import Environment
from tests.billing.conftest import Env, expect_status, partner_with_agreement
from tests.billing.test_deferred_rendering_and_sweep import other_billing

DENIED = "a valid partner API key is required"
PRODUCTION_SECRETS: dict[str, Any] = {"psp_hmac_key_hex": "ab" * 64, "coverage_code_secret_hex": "cd" * 32}


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@dataclass
class Issued:
    """A certificate and its private key, PEM-encoded."""

    certificate: x509.Certificate
    key_pem: bytes

    @property
    def pem(self) -> bytes:
        return _pem(self.certificate)

    @property
    def fingerprint(self) -> str:
        return self.certificate.fingerprint(hashes.SHA256()).hex()


class Authority:
    """A throwaway certification authority."""

    def __init__(self, name: str) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.certificate = self._builder(self._name, self._key.public_key(), ca=True).sign(
            self._key, hashes.SHA256()
        )

    @property
    def pem(self) -> bytes:
        return _pem(self.certificate)

    def _builder(
        self, subject: x509.Name, public_key: Any, ca: bool, days: int = 1
    ) -> x509.CertificateBuilder:
        now = datetime.now(UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=2))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )

    def issue(self, common_name: str, server: bool = False, valid_days: int = 1, ca: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = self._builder(subject, key.public_key(), ca=ca, days=valid_days)
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        elif not ca:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return Issued(builder.sign(self._key, hashes.SHA256()), key_pem)


def write_server_files(directory: Path, ca: Authority) -> dict[str, Any]:
    """The three mTLS settings of the partner API, as files in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    server = ca.issue("partner-api.test", server=True)
    paths = {
        "partner_tls_cert_path": directory / "server.pem",
        "partner_tls_key_path": directory / "server.key.pem",
        "partner_tls_client_ca_path": directory / "partners-ca.pem",
    }
    paths["partner_tls_cert_path"].write_bytes(server.pem)
    paths["partner_tls_key_path"].write_bytes(server.key_pem)
    paths["partner_tls_client_ca_path"].write_bytes(ca.pem)
    return paths


class _Partner:
    """A partner stub on its own channel, sending its API key on every call."""

    def __init__(self, channel: grpc.aio.Channel, api_key: str) -> None:
        self._stub = ppb_grpc.PartnerServiceStub(channel)
        self._metadata = (("x-partner-api-key", api_key),) if api_key else ()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)
        return lambda request: method(request, metadata=self._metadata, timeout=10)


@dataclass
class Mtls:
    env: Env
    ca: Authority
    target: str
    settings: BillingSettings

    def partner(self, certificate: Issued | None, api_key: str, trust: bytes | None = None) -> _Partner:
        """A partner client presenting `certificate` (None: no client certificate)."""
        credentials = grpc.ssl_channel_credentials(
            root_certificates=trust or self.ca.pem,
            private_key=certificate.key_pem if certificate else None,
            certificate_chain=certificate.pem if certificate else None,
        )
        # A channel of its own (no shared subchannel): each client is its own TLS peer.
        channel = grpc.aio.secure_channel(
            self.target, credentials, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.env.exit_stack.push_async_callback(channel.close)
        return _Partner(channel, api_key)


@pytest.fixture(scope="module")
async def mtls(env: Env, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mtls]:
    ca = Authority("Partners test CA")
    paths = write_server_files(tmp_path_factory.mktemp(f"partner-tls-{env.backend}"), ca)
    settings = env.settings.model_copy(update=paths)
    assert settings.partner_mtls
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(running_partner_api(settings))
        yield Mtls(env, ca, server.target, settings)


async def api_key(env: Env, partner_id: str) -> tuple[str, str]:
    created = await env.billing().CreatePartnerApiKey(pb.CreatePartnerApiKeyRequest(partner_id=partner_id))
    return created.api_key, created.credential.credential_id


async def register(
    env: Env, partner_id: str, certificate: Issued | bytes, key: str = ""
) -> pb.PartnerCredential:
    pem = certificate if isinstance(certificate, bytes) else certificate.pem
    response = await env.billing().RegisterPartnerCertificate(
        pb.RegisterPartnerCertificateRequest(
            idempotency_key=key or f"cert-{uuid.uuid4()}", partner_id=partner_id, certificate_pem=pem.decode()
        )
    )
    credential: pb.PartnerCredential = response.credential
    return credential


async def revoke(env: Env, credential_id: str) -> None:
    await env.billing().RevokePartnerCredential(
        pb.RevokePartnerCredentialRequest(
            idempotency_key=f"revoke-{credential_id}", credential_id=credential_id
        )
    )


async def drain(call: Any) -> None:
    async for _ in call:
        pass


async def agreements(api: _Partner) -> list[str]:
    response = await api.ListAgreements(ppb.ListAgreementsRequest())
    return [a.agreement_id for a in response.agreements]


@pytest.mark.req("BIL-01")
@pytest.mark.req("SEC-04")
async def test_a_partner_with_its_own_certificate_and_key_is_served(mtls: Mtls) -> None:
    env = mtls.env
    partner_id, agreement_id = await partner_with_agreement(env)
    key, _ = await api_key(env, partner_id)
    certificate = mtls.ca.issue(f"partner {partner_id}")
    credential = await register(env, partner_id, certificate)
    assert credential.kind == pb.PARTNER_CREDENTIAL_KIND_CLIENT_CERTIFICATE
    assert credential.certificate_sha256_fingerprint == certificate.fingerprint
    assert credential.partner_id == partner_id and not credential.api_key_prefix
    assert credential.expires_at.ToDatetime(UTC) == certificate.certificate.not_valid_after_utc
    listed = await env.billing().ListPartnerCredentials(
        pb.ListPartnerCredentialsRequest(partner_id=partner_id)
    )
    assert {c.kind for c in listed.credentials} == {
        pb.PARTNER_CREDENTIAL_KIND_API_KEY,
        pb.PARTNER_CREDENTIAL_KIND_CLIENT_CERTIFICATE,
    }
    api = mtls.partner(certificate, key)
    assert await agreements(api) == [agreement_id]
    # Streaming calls pass the same guard (here: authenticated, then no such invoice).
    await expect_status(
        drain(api.DownloadInvoice(ppb.DownloadInvoiceRequest(invoice_id=str(uuid.uuid4())))),
        grpc.StatusCode.NOT_FOUND,
    )


@pytest.mark.req("SEC-04")
async def test_without_a_client_certificate_the_handshake_fails(mtls: Mtls) -> None:
    env = mtls.env
    partner_id, _ = await partner_with_agreement(env)
    key, _ = await api_key(env, partner_id)
    await expect_status(
        mtls.partner(None, key).ListAgreements(ppb.ListAgreementsRequest()), grpc.StatusCode.UNAVAILABLE
    )
    # Nor does plaintext reach it.
    channel = grpc.aio.insecure_channel(mtls.target, options=[("grpc.use_local_subchannel_pool", 1)])
    env.exit_stack.push_async_callback(channel.close)
    await expect_status(
        _Partner(channel, key).ListAgreements(ppb.ListAgreementsRequest()), grpc.StatusCode.UNAVAILABLE
    )


@pytest.mark.req("SEC-04")
async def test_a_certificate_from_an_unknown_ca_fails_the_handshake(mtls: Mtls) -> None:
    env = mtls.env
    partner_id, _ = await partner_with_agreement(env)
    key, _ = await api_key(env, partner_id)
    rogue = Authority("Partners test CA").issue(f"partner {partner_id}")
    # Even registered to the partner: the handshake checks the chain against the partners' CA.
    await register(env, partner_id, rogue)
    await expect_status(
        mtls.partner(rogue, key).ListAgreements(ppb.ListAgreementsRequest()), grpc.StatusCode.UNAVAILABLE
    )


@pytest.mark.req("BIL-01")
@pytest.mark.req("SEC-04")
async def test_one_partners_certificate_does_not_work_with_another_partners_key(
    mtls: Mtls, caplog: pytest.LogCaptureFixture
) -> None:
    env = mtls.env
    a_id, a_agreement = await partner_with_agreement(env)
    b_id, b_agreement = await partner_with_agreement(env)
    a_key, _ = await api_key(env, a_id)
    b_key, _ = await api_key(env, b_id)
    a_cert = mtls.ca.issue(f"partner {a_id}")
    b_cert = mtls.ca.issue(f"partner {b_id}")
    await register(env, a_id, a_cert)
    await register(env, b_id, b_cert)
    assert await agreements(mtls.partner(a_cert, a_key)) == [a_agreement]
    assert await agreements(mtls.partner(b_cert, b_key)) == [b_agreement]
    with caplog.at_level(logging.WARNING, logger="services.billing.domain.partner_access"):
        mixed = mtls.partner(a_cert, b_key)
        details = await expect_status(
            mixed.ListAgreements(ppb.ListAgreementsRequest()), grpc.StatusCode.UNAUTHENTICATED
        )
        await expect_status(
            drain(mixed.DownloadInvoice(ppb.DownloadInvoiceRequest(invoice_id=str(uuid.uuid4())))),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        await expect_status(
            mtls.partner(b_cert, a_key).ListAgreements(ppb.ListAgreementsRequest()),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    # The same message as a wrong key or none (a valid certificate alone opens nothing):
    # nothing tells a caller which of the two was refused.
    assert details == DENIED
    for api in (mtls.partner(a_cert, ""), mtls.partner(a_cert, "sopk_" + secrets.token_urlsafe(32))):
        assert (
            await expect_status(
                api.ListAgreements(ppb.ListAgreementsRequest()), grpc.StatusCode.UNAUTHENTICATED
            )
            == DENIED
        )
    # A structured warning names the key's partner and the certificate's fingerprint prefix,
    # never the key.
    warnings = [
        r for r in caplog.records if r.getMessage().startswith("partner api key used with a certificate")
    ]
    fields = [getattr(r, "fields", {}) for r in warnings]
    assert {"partner_id": b_id, "certificate_sha256_prefix": a_cert.fingerprint[:12]} in fields
    assert {"partner_id": a_id, "certificate_sha256_prefix": b_cert.fingerprint[:12]} in fields
    assert all(len(f["certificate_sha256_prefix"]) < len(a_cert.fingerprint) for f in fields)
    logged = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert a_key not in logged and b_key not in logged and a_key[:12] not in logged
    # And a certificate is bound to one partner: A's cannot be registered to B.
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await register(env, b_id, a_cert)
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.req("SEC-04")
async def test_a_removed_fingerprint_is_refused_and_rotation_keeps_service(mtls: Mtls) -> None:
    env = mtls.env
    partner_id, agreement_id = await partner_with_agreement(env)
    key, key_credential = await api_key(env, partner_id)
    old = mtls.ca.issue(f"partner {partner_id} 2025")
    new = mtls.ca.issue(f"partner {partner_id} 2026")
    old_credential = await register(env, partner_id, old)
    assert await agreements(mtls.partner(old, key)) == [agreement_id]
    # Rotation: the new certificate is registered, both work, then the old one is removed.
    new_credential = await register(env, partner_id, new)
    assert await agreements(mtls.partner(new, key)) == [agreement_id]
    assert await agreements(mtls.partner(old, key)) == [agreement_id]
    await revoke(env, old_credential.credential_id)
    await expect_status(
        mtls.partner(old, key).ListAgreements(ppb.ListAgreementsRequest()), grpc.StatusCode.UNAUTHENTICATED
    )
    assert await agreements(mtls.partner(new, key)) == [agreement_id]
    # Revoked key with a valid certificate: refused too.
    await revoke(env, key_credential)
    await expect_status(
        mtls.partner(new, key).ListAgreements(ppb.ListAgreementsRequest()), grpc.StatusCode.UNAUTHENTICATED
    )
    other_key, _ = await api_key(env, partner_id)
    assert await agreements(mtls.partner(new, other_key)) == [agreement_id]
    await revoke(env, new_credential.credential_id)
    await expect_status(
        mtls.partner(new, other_key).ListAgreements(ppb.ListAgreementsRequest()),
        grpc.StatusCode.UNAUTHENTICATED,
    )


@pytest.mark.req("SEC-04")
async def test_registering_a_certificate_checks_it(mtls: Mtls) -> None:
    env = mtls.env
    partner_id, _ = await partner_with_agreement(env)
    certificate = mtls.ca.issue(f"partner {partner_id}")
    first = await register(env, partner_id, certificate, key="cert-a")
    # The same certificate again (another key) answers the same credential.
    again = await register(env, partner_id, certificate, key="cert-b")
    assert again.credential_id == first.credential_id
    assert (await register(env, partner_id, certificate, key="cert-a")).credential_id == first.credential_id
    refused = [
        b"not a certificate",
        certificate.pem + mtls.ca.issue("another").pem,
        mtls.ca.pem,
        mtls.ca.issue("a sub-CA", ca=True).pem,
        mtls.ca.issue("expired", valid_days=-1).pem,
    ]
    for pem in refused:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await register(env, partner_id, pem)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, pem[:40]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await register(env, str(uuid.uuid4()), mtls.ca.issue("nobody"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.req("SEC-04")
async def test_with_the_partners_ca_configured_registration_refuses_what_the_handshake_would(
    mtls: Mtls, tmp_path: Path
) -> None:
    """A certificate the partner API would refuse at the handshake is refused when it is
    registered, with the reason, instead of failing on the partner's first call."""
    env = mtls.env
    partner_id, agreement_id = await partner_with_agreement(env)
    key, _ = await api_key(env, partner_id)
    bundle = tmp_path / "partners-ca.pem"
    bundle.write_bytes(mtls.ca.pem)
    async with other_billing(env, partner_tls_client_ca_path=bundle) as configured:
        good = mtls.ca.issue(f"partner {partner_id}")
        assert (
            await register(configured, partner_id, good)
        ).certificate_sha256_fingerprint == good.fingerprint
        assert await agreements(mtls.partner(good, key)) == [agreement_id]
        # Another CA of the very same name: its signature does not verify.
        newcomer = Authority("Partners test CA")
        rogue = newcomer.issue(f"partner {partner_id}")
        details = await expect_status(
            register(configured, partner_id, rogue), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert details == "the certificate is not issued by a CA the partner API trusts"
        # A server certificate, even from the partners' CA, is not a client's.
        server_only = mtls.ca.issue("partner-api.test", server=True)
        details = await expect_status(
            register(configured, partner_id, server_only), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert "client authentication" in details
        # A new bundle applies to registrations at once (the handshake needs a restart).
        bundle.write_bytes(mtls.ca.pem + newcomer.pem)
        assert (
            await register(configured, partner_id, rogue)
        ).certificate_sha256_fingerprint == rogue.fingerprint
        # An unreadable bundle: the operator's problem, said as such; nothing registered.
        bundle.write_bytes(b"not a certificate")
        late = mtls.ca.issue(f"partner {partner_id} late")
        details = await expect_status(register(configured, partner_id, late), grpc.StatusCode.UNAVAILABLE)
        assert "nothing was registered" in details
        listed = await env.billing().ListPartnerCredentials(
            pb.ListPartnerCredentialsRequest(partner_id=partner_id)
        )
        fingerprints = {c.certificate_sha256_fingerprint for c in listed.credentials}
        assert good.fingerprint in fingerprints and late.fingerprint not in fingerprints
        assert server_only.fingerprint not in fingerprints


def presented_certificate(target: str, ca: Authority, client: Issued, directory: Path) -> str:
    """The fingerprint of the certificate the partner API presents to a new connection."""
    host, port = target.rsplit(":", 1)
    (directory / "client.pem").write_bytes(client.pem)
    (directory / "client.key.pem").write_bytes(client.key_pem)
    context = ssl.create_default_context(cadata=ca.pem.decode())
    context.load_cert_chain(directory / "client.pem", directory / "client.key.pem")
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


@pytest.mark.req("SEC-04")
async def test_a_new_partner_ca_and_a_renewed_server_certificate_apply_without_a_restart(
    env: Env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = Authority("Partners test CA")
    paths = write_server_files(tmp_path / "tls", ca)
    async with running_partner_api(env.settings.model_copy(update=paths)) as server:
        served = Mtls(env, ca, server.target, env.settings)
        partner_id, agreement_id = await partner_with_agreement(env)
        key, _ = await api_key(env, partner_id)
        old_partner = ca.issue(f"partner {partner_id} (old CA)")
        await register(env, partner_id, old_partner)
        # A partner whose certificate comes from a CA added later: refused until it is added.
        newcomer = Authority("Second partners CA")
        new_partner = newcomer.issue(f"partner {partner_id} (new CA)")
        await register(env, partner_id, new_partner)
        await expect_status(
            served.partner(new_partner, key).ListAgreements(ppb.ListAgreementsRequest()),
            grpc.StatusCode.UNAVAILABLE,
        )
        paths["partner_tls_client_ca_path"].write_bytes(ca.pem + newcomer.pem)
        assert await agreements(served.partner(new_partner, key)) == [agreement_id]
        assert await agreements(served.partner(old_partner, key)) == [agreement_id]
        # The server certificate is renewed (new key): new connections get the new one.
        before = presented_certificate(server.target, ca, old_partner, tmp_path)
        renewed = ca.issue("partner-api.test", server=True)
        paths["partner_tls_key_path"].write_bytes(renewed.key_pem)
        paths["partner_tls_cert_path"].write_bytes(renewed.pem)
        after = presented_certificate(server.target, ca, old_partner, tmp_path)
        assert before != after and after == renewed.fingerprint
        assert await agreements(served.partner(old_partner, key)) == [agreement_id]
        # A change that leaves the files unusable (a key that is not the certificate's)
        # keeps the ones in use, and says which setting is wrong.
        with caplog.at_level(logging.ERROR, logger="services.billing.app"):
            paths["partner_tls_key_path"].write_bytes(ca.issue("stray", server=True).key_pem)
            assert await agreements(served.partner(old_partner, key)) == [agreement_id]
        assert presented_certificate(server.target, ca, old_partner, tmp_path) == renewed.fingerprint
        (error,) = [r for r in caplog.records if "tls files changed but are unusable" in r.getMessage()]
        assert error.fields == {"setting": "BILLING_PARTNER_TLS_KEY_PATH"}  # type: ignore[attr-defined]


@pytest.mark.req("SEC-04")
async def test_production_refuses_to_start_the_partner_api_without_mutual_tls(tmp_path: Path) -> None:
    names = (
        "BILLING_PARTNER_TLS_CERT_PATH",
        "BILLING_PARTNER_TLS_KEY_PATH",
        "BILLING_PARTNER_TLS_CLIENT_CA_PATH",
    )
    with pytest.raises(ValidationError) as error:
        BillingSettings(environment=Environment.PRODUCTION, **PRODUCTION_SECRETS)
    assert "mutual TLS" in str(error.value) and all(name in str(error.value) for name in names)
    # Half a configuration is refused anywhere.
    with pytest.raises(ValidationError) as error:
        BillingSettings(environment=Environment.DEVELOPMENT, partner_tls_cert_path=tmp_path / "server.pem")
    assert "BILLING_PARTNER_TLS_KEY_PATH" in str(error.value)
    assert "BILLING_PARTNER_TLS_CLIENT_CA_PATH" in str(error.value)
    # With the three files, or with the partner API off, production starts.
    paths = write_server_files(tmp_path / "tls", Authority("Partners CA"))
    assert BillingSettings(environment=Environment.PRODUCTION, **PRODUCTION_SECRETS, **paths).partner_mtls
    BillingSettings(environment=Environment.PRODUCTION, partner_api_enabled=False, **PRODUCTION_SECRETS)
    # Settings that skipped validation are refused at start, before any port is opened.
    unchecked = BillingSettings(environment=Environment.TEST).model_copy(
        update={"environment": Environment.PRODUCTION}
    )
    for start in (running_partner_api(unchecked), running_all(unchecked)):
        with pytest.raises(ValueError, match="BILLING_PARTNER_TLS_CERT_PATH"):
            async with start:
                pass
    # Files that are missing or not what they should be are named.
    broken = BillingSettings(
        environment=Environment.TEST, **{**paths, "partner_tls_key_path": paths["partner_tls_cert_path"]}
    )
    with pytest.raises(ValueError, match="BILLING_PARTNER_TLS_KEY_PATH"):
        partner_server_credentials(broken)
    missing = BillingSettings(
        environment=Environment.TEST, **{**paths, "partner_tls_client_ca_path": tmp_path / "none.pem"}
    )
    with pytest.raises(ValueError, match="BILLING_PARTNER_TLS_CLIENT_CA_PATH"):
        partner_server_credentials(missing)
    # Development without the files keeps plaintext (on loopback).
    assert partner_server_credentials(BillingSettings(environment=Environment.DEVELOPMENT)) is None
