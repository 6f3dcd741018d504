"""What the partner API reads and how partners authenticate on it (BIL-01, BIL-10, CASE-15).

API keys are 256-bit random secrets shown once; only their SHA-256 is stored (a slow
hash adds nothing to a secret of that strength). Every read is filtered by the partner
proven by the key, never by a request field.

Over mutual TLS (SEC-04) the key must also come with a client certificate registered to
the key's partner: each registered certificate is a credential of kind
`client_certificate` holding the SHA-256 fingerprint of its DER encoding. A certificate
is bound to one partner at a time; rotation registers the new one and revokes the old
(revoking removes the fingerprint from the partner's allowed set).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlalchemy import Integer, Select, bindparam, cast, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from services.billing.domain.common import OrderStatus, next_token, offset_from_token, page_size
from services.billing.domain.coverage import get_partner
from services.billing.models import Invoice, Order, PartnerCredential, SatisfactionAnswer
from services.shared.db import utcnow
from services.shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)
API_KEY_PREFIX = "sopk_"
API_KEY = "api_key"
CLIENT_CERTIFICATE = "client_certificate"
MAX_CERTIFICATE_PEM = 16 * 1024
# Built once (each call only binds values): the key's credential, and whether the key's
# partner holds an active certificate of that fingerprint, in one query.
_CERTIFICATE = aliased(PartnerCredential, name="certificate")
_BY_KEY: Select[Any] = select(PartnerCredential).where(
    PartnerCredential.secret_sha256 == bindparam("key_sha256")
)
_BY_KEY_WITH_CERTIFICATE: Select[Any] = _BY_KEY.add_columns(
    select(_CERTIFICATE.credential_id)
    .where(
        _CERTIFICATE.partner_id == PartnerCredential.partner_id,
        _CERTIFICATE.kind == CLIENT_CERTIFICATE,
        _CERTIFICATE.certificate_sha256_fingerprint == bindparam("fingerprint"),
        _CERTIFICATE.revoked_at.is_(None),
        or_(_CERTIFICATE.expires_at.is_(None), _CERTIFICATE.expires_at > bindparam("now")),
    )
    .exists()
    .label("bound")
)


def key_hash(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


async def create_api_key(
    session: AsyncSession, partner_id: str, expires_at: datetime | None
) -> tuple[PartnerCredential, str]:
    await get_partner(session, partner_id)
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidArgument("expires_at must be in the future")
    api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    credential = PartnerCredential(
        credential_id=str(uuid.uuid4()),
        partner_id=partner_id,
        kind=API_KEY,
        api_key_prefix=api_key[:12],
        secret_sha256=key_hash(api_key),
        certificate_sha256_fingerprint="",
        created_at=utcnow(),
        expires_at=expires_at,
    )
    session.add(credential)
    await session.flush()
    return credential, api_key


def certificate_fingerprint(certificate_pem: bytes) -> str:
    """SHA-256 (hex) of the certificate's DER encoding: what a partner's credential binds."""
    return x509.load_pem_x509_certificate(certificate_pem).fingerprint(hashes.SHA256()).hex()


async def authenticate(session: AsyncSession, api_key: str, certificate_sha256: str | None = None) -> str:
    """The partner id an API key proves, or UNAUTHENTICATED.

    With `certificate_sha256` (the fingerprint of the peer's certificate, mutual TLS) the
    key's partner must also hold that certificate, else UNAUTHENTICATED with the same
    message as a wrong key: a leaked key alone, or with another partner's certificate,
    opens nothing and tells nothing. One query either way."""
    if not api_key.startswith(API_KEY_PREFIX) or len(api_key) > 100:
        raise Unauthenticated("a valid partner API key is required")
    now = utcnow()
    if certificate_sha256 is None:
        row = (await session.execute(_BY_KEY, {"key_sha256": key_hash(api_key)})).first()
    else:
        parameters = {"key_sha256": key_hash(api_key), "fingerprint": certificate_sha256, "now": now}
        row = (await session.execute(_BY_KEY_WITH_CERTIFICATE, parameters)).first()
    credential: PartnerCredential | None = row[0] if row is not None else None
    if (
        row is None
        or credential is None
        or credential.kind != API_KEY
        or credential.revoked_at is not None
        or (credential.expires_at is not None and credential.expires_at <= now)
    ):
        raise Unauthenticated("a valid partner API key is required")
    if certificate_sha256 is not None and not row[1]:
        log.warning(
            "partner api key used with a certificate not registered to its partner",
            extra={
                "fields": {
                    "partner_id": credential.partner_id,
                    "certificate_sha256_prefix": certificate_sha256[:12],
                }
            },
        )
        raise Unauthenticated("a valid partner API key is required")
    return credential.partner_id


def trusted_issuers(ca_path: Path | None) -> list[x509.Certificate] | None:
    """The partners' CA certificates the partner API trusts (None: no mutual TLS set up)."""
    if ca_path is None:
        return None
    try:
        return x509.load_pem_x509_certificates(ca_path.read_bytes())
    except (OSError, ValueError) as exc:
        # The operator's mistake, not the caller's: nothing is registered meanwhile.
        log.error("partner client CA bundle unreadable", extra={"fields": {"error": type(exc).__name__}})
        raise Unavailable("the partners' CA bundle cannot be read; nothing was registered") from exc


def _issued_by_one_of(certificate: x509.Certificate, issuers: list[x509.Certificate]) -> bool:
    for issuer in issuers:
        try:
            certificate.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


async def register_certificate(
    session: AsyncSession,
    partner_id: str,
    certificate_pem: str,
    issuers: list[x509.Certificate] | None = None,
) -> PartnerCredential:
    """Allow a client certificate (PEM) for the partner on the partner API (mutual TLS).

    The same certificate registered again for the same partner answers its existing
    credential; a certificate active for another partner is refused. The credential expires
    with the certificate. With `issuers` (the partners' CA bundle), a certificate no CA of
    it issued is refused now rather than at the partner's first handshake."""
    await get_partner(session, partner_id)
    if not certificate_pem or len(certificate_pem) > MAX_CERTIFICATE_PEM:
        raise InvalidArgument("certificate_pem is required (one PEM certificate)")
    try:
        certificates = x509.load_pem_x509_certificates(certificate_pem.encode())
    except ValueError as exc:
        raise InvalidArgument("certificate_pem is not a PEM certificate") from exc
    if len(certificates) != 1:
        raise InvalidArgument("certificate_pem must hold exactly one certificate (the partner's own)")
    certificate = certificates[0]
    now = utcnow()
    if certificate.not_valid_after_utc <= now:
        raise InvalidArgument("the certificate has expired")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise InvalidArgument("a CA certificate cannot be a partner's client certificate")
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise InvalidArgument("the certificate is not for client authentication (extended key usage)")
    if issuers is not None and not _issued_by_one_of(certificate, issuers):
        raise InvalidArgument("the certificate is not issued by a CA the partner API trusts")
    fingerprint = certificate.fingerprint(hashes.SHA256()).hex()
    existing = await session.scalar(
        select(PartnerCredential).where(
            PartnerCredential.kind == CLIENT_CERTIFICATE,
            PartnerCredential.certificate_sha256_fingerprint == fingerprint,
            PartnerCredential.revoked_at.is_(None),
        )
    )
    if existing is not None:
        if existing.partner_id != partner_id:
            raise AlreadyExists("this certificate is registered to another partner")
        return existing
    credential = PartnerCredential(
        credential_id=str(uuid.uuid4()),
        partner_id=partner_id,
        kind=CLIENT_CERTIFICATE,
        api_key_prefix="",
        secret_sha256=None,
        certificate_sha256_fingerprint=fingerprint,
        created_at=now,
        expires_at=certificate.not_valid_after_utc,
    )
    session.add(credential)
    await session.flush()
    return credential


async def revoke_credential(session: AsyncSession, credential_id: str) -> PartnerCredential:
    credential = await session.get(PartnerCredential, credential_id) if credential_id else None
    if credential is None:
        raise NotFound("no such credential")
    if credential.revoked_at is None:
        credential.revoked_at = utcnow()
        await session.flush()
    return credential


async def list_credentials(session: AsyncSession, partner_id: str) -> list[PartnerCredential]:
    await get_partner(session, partner_id)
    rows = await session.scalars(
        select(PartnerCredential)
        .where(PartnerCredential.partner_id == partner_id)
        .order_by(PartnerCredential.created_at.desc())
    )
    return list(rows)


@dataclass
class CoveredCase:
    order: Order
    status: str
    credited_cents: int
    invoice_numbers: list[str] = field(default_factory=list)


async def covered_cases(
    session: AsyncSession,
    partner_id: str,
    start: datetime | None,
    end: datetime | None,
    size: int,
    token: str,
) -> tuple[list[CoveredCase], str]:
    size = page_size(size)
    offset = offset_from_token(token)
    query = select(Order).where(Order.partner_id == partner_id, Order.settled_at.is_not(None))
    if start is not None:
        query = query.where(Order.settled_at >= start)
    query = query.where(Order.settled_at < (end or utcnow()))
    orders = list(
        await session.scalars(
            query.order_by(Order.settled_at.desc(), Order.order_id).offset(offset).limit(size + 1)
        )
    )
    result = []
    for order in orders[:size]:
        invoices = list(
            await session.scalars(
                select(Invoice)
                .where(Invoice.order_id == order.order_id, Invoice.recipient_partner_id == partner_id)
                .order_by(Invoice.issued_at, Invoice.invoice_number)
            )
        )
        credited = -sum(i.total_amount_cents for i in invoices if i.kind == "credit_note")
        if order.status in (OrderStatus.CANCELLED.value, OrderStatus.REFUNDED.value) or (
            invoices and credited >= sum(i.total_amount_cents for i in invoices if i.kind == "invoice")
        ):
            status = "cancelled"
        elif invoices:
            status = "delivered"
        else:
            status = "covered"
        result.append(CoveredCase(order, status, credited, [i.invoice_number for i in invoices]))
    return result, next_token(offset, size, len(orders))


async def partner_invoices(
    session: AsyncSession,
    partner_id: str,
    start: datetime | None,
    end: datetime | None,
    size: int,
    token: str,
) -> tuple[list[tuple[Invoice, str, str]], str]:
    """(invoice, case reference, corrected invoice number) of the partner's invoices."""
    size = page_size(size)
    offset = offset_from_token(token)
    query = select(Invoice, Order.case_reference).join(Order, Order.order_id == Invoice.order_id)
    query = query.where(Invoice.recipient_partner_id == partner_id)
    if start is not None:
        query = query.where(Invoice.issued_at >= start)
    if end is not None:
        query = query.where(Invoice.issued_at < end)
    rows = list(
        await session.execute(
            query.order_by(Invoice.issued_at.desc(), Invoice.invoice_number.desc())
            .offset(offset)
            .limit(size + 1)
        )
    )
    out = []
    for invoice, reference in rows[:size]:
        corrected = ""
        if invoice.corrects_invoice_id:
            corrected = str(
                await session.scalar(
                    select(Invoice.invoice_number).where(Invoice.invoice_id == invoice.corrects_invoice_id)
                )
            )
        out.append((invoice, str(reference), corrected))
    return out, next_token(offset, size, len(rows))


async def partner_invoice(
    session: AsyncSession, partner_id: str, invoice_id: str
) -> tuple[Invoice, str, str]:
    invoice = await session.get(Invoice, invoice_id) if invoice_id else None
    if invoice is None or invoice.recipient_partner_id != partner_id:
        raise NotFound("no such invoice")
    reference = str(
        await session.scalar(select(Order.case_reference).where(Order.order_id == invoice.order_id))
    )
    corrected = ""
    if invoice.corrects_invoice_id:
        corrected = str(
            await session.scalar(
                select(Invoice.invoice_number).where(Invoice.invoice_id == invoice.corrects_invoice_id)
            )
        )
    return invoice, reference, corrected


async def record_satisfaction(
    session: AsyncSession, case_id: str, score: int, would_recommend: bool
) -> datetime:
    if not 1 <= score <= 5:
        raise InvalidArgument("score must be between 1 and 5")
    order = await session.scalar(select(Order).where(Order.case_id == case_id))
    if order is None:
        raise NotFound("no such case")
    if order.status not in (OrderStatus.PAID.value, OrderStatus.COVERED.value):
        raise FailedPrecondition("only a paid or covered case is surveyed")
    if await session.get(SatisfactionAnswer, case_id) is not None:
        raise FailedPrecondition("the case was already surveyed")
    now = utcnow()
    session.add(
        SatisfactionAnswer(
            case_id=case_id,
            partner_id=order.partner_id,
            score=score,
            would_recommend=would_recommend,
            recorded_at=now,
        )
    )
    await session.flush()
    return now


@dataclass(frozen=True)
class SatisfactionSummary:
    suppressed: bool
    minimum: int
    count: int
    average: float
    by_score: dict[int, int]
    would_recommend: int


async def satisfaction_summary(
    session: AsyncSession, partner_id: str, start: datetime | None, end: datetime | None, minimum: int
) -> SatisfactionSummary:
    if start is None or end is None or end <= start:
        raise InvalidArgument("period_start and period_end are required, start before end")
    rows = list(
        await session.execute(
            select(
                SatisfactionAnswer.score,
                func.count(),
                func.sum(cast(SatisfactionAnswer.would_recommend, Integer)),
            )
            .where(
                SatisfactionAnswer.partner_id == partner_id,
                SatisfactionAnswer.recorded_at >= start,
                SatisfactionAnswer.recorded_at < end,
            )
            .group_by(SatisfactionAnswer.score)
        )
    )
    count = sum(int(n) for _, n, _ in rows)
    if count < minimum:
        return SatisfactionSummary(True, minimum, count, 0.0, {}, 0)
    by_score = {int(score): int(n) for score, n, _ in rows}
    average = sum(score * n for score, n in by_score.items()) / count
    recommend = sum(int(r or 0) for _, _, r in rows)
    return SatisfactionSummary(False, minimum, count, round(average, 2), by_score, recommend)
