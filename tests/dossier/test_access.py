"""Access rules checked for every call, and the hash-chained access log (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from secondopinion.dossier.v1 import dossier_pb2 as pb

from services.shared.auth import Role
from tests.dossier.conftest import ASSISTANT, COORDINATOR, Dossier, assign, create_case, expect_status

NF, PD = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED


def reads(case_id: str) -> list[tuple[str, object]]:
    """Every read RPC on a case's content."""
    return [
        ("GetCase", pb.GetCaseRequest(case_id=case_id)),
        ("GetCaseNotes", pb.GetCaseNotesRequest(case_id=case_id)),
        ("ListDocuments", pb.ListDocumentsRequest(case_id=case_id)),
        ("ListMessages", pb.ListMessagesRequest(case_id=case_id)),
        ("GetFormAnswers", pb.GetFormAnswersRequest(case_id=case_id, kind=pb.FORM_KIND_PRE_FORM)),
        ("ListFormVersions", pb.ListFormVersionsRequest(case_id=case_id, kind=pb.FORM_KIND_PATHOLOGY)),
        ("ListCaseReports", pb.ListCaseReportsRequest(case_id=case_id)),
        ("ListCaseAssignments", pb.ListCaseAssignmentsRequest(case_id=case_id)),
    ]


@pytest.mark.req("DOC-02")
@pytest.mark.req("SEC-05")
@pytest.mark.req("CASE-08")
@pytest.mark.req("CASE-12")
async def test_only_the_filer_assigned_doctors_and_habilitated_staff_see_a_case(dossier: Dossier) -> None:
    alice = await dossier.patient("alice")
    case = await create_case(alice, purpose=pb.CASE_PURPOSE_OPINION_BEFORE_INDEMNITY_CLAIM)
    await alice.SaveCaseNotes(pb.SaveCaseNotesRequest(idempotency_key="n1", case_id=case.case_id, text="Q?"))
    await assign(dossier, case.case_id, doctor_account="doctor-assigned")

    allowed = [
        await dossier.patient("alice"),
        await dossier.doctor("doctor-assigned"),
        await dossier.as_(COORDINATOR, Role.COORDINATOR),
    ]
    refused = {
        "another patient": await dossier.patient("bob"),
        "unassigned doctor": await dossier.doctor("doctor-other"),
        "partner": await dossier.as_("partner-1", Role.PARTNER_USER),
        "coordinator without habilitation": await dossier.as_("coord-plain", Role.COORDINATOR),
        "referring doctor": await dossier.as_("gp-1", Role.REFERRING_DOCTOR),
        "dpo": await dossier.as_("dpo-1", Role.DPO),
        "administrator": await dossier.as_("admin-1", Role.ADMINISTRATOR),
        "gateway service": await dossier.as_("gateway", Role.SERVICE),
    }
    for stub in allowed:
        got = await stub.GetCase(pb.GetCaseRequest(case_id=case.case_id))
        assert got.case.purpose == pb.CASE_PURPOSE_OPINION_BEFORE_INDEMNITY_CLAIM
        assert (await stub.GetCaseNotes(pb.GetCaseNotesRequest(case_id=case.case_id))).notes.text == "Q?"
    for who, stub in refused.items():
        for method, request in reads(case.case_id):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await getattr(stub, method)(request)
            assert error.value.code() in (NF, PD), (who, method, error.value.code())
        # Writes too.
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.SaveCaseNotes(
                pb.SaveCaseNotesRequest(idempotency_key=f"x-{who}", case_id=case.case_id, text="x")
            )
        assert error.value.code() in (NF, PD), who
    # An unknown id answers like a foreign one: existence is not revealed.
    assert "not found" in await expect_status(alice.GetCase(pb.GetCaseRequest(case_id="nope")), NF)
    # The habilitated coordinator reads but does not write the patient's side.
    coordinator = await dossier.as_(COORDINATOR, Role.COORDINATOR)
    await expect_status(
        coordinator.SaveCaseNotes(
            pb.SaveCaseNotesRequest(idempotency_key="c1", case_id=case.case_id, text="x")
        ),
        NF,
    )
    # Listings follow the same rules.
    mine = await alice.ListCases(pb.ListCasesRequest(scope=pb.CASE_LIST_SCOPE_MINE))
    assert [c.case_id for c in mine.cases] == [case.case_id]
    bob = refused["another patient"]
    assert not (await bob.ListCases(pb.ListCasesRequest(scope=pb.CASE_LIST_SCOPE_MINE))).cases
    await expect_status(refused["partner"].ListCases(pb.ListCasesRequest(scope=pb.CASE_LIST_SCOPE_MINE)), PD)


