"""The report to the treating physician (CASE-16, CNS-08), case references and counts, and
the coordinators' at-risk and escalated listings (CASE-12), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from secondopinion.dossier.v1 import dossier_pb2 as pb

from services.shared.auth import Role
from tests.dossier.conftest import COORDINATOR, Dossier, assign, create_case, expect_status

NF, PD = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED
FP, IA = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT
ADDRESS = "jeanne.martin@medecin.mssante.fr"


async def delivered_report(dossier: Dossier, case_id: str, key: str, body: str = "Avis : RAS") -> str:
    doctor = await dossier.doctor()
    draft = (
        await doctor.SaveReportDraft(
            pb.SaveReportDraftRequest(idempotency_key=key, case_id=case_id, body=body)
        )
    ).report
    worker = await dossier.worker()
    await worker.DeliverReport(
        pb.DeliverReportRequest(idempotency_key=f"dl-{key}", report_id=draft.report_id)
    )
    return draft.report_id


async def outbox(dossier: Dossier, subject: str) -> list[dict[str, str]]:
    """The packages the development channel recorded, opened with the subject's key."""
    from services.dossier.models import SecureMessageOutbox

    rows = await dossier.sql("SELECT message_id FROM secure_message_outbox ORDER BY sent_at")
    packages = []
    async with dossier.vault.sessions() as session:
        assert await dossier.vault.gate.keys.load(session, subject)
        for (message_id,) in rows:
            row = await session.get(SecureMessageOutbox, message_id)
            assert row is not None
            text = dossier.vault.keyring.open_text(row.package_sealed, f"secure_message_outbox:{message_id}")
            packages.append(json.loads(text))
    return packages


def share(report_id: str, key: str) -> pb.ShareReportWithTreatingPhysicianRequest:
    return pb.ShareReportWithTreatingPhysicianRequest(idempotency_key=key, report_id=report_id)


@pytest.mark.req("CASE-16")
@pytest.mark.req("SEC-01")
async def test_the_sealed_report_goes_to_the_treating_physician_through_secure_messaging(
    dossier: Dossier,
) -> None:
    alice = await dossier.patient()
    case = await create_case(alice)
    assert not case.has_treating_physician
    await assign(dossier, case.case_id)
    worker = await dossier.worker()
    doctor = await dossier.doctor()
    draft = (
        await doctor.SaveReportDraft(
            pb.SaveReportDraftRequest(idempotency_key="d", case_id=case.case_id, body="Avis : RAS")
        )
    ).report
    # Not delivered yet: FAILED_PRECONDITION.
    await expect_status(worker.ShareReportWithTreatingPhysician(share(draft.report_id, "s0")), FP)

    # The contact, given by the patient: an MSSanté address, an 11-digit RPPS.
    def contact(key: str, **fields: str) -> pb.SetTreatingPhysicianRequest:
        values = {
            "display_name": "Dr Jeanne Martin",
            "rpps_number": "10101234567",
            "secure_messaging_address": ADDRESS,
        }
        return pb.SetTreatingPhysicianRequest(
            idempotency_key=key, case_id=case.case_id, **{**values, **fields}
        )

    await expect_status(alice.SetTreatingPhysician(contact("c0", secure_messaging_address="j@gmail.com")), IA)
    await expect_status(alice.SetTreatingPhysician(contact("c1", rpps_number="12AB")), IA)
    await expect_status(alice.SetTreatingPhysician(contact("c2", display_name=" ")), IA)
    await expect_status(doctor.SetTreatingPhysician(contact("c3")), PD)
    await expect_status((await dossier.patient("bob")).SetTreatingPhysician(contact("c4")), NF)
    given = (
        await alice.SetTreatingPhysician(contact("c5", secure_messaging_address=ADDRESS.upper()))
    ).treating_physician
    assert given.secure_messaging_address == ADDRESS and given.rpps_number == "10101234567"
    assert given.recorded_at.seconds > 0
    read = (
        await alice.GetTreatingPhysician(pb.GetTreatingPhysicianRequest(case_id=case.case_id))
    ).treating_physician
    assert read.display_name == "Dr Jeanne Martin"
    assert (await alice.GetCase(pb.GetCaseRequest(case_id=case.case_id))).case.has_treating_physician
    await expect_status(doctor.GetTreatingPhysician(pb.GetTreatingPhysicianRequest(case_id=case.case_id)), PD)
    # Stored sealed: neither the name nor the address is readable in the database.
    (sealed,) = (await dossier.sql("SELECT treating_physician_sealed FROM cases"))[0]
    assert b"mssante" not in bytes(sealed) and b"Martin" not in bytes(sealed)

    # Only a sealed report travels, only the worker sends it.
    assert "sealed" in await expect_status(
        worker.ShareReportWithTreatingPhysician(share(draft.report_id, "s1")), FP
    )
    await worker.DeliverReport(pb.DeliverReportRequest(idempotency_key="dl", report_id=draft.report_id))
    await expect_status(alice.ShareReportWithTreatingPhysician(share(draft.report_id, "s2")), PD)
    await expect_status(worker.ShareReportWithTreatingPhysician(share("unknown", "s3")), NF)
    shared = await worker.ShareReportWithTreatingPhysician(share(draft.report_id, "s4"))
    assert shared.shared_at.seconds > 0
    # Retries (same key, or another key for the same report) send nothing more.
    assert (
        await worker.ShareReportWithTreatingPhysician(share(draft.report_id, "s4"))
    ).shared_at == shared.shared_at
    assert (
        await worker.ShareReportWithTreatingPhysician(share(draft.report_id, "s5"))
    ).shared_at == shared.shared_at
    (package,) = await outbox(dossier, "alice")
    assert package["recipient_address"] == ADDRESS and package["body"] == "Avis : RAS"
    assert package["report_id"] == draft.report_id and package["case_reference"] == case.case_reference
    assert set(package) == {
        "case_id", "case_reference", "recipient_address", "recipient_name", "subject_line", "body",
        "report_id", "seal_sha256_hex", "attachment_document_id", "attachment_sha256_hex",
    }  # fmt: skip  # the report only, nothing else of the file
    # The sending is in the person's access history.
    entries = (await alice.ListAccessLog(pb.ListAccessLogRequest(case_id=case.case_id))).entries
    shares = [e for e in entries if e.action == pb.ACCESS_ACTION_SHARE]
    assert len(shares) == 1 and shares[0].object_id == draft.report_id
    assert (
        shares[0].purpose == pb.ACCESS_PURPOSE_PLATFORM_PROCESSING and shares[0].actor_account_id == "worker"
    )


