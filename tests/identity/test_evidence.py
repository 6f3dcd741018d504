"""Terms, notices, consents and objections kept as chained evidence (CNS-01..08), closure
(ACC-11), who files for whom (ACC-03, ACC-13, ACC-14), referrals (ACC-15)."""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, date, datetime, timedelta

import grpc
import pytest
from secondopinion.identity.v1 import identity_pb2 as pb
from secondopinion.notifications.v1 import notifications_pb2 as npb
from sqlalchemy import text

from services.shared.auth import Role
from tests.identity.conftest import Identity, expect

TERMS_V1 = "# CGU 2025-01\nLes présentes conditions..."
TERMS_V2 = "# CGU 2025-06\nNouvelles conditions..."


def sha(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


async def publish(
    identity: Identity, kind: pb.LegalTextKind.ValueType, version: str, body: str
) -> pb.LegalText:
    request = pb.PublishLegalTextRequest(
        idempotency_key=f"pub:{kind}:{version}", kind=kind, version=version, locale="fr", body=body
    )
    return (await identity.ops.PublishLegalText(request)).text


def birth(years_ago: int) -> str:
    today = date.today()
    return today.replace(year=today.year - years_ago, day=min(today.day, 28)).isoformat()


@pytest.mark.req("CNS-01")
@pytest.mark.req("CNS-02")
@pytest.mark.req("CNS-03")
@pytest.mark.req("CNS-04")
@pytest.mark.req("CNS-05")
@pytest.mark.req("CNS-06")
@pytest.mark.req("CNS-07")
@pytest.mark.req("CNS-08")
async def test_terms_notices_and_consents_are_evidence(identity: Identity) -> None:
    terms = await publish(identity, pb.LEGAL_TEXT_KIND_TERMS, "2025-01", TERMS_V1)
    assert terms.sha256_hex == sha(TERMS_V1)
    await expect(
        publish(identity, pb.LEGAL_TEXT_KIND_TERMS, "bad version!", "x"), grpc.StatusCode.INVALID_ARGUMENT
    )
    # Sign-up needs the express acceptance of the exact version in force.
    await expect(identity.sign_up("c@example.org"), grpc.StatusCode.INVALID_ARGUMENT)
    await expect(
        identity.sign_up(
            "c@example.org", accepted_terms_version="2025-01", accepted_terms_sha256_hex="0" * 64
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    account_id = await identity.sign_up(
        "c@example.org",
        accepted_terms_version="2025-01",
        accepted_terms_sha256_hex=terms.sha256_hex,
        client=pb.ClientInfo(ip_address="198.51.100.2", user_agent="browser"),
    )
    worker = identity.service("worker")
    check = await worker.CheckLatestTermsAccepted(pb.CheckLatestTermsAcceptedRequest(account_id=account_id))
    assert check.accepted and check.accepted_version == "2025-01"
    v2 = await publish(identity, pb.LEGAL_TEXT_KIND_TERMS, "2025-06", TERMS_V2)
    check = await worker.CheckLatestTermsAccepted(pb.CheckLatestTermsAcceptedRequest(account_id=account_id))
    assert not check.accepted and check.current_version == "2025-06" and check.current_text_id == v2.text_id

    done = await identity.log_in("c@example.org")
    me = await identity.as_session(done.session_token)
    await expect(
        me.AcceptLegalText(
            pb.AcceptLegalTextRequest(idempotency_key="a-0", text_id=v2.text_id, text_sha256_hex=sha("other"))
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    await expect(
        me.AcceptLegalText(
            pb.AcceptLegalTextRequest(
                idempotency_key="a-1", text_id=terms.text_id, text_sha256_hex=terms.sha256_hex
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    accepted = await me.AcceptLegalText(
        pb.AcceptLegalTextRequest(
            idempotency_key="a-2",
            text_id=v2.text_id,
            text_sha256_hex=v2.sha256_hex,
            client=pb.ClientInfo(ip_address="198.51.100.3", user_agent="ua"),
        )
    )
    record = accepted.record
    assert record.text_version == "2025-06" and record.text_sha256_hex == sha(TERMS_V2)
    assert record.authentication_method == pb.AUTHENTICATION_METHOD_PASSWORD_AND_SMS_CODE
    assert record.session_id == done.session_id and record.ip_address == "198.51.100.3"
    assert (
        await worker.CheckLatestTermsAccepted(pb.CheckLatestTermsAcceptedRequest(account_id=account_id))
    ).accepted

    # The notice for oneself, then separate consents and objections.
    notice = await publish(identity, pb.LEGAL_TEXT_KIND_NOTICE_SELF, "1", "Notice: self")
    await expect(
        me.GiveConsent(
            pb.GiveConsentRequest(idempotency_key="g-0", kind=pb.CONSENT_KIND_HEALTH_DATA_PROCESSING)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await me.AcceptLegalText(
        pb.AcceptLegalTextRequest(
            idempotency_key="a-3", text_id=notice.text_id, text_sha256_hex=notice.sha256_hex
        )
    )
    await me.GiveConsent(
        pb.GiveConsentRequest(
            idempotency_key="g-1",
            kind=pb.CONSENT_KIND_HEALTH_DATA_PROCESSING,
            text_id=notice.text_id,
            text_sha256_hex=notice.sha256_hex,
        )
    )
    await me.GiveConsent(
        pb.GiveConsentRequest(
            idempotency_key="g-2",
            kind=pb.CONSENT_KIND_REPORT_TO_TREATING_PHYSICIAN,
            text_id=notice.text_id,
            text_sha256_hex=notice.sha256_hex,
        )
    )
    await me.RecordObjection(
        pb.RecordObjectionRequest(idempotency_key="o-1", kind=pb.OBJECTION_KIND_RESEARCH_REUSE)
    )
    await expect(
        me.RecordObjection(
            pb.RecordObjectionRequest(idempotency_key="o-2", kind=pb.OBJECTION_KIND_RESEARCH_REUSE)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    await me.RecordObjection(
        pb.RecordObjectionRequest(
            idempotency_key="o-3", kind=pb.OBJECTION_KIND_SHARING_WITH_TREATING_PHYSICIAN
        )
    )
    await me.WithdrawObjection(
        pb.WithdrawObjectionRequest(idempotency_key="o-4", kind=pb.OBJECTION_KIND_RESEARCH_REUSE)
    )
    status = await worker.GetConsentStatus(pb.GetConsentStatusRequest(account_id=account_id))
    assert set(status.given_consents) == {
        pb.CONSENT_KIND_HEALTH_DATA_PROCESSING,
        pb.CONSENT_KIND_REPORT_TO_TREATING_PHYSICIAN,
    }
    assert list(status.objections) == [pb.OBJECTION_KIND_SHARING_WITH_TREATING_PHYSICIAN]
    assert status.notice_accepted

    # Everything stays readable from the account, chained.
    records = (await me.ListEvidenceRecords(pb.ListEvidenceRecordsRequest(account_id=account_id))).records
    assert len(records) == 8 and records[0].sequence > records[-1].sequence
    assert (
        records[-1].authentication_method == pb.AUTHENTICATION_METHOD_SIGN_UP
        and records[-1].ip_address == "198.51.100.2"
    )
    assert all(
        newer.previous_hash_hex == older.record_hash_hex for newer, older in itertools.pairwise(records)
    )
    body = await me.GetLegalText(pb.GetLegalTextRequest(text_id=terms.text_id))
    assert body.text.body == TERMS_V1
    chain = await identity.as_role("dpo", Role.DPO).VerifyEvidenceChain(pb.VerifyEvidenceChainRequest())
    assert chain.intact and chain.checked_count == 8
    await expect(me.VerifyEvidenceChain(pb.VerifyEvidenceChainRequest()), grpc.StatusCode.PERMISSION_DENIED)

    # Withdrawing the health-data consent closes the account (CNS-06); data stays.
    withdrawn = await me.WithdrawConsent(
        pb.WithdrawConsentRequest(idempotency_key="w-1", kind=pb.CONSENT_KIND_HEALTH_DATA_PROCESSING)
    )
    assert withdrawn.account_closed
    await expect(
        identity.gateway.ValidateSession(pb.ValidateSessionRequest(session_token=done.session_token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    account = (await worker.GetAccount(pb.GetAccountRequest(account_id=account_id))).account
    assert (
        account.status == pb.ACCOUNT_STATUS_CLOSED
        and account.closure_reason == pb.CLOSURE_REASON_CONSENT_WITHDRAWN
    )
    assert (
        await identity.as_role("dpo", Role.DPO).ListEvidenceRecords(
            pb.ListEvidenceRecordsRequest(account_id=account_id)
        )
    ).records


@pytest.mark.req("CNS-05")
async def test_altered_or_deleted_evidence_is_caught(identity: Identity) -> None:
    terms = await publish(identity, pb.LEGAL_TEXT_KIND_TERMS, "1", TERMS_V1)
    for index in range(4):
        await identity.sign_up(
            f"e{index}@example.org", accepted_terms_version="1", accepted_terms_sha256_hex=terms.sha256_hex
        )
    dpo = identity.as_role("dpo", Role.DPO)
    assert (await dpo.VerifyEvidenceChain(pb.VerifyEvidenceChainRequest())).intact
    async with identity.engine.begin() as connection:
        await connection.execute(text("UPDATE evidence_records SET text_version = '0' WHERE sequence = 2"))
    report = await dpo.VerifyEvidenceChain(pb.VerifyEvidenceChainRequest())
    assert not report.intact and report.first_bad_sequence == 2 and report.problem == pb.CHAIN_PROBLEM_ALTERED
    async with identity.engine.begin() as connection:
        await connection.execute(text("UPDATE evidence_records SET text_version = '1' WHERE sequence = 2"))
        await connection.execute(text("DELETE FROM evidence_records WHERE sequence = 3"))
    report = await dpo.VerifyEvidenceChain(pb.VerifyEvidenceChainRequest())
    assert (report.intact, report.first_bad_sequence, report.problem) == (False, 3, pb.CHAIN_PROBLEM_MISSING)
    assert report.checked_count == 2


@pytest.mark.req("ACC-11")
async def test_closure_by_user_or_staff_archives_never_deletes(identity: Identity) -> None:
    mine = await identity.sign_up("close1@example.org")
    theirs = await identity.sign_up("close2@example.org")
    done = await identity.log_in("close1@example.org")
    me = await identity.as_session(done.session_token)
    await expect(
        me.CloseAccount(pb.CloseAccountRequest(idempotency_key="x", account_id=theirs)),
        grpc.StatusCode.NOT_FOUND,
    )
    closed = await me.CloseAccount(pb.CloseAccountRequest(idempotency_key="c-1", account_id=mine))
    assert closed.account.status == pb.ACCOUNT_STATUS_CLOSED and closed.ended_session_count == 1
    assert "closed" in await expect(
        identity.start_login("close1@example.org"), grpc.StatusCode.PERMISSION_DENIED
    )
    admin = identity.as_role("admin", Role.ADMINISTRATOR)
    await expect(
        admin.CloseAccount(pb.CloseAccountRequest(idempotency_key="c-2", account_id=theirs)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    staff = await admin.CloseAccount(
        pb.CloseAccountRequest(
            idempotency_key="c-3", account_id=theirs, reason=pb.CLOSURE_REASON_FRAUDULENT_ACCESS_ATTEMPTS
        )
    )
    assert (
        staff.account.closure_reason == pb.CLOSURE_REASON_FRAUDULENT_ACCESS_ATTEMPTS
        and staff.account.HasField("closed_at")
    )
    async with identity.engine.connect() as connection:
        kept = (
            await connection.execute(
                text("SELECT count(*) FROM accounts WHERE email_normalized LIKE 'close%'")
            )
        ).scalar()
    assert kept == 2  # archived in place, never deleted here


@pytest.mark.req("ACC-03")
@pytest.mark.req("ACC-13")
@pytest.mark.req("ACC-14")
async def test_who_files_for_whom(identity: Identity) -> None:
    await identity.sign_up("parent@example.org")
    done = await identity.log_in("parent@example.org")
    me = await identity.as_session(done.session_token)
    young = pb.AttachMinorRequest(
        idempotency_key="m-1",
        first_name="Léa",
        last_name="Martin",
        birth_date=birth(10),
        proof_document_id="doc-1",
        minor_consent_mode=pb.MINOR_CONSENT_MODE_MINOR_OWN_CONSENT,
    )
    assert "under 15" in await expect(me.AttachMinor(young), grpc.StatusCode.INVALID_ARGUMENT)
    young.minor_consent_mode = pb.MINOR_CONSENT_MODE_PARENT_ATTESTS_MINOR_INFORMED
    minor = (await me.AttachMinor(young)).beneficiary
    assert minor.kind == pb.BENEFICIARY_KIND_MINOR and minor.status == pb.REPRESENTATION_STATUS_ACTIVE
    teen = pb.AttachMinorRequest(
        idempotency_key="m-2",
        first_name="Hugo",
        last_name="Martin",
        birth_date=birth(16),
        proof_document_id="doc-2",
        minor_consent_mode=pb.MINOR_CONSENT_MODE_MINOR_OWN_CONSENT,
    )
    await expect(
        me.AttachMinor(teen), grpc.StatusCode.INVALID_ARGUMENT
    )  # the minor's signed consent is missing
    teen.minor_consent_document_id = "doc-3"
    assert (await me.AttachMinor(teen)).beneficiary.minor_consent_document_id == "doc-3"
    for bad in ("2999-01-01", "31/12/2010", ""):
        await expect(
            me.AttachMinor(
                pb.AttachMinorRequest(
                    idempotency_key=f"b-{bad}",
                    first_name="A",
                    last_name="B",
                    birth_date=bad,
                    proof_document_id="d",
                    minor_consent_mode=pb.MINOR_CONSENT_MODE_PARENT_ATTESTS_MINOR_INFORMED,
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    await expect(
        me.AttachWard(
            pb.AttachWardRequest(
                idempotency_key="w-0",
                first_name="Paul",
                last_name="Durand",
                birth_date=birth(12),
                proof_document_id="j-1",
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    ward = (
        await me.AttachWard(
            pb.AttachWardRequest(
                idempotency_key="w-1",
                first_name="Paul",
                last_name="Durand",
                birth_date=birth(80),
                proof_document_id="judgment-1",
            )
        )
    ).beneficiary
    until = datetime.now(UTC) + timedelta(days=365)
    mandate = pb.RecordMandateRequest(
        idempotency_key="md-1",
        first_name="Anne",
        last_name="Roy",
        birth_date=birth(50),
        mandate_document_id="mandate-1",
    )
    mandate.valid_until.FromDatetime(until)
    mandator = (await me.RecordMandate(mandate)).beneficiary
    assert mandator.kind == pb.BENEFICIARY_KIND_MANDATOR and mandator.proof_document_id == "mandate-1"
    listed = await me.ListBeneficiaries(pb.ListBeneficiariesRequest())
    assert {b.beneficiary_id for b in listed.beneficiaries} >= {
        minor.beneficiary_id,
        ward.beneficiary_id,
        mandator.beneficiary_id,
    }
    # The attestation for the under-15 is evidence.
    records = (
        await me.ListEvidenceRecords(
            pb.ListEvidenceRecordsRequest(account_id=minor.representative_account_id)
        )
    ).records
    assert [r.kind for r in records] == [pb.EVIDENCE_KIND_MINOR_INFORMED_ATTESTED] and records[
        0
    ].beneficiary_id == minor.beneficiary_id
    stranger = identity.as_role("someone", Role.PATIENT)
    await expect(
        stranger.GetBeneficiary(pb.GetBeneficiaryRequest(beneficiary_id=minor.beneficiary_id)),
        grpc.StatusCode.NOT_FOUND,
    )
    ended = await me.EndRepresentation(
        pb.EndRepresentationRequest(idempotency_key="e-1", beneficiary_id=mandator.beneficiary_id)
    )
    assert ended.beneficiary.status == pb.REPRESENTATION_STATUS_ENDED


@pytest.mark.req("ACC-15")
async def test_referral_invites_and_remembers_the_last_email(identity: Identity) -> None:
    doctor = identity.as_role("referrer-1", Role.REFERRING_DOCTOR)
    await expect(
        doctor.ReferProspect(
            pb.ReferProspectRequest(idempotency_key="r-0", first_name="Marie", last_name="Curie")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect(
        identity.as_role("p", Role.PATIENT).ReferProspect(
            pb.ReferProspectRequest(
                idempotency_key="r-x", first_name="M", last_name="C", email="m@example.org"
            )
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # The referrer's account must exist for the foreign key: use a real referring doctor.
    created = await identity.ops.CreateStaffAccount(
        pb.CreateStaffAccountRequest(
            idempotency_key="rd",
            role=pb.ACCOUNT_ROLE_REFERRING_DOCTOR,
            email="gp@example.org",
            phone_number="+33622222222",
            display_name="Dr GP",
        )
    )
    doctor = identity.as_role(created.account_id, Role.REFERRING_DOCTOR)
    prospect = (
        await doctor.ReferProspect(
            pb.ReferProspectRequest(
                idempotency_key="r-1",
                first_name="Marie",
                last_name="Curie",
                email="Marie@Example.org",
                locale="fr",
            )
        )
    ).prospect
    assert prospect.status == pb.PROSPECT_STATUS_INVITED and prospect.email == "marie@example.org"
    invitation = identity.last(npb.NOTIFICATION_TEMPLATE_REFERRAL_INVITATION)
    assert invitation.email == "marie@example.org" and "invitation=" in invitation.variables.link
    await expect(
        doctor.ReferProspect(
            pb.ReferProspectRequest(
                idempotency_key="r-2", first_name="Marie", last_name="Curie", email="marie@example.org"
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    await expect(
        doctor.ReferProspect(
            pb.ReferProspectRequest(
                idempotency_key="r-3", first_name="Jo", last_name="Doe", phone_number="+33 1 23 45 67 89"
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    resent = (
        await doctor.ResendReferralInvitation(
            pb.ResendReferralInvitationRequest(idempotency_key="rs-1", prospect_id=prospect.prospect_id)
        )
    ).prospect
    assert resent.last_invitation_sent_at.ToDatetime() >= prospect.last_invitation_sent_at.ToDatetime()
    token = identity.last(npb.NOTIFICATION_TEMPLATE_REFERRAL_INVITATION).variables.link.split("invitation=")[
        1
    ]
    await identity.sign_up("marie@example.org", referral_token=token)
    listed = await doctor.ListReferrals(pb.ListReferralsRequest())
    assert [p.status for p in listed.prospects] == [pb.PROSPECT_STATUS_ACCOUNT_CREATED]
    other = identity.as_role("referrer-2", Role.REFERRING_DOCTOR)
    await expect(
        other.ResendReferralInvitation(
            pb.ResendReferralInvitationRequest(idempotency_key="rs-2", prospect_id=prospect.prospect_id)
        ),
        grpc.StatusCode.NOT_FOUND,
    )