@pytest.mark.req("DOC-02")
@pytest.mark.req("DOC-03")
async def test_a_doctor_sees_a_case_only_while_assigned_and_not_opposed(dossier: Dossier) -> None:
    alice = await dossier.patient()
    doctor = await dossier.doctor("doctor-account-1")
    case = await create_case(alice)
    get = pb.GetCaseRequest(case_id=case.case_id)
    await expect_status(doctor.GetCase(get), NF)
    # Only the workflow records assignments.
    await expect_status(
        alice.RecordAssignment(
            pb.RecordAssignmentRequest(
                idempotency_key="a",
                case_id=case.case_id,
                assignment_id="x",
                doctor_id="doc-1",
                doctor_account_id="doctor-account-1",
            )
        ),
        PD,
    )
    first = await assign(dossier, case.case_id, assignment_id="asg-1")
    deadline = Timestamp(seconds=int(datetime(2026, 12, 1, tzinfo=UTC).timestamp()))
    set_deadline = pb.SetCaseDeadlineRequest(
        idempotency_key="dl-1",
        case_id=case.case_id,
        deadline_at=deadline,
        reason=pb.DEADLINE_CHANGE_REASON_REVIEW_STARTED,
    )
    await expect_status(alice.SetCaseDeadline(set_deadline), PD)
    assert (await (await dossier.worker()).SetCaseDeadline(set_deadline)).case.deadline_at == deadline
    assert (await doctor.GetCase(get)).case.assigned_doctor_ids == ["doc-1"]
    assigned = await doctor.ListCases(pb.ListCasesRequest(scope=pb.CASE_LIST_SCOPE_ASSIGNED_TO_ME))
    assert [c.case_id for c in assigned.cases] == [case.case_id]
    # The assignment ends: access ends.
    worker = await dossier.worker()
    ended = await worker.EndAssignment(
        pb.EndAssignmentRequest(
            idempotency_key="end-1",
            assignment_id=first.assignment_id,
            reason=pb.ASSIGNMENT_END_REASON_REASSIGNED,
        )
    )
    assert ended.assignment.HasField("ended_at")
    await expect_status(doctor.GetCase(get), NF)
    assert not (await doctor.ListCases(pb.ListCasesRequest(scope=pb.CASE_LIST_SCOPE_ASSIGNED_TO_ME))).cases
    # Assigned again, then the patient opposes: access ends at once, for good (DOC-03).
    await assign(dossier, case.case_id, assignment_id="asg-2")
    assert (await doctor.GetCase(get)).case.case_id == case.case_id
    await expect_status(
        (await dossier.patient("bob")).OpposeDoctorAccess(
            pb.OpposeDoctorAccessRequest(idempotency_key="o", case_id=case.case_id, doctor_id="doc-1")
        ),
        NF,
    )
    opposed = await alice.OpposeDoctorAccess(
        pb.OpposeDoctorAccessRequest(idempotency_key="oppose-1", case_id=case.case_id, doctor_id="doc-1")
    )
    assert opposed.ended_assignment.assignment_id == "asg-2"
    assert opposed.ended_assignment.end_reason == pb.ASSIGNMENT_END_REASON_OPPOSED_BY_PATIENT
    await expect_status(doctor.GetCase(get), NF)
    await expect_status(
        doctor.SendMessage(
            pb.SendMessageRequest(
                idempotency_key="m", case_id=case.case_id, kind=pb.MESSAGE_KIND_GENERAL, body="hi"
            )
        ),
        NF,
    )
    assert "opposed" in await expect_status(
        worker.RecordAssignment(
            pb.RecordAssignmentRequest(
                idempotency_key="assign-3",
                case_id=case.case_id,
                assignment_id="asg-3",
                doctor_id="doc-1",
                doctor_account_id="doctor-account-1",
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    history = await alice.ListCaseAssignments(pb.ListCaseAssignmentsRequest(case_id=case.case_id))
    assert [(a.assignment_id, a.end_reason) for a in history.assignments] == [
        ("asg-1", pb.ASSIGNMENT_END_REASON_REASSIGNED),
        ("asg-2", pb.ASSIGNMENT_END_REASON_OPPOSED_BY_PATIENT),
    ]
    assert (await alice.GetCase(get)).case.assigned_doctor_ids == []


@pytest.mark.req("SEC-01")
@pytest.mark.req("CASE-14")
async def test_every_access_is_logged_and_people_get_the_history_of_accesses_to_their_data(
    dossier: Dossier,
) -> None:
    alice = await dossier.patient("alice")
    case = await create_case(alice)
    await assign(dossier, case.case_id)
    doctor = await dossier.doctor()
    coordinator = await dossier.as_(COORDINATOR, Role.COORDINATOR)
    await alice.SaveCaseNotes(pb.SaveCaseNotesRequest(idempotency_key="n1", case_id=case.case_id, text="Q"))
    await doctor.GetCaseNotes(pb.GetCaseNotesRequest(case_id=case.case_id))
    await coordinator.GetCase(pb.GetCaseRequest(case_id=case.case_id))
    await (await dossier.as_(ASSISTANT, Role.COORDINATOR)).SaveCaseNotes(
        pb.SaveCaseNotesRequest(idempotency_key="n2", case_id=case.case_id, text="Q, by staff")
    )
    intruder = await dossier.doctor("doctor-intruder")
    await expect_status(intruder.GetCase(pb.GetCaseRequest(case_id=case.case_id)), NF)
    bob = await dossier.patient("bob")
    await create_case(bob, key="bob-case")

    history = (await alice.ListAccessLog(pb.ListAccessLogRequest())).entries
    assert all(e.case_id == case.case_id for e in history)  # nothing about bob's case
    sequences = [e.sequence for e in history]
    assert sequences == sorted(sequences, reverse=True)  # newest first
    seen = [(e.actor_account_id, e.actor_role, e.action, e.object_kind, e.purpose) for e in reversed(history)]
    assert seen[0] == (
        "alice",
        "PATIENT",
        pb.ACCESS_ACTION_CREATE,
        pb.ACCESS_OBJECT_KIND_CASE,
        pb.ACCESS_PURPOSE_OWN_SPACE,
    )
    assert (
        "worker",
        "SERVICE",
        pb.ACCESS_ACTION_UPDATE,
        pb.ACCESS_OBJECT_KIND_CASE,
        pb.ACCESS_PURPOSE_PLATFORM_PROCESSING,
    ) in seen
    assert (
        "alice",
        "PATIENT",
        pb.ACCESS_ACTION_UPDATE,
        pb.ACCESS_OBJECT_KIND_CASE_NOTES,
        pb.ACCESS_PURPOSE_OWN_SPACE,
    ) in seen
    assert (
        "doctor-account-1",
        "REFERENT_DOCTOR",
        pb.ACCESS_ACTION_READ,
        pb.ACCESS_OBJECT_KIND_CASE_NOTES,
        pb.ACCESS_PURPOSE_CASE_REVIEW,
    ) in seen
    assert (
        COORDINATOR,
        "COORDINATOR",
        pb.ACCESS_ACTION_READ,
        pb.ACCESS_OBJECT_KIND_CASE,
        pb.ACCESS_PURPOSE_COORDINATION,
    ) in seen
    assert (
        ASSISTANT,
        "COORDINATOR",
        pb.ACCESS_ACTION_UPDATE,
        pb.ACCESS_OBJECT_KIND_CASE_NOTES,
        pb.ACCESS_PURPOSE_PERSONAL_ASSISTANT,
    ) in seen
    assert (
        "doctor-intruder",
        "REFERENT_DOCTOR",
        pb.ACCESS_ACTION_REFUSED,
        pb.ACCESS_OBJECT_KIND_CASE,
        pb.ACCESS_PURPOSE_CASE_REVIEW,
    ) in seen
    assert all(e.HasField("occurred_at") and len(e.entry_hash_hex) == 64 for e in history)
    # Paging, and nobody else's history.
    page = await alice.ListAccessLog(pb.ListAccessLogRequest(page_size=2))
    rest = await alice.ListAccessLog(pb.ListAccessLogRequest(page_size=100, page_token=page.next_page_token))
    assert [e.sequence for e in [*page.entries, *rest.entries]] == sequences
    assert all(
        e.case_id != case.case_id for e in (await bob.ListAccessLog(pb.ListAccessLogRequest())).entries
    )
    await expect_status(
        (await dossier.as_("partner-1", Role.PARTNER_USER)).ListAccessLog(pb.ListAccessLogRequest()), PD
    )
    dpo = await dossier.as_("dpo-1", Role.DPO)
    assert len((await dpo.ListAccessLog(pb.ListAccessLogRequest(subject_id="alice"))).entries) == len(history)


@pytest.mark.req("SEC-02")
async def test_chain_verification_finds_an_edited_or_deleted_entry(dossier: Dossier) -> None:
    alice = await dossier.patient()
    case = await create_case(alice)
    for _ in range(3):
        await alice.GetCase(pb.GetCaseRequest(case_id=case.case_id))
    dpo = await dossier.as_("dpo-1", Role.DPO)
    verify = pb.VerifyAccessLogChainRequest()
    await expect_status(alice.VerifyAccessLogChain(verify), PD)
    intact = await dpo.VerifyAccessLogChain(verify)
    assert intact.intact and intact.checked_count == 4 and intact.problem == pb.CHAIN_PROBLEM_UNSPECIFIED
    # The database itself refuses edits...
    with pytest.raises(Exception, match="append-only"):
        await dossier.sql("UPDATE access_log SET actor_account_id = 'mallory' WHERE sequence = 2")
    # ...so an attacker with owner rights disables the guard first.
    if dossier.database_url.startswith("sqlite"):
        await dossier.sql("DROP TRIGGER access_log_no_update")
        await dossier.sql("DROP TRIGGER access_log_no_delete")
    else:
        await dossier.sql("ALTER TABLE access_log DISABLE TRIGGER access_log_append_only")
    await dossier.sql("UPDATE access_log SET actor_account_id = 'mallory' WHERE sequence = 2")
    altered = await dpo.VerifyAccessLogChain(verify)
    assert (altered.intact, altered.first_bad_sequence, altered.problem) == (
        False,
        2,
        pb.CHAIN_PROBLEM_ALTERED,
    )
    assert altered.checked_count == 1
    await dossier.sql("UPDATE access_log SET actor_account_id = 'alice' WHERE sequence = 2")
    assert (await dpo.VerifyAccessLogChain(verify)).intact
    await dossier.sql("DELETE FROM access_log WHERE sequence = 3")
    missing = await dpo.VerifyAccessLogChain(verify)
    assert (missing.intact, missing.first_bad_sequence, missing.problem) == (
        False,
        3,
        pb.CHAIN_PROBLEM_MISSING,
    )


@pytest.mark.req("SEC-01")
async def test_an_access_that_cannot_be_logged_is_refused(dossier: Dossier) -> None:
    alice = await dossier.patient()
    case = await create_case(alice)
    await alice.SaveCaseNotes(pb.SaveCaseNotesRequest(idempotency_key="n1", case_id=case.case_id, text="v1"))
    await dossier.sql("ALTER TABLE access_log RENAME TO access_log_away")
    try:
        details = await expect_status(
            alice.GetCase(pb.GetCaseRequest(case_id=case.case_id)), grpc.StatusCode.UNAVAILABLE
        )
        assert "access log" in details
        await expect_status(
            alice.GetCaseNotes(pb.GetCaseNotesRequest(case_id=case.case_id)), grpc.StatusCode.UNAVAILABLE
        )
        await expect_status(
            alice.SaveCaseNotes(
                pb.SaveCaseNotesRequest(idempotency_key="n2", case_id=case.case_id, text="v2")
            ),
            grpc.StatusCode.UNAVAILABLE,
        )
    finally:
        await dossier.sql("ALTER TABLE access_log_away RENAME TO access_log")
    # The refused write left nothing behind; the log is still a valid chain.
    notes = await alice.GetCaseNotes(pb.GetCaseNotesRequest(case_id=case.case_id))
    assert (notes.notes.text, notes.notes.version) == ("v1", 1)
    assert (
        await (await dossier.as_("dpo-1", Role.DPO)).VerifyAccessLogChain(pb.VerifyAccessLogChainRequest())
    ).intact