@pytest.mark.req("CNS-08")
@pytest.mark.req("CASE-16")
async def test_an_objection_stops_the_sending_until_withdrawn(dossier: Dossier) -> None:
    alice = await dossier.patient()
    case = await create_case(alice)
    await assign(dossier, case.case_id)
    report_id = await delivered_report(dossier, case.case_id, "r1")
    worker = await dossier.worker()
    # Delivered, but no contact yet: refused (the workflow waits for the contact).
    assert "contact" in await expect_status(
        worker.ShareReportWithTreatingPhysician(share(report_id, "s0")), FP
    )
    await alice.SetTreatingPhysician(
        pb.SetTreatingPhysicianRequest(
            idempotency_key="c",
            case_id=case.case_id,
            display_name="Dr Martin",
            secure_messaging_address=ADDRESS,
        )
    )

    def objection(stub_key: str, opposed: bool) -> pb.SetReportSharingObjectionRequest:
        return pb.SetReportSharingObjectionRequest(
            idempotency_key=stub_key, case_id=case.case_id, opposed=opposed
        )

    opposed = (await alice.SetReportSharingObjection(objection("o1", True))).case
    assert opposed.report_sharing_opposed_at.seconds > 0
    await expect_status((await dossier.doctor()).SetReportSharingObjection(objection("o2", False)), PD)
    assert "objected" in await expect_status(
        worker.ShareReportWithTreatingPhysician(share(report_id, "s1")), FP
    )
    assert not await dossier.sql("SELECT message_id FROM secure_message_outbox")
    # Withdrawn: the next attempt goes through; the worker may mirror an identity objection too.
    withdrawn = (await alice.SetReportSharingObjection(objection("o3", False))).case
    assert not withdrawn.HasField("report_sharing_opposed_at")
    await worker.ShareReportWithTreatingPhysician(share(report_id, "s2"))
    assert len(await outbox(dossier, "alice")) == 1
    mirrored = (await worker.SetReportSharingObjection(objection("o4", True))).case
    assert mirrored.report_sharing_opposed_at.seconds > 0


@pytest.mark.req("CASE-12")
@pytest.mark.req("CASE-13")
async def test_cases_carry_a_reference_the_doctor_count_and_the_submission_time(dossier: Dossier) -> None:
    alice = await dossier.patient()
    first = await create_case(alice, "k1", requested_doctor_count=3)
    second = await create_case(
        alice,
        "k2",
        doctor_choice_mode=pb.DOCTOR_CHOICE_MODE_PATIENT_CHOSEN,
        chosen_doctor_ids=["doc-1", "doc-2"],
    )
    for case in (first, second):
        assert re.fullmatch(r"SO-[A-HJ-NP-TV-Z2-9]{4}-[A-HJ-NP-TV-Z2-9]{4}", case.case_reference)
        assert case.submitted_at.seconds > 0
    assert first.case_reference != second.case_reference
    assert (first.requested_doctor_count, second.requested_doctor_count) == (3, 2)
    assert (await create_case(alice, "k3")).requested_doctor_count == 1
    await expect_status(create_case(alice, "k4", requested_doctor_count=9), IA)
    await expect_status(
        create_case(
            alice, "k5", doctor_choice_mode=pb.DOCTOR_CHOICE_MODE_PATIENT_CHOSEN,
            chosen_doctor_ids=["doc-1"], requested_doctor_count=2,
        ),
        IA,
    )  # fmt: skip
    got = (await alice.GetCase(pb.GetCaseRequest(case_id=first.case_id))).case
    assert got.case_reference == first.case_reference and got.submitted_at == first.submitted_at
    # The reference is unique in the database too.
    assert len({r[0] for r in await dossier.sql("SELECT case_reference FROM cases")}) == 3


