"""The whole platform for the portal tests: every service on port 0, the PSP sandbox, and
the gateway on a port chosen first (the PSP returns to it), with the data the portals
need (terms, notices, a price catalog, doctors, a partner). Helpers act as the workflow
worker where the case workflow is not driven here, and read codes as a person reads a phone."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyotp
import uvicorn
from google.protobuf.timestamp_pb2 import Timestamp
from secondopinion.billing.v1 import billing_pb2, billing_pb2_grpc
from secondopinion.dossier.v1 import dossier_pb2, dossier_pb2_grpc
from secondopinion.identity.v1 import identity_pb2, identity_pb2_grpc
from secondopinion.matching.v1 import matching_pb2, matching_pb2_grpc
from secondopinion.notifications.v1 import notifications_pb2, notifications_pb2_grpc

from deploy.seed import with_luhn_digit
from services.billing.psp.keys import generate_rsa_key, load_or_create_secret, public_pem
from services.billing.psp.sandbox import create_sandbox_app
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from services.shared.auth import Role, ServiceTokenProvider, TokenSigner
from services.shared.grpc_client import open_channel
from services.shared.settings import Environment
from tests.support.stack import Stack, platform_stack, serve_app

TERMS_BODY = "Conditions générales d'utilisation — version de test du portail."
NOTICE_BODY = "Notice d'information (personne qui dépose pour elle-même) — version de test."
PASSWORD = "Lumiere-Ete-2026"


def ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


@dataclass
class Person:
    account_id: str
    email: str
    session: str = ""
    doctor_id: str = ""
    totp_secret: str = ""

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.session}"}


@dataclass
class Portal:
    stack: Stack
    url: str
    sandbox_url: str
    sandbox_app: Any
    exit_stack: AsyncExitStack
    stubs: dict[str, Any] = field(default_factory=dict)
    partner_id: str = ""
    agreement_id: str = ""
    app: Any = None

    # --- channels as the platform's own processes ---------------------------------------
    def _stub(self, service: str, issuer: str) -> Any:
        key = f"{service}:{issuer}"
        if key not in self.stubs:
            channel = open_channel(
                self.stack.target(service),
                ServiceTokenProvider(TokenSigner.from_keys_dir(self.stack.auth.keys_dir, issuer)),
            )
            self.exit_stack.push_async_callback(channel.close)
            stub_class = {
                "identity": identity_pb2_grpc.IdentityServiceStub,
                "dossier": dossier_pb2_grpc.DossierServiceStub,
                "matching": matching_pb2_grpc.MatchingServiceStub,
                "billing": billing_pb2_grpc.BillingServiceStub,
                "notifications": notifications_pb2_grpc.NotificationsServiceStub,
            }[service]
            self.stubs[key] = stub_class(channel)
        return self.stubs[key]

    def ops(self, service: str) -> Any:
        return self._stub(service, "ops")

    def worker(self, service: str) -> Any:
        """The case workflow's worker identity (drives the case where Temporal does not)."""
        return self._stub(service, "worker")

    def as_person(self, service: str, account_id: str, role: Role) -> Any:
        token, _ = self.stack.identity_tokens().mint(account_id, role, "test-session")
        channel = open_channel(self.stack.target(service), lambda: token)
        self.exit_stack.push_async_callback(channel.close)
        return {
            "identity": identity_pb2_grpc.IdentityServiceStub,
            "dossier": dossier_pb2_grpc.DossierServiceStub,
            "billing": billing_pb2_grpc.BillingServiceStub,
            "matching": matching_pb2_grpc.MatchingServiceStub,
        }[service](channel)

    # --- people ---------------------------------------------------------------------------
    async def patient(self, email: str | None = None, phone: str = "+33612345678") -> Person:
        email = email or f"patient-{uuid.uuid4().hex[:8]}@example.org"
        terms = await self.ops("identity").GetCurrentLegalText(
            identity_pb2.GetCurrentLegalTextRequest(kind=identity_pb2.LEGAL_TEXT_KIND_TERMS, locale="fr")
        )
        account = await self.ops("identity").SignUp(
            identity_pb2.SignUpRequest(
                idempotency_key=f"signup-{email}", email=email, phone_number=phone, password=PASSWORD,
                declared_age=40, accepted_terms_version=terms.text.version,
                accepted_terms_sha256_hex=terms.text.sha256_hex, locale="fr",
            )
        )  # fmt: skip
        return Person(account.account_id, email, await self.stack.open_session(account.account_id))

    async def staff(
        self, role: Any, email: str, name: str, habilitations: list[Any] | None = None, partner_id: str = ""
    ) -> Person:
        rpps = with_luhn_digit(f"1{uuid.uuid4().int % 10**9:09d}") if role in (
            identity_pb2.ACCOUNT_ROLE_REFERENT_DOCTOR, identity_pb2.ACCOUNT_ROLE_REFERRING_DOCTOR
        ) else ""  # fmt: skip
        account = await self.ops("identity").CreateStaffAccount(
            identity_pb2.CreateStaffAccountRequest(
                idempotency_key=f"staff-{email}", role=role, email=email, phone_number="+33698765432",
                display_name=name, rpps_number=rpps, habilitations=habilitations or [], partner_id=partner_id,
            )
        )  # fmt: skip
        person = Person(account.account_id, email, await self.stack.open_session(account.account_id))
        await self._set_password(account.account_id)
        if role == identity_pb2.ACCOUNT_ROLE_REFERENT_DOCTOR:
            doctor = await self.ops("matching").RegisterReferentDoctor(
                matching_pb2.RegisterReferentDoctorRequest(
                    idempotency_key=f"doctor-{email}", account_id=account.account_id, rpps_number=rpps,
                    display_name=name, therapeutic_areas=["cardiology", "oncology"], languages=["fr"],
                    max_concurrent_cases=5,
                )
            )  # fmt: skip
            person.doctor_id = doctor.doctor.doctor_id
        return person

    async def coordinator(self, email: str, name: str = "Coordination") -> Person:
        """The habilitated coordinator (health data and personal-assistant mandate), granted
        through identity as an operator provisions a staff member (SEC-05, CASE-14)."""
        person = await self.staff(identity_pb2.ACCOUNT_ROLE_COORDINATOR, email, name)
        await self.stack.grant_habilitations(
            person.account_id,
            identity_pb2.HABILITATION_HEALTH_DATA,
            identity_pb2.HABILITATION_PERSONAL_ASSISTANT,
        )
        return person

    async def _set_password(self, account_id: str) -> None:
        """Staff onboarding (provisional credentials by email, then a new password) is the
        identity service's flow; here the chosen password is stored as it would end."""
        from argon2 import PasswordHasher, Type

        from services.identity.models import Account

        assert self.stack._identity_sessions is not None
        async with self.stack._identity_sessions.begin() as session:
            account = await session.get(Account, account_id)
            assert account is not None
            account.password_hash = PasswordHasher(time_cost=2, memory_cost=19456, type=Type.ID).hash(
                PASSWORD
            )
            account.must_change_password = False

    async def enrol_totp(self, person: Person) -> str:
        """What the person does once with their authenticator app (first staff login)."""
        session = await self._stub("identity", "gateway").ValidateSession(
            identity_pb2.ValidateSessionRequest(session_token=person.session)
        )
        channel = open_channel(self.stack.target("identity"), lambda: session.internal_token)
        self.exit_stack.push_async_callback(channel.close)
        identity = identity_pb2_grpc.IdentityServiceStub(channel)
        started = await identity.StartTotpEnrolment(
            identity_pb2.StartTotpEnrolmentRequest(idempotency_key=f"totp-{person.account_id}")
        )
        secret = parse_qs(urlsplit(started.provisioning_uri).query)["secret"][0]
        await identity.ConfirmTotpEnrolment(
            identity_pb2.ConfirmTotpEnrolmentRequest(
                enrolment_id=started.enrolment_id, code=pyotp.TOTP(secret).now()
            )
        )
        person.totp_secret = secret
        return secret

    async def scanned_clean(self, document_id: str) -> None:
        """What the malware scan records for a clean file (no clamd on a test machine)."""
        from sqlalchemy import update

        from services.dossier.models import Document
        from services.shared.db import create_engine

        engine = create_engine(self.stack.database_urls["dossier"])
        try:
            async with engine.begin() as connection:
                await connection.execute(
                    update(Document).where(Document.document_id == document_id).values(status="available")
                )
        finally:
            await engine.dispose()

    async def latest_sms_code(self, after: int = 0) -> str:
        """The newest 6-digit code in the SMS outbox (login or step-up)."""
        for _ in range(50):
            outbox = await self.ops("notifications").ListOutbox(
                notifications_pb2.ListOutboxRequest(channel=notifications_pb2.CHANNEL_SMS, page_size=50)
            )
            codes = [m for m in re.findall(r"\b\d{6}\b", " ".join(x.rendered_text for x in outbox.messages))]
            if len(outbox.messages) > after and codes:
                return str(codes[0])
            await asyncio.sleep(0.1)
        raise AssertionError("no code in the SMS outbox")

    async def sms_count(self) -> int:
        outbox = await self.ops("notifications").ListOutbox(
            notifications_pb2.ListOutboxRequest(channel=notifications_pb2.CHANNEL_SMS, page_size=100)
        )
        return len(outbox.messages)

    async def outbox_texts(self) -> list[str]:
        texts: list[str] = []
        for channel in (notifications_pb2.CHANNEL_SMS, notifications_pb2.CHANNEL_EMAIL):
            outbox = await self.ops("notifications").ListOutbox(
                notifications_pb2.ListOutboxRequest(channel=channel, page_size=100)
            )
            texts += [m.rendered_text for m in outbox.messages]
        return texts

    # --- the workflow's steps, as its worker would call them ------------------------------
    async def set_status(self, case_id: str, *statuses: str) -> None:
        for status in statuses:
            await self.worker("dossier").UpdateCaseStatus(
                dossier_pb2.UpdateCaseStatusRequest(
                    idempotency_key=f"status-{case_id}-{status}", case_id=case_id,
                    status=dossier_pb2.CaseStatus.Value(f"CASE_STATUS_{status.upper()}"),
                )
            )  # fmt: skip

    async def offer(self, case_id: str, doctor: Person) -> str:
        now = datetime.now(UTC)
        created = await self.worker("matching").CreateOffer(
            matching_pb2.CreateOfferRequest(
                idempotency_key=f"offer-{case_id}-{doctor.doctor_id}", case_id=case_id,
                doctor_id=doctor.doctor_id, therapeutic_area="cardiology",
                respond_by=ts(now + timedelta(hours=24)), review_deadline_at=ts(now + timedelta(days=7)),
                doctors_needed=1,
            )
        )  # fmt: skip
        return str(created.offer.offer_id)

    async def assign(self, case_id: str, doctor: Person, assignment_id: str) -> None:
        await self.worker("dossier").RecordAssignment(
            dossier_pb2.RecordAssignmentRequest(
                idempotency_key=f"assign-{case_id}", case_id=case_id, assignment_id=assignment_id,
                doctor_id=doctor.doctor_id, doctor_account_id=doctor.account_id,
            )
        )  # fmt: skip
        await self.set_status(case_id, "in_review")
        await self.worker("dossier").SetCaseDeadline(
            dossier_pb2.SetCaseDeadlineRequest(
                idempotency_key=f"deadline-{case_id}", case_id=case_id,
                deadline_at=ts(datetime.now(UTC) + timedelta(days=7)),
                reason=dossier_pb2.DEADLINE_CHANGE_REASON_REVIEW_STARTED,
            )
        )  # fmt: skip

    async def deliver_report(self, case_id: str) -> str:
        listed = await self.worker("dossier").ListCaseReports(
            dossier_pb2.ListCaseReportsRequest(case_id=case_id)
        )
        draft = next(r for r in listed.reports if r.status == dossier_pb2.REPORT_STATUS_DRAFT)
        await self.worker("dossier").DeliverReport(
            dossier_pb2.DeliverReportRequest(
                idempotency_key=f"deliver-{draft.report_id}", report_id=draft.report_id
            )
        )
        await self.set_status(case_id, "report_delivered")
        return str(draft.report_id)

    async def issue_invoices(self, case_id: str, doctor: Person) -> None:
        await self.ops("billing").RecordBillingMandate(
            billing_pb2.RecordBillingMandateRequest(
                idempotency_key=f"mandate-{doctor.doctor_id}", doctor_id=doctor.doctor_id,
                doctor_account_id=doctor.account_id, doctor_legal_name="Dr Test", covers_billing=True,
                covers_collection=True, starts_at=ts(datetime.now(UTC) - timedelta(days=1)),
                mandate_text_version="2026.1", mandate_text_sha256_hex="0" * 64,
                signed_document_id=str(uuid.uuid4()),
                accepted_at=ts(datetime.now(UTC) - timedelta(days=1)),
            )
        )  # fmt: skip
        order = await self.ops("billing").GetOrder(billing_pb2.GetOrderRequest(case_id=case_id))
        await self.worker("billing").IssueInvoices(
            billing_pb2.IssueInvoicesRequest(
                idempotency_key=f"invoices-{order.order.order_id}", order_id=order.order.order_id,
                doctor_ids=[doctor.doctor_id],
            )
        )  # fmt: skip

    async def coverage_code(self) -> str:
        issued = await self.ops("billing").IssueCoverageCodes(
            billing_pb2.IssueCoverageCodesRequest(
                idempotency_key=f"codes-{uuid.uuid4()}", partner_id=self.partner_id,
                agreement_id=self.agreement_id, count=1, usage=billing_pb2.COVERAGE_CODE_USAGE_SINGLE_USE,
                max_uses=1, expires_at=ts(datetime.now(UTC) + timedelta(days=30)),
            )
        )  # fmt: skip
        return str(issued.codes[0].code)


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@asynccontextmanager
async def serve_on(app: Any, sock: socket.socket) -> AsyncIterator[None]:
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await task


