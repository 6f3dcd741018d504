"""End to end on the real services: every service of `platform_stack` (real gRPC servers
on port 0, fresh databases), the real case workflow on the Temporal dev server, emails
through the real notifications service into a real SMTP catcher (so they reach status
sent and the development copy ListOutbox reads).

`World` seeds what an operator would (terms and privacy policy, a referent doctor with
an identity account, a matching registration and a billing mandate, a partner with an
agreement and a coverage code) and gives each person a channel carrying the internal
token the gateway would get for their session (ValidateSession)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from secondopinion.billing.v1 import billing_pb2, billing_pb2_grpc
from secondopinion.dossier.v1 import dossier_pb2, dossier_pb2_grpc
from secondopinion.identity.v1 import identity_pb2, identity_pb2_grpc
from secondopinion.matching.v1 import matching_pb2, matching_pb2_grpc
from secondopinion.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from sqlalchemy import select
from temporalio.client import WorkflowHandle

from deploy.seed import with_luhn_digit
from services.notifications.dev_smtp import start_catcher
from services.notifications.models import IdempotencyRecord as NotificationKey
from services.shared.auth import ServiceTokenProvider, TokenSigner
from services.shared.db import create_engine, session_factory
from services.shared.grpc_client import open_channel
from services.shared.protoconv import to_timestamp
from tests.support.stack import Stack
from workflows.case.models import CaseView, OfferAnswered
from workflows.case.workflow import CaseWorkflow

T = TypeVar("T")
PASSWORD = "Correct-Horse-9"
PRE_FORM = {
    "patient": {"last_name": "Martin", "first_name": "Léa", "birth_date": "1980-02-29", "sex": "female"},
    "sub_specialty": "breast",
    "preferred_language": "fr",
}
PATHOLOGY = {
    "tumour_site": "breast",
    "diagnosis_date": "2025-09-01",
    "stage": "II",
    "question_for_doctors": "Faut-il une chimiothérapie adjuvante ?",
}


@pytest.fixture
async def smtp_catcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Path]:
    """The development SMTP catcher on a free port; the notifications service of the
    stack (settings from the environment) delivers to it."""
    folder = tmp_path / "caught-mail"
    server = await start_catcher("127.0.0.1", 0, folder)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setenv("NOTIFICATIONS_SMTP_PORT", str(port))
    monkeypatch.setenv("NOTIFICATIONS_DELIVERY_POLL_SECONDS", "0.2")
    monkeypatch.setenv("BILLING_OUTBOX_POLL_SECONDS", "0.2")
    try:
        yield folder
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class Person:
    account_id: str
    email: str
    token: str

    def tokens(self) -> Callable[[], str]:
        return lambda: self.token


@dataclass
class Doctor(Person):
    doctor_id: str = ""
    mandate_id: str = ""


@dataclass
class World:
    """The seeded platform and a channel per caller (closed with the world)."""

    stack: Stack
    exits: AsyncExitStack
    terms: identity_pb2.LegalText = field(default_factory=identity_pb2.LegalText)
    notice: identity_pb2.LegalText = field(default_factory=identity_pb2.LegalText)
    partner_id: str = ""
    agreement_id: str = ""

    def _channel(self, service: str, tokens: Callable[[], str | None]) -> grpc.aio.Channel:
        channel = open_channel(self.stack.target(service), tokens)
        self.exits.push_async_callback(channel.close)
        return channel

    def service_tokens(self, issuer: str) -> Callable[[], str | None]:
        return ServiceTokenProvider(TokenSigner.from_keys_dir(self.stack.auth.keys_dir, issuer))

    def identity(self, tokens: Callable[[], str | None]) -> Any:
        return identity_pb2_grpc.IdentityServiceStub(self._channel("identity", tokens))

    def dossier(self, tokens: Callable[[], str | None]) -> Any:
        return dossier_pb2_grpc.DossierServiceStub(self._channel("dossier", tokens))

    def matching(self, tokens: Callable[[], str | None]) -> Any:
        return matching_pb2_grpc.MatchingServiceStub(self._channel("matching", tokens))

    def billing(self, tokens: Callable[[], str | None]) -> Any:
        return billing_pb2_grpc.BillingServiceStub(self._channel("billing", tokens))

    def notifications(self, tokens: Callable[[], str | None]) -> Any:
        return notifications_pb2_grpc.NotificationsServiceStub(self._channel("notifications", tokens))

    @property
    def ops(self) -> Callable[[], str | None]:
        return self.service_tokens("ops")

    @property
    def worker(self) -> Callable[[], str | None]:
        return self.service_tokens("worker")

    async def person_token(self, account_id: str) -> str:
        """What the gateway holds for a logged-in person: a session, then the internal
        token identity mints for it."""
        session_token = await self.stack.open_session(account_id)
        valid = await self.identity(self.service_tokens("gateway")).ValidateSession(
            identity_pb2.ValidateSessionRequest(session_token=session_token)
        )
        return str(valid.internal_token)

    # -- seeding (an operator's work) ------------------------------------------------------

    async def publish_legal_texts(self) -> None:
        identity = self.identity(self.ops)
        for kind, body in (
            (identity_pb2.LEGAL_TEXT_KIND_TERMS, "Conditions générales d'utilisation (test)."),
            (identity_pb2.LEGAL_TEXT_KIND_PRIVACY_POLICY, "Politique de confidentialité (test)."),
        ):
            published = await identity.PublishLegalText(
                identity_pb2.PublishLegalTextRequest(
                    idempotency_key=f"legal:{kind}", kind=kind, version="2026.1", locale="fr", body=body
                )
            )
            if kind == identity_pb2.LEGAL_TEXT_KIND_TERMS:
                self.terms = published.text
            else:
                self.notice = published.text

    async def referent_doctor(self, name: str, rpps_base: str, area: str = "oncology") -> Doctor:
        """Identity account, matching registration (with that account id), billing mandate."""
        email = f"{name.lower()}@doctors.example.org"
        account = await self.identity(self.ops).CreateStaffAccount(
            identity_pb2.CreateStaffAccountRequest(
                idempotency_key=f"staff:{email}",
                role=identity_pb2.ACCOUNT_ROLE_REFERENT_DOCTOR,
                email=email,
                phone_number="+33611111111",
                display_name=f"Dr {name}",
                rpps_number=with_luhn_digit(rpps_base),
            )
        )
        registered = await self.matching(self.ops).RegisterReferentDoctor(
            matching_pb2.RegisterReferentDoctorRequest(
                idempotency_key=f"doctor:{email}",
                account_id=account.account_id,
                rpps_number=with_luhn_digit(rpps_base),
                display_name=f"Dr {name}",
                therapeutic_areas=[area],
                languages=["fr"],
                max_concurrent_cases=3,
            )
        )
        doctor_id = registered.doctor.doctor_id
        now = datetime.now(UTC)
        mandate = await self.billing(self.ops).RecordBillingMandate(
            billing_pb2.RecordBillingMandateRequest(
                idempotency_key=f"mandate:{doctor_id}",
                doctor_id=doctor_id,
                doctor_account_id=account.account_id,
                doctor_legal_name=f"Dr {name}",
                covers_billing=True,
                covers_collection=True,
                starts_at=to_timestamp(now - timedelta(days=30)),
                mandate_text_version="2026-01",
                mandate_text_sha256_hex=hashlib.sha256(b"mandat de facturation").hexdigest(),
                signed_document_id=str(uuid.uuid4()),
                accepted_at=to_timestamp(now - timedelta(days=30)),
            )
        )
        return Doctor(
            account_id=account.account_id,
            email=email,
            token=await self.person_token(account.account_id),
            doctor_id=doctor_id,
            mandate_id=mandate.mandate.mandate_id,
        )

    async def partner_with_agreement(self) -> None:
        billing = self.billing(self.ops)
        partner = await billing.CreatePartner(
            billing_pb2.CreatePartnerRequest(
                idempotency_key="partner:mutuelle",
                name="Mutuelle Test",
                kind=billing_pb2.PARTNER_KIND_MUTUELLE,
            )
        )
        now = datetime.now(UTC)
        agreement = await billing.CreatePartnerAgreement(
            billing_pb2.CreatePartnerAgreementRequest(
                idempotency_key="agreement:mutuelle",
                partner_id=partner.partner.partner_id,
                covered_purposes=[billing_pb2.CASE_PURPOSE_SECOND_OPINION],
                starts_at=to_timestamp(now - timedelta(days=1)),
                ends_at=to_timestamp(now + timedelta(days=365)),
            )
        )
        self.partner_id = partner.partner.partner_id
        self.agreement_id = agreement.agreement.agreement_id

    async def coverage_code(self) -> str:
        issued = await self.billing(self.ops).IssueCoverageCodes(
            billing_pb2.IssueCoverageCodesRequest(
                idempotency_key=f"codes:{uuid.uuid4()}",
                partner_id=self.partner_id,
                agreement_id=self.agreement_id,
                count=1,
                usage=billing_pb2.COVERAGE_CODE_USAGE_SINGLE_USE,
                max_uses=1,
                expires_at=to_timestamp(datetime.now(UTC) + timedelta(days=30)),
            )
        )
        return str(issued.codes[0].code)

    # -- the patient's side -------------------------------------------------------------------

    async def patient_signs_up(self, label: str) -> Person:
        """Signs up accepting the terms in force, accepts the privacy notice and consents
        to the processing of health data (CNS-01), as the checkout page does."""
        email = f"{label}-{uuid.uuid4().hex[:6]}@patients.example.org"
        created = await self.identity(self.service_tokens("gateway")).SignUp(
            identity_pb2.SignUpRequest(
                idempotency_key=f"signup:{email}",
                email=email,
                phone_number="+33612345678",
                password=PASSWORD,
                declared_age=45,
                locale="fr",
                accepted_terms_version=self.terms.version,
                accepted_terms_sha256_hex=self.terms.sha256_hex,
            )
        )
        patient = Person(created.account_id, email, await self.person_token(created.account_id))
        identity = self.identity(patient.tokens())
        await identity.AcceptLegalText(
            identity_pb2.AcceptLegalTextRequest(
                idempotency_key=f"notice:{email}",
                text_id=self.notice.text_id,
                text_sha256_hex=self.notice.sha256_hex,
            )
        )
        await identity.GiveConsent(
            identity_pb2.GiveConsentRequest(
                idempotency_key=f"consent:{email}",
                kind=identity_pb2.CONSENT_KIND_HEALTH_DATA_PROCESSING,
                text_id=self.notice.text_id,
                text_sha256_hex=self.notice.sha256_hex,
            )
        )
        return patient

    async def create_case(self, patient: Person, doctor_count: int = 1) -> dossier_pb2.Case:
        created = await self.dossier(patient.tokens()).CreateCase(
            dossier_pb2.CreateCaseRequest(
                idempotency_key=f"case:{uuid.uuid4()}",
                filing_capacity=dossier_pb2.FILING_CAPACITY_SELF,
                therapeutic_area="oncology",
                purpose=dossier_pb2.CASE_PURPOSE_SECOND_OPINION,
                doctor_choice_mode=dossier_pb2.DOCTOR_CHOICE_MODE_PLATFORM_CHOSEN,
                requested_doctor_count=doctor_count,
            )
        )
        case: dossier_pb2.Case = created.case
        return case

    async def submit_forms(self, patient: Person, case_id: str) -> None:
        """Both forms, valid against services/dossier/forms/definitions/oncology, then the
        filer confirms the request."""
        dossier = self.dossier(patient.tokens())
        for kind, answers in (
            (dossier_pb2.FORM_KIND_PRE_FORM, PRE_FORM),
            (dossier_pb2.FORM_KIND_PATHOLOGY, PATHOLOGY),
        ):
            await dossier.SubmitFormAnswers(
                dossier_pb2.SubmitFormAnswersRequest(
                    idempotency_key=f"form:{case_id}:{kind}",
                    case_id=case_id,
                    kind=kind,
                    answers_json=json.dumps(answers, ensure_ascii=False),
                )
            )
        await dossier.SubmitCase(
            dossier_pb2.SubmitCaseRequest(idempotency_key=f"submit:{case_id}", case_id=case_id)
        )

    # -- the doctor's side ----------------------------------------------------------------------

    async def pending_offer(self, doctor: Doctor, case_id: str) -> matching_pb2.Offer:
        """The offer as the doctor's portal lists it (their own offers only)."""
        matching = self.matching(doctor.tokens())

        async def find() -> matching_pb2.Offer | None:
            listed = await matching.ListOffers(
                matching_pb2.ListOffersRequest(statuses=[matching_pb2.OFFER_STATUS_PENDING], page_size=50)
            )
            return next((o for o in listed.offers if o.case_id == case_id), None)

        return await eventually(find, f"an offer of case {case_id} to {doctor.email}")

    async def doctor_accepts(
        self, doctor: Doctor, handle: WorkflowHandle[Any, Any], case_id: str
    ) -> matching_pb2.AcceptOfferResponse:
        """What the doctor portal does: AcceptOffer in matching with the doctor's token,
        then the signal to the case workflow."""
        offer = await self.pending_offer(doctor, case_id)
        accepted = await self.matching(doctor.tokens()).AcceptOffer(
            matching_pb2.AcceptOfferRequest(
                idempotency_key=f"accept:{offer.offer_id}", offer_id=offer.offer_id
            )
        )
        await handle.signal(
            CaseWorkflow.offer_answered,
            OfferAnswered(
                offer_id=offer.offer_id,
                accepted=True,
                assignment_id=accepted.assignment.assignment_id,
                doctor_account_id=doctor.account_id,
            ),
        )
        response: matching_pb2.AcceptOfferResponse = accepted
        return response

    async def doctor_writes_report(self, doctor: Doctor, case_id: str) -> str:
        """DOC-04: the draft lives in the dossier (the assigned doctor only)."""
        saved = await self.dossier(doctor.tokens()).SaveReportDraft(
            dossier_pb2.SaveReportDraftRequest(
                idempotency_key=f"report:{case_id}:{doctor.doctor_id}",
                case_id=case_id,
                body="Avis : la chimiothérapie adjuvante est indiquée.",
            )
        )
        return str(saved.report.report_id)

    # -- what the services hold ----------------------------------------------------------------

    async def outbox(self) -> list[notifications_pb2.OutboxMessage]:
        """Every message the notifications service delivered (development copies)."""
        stub = self.notifications(self.service_tokens("gateway"))
        messages: list[notifications_pb2.OutboxMessage] = []
        token = ""
        while True:
            page = await stub.ListOutbox(notifications_pb2.ListOutboxRequest(page_size=100, page_token=token))
            messages += list(page.messages)
            token = page.next_page_token
            if not token:
                return messages

    async def delivered(self, recipient: str, template: int) -> list[notifications_pb2.OutboxMessage]:
        return [m for m in await self.outbox() if m.recipient == recipient and m.template == template]

    async def notification_for_key(self, caller: str, key: str) -> str:
        """The notification id the service recorded under a caller's idempotency key."""
        engine = create_engine(self.stack.database_urls["notifications"])
        try:
            async with session_factory(engine)() as session:
                row = await session.scalar(
                    select(NotificationKey).where(NotificationKey.idempotency_key == f"{caller}/{key}")
                )
                return row.result_id if row is not None else ""
        finally:
            await engine.dispose()