@pytest.mark.req("CASE-12")
@pytest.mark.req("SEC-05")
async def test_habilitated_coordinators_list_cases_at_risk_and_escalated(dossier: Dossier) -> None:
    alice = await dossier.patient()
    worker = await dossier.worker()
    now = datetime.now(UTC)

    async def case_in(key: str, statuses: list[Any], deadline: timedelta | None) -> str:
        case_id = (await create_case(alice, key)).case_id
        for n, status in enumerate(statuses):
            await worker.UpdateCaseStatus(
                pb.UpdateCaseStatusRequest(idempotency_key=f"{key}-{n}", case_id=case_id, status=status)
            )
        if deadline is not None:
            stamp = Timestamp()
            stamp.FromDatetime(now + deadline)
            await worker.SetCaseDeadline(
                pb.SetCaseDeadlineRequest(
                    idempotency_key=f"{key}-dl", case_id=case_id, deadline_at=stamp,
                    reason=pb.DEADLINE_CHANGE_REASON_REVIEW_STARTED,
                )
            )  # fmt: skip
        return case_id

    review = [pb.CASE_STATUS_AWAITING_ASSIGNMENT, pb.CASE_STATUS_IN_REVIEW]
    soon = await case_in("soon", review, timedelta(hours=2))
    later = await case_in("later", review, timedelta(days=3))
    overdue = await case_in("overdue", [*review, pb.CASE_STATUS_AWAITING_INFORMATION], timedelta(hours=-1))
    escalated = await case_in("esc", [*review, pb.CASE_STATUS_ESCALATED], timedelta(hours=1))
    await case_in("fresh", [], None)  # submitted, no deadline: never at risk

    coordinator = await dossier.as_(COORDINATOR, Role.COORDINATOR)

    async def listing(scope: int, **fields: object) -> list[str]:
        response = await coordinator.ListCases(pb.ListCasesRequest(scope=scope, **fields))  # type: ignore[arg-type]
        return [c.case_id for c in response.cases]

    # Nearest deadline first, overdue included; the window defaults to 24 hours.
    assert await listing(pb.CASE_LIST_SCOPE_AT_RISK) == [overdue, soon]
    assert await listing(pb.CASE_LIST_SCOPE_AT_RISK, at_risk_within=Duration(seconds=4 * 86400)) == [
        overdue,
        soon,
        later,
    ]
    assert await listing(pb.CASE_LIST_SCOPE_AT_RISK, page_size=1) == [overdue]
    assert await listing(pb.CASE_LIST_SCOPE_ESCALATED) == [escalated]
    await expect_status(
        coordinator.ListCases(
            pb.ListCasesRequest(scope=pb.CASE_LIST_SCOPE_AT_RISK, at_risk_within=Duration(seconds=-1))
        ),
        IA,
    )
    for stub in (
        await dossier.as_("coord-plain", Role.COORDINATOR),
        alice,
        await dossier.doctor(),
        await dossier.as_("partner-1", Role.PARTNER_USER),
    ):
        for scope in (pb.CASE_LIST_SCOPE_AT_RISK, pb.CASE_LIST_SCOPE_ESCALATED):
            await expect_status(stub.ListCases(pb.ListCasesRequest(scope=scope)), PD)


@pytest.mark.req("CASE-02")
@pytest.mark.req("CASE-03")
async def test_submitting_a_case_needs_both_forms_submitted(dossier: Dossier) -> None:
    from tests.dossier.test_forms_and_exchanges import PATHOLOGY, PRE_FORM

    alice = await dossier.patient()
    case = await create_case(alice)

    def submit(key: str) -> pb.SubmitCaseRequest:
        return pb.SubmitCaseRequest(idempotency_key=key, case_id=case.case_id)

    assert "pre_form" in await expect_status(alice.SubmitCase(submit("s1")), FP)
    await expect_status((await dossier.patient("bob")).SubmitCase(submit("s2")), NF)
    for kind, answers in ((pb.FORM_KIND_PRE_FORM, PRE_FORM), (pb.FORM_KIND_PATHOLOGY, PATHOLOGY)):
        await alice.SubmitFormAnswers(
            pb.SubmitFormAnswersRequest(
                idempotency_key=f"f{kind}", case_id=case.case_id, kind=kind, answers_json=json.dumps(answers)
            )
        )
    submitted = (await alice.SubmitCase(submit("s3"))).case
    assert submitted.status == pb.CASE_STATUS_SUBMITTED and submitted.submitted_at == case.submitted_at