async def _seed(portal: Portal) -> None:
    identity = portal.ops("identity")
    for kind, body in (
        (identity_pb2.LEGAL_TEXT_KIND_TERMS, TERMS_BODY),
        (identity_pb2.LEGAL_TEXT_KIND_NOTICE_SELF, NOTICE_BODY),
        (identity_pb2.LEGAL_TEXT_KIND_NOTICE_LEGAL_REPRESENTATIVE, "Notice du représentant légal."),
        (identity_pb2.LEGAL_TEXT_KIND_NOTICE_MANDATED_PERSON, "Notice de la personne mandatée."),
    ):
        await identity.PublishLegalText(
            identity_pb2.PublishLegalTextRequest(
                idempotency_key=f"text-{kind}", kind=kind, version="2026.1", locale="fr", body=body
            )
        )
    await portal.ops("billing").PublishPriceCatalog(
        billing_pb2.PublishPriceCatalogRequest(
            idempotency_key="catalog-2026",
            catalog_version="2026.1",
            entries=[
                billing_pb2.PriceEntry(
                    purpose=purpose,
                    doctor_fee_amount_cents=35000,
                    platform_fee_amount_cents=7000,
                    currency="EUR",
                    platform_fee_vat_rate_basis_points=2000,
                )
                for purpose in (
                    billing_pb2.CASE_PURPOSE_SECOND_OPINION,
                    billing_pb2.CASE_PURPOSE_OPINION_BEFORE_INDEMNITY_CLAIM,
                )
            ],
        )
    )
    partner = await portal.ops("billing").CreatePartner(
        billing_pb2.CreatePartnerRequest(
            idempotency_key="partner-1", name="Mutuelle Test", kind=billing_pb2.PARTNER_KIND_MUTUELLE
        )
    )
    portal.partner_id = partner.partner.partner_id
    agreement = await portal.ops("billing").CreatePartnerAgreement(
        billing_pb2.CreatePartnerAgreementRequest(
            idempotency_key="agreement-1", partner_id=portal.partner_id,
            covered_purposes=[billing_pb2.CASE_PURPOSE_SECOND_OPINION],
            covered_therapeutic_areas=["cardiology", "oncology"],
            starts_at=ts(datetime.now(UTC) - timedelta(days=1)),
            ends_at=ts(datetime.now(UTC) + timedelta(days=365)), quota=100,
        )
    )  # fmt: skip
    portal.agreement_id = agreement.agreement.agreement_id