@asynccontextmanager
async def seeded_world(stack: Stack) -> AsyncIterator[World]:
    async with AsyncExitStack() as exits:
        world = World(stack, exits)
        await world.publish_legal_texts()
        await world.partner_with_agreement()
        yield world


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, limit: float = 20.0) -> T:
    deadline = time.monotonic() + limit
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {limit:.0f} s: {what}")
        await asyncio.sleep(0.1)


async def view_when(
    handle: WorkflowHandle[Any, Any], ready: Callable[[CaseView], bool], limit: float = 30.0
) -> CaseView:
    """Polls the workflow's `state` query (tolerates a moment without a worker)."""
    deadline = time.monotonic() + limit
    view: CaseView | None = None
    while True:
        try:
            view = await asyncio.wait_for(handle.query(CaseWorkflow.state), timeout=5)
            if ready(view):
                return view
        except Exception:  # no worker to answer yet (or a query timing out)
            pass
        if time.monotonic() > deadline:
            state = view.model_dump_json() if view else "no answer"
            raise AssertionError(f"case did not reach the expected state; last: {state}")
        await asyncio.sleep(0.1)


async def settle(handle: WorkflowHandle[Any, Any], limit: float = 20.0) -> None:
    """Waits until the workflow has no work in flight (activities done, task handled)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        raw = (await handle.describe()).raw_description
        if not raw.pending_activities and not raw.HasField("pending_workflow_task"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the workflow kept working")


def queue_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
