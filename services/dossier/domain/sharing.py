"""The report to the treating physician (CASE-16, CNS-08, PC §9).

The patient gives the treating physician's contact at submission or when the report
arrives; it is stored sealed under the patient's key. When the case workflow has checked
the consent and the absence of objection (identity service), it asks for each sealed
report to be sent; the dossier refuses when the case carries an objection, when no
contact was given, or when processing is restricted. Only the report travels (the
"information useful to the follow-up"), through a secure health-messaging channel
(MSSanté) behind `SecureHealthMessaging`; each sending is recorded once per report and
logged in the access log.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from services.dossier.domain.access import CaseAccess
from services.dossier.domain.crypto import Keyring
from services.dossier.domain.reports import ReportKind, ReportStatus, body_of
from services.dossier.models import Case, Document, Report, ReportShare, SecureMessageOutbox
from services.shared.db import utcnow
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound

RPPS = re.compile(r"^\d{11}$")
# MSSanté addresses live under operators' *.mssante.fr domains: nothing else is secure.
MSSANTE_ADDRESS = re.compile(r"^[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)*mssante\.fr$", re.IGNORECASE)
MAX_NAME = 200


@dataclass(frozen=True, slots=True)
class TreatingPhysician:
    display_name: str
    rpps_number: str
    secure_messaging_address: str
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class SecurePackage:
    """What goes to the physician: the sealed report, nothing else of the file."""

    case_id: str
    case_reference: str
    recipient_address: str
    recipient_name: str
    subject_line: str
    body: str
    report_id: str
    seal_sha256_hex: str
    attachment_document_id: str
    attachment_sha256_hex: str


def _fields(package: SecurePackage) -> dict[str, str]:
    return {name: getattr(package, name) for name in SecurePackage.__slots__}


def package_json(package: SecurePackage) -> str:
    return json.dumps(_fields(package), sort_keys=True, ensure_ascii=False)


class SecureHealthMessaging(Protocol):
    """A secure health-messaging channel (MSSanté). `send` returns the channel's message id."""

    name: str

    async def send(
        self, session: AsyncSession, keyring: Keyring, subject_id: str, package: SecurePackage
    ) -> str: ...


class DevelopmentSecureMessaging:
    """Development channel: records the package it sends (sealed) in the dossier database,
    in the same transaction as the share record."""

    name = "development"

    async def send(
        self, session: AsyncSession, keyring: Keyring, subject_id: str, package: SecurePackage
    ) -> str:
        message_id = str(uuid.uuid4())
        session.add(
            SecureMessageOutbox(
                message_id=message_id,
                case_id=package.case_id,
                package_sealed=keyring.seal_text(
                    package_json(package), f"secure_message_outbox:{message_id}", subject_id
                ),
                sent_at=utcnow(),
            )
        )
        await session.flush()
        return message_id


def _context(case_id: str) -> str:
    return f"cases.treating_physician:{case_id}"


def check_contact(display_name: str, rpps_number: str, address: str) -> tuple[str, str, str]:
    name = display_name.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise InvalidArgument(f"display_name is required (1 to {MAX_NAME} printable characters)")
    rpps = rpps_number.strip()
    if rpps and not RPPS.match(rpps):
        raise InvalidArgument("rpps_number must be 11 digits")
    mail = address.strip()
    if not MSSANTE_ADDRESS.match(mail):
        raise InvalidArgument("secure_messaging_address must be an MSSanté address (…@….mssante.fr)")
    return name, rpps, mail.lower()


def set_contact(keyring: Keyring, access: CaseAccess, display_name: str, rpps: str, address: str) -> None:
    case = access.case
    if case.status == "cancelled":
        raise FailedPrecondition("the case was cancelled")
    name, rpps, mail = check_contact(display_name, rpps, address)
    payload = json.dumps({"display_name": name, "rpps_number": rpps, "secure_messaging_address": mail})
    case.treating_physician_sealed = keyring.seal_text(payload, _context(case.case_id), case.filer_account_id)
    case.treating_physician_recorded_at = utcnow()
    case.updated_at = utcnow()


def contact_of(keyring: Keyring, case: Case) -> TreatingPhysician | None:
    if case.treating_physician_sealed is None or case.treating_physician_recorded_at is None:
        return None
    data = json.loads(keyring.open_text(case.treating_physician_sealed, _context(case.case_id)))
    return TreatingPhysician(
        data["display_name"], data["rpps_number"], data["secure_messaging_address"],
        case.treating_physician_recorded_at,
    )  # fmt: skip


def set_objection(access: CaseAccess, opposed: bool) -> None:
    case = access.case
    if opposed and case.report_sharing_opposed_at is None:
        case.report_sharing_opposed_at = utcnow()
    elif not opposed:
        case.report_sharing_opposed_at = None
    case.updated_at = utcnow()


async def share_report(
    session: AsyncSession,
    keyring: Keyring,
    channel: SecureHealthMessaging,
    access: CaseAccess,
    report: Report,
) -> tuple[ReportShare, bool]:
    """Send a sealed report once; a second call returns the first sending (and False)."""
    case = access.case
    existing = await session.get(ReportShare, report.report_id)
    if existing is not None:
        return existing, False
    if report.status != ReportStatus.SEALED:
        raise FailedPrecondition("only a delivered (sealed) report is sent")
    if case.report_sharing_opposed_at is not None:
        raise FailedPrecondition("the patient objected to sending the report to the treating physician")
    contact = contact_of(keyring, case)
    if contact is None:
        raise FailedPrecondition("no treating physician's contact was given")
    attachment_sha = ""
    if report.attachment_document_id:
        document = await session.get(Document, report.attachment_document_id)
        if document is None:
            raise NotFound("report file not found")
        attachment_sha = document.sha256_hex
    label = "Avis médical" if report.kind == ReportKind.OPINION else "Complément d'avis médical"
    package = SecurePackage(
        case_id=case.case_id,
        case_reference=case.case_reference,
        recipient_address=contact.secure_messaging_address,
        recipient_name=contact.display_name,
        subject_line=f"{label} — dossier {case.case_reference}",
        body=body_of(keyring, report),
        report_id=report.report_id,
        seal_sha256_hex=report.seal_sha256_hex,
        attachment_document_id=report.attachment_document_id,
        attachment_sha256_hex=attachment_sha,
    )
    message_id = await channel.send(session, keyring, case.filer_account_id, package)
    share = ReportShare(
        report_id=report.report_id,
        case_id=case.case_id,
        channel=channel.name,
        channel_message_id=message_id,
        package_sha256_hex=hashlib.sha256(package_json(package).encode()).hexdigest(),
        shared_at=utcnow(),
    )
    session.add(share)
    await session.flush()
    return share, True