@asynccontextmanager
async def running_portal(workdir: Path, backend: str = "sqlite", **gateway: Any) -> AsyncIterator[Portal]:
    keys = workdir / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    hmac_key = load_or_create_secret(keys / "psp-sandbox.hmac")
    psp_key = generate_rsa_key()
    (keys / "psp-sandbox.pub.pem").write_bytes(public_pem(psp_key))
    sandbox_app = create_sandbox_app(hmac_key, psp_key, "sha1")
    gateway_socket = _free_socket()
    gateway_url = f"http://127.0.0.1:{gateway_socket.getsockname()[1]}"
    async with AsyncExitStack() as exit_stack:
        sandbox_url = await exit_stack.enter_async_context(serve_app(sandbox_app))  # type: ignore[arg-type]
        # Billing reads the PSP's addresses from its environment (the stack sets the rest).
        environment = {
            "BILLING_PSP_PAYMENT_URL": f"{sandbox_url}/cgi/MYchoix_pagepaiement.cgi",
            "BILLING_PSP_RETURN_BASE_URL": f"{gateway_url}/api/payments/psp",
            # Emails land in the development outbox (read like SMS), not on an SMTP server.
            "NOTIFICATIONS_EMAIL_TRANSPORT": "development",
        }
        saved = {k: os.environ.get(k) for k in environment}
        os.environ.update(environment)
        try:
            stack = await exit_stack.enter_async_context(platform_stack(workdir, backend, with_gateway=False))
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        settings = GatewaySettings(
            environment=Environment.TEST,
            identity_target=stack.target("identity"),
            dossier_target=stack.target("dossier"),
            matching_target=stack.target("matching"),
            billing_target=stack.target("billing"),
            notifications_target=stack.target("notifications"),
            **gateway,
        )
        assert stack.temporal_settings is not None
        app = create_app(settings, stack.auth, stack.temporal_settings, connect_temporal=False)
        await exit_stack.enter_async_context(serve_on(app, gateway_socket))
        stack.gateway_url = gateway_url
        portal = Portal(stack, gateway_url, sandbox_url, sandbox_app, exit_stack, app=app)
        await _seed(portal)
        yield portal


CSRF_FIELD = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


async def csrf(http: Any, path: str = "/login") -> str:
    """A page's CSRF token (its cookie lands in the client's jar)."""
    page = await http.get(path)
    found = CSRF_FIELD.search(page.text)
    assert found, f"no CSRF token on {path} ({page.status_code})"
    return found.group(1)


async def step_up(portal: Portal, person: Person) -> None:
    """A fresh code on the person's session (ACC-06), as the step-up page does it."""
    session = await portal._stub("identity", "gateway").ValidateSession(
        identity_pb2.ValidateSessionRequest(session_token=person.session)
    )
    channel = open_channel(portal.stack.target("identity"), lambda: session.internal_token)
    portal.exit_stack.push_async_callback(channel.close)
    identity = identity_pb2_grpc.IdentityServiceStub(channel)
    before = await portal.sms_count()
    started = await identity.StartStepUp(
        identity_pb2.StartStepUpRequest(
            idempotency_key=str(uuid.uuid4()), purpose=identity_pb2.STEP_UP_PURPOSE_VIEW_REPORT
        )
    )
    await identity.VerifyStepUp(
        identity_pb2.VerifyStepUpRequest(
            step_up_id=started.step_up_id, code=await portal.latest_sms_code(after=before)
        )
    )


async def pay_through_sandbox(portal: Portal, http: Any, case_id: str) -> None:
    """The browser's path through the PSP with plain HTTP: our pay page, the PSP's form,
    the test card; the PSP notifies the gateway, which forwards to billing."""
    import httpx

    token = await csrf(http, f"/cases/{case_id}/pay")
    key = re.search(r'name="attempt_key" value="([^"]+)"', (await http.get(f"/cases/{case_id}/pay")).text)
    assert key
    form_page = await http.post(
        f"/cases/{case_id}/pay/card", data={"csrf_token": token, "attempt_key": key.group(1)}
    )
    assert form_page.status_code == 200, form_page.text
    fields = re.findall(r'<input type="hidden" name="(PBX_[A-Z_]+)" value="([^"]*)">', form_page.text)
    import html as html_lib

    async with httpx.AsyncClient(follow_redirects=False) as psp:
        shown = await psp.post(
            f"{portal.sandbox_url}/cgi/MYchoix_pagepaiement.cgi",
            data=[(name, html_lib.unescape(value)) for name, value in fields],  # type: ignore[arg-type]
        )
        assert shown.status_code == 200, shown.text
        psp_token = re.search(r'name="token" value="([^"]+)"', shown.text)
        assert psp_token
        paid = await psp.post(
            f"{portal.sandbox_url}/pay", data={"token": psp_token.group(1), "card_number": "1111222233334444"}
        )
        assert paid.status_code == 303
    back = await http.get(paid.headers["location"].removeprefix(portal.url))
    assert back.status_code == 303 and back.headers["location"].endswith("payment=accepted"), back.text
